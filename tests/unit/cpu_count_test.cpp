// Unit tests for poolmap::detect_worker_count, run against fake /sys and /proc trees.
#include "poolmap/cpu_count.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace {

namespace fs = std::filesystem;

// A unique, empty temporary directory, removed (recursively) when the guard goes away.
class TempTree {
 public:
  TempTree() {
    static std::atomic<unsigned> counter{0};
    const auto base = fs::temp_directory_path();
    for (;;) {
      path_ = base / ("poolmap_cpu_count_" + std::to_string(::getpid()) + "_" +
                      std::to_string(counter.fetch_add(1)));
      std::error_code ec;
      if (fs::create_directories(path_, ec) && !ec) break;
    }
  }
  ~TempTree() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempTree(const TempTree&) = delete;
  TempTree& operator=(const TempTree&) = delete;

  const fs::path& path() const { return path_; }

  // Writes `text` to root/relative, creating parent directories.
  void write(const std::string& relative, const std::string& text) const {
    const fs::path file = path_ / relative;
    fs::create_directories(file.parent_path());
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out << text;
    REQUIRE(out.good());
  }

  // cpuN/topology with the given package and core ids.
  void add_cpu(int cpu, int package, int core) const {
    const std::string dir = "sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    write(dir + "physical_package_id", std::to_string(package) + "\n");
    write(dir + "core_id", std::to_string(core) + "\n");
  }

  // 4 logical CPUs forming 2 hyperthread pairs: (0,2) on core 0, (1,3) on core 1.
  void add_two_hyperthread_pairs() const {
    add_cpu(0, 0, 0);
    add_cpu(1, 0, 1);
    add_cpu(2, 0, 0);
    add_cpu(3, 0, 1);
  }

 private:
  fs::path path_;
};

using Env = std::map<std::string, std::string>;

// A probe over `tree` with the given affinity and a fake environment.
poolmap::CpuProbe make_probe(const TempTree& tree, std::vector<int> affinity, Env env = {}) {
  poolmap::CpuProbe probe;
  probe.root = tree.path();
  probe.affinity = std::move(affinity);
  probe.getenv = [env = std::move(env)](const std::string& name) -> std::optional<std::string> {
    const auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  return probe;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("CpuCount.PhysicalCores.HyperthreadSiblingsCountOnce" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1, 2, 3}));
  CHECK(result.count == 2);
  CHECK(result.source == "physical-cores");
  CHECK(contains(result.detail, "physical-cores=2"));
  CHECK(contains(result.detail, "affinity=4"));
}

TEST_CASE("CpuCount.PhysicalCores.TwoPackagesSameCoreIdAreDistinct" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_cpu(0, 0, 0);
  tree.add_cpu(1, 1, 0);
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1}));
  CHECK(result.count == 2);
  CHECK(result.source == "physical-cores");
}

TEST_CASE("CpuCount.PhysicalCores.UnknownAffinityEnumeratesCpuDirs" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  const auto result = poolmap::detect_worker_count(make_probe(tree, {}));
  CHECK(result.count == 2);
  CHECK(result.source == "physical-cores");
  CHECK(contains(result.detail, "affinity=unknown"));
}

TEST_CASE("CpuCount.PhysicalCores.MissingTopologyUsesAffinity" * doctest::timeout(10)) {
  TempTree tree;
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1, 2}));
  CHECK(result.count == 3);
  CHECK(result.source == "affinity");
  CHECK(contains(result.detail, "physical-cores=unknown"));
  CHECK(contains(result.detail, "affinity=3"));
}

TEST_CASE("CpuCount.Affinity.LimitsToOneCpu" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  const auto result = poolmap::detect_worker_count(make_probe(tree, {2}));
  CHECK(result.count == 1);
  CHECK(result.source == "physical-cores");  // tie: physical-cores comes first
  CHECK(contains(result.detail, "physical-cores=1"));
  CHECK(contains(result.detail, "affinity=1"));
}

TEST_CASE("CpuCount.Affinity.SiblingPairCountsOnce" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 2}));
  CHECK(result.count == 1);
  CHECK(contains(result.detail, "affinity=2"));
}

TEST_CASE("CpuCount.CgroupV2.QuotaRoundsUp" * doctest::timeout(10)) {
  TempTree tree;
  for (int cpu = 0; cpu < 8; ++cpu) tree.add_cpu(cpu, 0, cpu);
  tree.write("sys/fs/cgroup/cpu.max", "150000 100000\n");
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1, 2, 3, 4, 5, 6, 7}));
  CHECK(result.count == 2);
  CHECK(result.source == "cgroup-quota");
  CHECK(contains(result.detail, "cgroup-quota=2"));
}

TEST_CASE("CpuCount.CgroupV2.MaxIsUnlimited" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  tree.write("sys/fs/cgroup/cpu.max", "max 100000\n");
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1, 2, 3}));
  CHECK(result.count == 2);
  CHECK(result.source == "physical-cores");
  CHECK(contains(result.detail, "cgroup-quota=max"));
}

TEST_CASE("CpuCount.CgroupV2.OwnCgroupDirFromProcSelf" * doctest::timeout(10)) {
  TempTree tree;
  for (int cpu = 0; cpu < 8; ++cpu) tree.add_cpu(cpu, 0, cpu);
  tree.write("sys/fs/cgroup/cpu.max", "max 100000\n");
  tree.write("proc/self/cgroup", "0::/system.slice/job.scope\n");
  tree.write("sys/fs/cgroup/system.slice/job.scope/cpu.max", "300000 100000\n");
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1, 2, 3, 4, 5, 6, 7}));
  CHECK(result.count == 3);
  CHECK(result.source == "cgroup-quota");
}

TEST_CASE("CpuCount.CgroupV2.MalformedIgnoredAndMentioned" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  tree.write("sys/fs/cgroup/cpu.max", "lots of cpus please\n");
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1, 2, 3}));
  CHECK(result.count == 2);
  CHECK(result.source == "physical-cores");
  CHECK(contains(result.detail, "malformed"));
  CHECK(contains(result.detail, "cpu.max"));
}

TEST_CASE("CpuCount.CgroupV1.CfsQuota" * doctest::timeout(10)) {
  TempTree tree;
  for (int cpu = 0; cpu < 8; ++cpu) tree.add_cpu(cpu, 0, cpu);
  tree.write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "250000\n");
  tree.write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1, 2, 3, 4, 5, 6, 7}));
  CHECK(result.count == 3);
  CHECK(result.source == "cgroup-quota");
}

TEST_CASE("CpuCount.CgroupV1.MinusOneIsUnlimited" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  tree.write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
  tree.write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1, 2, 3}));
  CHECK(result.count == 2);
  CHECK(result.source == "physical-cores");
  CHECK(contains(result.detail, "cgroup-quota=max"));
}

TEST_CASE("CpuCount.Batch.SlurmEqualToMinimumIsSource" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  const auto result =
      poolmap::detect_worker_count(make_probe(tree, {0}, Env{{"SLURM_CPUS_PER_TASK", "1"}}));
  CHECK(result.count == 1);
  CHECK(result.source == "SLURM_CPUS_PER_TASK");
  CHECK(contains(result.detail, "SLURM_CPUS_PER_TASK=1"));
}

TEST_CASE("CpuCount.Batch.SlurmSmallestWins" * doctest::timeout(10)) {
  TempTree tree;
  for (int cpu = 0; cpu < 8; ++cpu) tree.add_cpu(cpu, 0, cpu);
  const auto result = poolmap::detect_worker_count(
      make_probe(tree, {0, 1, 2, 3, 4, 5, 6, 7}, Env{{"SLURM_CPUS_PER_TASK", "1"}}));
  CHECK(result.count == 1);
  CHECK(result.source == "SLURM_CPUS_PER_TASK");
}

TEST_CASE("CpuCount.Batch.PbsNcpus" * doctest::timeout(10)) {
  TempTree tree;
  for (int cpu = 0; cpu < 8; ++cpu) tree.add_cpu(cpu, 0, cpu);
  const auto result = poolmap::detect_worker_count(
      make_probe(tree, {0, 1, 2, 3, 4, 5, 6, 7}, Env{{"PBS_NCPUS", "3"}, {"NCPUS", "5"}}));
  CHECK(result.count == 3);
  CHECK(result.source == "PBS_NCPUS");
  CHECK(contains(result.detail, "PBS_NCPUS=3"));
  CHECK(contains(result.detail, "NCPUS=5"));
}

TEST_CASE("CpuCount.Batch.NcpusLargerThanCoresDoesNotWin" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  const auto result =
      poolmap::detect_worker_count(make_probe(tree, {0, 1, 2, 3}, Env{{"NCPUS", "64"}}));
  CHECK(result.count == 2);
  CHECK(result.source == "physical-cores");
}

TEST_CASE("CpuCount.Batch.GarbageValueIgnored" * doctest::timeout(10)) {
  TempTree tree;
  tree.add_two_hyperthread_pairs();
  const Env env{{"SLURM_CPUS_PER_TASK", "abc"}, {"PBS_NCPUS", "0"}, {"NCPUS", "-4"}};
  const auto result = poolmap::detect_worker_count(make_probe(tree, {0, 1, 2, 3}, env));
  CHECK(result.count == 2);
  CHECK(result.source == "physical-cores");
  CHECK(contains(result.detail, "SLURM_CPUS_PER_TASK=invalid"));
  CHECK(contains(result.detail, "PBS_NCPUS=invalid"));
  CHECK(contains(result.detail, "NCPUS=invalid"));
}

TEST_CASE("CpuCount.Fallback.EmptyRootGivesPositiveCount" * doctest::timeout(10)) {
  TempTree tree;
  const auto result = poolmap::detect_worker_count(make_probe(tree, {}));
  CHECK(result.count >= 1);
  CHECK(result.source == "fallback");
  CHECK(contains(result.detail, "fallback="));
}

TEST_CASE("CpuCount.Detail.MentionsEveryInput" * doctest::timeout(10)) {
  TempTree tree;
  for (int cpu = 0; cpu < 16; ++cpu) tree.add_cpu(cpu, 0, cpu / 2);
  tree.write("sys/fs/cgroup/cpu.max", "400000 100000\n");
  std::vector<int> all;
  for (int cpu = 0; cpu < 16; ++cpu) all.push_back(cpu);
  const auto result = poolmap::detect_worker_count(make_probe(tree, all));
  CHECK(result.count == 4);
  CHECK(result.source == "cgroup-quota");
  CHECK(result.detail ==
        "physical-cores=8 affinity=16 cgroup-quota=4 SLURM_CPUS_PER_TASK=unset PBS_NCPUS=unset "
        "NCPUS=unset");
}

TEST_CASE("CpuCount.RealMachine.NeverThrowsAndPositive" * doctest::timeout(10)) {
  poolmap::CpuCount result;
  CHECK_NOTHROW(result = poolmap::detect_worker_count());
  CHECK(result.count >= 1);
  CHECK_FALSE(result.source.empty());
  CHECK(contains(result.detail, "affinity="));
}
