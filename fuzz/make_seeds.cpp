// Writes the seed corpus of every fuzz target: small valid inputs made with the real encoders,
// in the layouts the targets read (see the comment at the top of each *_fuzz.cpp).
//
//   build-fuzz/fuzz/poolmap_fuzz_seeds fuzz/corpus
//
// writes fuzz/corpus/<target>/<name> for the targets protocol, task_args, results and zap. The seeds
// are committed; run this again after changing a message struct, a fuzz task or an input layout.
// The files named found_* there are not written here: they are inputs that once made a target
// fail (each with a unit test in tests/unit/), kept so that every replay tries them again.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fuzz_support.hpp"
#include "fuzz_tasks.hpp"
#include "poolmap/protocol.hpp"

namespace proto = poolmap::proto;
namespace fz = poolmap::fuzz;
using poolmap::Bytes;
using poolmap::ErrorCode;

namespace {

std::filesystem::path root;

void save(const char* target, const std::string& name, const fz::FuzzInputWriter& input) {
  const auto dir = root / target;
  std::filesystem::create_directories(dir);
  input.save((dir / name).string());
}

// ---- protocol ----

void message(const std::string& name, proto::Command command, const Bytes& header) {
  const auto signature = proto::signature_frame(command);
  fz::FuzzInputWriter input;
  input.u8(static_cast<std::uint8_t>(signature.size())).bytes(signature).bytes(header);
  save("protocol", name, input);
}
template <class Header>
void message(const std::string& name, proto::Command command, const Header& header) {
  message(name, command, proto::encode(header));
}

void protocol_seeds() {
  using C = proto::Command;
  const proto::Outcome failed{.code = ErrorCode::kTaskFailed,
                              .failed_offset = 3,
                              .error_type = "std::invalid_argument",
                              .message = "bad",
                              .worker_host = "node1",
                              .worker_pid = 4242,
                              .compute_us = 1500};
  const std::vector<proto::TaskInfo> tasks = {{"square", "i64(i64)"}, {"scale", "vector<f64>(f64,vector<f64>)"}};
  message("hello", C::kHello, proto::Hello{.client_host = "laptop", .client_pid = 77});
  message("hello_pair", C::kHello,
          proto::Hello{.client_host = "laptop", .client_pid = 77, .session = 0x5e5510, .epoch = 3,
                       .flags = proto::kObserver});
  message("peer_state", C::kPeerState,
          proto::PeerState{.role = 1, .state = 1, .epoch = 4, .heartbeat_ms = 1000, .handing_over = 0});
  message("passive", C::kPassive, Bytes{});
  {  // a RESULT from a broker of a pair: a 12-byte signature with its epoch
    const auto signature = proto::signature_frame(C::kResult, 7);
    fz::FuzzInputWriter input;
    input.u8(static_cast<std::uint8_t>(signature.size())).bytes(signature).bytes(proto::encode(proto::ClientResult{}));
    save("protocol", "result_epoch", input);
  }
  message("submit", C::kSubmit,
          proto::Submit{.job = 1,
                        .chunk = 2,
                        .first_index = 200,
                        .count = 100,
                        .task = "square",
                        .signature = "i64(i64)",
                        .deadline_ms = 500,
                        .context_hash = 0x1234567890abcdefULL,
                        .flags = proto::kNotifyStarted});
  message("cancel", C::kCancel, proto::Cancel{.job = 9});
  message("reject", C::kReject, proto::Reject{.job = 9, .chunk = 2, .attempt = 1, .reason = "3 bytes left"});
  message("abandon", C::kAbandon, proto::Abandon{.ticket = 77, .grace_ms = 1000});
  message("context", C::kContext, proto::ContextHeader{.hash = 0xfeedfacecafebeefULL});
  message("welcome", C::kWelcome, proto::Welcome{.workers = 8, .heartbeat_interval_ms = 1000});
  message("result", C::kResult,
          proto::ClientResult{.job = 1, .chunk = 2, .attempt = 1, .outcome = failed, .workers = 8});
  message("result_ok", C::kResult, proto::ClientResult{.job = 3, .chunk = 0, .attempt = 2, .outcome = {}, .workers = 1});
  proto::StatusReply status{.workers = {{.host = "node1",
                                         .pid = 10,
                                         .in_flight = 2,
                                         .chunks_done = 99,
                                         .instance = 0xabcdef0123456789ULL,
                                         .supervisor = 5,
                                         .tasks = tasks},
                                        {.host = "node2", .pid = 11, .tasks = {}, .credit = 257}},
                            .clients = 2,
                            .chunks_queued = 5,
                            .chunks_in_flight = 3,
                            .chunks_done = 1000,
                            .chunks_failed = 1,
                            .chunks_redispatched = 2,
                            .bad_messages = 4,
                            .context_bytes_received = 4096,
                            .context_bytes_sent = 8192,
                            .context_bytes_held = 4096,
                            .jobs = {{.client_host = "laptop",
                                      .client_pid = 42,
                                      .job = 3,
                                      .task = "square",
                                      .items_total = 1000,
                                      .items_done = 250,
                                      .chunks_queued = 4,
                                      .chunks_in_flight = 2,
                                      .age_ms = 1500}}};
  message("status_reply", C::kStatusReply, status);
  message("error", C::kError, proto::ErrorReply{.code = ErrorCode::kUnknownCommand, .message = "command 0x7f"});
  message("started", C::kStarted, proto::Started{.job = 4, .chunk = 5});
  message("chunk_progress", C::kChunkProgress, proto::ChunkProgress{.job = 4, .chunk = 5, .items_done = 17});
  message("worker_progress", C::kWorkerProgress, proto::WorkerProgress{.ticket = 77, .items_done = 17});
  message("credit", C::kCredit, proto::Credit{.credit = 257});
  message("ready", C::kReady,
          proto::Ready{.host = "node1",
                       .pid = 10,
                       .credit = 3,
                       .instance = 0x1111222233334444ULL,
                       .supervisor = 0x5555666677778888ULL,
                       .tasks = tasks,
                       .generation = 2});
  message("ready_held", C::kReady,
          proto::Ready{.host = "node1",
                       .pid = 10,
                       .credit = 3,
                       .instance = 0x1111222233334444ULL,
                       .supervisor = 0,
                       .tasks = tasks,
                       .generation = 3,
                       .epoch = 2,
                       .held = {{77, {0x5e5510, 1, 2}, true}, {78, {0x5e5510, 1, 3}, false}}});
  message("worker_result", C::kWorkerResult,
          proto::WorkerResult{.ticket = 77, .outcome = failed, .instance = 0x1111222233334444ULL, .count = 0});
  message("worker_result_ok", C::kWorkerResult,
          proto::WorkerResult{.ticket = 78, .outcome = {}, .instance = 1, .count = 100, .origin = {0x5e5510, 1, 2}});
  message("worker_exited", C::kWorkerExited,
          proto::WorkerExited{.host = "node1",
                              .pid = 10,
                              .instance = 0x1111222233334444ULL,
                              .supervisor = 0x5555666677778888ULL,
                              .crashed = true,
                              .cause = "signal 11 (Segmentation fault)",
                              .running_ticket = 77});
  message("task", C::kTask,
          proto::TaskHeader{.ticket = 77,
                            .first_index = 200,
                            .count = 100,
                            .task = "square",
                            .signature = "i64(i64)",
                            .deadline_ms = 0,
                            .context_hash = 0xfeedfacecafebeefULL});
  message("status_request", C::kStatusRequest, Bytes{});
  message("heartbeat", C::kHeartbeat, Bytes{});
  message("disconnect", C::kDisconnect, Bytes{});
  // Command bytes no peer sends: the target decodes the nested structs on their own for these.
  message("outcome", static_cast<C>(0x60), failed);
  message("task_info", static_cast<C>(0x61), tasks[0]);
  message("worker_info", static_cast<C>(0x62), status.workers[0]);
}

// ---- task_args ----

// A chunk of `items` (each a tuple of the per-item arguments), with an optional context.
template <class... Items>
void chunk(const std::string& name, std::string_view task, const Bytes* context, const Items&... items) {
  std::size_t index = 0;
  while (fz::kTaskNames[index] != task) ++index;
  Bytes payload;
  (std::apply([&payload](const auto&... args) { fz::encode_into(payload, args...); }, items), ...);
  fz::FuzzInputWriter input;
  input.u8(static_cast<std::uint8_t>(index)).u8(context != nullptr ? 1 : 0).u8(sizeof...(Items));
  if (context != nullptr) input.u16(static_cast<std::uint16_t>(context->size())).bytes(*context);
  input.bytes(payload);
  save("task_args", name, input);
}

template <class T>
Bytes encoded(const T& value) {
  Bytes out;
  fz::encode_into(out, value);
  return out;
}

void task_args_seeds() {
  using std::make_tuple;
  chunk("square", fz::square.name(), nullptr, make_tuple(std::int64_t{3}), make_tuple(std::int64_t{-7}),
        make_tuple(std::int64_t{1} << 40));
  chunk("halve", fz::halve.name(), nullptr, make_tuple(1.5), make_tuple(-0.0));
  chunk("negate", fz::negate.name(), nullptr, make_tuple(true), make_tuple(false));
  chunk("upper", fz::upper.name(), nullptr, make_tuple(std::string("hello")), make_tuple(std::string()));
  chunk("upper_throws", fz::upper.name(), nullptr, make_tuple(std::string("ok")), make_tuple(std::string("boom")));
  chunk("sum", fz::sum.name(), nullptr, make_tuple(std::vector<double>{1, 2, 3}), make_tuple(std::vector<double>{}));
  chunk("reverse", fz::reverse.name(), nullptr, make_tuple(std::vector<std::string>{"a", "bc", ""}));
  chunk("describe", fz::describe.name(), nullptr, make_tuple(std::int32_t{-5}, std::string("x"), true),
        make_tuple(std::int32_t{6}, std::string("yz"), false));
  chunk("weigh", fz::weigh.name(), nullptr,
        make_tuple(fz::Record{7, "rec", {1, 2, 3}, {-1, 0, 1}}));
  chunk("show", fz::show.name(), nullptr,
        make_tuple(std::variant<std::int64_t, std::string, double>{std::int64_t{12}}),
        make_tuple(std::variant<std::int64_t, std::string, double>{std::string("s")}),
        make_tuple(std::variant<std::int64_t, std::string, double>{2.5}));
  chunk("pick", fz::pick.name(), nullptr,
        make_tuple(std::optional<std::pair<std::string, std::int64_t>>{{"a", 1}}),
        make_tuple(std::optional<std::pair<std::string, std::int64_t>>{}));
  const Bytes table = encoded(std::vector<double>{0.5, 1.5, 2.5});
  chunk("lookup_context", fz::lookup.name(), &table, make_tuple(std::uint32_t{0}), make_tuple(std::uint32_t{2}));
  chunk("lookup_context_throws", fz::lookup.name(), &table, make_tuple(std::uint32_t{3}));
  chunk("lookup_starmap", fz::lookup.name(), nullptr, make_tuple(std::vector<double>{4.0}, std::uint32_t{0}));
  const Bytes pre = encoded(std::string("pre-"));
  chunk("prefix_context", fz::prefix.name(), &pre, make_tuple(std::string("a")), make_tuple(std::string("bc")));
  const Bytes prices = encoded(std::map<std::string, std::int64_t>{{"apple", 3}, {"pear", 5}});
  chunk("price_context", fz::price.name(), &prices, make_tuple(std::string("pear")), make_tuple(std::string("apple")));
  chunk("price_starmap", fz::price.name(), nullptr,
        make_tuple(std::map<std::string, std::int64_t>{{"fig", 9}}, std::string("fig")));
}

// ---- results ----

// A job of chunks, each a vector of results of type R.
template <class R>
void job(const std::string& name, const std::vector<std::vector<R>>& chunks) {
  using Types = fz::ResultTypes;
  const std::size_t type = [] {
    std::size_t found = 0;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((std::is_same_v<std::tuple_element_t<I, Types>, R> ? (found = I, 0) : 0), ...);
    }(std::make_index_sequence<std::tuple_size_v<Types>>{});
    return found;
  }();
  fz::FuzzInputWriter input;
  input.u8(static_cast<std::uint8_t>(type)).u8(static_cast<std::uint8_t>(chunks.size() - 1)).u8(0);
  for (std::size_t c = 0; c < chunks.size(); ++c) {
    Bytes bytes;
    for (const R& value : chunks[c]) fz::encode_into(bytes, value);
    input.u8(static_cast<std::uint8_t>(chunks[c].size()));
    if (c + 1 < chunks.size()) input.u16(static_cast<std::uint16_t>(bytes.size()));
    input.bytes(bytes);
  }
  save("results", name, input);
}

void results_seeds() {
  job<std::int64_t>("i64", {{1, 4, 9}, {16}});
  job<double>("f64", {{0.5}, {-1.25, 1e300}});
  job<bool>("bool", {{true, false}});
  job<std::string>("string", {{"a", ""}, {"xyz"}});
  job<std::vector<double>>("vector_f64", {{{1.0, 2.0}, {}}});
  job<std::vector<std::string>>("vector_string", {{{"a", "b"}}, {{}}});
  job<std::tuple<std::int32_t, std::string, std::vector<std::uint8_t>>>("tuple", {{{-1, "t", {1, 2}}}});
  job<std::optional<std::string>>("optional", {{std::string("x"), std::nullopt}});
  job<std::variant<std::int64_t, std::string>>("variant", {{std::int64_t{5}, std::string("v")}});
  job<std::pair<std::string, std::vector<std::int64_t>>>("pair", {{{"p", {1, 2, 3}}}});
  job<std::map<std::string, std::int64_t>>("map", {{{{"a", 1}, {"b", 2}}}, {{}}});
  job<std::array<std::uint16_t, 4>>("array", {{{1, 2, 3, 4}}, {{5, 6, 7, 8}}});
  job<std::int64_t>("four_chunks", {{1}, {2, 3}, {}, {4}});
}

}  // namespace

// ---- zap ----

void zap_request(const std::string& name, const std::vector<std::string>& frames, const std::string& endpoint) {
  fz::FuzzInputWriter input;
  input.u8(static_cast<std::uint8_t>(frames.size()));
  for (const auto& frame : frames) {
    input.u8(static_cast<std::uint8_t>(frame.size()));
    input.bytes(std::as_bytes(std::span(frame.data(), frame.size())));
  }
  input.bytes(std::as_bytes(std::span(endpoint.data(), endpoint.size())));
  save("zap", name, input);
}

void zap_seeds() {
  const std::string zero_key(32, '\0');  // the target's client key, 40 '0's in Z85
  zap_request("client_curve", {"1.0", "1", "poolmap-clients", "127.0.0.1", "", "CURVE", zero_key},
              "tcp://127.0.0.1:5555");
  zap_request("worker_socket_client_key", {"1.0", "2", "poolmap-workers", "10.0.0.2", "", "CURVE", zero_key},
              "tcp://*:5556");
  zap_request("null", {"1.0", "3", "poolmap-clients", "127.0.0.1", "", "NULL"}, "ipc:///tmp/poolmap.sock");
  zap_request("plain", {"1.0", "4", "poolmap-workers", "127.0.0.1", "", "PLAIN", "admin", "secret"},
              "tcp://[::1]:5556");
  zap_request("plain_worker_password",
              {"1.0", "5", "poolmap-workers", "127.0.0.1", "", "PLAIN", "poolmap-worker", "0123456789abcdef"},
              "tcp://127.0.0.1:*");
  zap_request("plain_user_secret",
              {"1.0", "6", "poolmap-clients", "127.0.0.1", "", "PLAIN", "poolmap-user", "0123456789abcdef"},
              "tcp://127.0.0.1:5555");
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (e.g. fuzz/corpus)\n", argv[0]);
    return 2;
  }
  root = argv[1];
  protocol_seeds();
  task_args_seeds();
  results_seeds();
  zap_seeds();
  return 0;
}
