// poolmap: default worker-count detection (see poolmap/cpu_count.hpp for the contract).
#include "poolmap/cpu_count.hpp"

#include <sched.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

namespace poolmap {
namespace {

namespace fs = std::filesystem;

// Files we read are tiny; anything larger than this is treated as malformed.
constexpr std::size_t kMaxFileBytes = 64 * 1024;

// A limit on the worker count together with how it is shown in `detail`.
struct Limit {
  std::optional<std::size_t> value;
  std::string text;  // e.g. "4", "max", "unset", "unknown(...)"
};

std::string_view trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n\f\v";
  const auto first = s.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(kSpace);
  return s.substr(first, last - first + 1);
}

// Parses a whole string as a decimal integer (optional leading '-'); nothing else allowed.
std::optional<std::int64_t> parse_int(std::string_view s) {
  if (s.empty()) return std::nullopt;
  std::int64_t value = 0;
  const char* begin = s.data();
  const char* end = s.data() + s.size();
  const auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc{} || ptr != end) return std::nullopt;
  return value;
}

// Parses a whole string as a positive decimal integer made of digits only.
std::optional<std::size_t> parse_positive(std::string_view s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  const auto value = parse_int(s);
  if (!value || *value <= 0) return std::nullopt;
  return static_cast<std::size_t>(*value);
}

// Reads a small text file; nullopt if missing, unreadable or too large.
std::optional<std::string> read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::in | std::ios::binary);
  if (!in) return std::nullopt;
  std::string text;
  std::array<char, 4096> buf{};
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = static_cast<std::size_t>(in.gcount());
    text.append(buf.data(), got);
    if (text.size() > kMaxFileBytes) return std::nullopt;
  }
  if (in.bad()) return std::nullopt;
  return text;
}

bool exists_quietly(const fs::path& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

// `root` joined with an absolute-looking path such as "/sys/fs/cgroup".
fs::path under_root(const fs::path& root, std::string_view absolute) {
  return root / fs::path(absolute).relative_path();
}

// Ceil of quota/period without overflow.
std::size_t ceil_div(std::uint64_t quota, std::uint64_t period) {
  return static_cast<std::size_t>(quota / period + (quota % period != 0 ? 1 : 0));
}

// ---------------------------------------------------------------- affinity

struct CpuSetDeleter {
  void operator()(cpu_set_t* set) const noexcept { CPU_FREE(set); }
};

std::optional<std::vector<int>> read_real_affinity() {
  for (int ncpu = 1024; ncpu <= (1 << 22); ncpu *= 2) {
    std::unique_ptr<cpu_set_t, CpuSetDeleter> set(CPU_ALLOC(ncpu));
    if (!set) return std::nullopt;
    const std::size_t size = CPU_ALLOC_SIZE(ncpu);
    CPU_ZERO_S(size, set.get());
    if (sched_getaffinity(0, size, set.get()) == 0) {
      std::vector<int> cpus;
      for (int cpu = 0; cpu < ncpu; ++cpu) {
        if (CPU_ISSET_S(cpu, size, set.get())) cpus.push_back(cpu);
      }
      return cpus;
    }
    if (errno != EINVAL) return std::nullopt;  // EINVAL: mask too small, try a bigger one
  }
  return std::nullopt;
}

// Sorted, unique, non-negative CPU ids; empty = unknown.
std::vector<int> affinity_cpus(const CpuProbe& probe) {
  std::vector<int> cpus;
  if (probe.affinity) {
    cpus = *probe.affinity;
  } else if (auto real = read_real_affinity()) {
    cpus = std::move(*real);
  }
  cpus.erase(std::remove_if(cpus.begin(), cpus.end(), [](int c) { return c < 0; }), cpus.end());
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

// ---------------------------------------------------------------- physical cores

// CPU ids with a cpuN directory under <root>/sys/devices/system/cpu.
std::vector<int> listed_cpus(const fs::path& cpu_dir) {
  std::vector<int> cpus;
  std::error_code ec;
  fs::directory_iterator it(cpu_dir, ec);
  if (ec) return cpus;
  for (const fs::directory_iterator end; it != end; it.increment(ec)) {
    if (ec) break;
    const std::string name = it->path().filename().string();
    if (name.size() <= 3 || name.compare(0, 3, "cpu") != 0) continue;
    const std::string_view digits = std::string_view(name).substr(3);
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    if (const auto id = parse_int(digits); id && *id <= (1 << 22)) cpus.push_back(static_cast<int>(*id));
  }
  std::sort(cpus.begin(), cpus.end());
  return cpus;
}

Limit physical_cores(const fs::path& root, const std::vector<int>& affinity) {
  const fs::path cpu_dir = under_root(root, "/sys/devices/system/cpu");
  const std::vector<int> cpus = affinity.empty() ? listed_cpus(cpu_dir) : affinity;
  if (cpus.empty()) return {std::nullopt, "unknown(no cpus)"};

  std::set<std::pair<std::int64_t, std::int64_t>> cores;
  for (const int cpu : cpus) {
    const fs::path topo = cpu_dir / ("cpu" + std::to_string(cpu)) / "topology";
    const auto package_text = read_text(topo / "physical_package_id");
    const auto core_text = read_text(topo / "core_id");
    if (!package_text || !core_text) {
      return {std::nullopt, "unknown(no topology for cpu" + std::to_string(cpu) + ")"};
    }
    const auto package = parse_int(trim(*package_text));
    const auto core = parse_int(trim(*core_text));
    if (!package || !core) {
      return {std::nullopt, "unknown(malformed topology for cpu" + std::to_string(cpu) + ")"};
    }
    cores.emplace(*package, *core);
  }
  return {cores.size(), std::to_string(cores.size())};
}

// ---------------------------------------------------------------- cgroup quota

// Accumulates the smallest quota found over all cgroup files looked at.
class QuotaScan {
 public:
  explicit QuotaScan(fs::path root) : root_(std::move(root)) {}

  void found_quota(std::size_t cpus) {
    if (!best_ || cpus < *best_) best_ = cpus;
  }
  void found_unlimited() { unlimited_seen_ = true; }
  void found_malformed(const fs::path& file) {
    std::error_code ec;
    fs::path shown = fs::relative(file, root_, ec);
    if (ec || shown.empty()) shown = file;
    notes_.push_back("malformed " + shown.generic_string());
  }

  Limit result() const {
    std::string text;
    if (best_) {
      text = std::to_string(*best_);
    } else if (unlimited_seen_) {
      text = "max";
    } else {
      text = "unset";
    }
    if (!notes_.empty()) {
      text += "(";
      for (std::size_t i = 0; i < notes_.size(); ++i) {
        if (i != 0) text += ",";
        text += notes_[i];
      }
      text += ")";
    }
    return {best_, text};
  }

 private:
  fs::path root_;
  std::optional<std::size_t> best_;
  bool unlimited_seen_ = false;
  std::vector<std::string> notes_;
};

// cgroup v2 cpu.max: "max 100000" or "150000 100000".
void scan_cpu_max(const fs::path& file, QuotaScan& scan) {
  const auto text = read_text(file);
  if (!text) return;  // absent: nothing to say
  std::istringstream in(*text);
  std::string quota_token;
  std::string period_token;
  std::string extra;
  in >> quota_token >> period_token;
  const bool has_extra = static_cast<bool>(in >> extra);
  if (quota_token.empty() || has_extra) {
    scan.found_malformed(file);
    return;
  }
  if (quota_token == "max") {
    if (!period_token.empty() && !parse_positive(period_token)) {
      scan.found_malformed(file);
      return;
    }
    scan.found_unlimited();
    return;
  }
  const auto quota = parse_positive(quota_token);
  const auto period = parse_positive(period_token);
  if (!quota || !period) {
    scan.found_malformed(file);
    return;
  }
  scan.found_quota(ceil_div(*quota, *period));
}

// cgroup v1: cpu.cfs_quota_us (-1 = unlimited) and cpu.cfs_period_us in `dir`.
void scan_cfs(const fs::path& dir, QuotaScan& scan) {
  const fs::path quota_file = dir / "cpu.cfs_quota_us";
  const auto quota_text = read_text(quota_file);
  if (!quota_text) return;
  const auto quota = parse_int(trim(*quota_text));
  if (!quota || *quota == 0 || *quota < -1) {
    scan.found_malformed(quota_file);
    return;
  }
  if (*quota == -1) {
    scan.found_unlimited();
    return;
  }
  const fs::path period_file = dir / "cpu.cfs_period_us";
  const auto period_text = read_text(period_file);
  const auto period = period_text ? parse_positive(trim(*period_text)) : std::nullopt;
  if (!period) {
    scan.found_malformed(period_file);
    return;
  }
  scan.found_quota(ceil_div(static_cast<std::uint64_t>(*quota), *period));
}

// Calls `visit` on each existing directory base/a, base/a/b, ... down to base/<cgroup_path> (base
// itself is not visited; the caller scans it). "." and ".." components are ignored.
template <typename Visit>
void walk_cgroup_path(const fs::path& base, std::string_view cgroup_path, Visit&& visit) {
  fs::path dir = base;
  for (const auto& part : fs::path(cgroup_path).relative_path()) {
    const std::string name = part.string();
    if (name.empty() || name == "." || name == "..") continue;
    dir /= part;
    if (exists_quietly(dir)) visit(dir);
  }
}

Limit cgroup_quota(const fs::path& root) {
  QuotaScan scan(root);
  const fs::path cgroup_root = under_root(root, "/sys/fs/cgroup");
  const fs::path v1_cpu = cgroup_root / "cpu";

  // The top-level files named by the contract.
  scan_cpu_max(cgroup_root / "cpu.max", scan);
  scan_cfs(v1_cpu, scan);

  // The process's own cgroup (and its ancestors), from /proc/self/cgroup.
  if (const auto self = read_text(under_root(root, "/proc/self/cgroup"))) {
    std::istringstream lines(*self);
    std::string line;
    while (std::getline(lines, line)) {
      // "hierarchy-id:controller-list:path"
      const auto first = line.find(':');
      if (first == std::string::npos) continue;
      const auto second = line.find(':', first + 1);
      if (second == std::string::npos) continue;
      const std::string_view id = std::string_view(line).substr(0, first);
      const std::string_view controllers = std::string_view(line).substr(first + 1, second - first - 1);
      const std::string_view path = trim(std::string_view(line).substr(second + 1));
      if (id == "0" && controllers.empty()) {
        walk_cgroup_path(cgroup_root, path, [&](const fs::path& dir) { scan_cpu_max(dir / "cpu.max", scan); });
        continue;
      }
      // cgroup v1: does the controller list name "cpu"?
      bool has_cpu = false;
      std::size_t start = 0;
      while (start <= controllers.size()) {
        auto comma = controllers.find(',', start);
        if (comma == std::string_view::npos) comma = controllers.size();
        if (controllers.substr(start, comma - start) == "cpu") has_cpu = true;
        start = comma + 1;
      }
      if (has_cpu) {
        walk_cgroup_path(v1_cpu, path, [&](const fs::path& dir) { scan_cfs(dir, scan); });
      }
    }
  }
  return scan.result();
}

// ---------------------------------------------------------------- batch scheduler

Limit env_limit(const CpuProbe& probe, const std::string& name) {
  std::optional<std::string> value;
  try {
    if (probe.getenv) {
      value = probe.getenv(name);
    } else if (const char* raw = std::getenv(name.c_str())) {
      value = std::string(raw);
    }
  } catch (...) {
    return {std::nullopt, "unknown(lookup failed)"};
  }
  if (!value) return {std::nullopt, "unset"};
  if (const auto n = parse_positive(*value)) return {n, std::to_string(*n)};
  std::string shown = value->substr(0, 32);
  for (char& c : shown) {
    if (c < 0x20 || c == 0x7f || c == '"') c = '?';
  }
  if (value->size() > 32) shown += "...";
  return {std::nullopt, "invalid(\"" + shown + "\")"};
}

std::size_t fallback_count() noexcept {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<std::size_t>(hw);
}

CpuCount detect(const CpuProbe& probe) {
  constexpr std::size_t kFirstBatchVariable = 3;
  static constexpr std::array<std::string_view, 6> kNames = {
      "physical-cores", "affinity", "cgroup-quota", "SLURM_CPUS_PER_TASK", "PBS_NCPUS", "NCPUS"};

  const std::vector<int> affinity = affinity_cpus(probe);
  std::array<Limit, kNames.size()> limits;
  limits[0] = physical_cores(probe.root, affinity);
  limits[1] = affinity.empty() ? Limit{std::nullopt, "unknown"}
                               : Limit{affinity.size(), std::to_string(affinity.size())};
  limits[2] = cgroup_quota(probe.root);
  for (std::size_t i = kFirstBatchVariable; i < kNames.size(); ++i) {
    limits[i] = env_limit(probe, std::string(kNames[i]));
  }

  CpuCount out;
  for (std::size_t i = 0; i < kNames.size(); ++i) {
    if (i != 0) out.detail += ' ';
    out.detail.append(kNames[i]);
    out.detail += '=';
    out.detail += limits[i].text;
  }

  std::optional<std::size_t> best;
  std::size_t best_index = 0;
  for (std::size_t i = 0; i < kNames.size(); ++i) {
    if (limits[i].value && *limits[i].value >= 1 && (!best || *limits[i].value < *best)) {
      best = limits[i].value;
      best_index = i;
    }
  }
  if (!best) {
    out.count = fallback_count();
    out.source = "fallback";
    out.detail += " fallback=" + std::to_string(out.count);
    return out;
  }
  // A batch-scheduler variable equal to the minimum is what the user asked for: report it.
  for (std::size_t i = kFirstBatchVariable; i < kNames.size(); ++i) {
    if (limits[i].value == best) {
      best_index = i;
      break;
    }
  }
  out.count = *best;
  out.source = std::string(kNames[best_index]);
  return out;
}

}  // namespace

CpuCount detect_worker_count(const CpuProbe& probe) {
  try {
    return detect(probe);
  } catch (...) {
    CpuCount out;
    out.count = fallback_count();
    try {
      out.source = "fallback";
      out.detail = "error during detection; fallback=" + std::to_string(out.count);
    } catch (...) {
      // Out of memory even for two short strings: return the bare count.
    }
    return out;
  }
}

}  // namespace poolmap
