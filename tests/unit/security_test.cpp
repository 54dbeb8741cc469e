// The broker's access rules and CURVE key files, without sockets: ZAP decisions per socket, the
// loopback rule for brokers without CURVE, and what `poolmap keygen` writes and the daemons read.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "poolmap/curve.hpp"
#include "poolmap/error.hpp"
#include "security.hpp"

namespace fs = std::filesystem;
using poolmap::detail::decide_zap;
using poolmap::detail::is_loopback_endpoint;
using poolmap::detail::KeyRing;

namespace {

// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "poolmap-keys-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { fs::remove_all(path); }
};

// A ZAP 1.0 request as libzmq sends it for a CURVE handshake.
std::vector<std::string> curve_request(std::string_view domain, const std::string& z85_key) {
  return {"1.0", "7", std::string(domain), "127.0.0.1", "", "CURVE", poolmap::curve_key_bytes(z85_key)};
}

}  // namespace

TEST_CASE("Security.Zap.AKeyIsAcceptedOnlyOnTheSocketWhoseListHoldsIt" * doctest::timeout(10)) {
  const auto client = poolmap::generate_curve_keypair();
  const auto worker = poolmap::generate_curve_keypair();
  const auto stranger = poolmap::generate_curve_keypair();
  KeyRing keys;
  keys.clients[client.public_key] = "alice";
  keys.workers[worker.public_key] = "node1";

  const auto accepted = decide_zap(curve_request(poolmap::detail::kClientDomain, client.public_key), keys);
  CHECK(accepted.status_code == "200");
  CHECK(accepted.request_id == "7");
  CHECK(accepted.user_id == "alice");
  CHECK(decide_zap(curve_request(poolmap::detail::kWorkerDomain, worker.public_key), keys).user_id == "node1");

  // A client key cannot register as a worker, a worker key cannot submit, a stranger gets nowhere.
  CHECK(decide_zap(curve_request(poolmap::detail::kWorkerDomain, client.public_key), keys).status_code == "400");
  CHECK(decide_zap(curve_request(poolmap::detail::kClientDomain, worker.public_key), keys).status_code == "400");
  CHECK(decide_zap(curve_request(poolmap::detail::kClientDomain, stranger.public_key), keys).status_code == "400");
  CHECK(decide_zap(curve_request("other-domain", client.public_key), keys).status_code == "400");
  CHECK(decide_zap(curve_request(poolmap::detail::kClientDomain, client.public_key), keys).user_id == "alice");
  // The peer link of a pair admits the peer broker's key only, and that key nothing else.
  const auto peer = poolmap::generate_curve_keypair();
  keys.peers[peer.public_key] = "peer broker";
  CHECK(decide_zap(curve_request(poolmap::detail::kPeerDomain, peer.public_key), keys).user_id == "peer broker");
  CHECK(decide_zap(curve_request(poolmap::detail::kPeerDomain, client.public_key), keys).status_code == "400");
  CHECK(decide_zap(curve_request(poolmap::detail::kPeerDomain, worker.public_key), keys).status_code == "400");
  CHECK(decide_zap(curve_request(poolmap::detail::kClientDomain, peer.public_key), keys).status_code == "400");
  CHECK(decide_zap(curve_request(poolmap::detail::kWorkerDomain, peer.public_key), keys).status_code == "400");
}

TEST_CASE("Security.Zap.OtherMechanismsAndMalformedRequestsAreRefused" * doctest::timeout(10)) {
  const auto client = poolmap::generate_curve_keypair();
  KeyRing keys;
  keys.clients[client.public_key] = "alice";
  const std::string domain(poolmap::detail::kClientDomain);
  CHECK(decide_zap({"1.0", "1", domain, "127.0.0.1", "", "NULL"}, keys).status_code == "400");
  CHECK(decide_zap({"1.0", "1", domain, "127.0.0.1", "", "PLAIN", "alice", "secret"}, keys).status_code == "400");
  CHECK(decide_zap({"1.0", "1", domain, "127.0.0.1", "", "CURVE", "short"}, keys).status_code == "400");
  CHECK(decide_zap({"2.0", "1", domain, "127.0.0.1", "", "CURVE", poolmap::curve_key_bytes(client.public_key)}, keys)
            .status_code == "500");
  CHECK(decide_zap({"1.0"}, keys).status_code == "500");
  CHECK(decide_zap({}, keys).status_code == "500");
  // An empty allow-list lets nobody in.
  CHECK(decide_zap(curve_request(domain, client.public_key), KeyRing{}).status_code == "400");
}

TEST_CASE("Security.Zap.AWorkerPasswordAdmitsOnlyPlainWithThatPassword" * doctest::timeout(10)) {
  KeyRing keys;
  keys.worker_password = "0123456789abcdef";
  const std::string workers(poolmap::detail::kWorkerDomain);
  auto plain = [&](const std::string& domain, const std::string& password) {
    return decide_zap({"1.0", "3", domain, "127.0.0.1", "", "PLAIN", "poolmap-worker", password}, keys);
  };
  const auto accepted = plain(workers, "0123456789abcdef");
  CHECK(accepted.status_code == "200");
  CHECK(accepted.request_id == "3");
  CHECK(accepted.user_id.empty());
  CHECK(plain(workers, "0123456789abcdeX").status_code == "400");  // the last byte differs
  CHECK(plain(workers, "0123456789abcde").status_code == "400");   // a prefix
  CHECK(plain(workers, "0123456789abcdef0").status_code == "400");
  CHECK(plain(workers, "").status_code == "400");
  CHECK(decide_zap({"1.0", "3", workers, "127.0.0.1", "", "NULL"}, keys).status_code == "400");
  CHECK(decide_zap({"1.0", "3", workers, "127.0.0.1", "", "PLAIN", "poolmap-worker"}, keys).status_code == "400");
  // The password is the worker socket's only: nothing else gets in with it.
  CHECK(plain(std::string(poolmap::detail::kClientDomain), "0123456789abcdef").status_code == "400");
  CHECK(plain("other-domain", "0123456789abcdef").status_code == "400");
}

TEST_CASE("Security.Endpoints.OnlyLoopbackCountsAsLoopback" * doctest::timeout(10)) {
  for (const char* endpoint : {"tcp://127.0.0.1:5555", "tcp://127.0.0.1:*", "tcp://127.1.2.3:0", "tcp://[::1]:5555",
                               "tcp://localhost:5555", "ipc:///tmp/poolmap.sock", "inproc://poolmap-pool-0"}) {
    CAPTURE(endpoint);
    CHECK(is_loopback_endpoint(endpoint));
  }
  for (const char* endpoint : {"tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://[::]:5555", "tcp://10.0.0.1:5555",
                               "tcp://eth0:5555", "tcp://head-node:5555", "tcp://128.0.0.1:5555", "tcp://127.0.0.1",
                               "tcp://127.0.0.1;10.0.0.1:5555", "tcp://[::ffff:127.0.0.1]:5555", "udp://127.0.0.1:1",
                               "ws://127.0.0.1:80", ""}) {
    CAPTURE(endpoint);
    CHECK_FALSE(is_loopback_endpoint(endpoint));
  }
}

TEST_CASE("Security.Keys.KeygenFilesRoundTrip" * doctest::timeout(10)) {
  TempDir dir;
  const auto keys = poolmap::generate_curve_keypair();
  CHECK(keys.public_key.size() == 40);
  CHECK(keys.secret_key.size() == 40);
  CHECK(keys.public_key != keys.secret_key);
  poolmap::write_curve_keypair(dir.path / "alice", keys);

  struct stat info {};
  REQUIRE(::stat((dir.path / "alice.key").c_str(), &info) == 0);
  CHECK((info.st_mode & 0777) == 0600);
  const auto read_back = poolmap::read_curve_secret_file(dir.path / "alice.key");
  CHECK(read_back.secret_key == keys.secret_key);
  CHECK(read_back.public_key == keys.public_key);  // derived from the secret key
  CHECK(poolmap::read_curve_public_file(dir.path / "alice.pub") == keys.public_key);

  // Never replaced: a second keygen to the same path is refused and the first keys stay.
  CHECK_THROWS_AS(poolmap::write_curve_keypair(dir.path / "alice", poolmap::generate_curve_keypair()), poolmap::Error);
  CHECK(poolmap::read_curve_public_file(dir.path / "alice.pub") == keys.public_key);

  // The directory's *.pub files, named by their stem; secret keys and other files are ignored.
  poolmap::write_curve_keypair(dir.path / "bob", poolmap::generate_curve_keypair());
  std::ofstream(dir.path / "README") << "not a key\n";
  const auto listed = poolmap::read_curve_public_dir(dir.path);
  CHECK(listed.size() == 2);
  CHECK(listed.at(keys.public_key) == "alice");
}

TEST_CASE("Security.Keys.BadKeyFilesAreClearErrors" * doctest::timeout(10)) {
  TempDir dir;
  poolmap::write_curve_keypair(dir.path / "alice", poolmap::generate_curve_keypair());
  auto message_of = [](auto&& call) -> std::string {
    try {
      call();
    } catch (const poolmap::Error& e) {
      CHECK(e.code() == poolmap::ErrorCode::kInvalidArgument);
      return e.what();
    }
    return "no error";
  };
  // A secret key others may read is refused, as ssh does.
  REQUIRE(::chmod((dir.path / "alice.key").c_str(), 0644) == 0);
  CHECK(message_of([&] { poolmap::read_curve_secret_file(dir.path / "alice.key"); }).find("chmod 600") !=
        std::string::npos);
  // Missing, not a key, two keys.
  CHECK(message_of([&] { poolmap::read_curve_public_file(dir.path / "missing.pub"); }).find("missing.pub") !=
        std::string::npos);
  std::ofstream(dir.path / "garbage.pub") << "# comment\nnot-a-key\n";
  CHECK(message_of([&] { poolmap::read_curve_public_file(dir.path / "garbage.pub"); }).find("does not hold a CURVE key") !=
        std::string::npos);
  const auto key = poolmap::read_curve_public_file(dir.path / "alice.pub");
  std::ofstream(dir.path / "two.pub") << key << "\n" << key << "\n";
  CHECK(message_of([&] { poolmap::read_curve_public_file(dir.path / "two.pub"); }).find("more than one") !=
        std::string::npos);
  // A directory with a bad *.pub file is refused as a whole, not half-read.
  CHECK(message_of([&] { poolmap::read_curve_public_dir(dir.path); }).find("garbage.pub") != std::string::npos);
  CHECK(message_of([&] { poolmap::read_curve_public_dir(dir.path / "nowhere"); }).find("nowhere") != std::string::npos);
}
