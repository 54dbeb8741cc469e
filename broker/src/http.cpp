#include "http.hpp"

#include <civetweb.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "json.hpp"
#include "process_info.hpp"

namespace poolmap::detail {

// The page's files (broker/web/, compiled in by cmake/embed.cmake).
extern const std::string_view kDashboardHtml;
extern const std::string_view kDashboardJs;
extern const std::string_view kDashboardCss;

namespace {

std::int64_t ticks(StatusBoard::Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

void field(std::string& out, std::string_view name, std::uint64_t value) {
  out += ",\"";
  out += name;
  out += "\":";
  out += std::to_string(value);
}

void field(std::string& out, std::string_view name, std::string_view value) {
  out += ",\"";
  out += name;
  out += "\":";
  append_json_string(out, value);
}

// The headers every answer carries: nothing cached, nothing sniffed or framed, and only this
// page's own files may run or be fetched by it.
constexpr const char* kCommonHeaders =
    "Cache-Control: no-store\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "X-Frame-Options: DENY\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n";

int respond(mg_connection* connection, int code, const char* reason, const char* type, std::string_view body,
            const char* extra_headers = "") {
  mg_printf(connection, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n", code, reason, type,
            body.size(), kCommonHeaders, extra_headers);
  if (body.size() > 0) mg_write(connection, body.data(), body.size());
  return code;
}

}  // namespace

std::shared_ptr<const std::string> StatusBoard::latest() {
  const auto now = Clock::now();
  asked_ns_.store(ticks(now), std::memory_order_relaxed);
  std::unique_lock lock(mutex_);
  if (snapshot_ && now - built_ <= kFreshEnough) return snapshot_;
  lock.unlock();
  wake_loop_();
  lock.lock();
  published_.wait_for(lock, kWaitAtMost, [&] { return snapshot_ && built_ >= now - kEvery; });
  return snapshot_;
}

bool StatusBoard::wanted(Clock::time_point now) const {
  const std::int64_t asked = asked_ns_.load(std::memory_order_relaxed);
  if (asked == 0 || ticks(now) - asked > std::chrono::nanoseconds(kLookingFor).count()) return false;
  std::lock_guard lock(mutex_);
  return !snapshot_ || now - built_ >= kEvery;
}

void StatusBoard::publish(std::string json, Clock::time_point now) {
  auto snapshot = std::make_shared<const std::string>(std::move(json));
  {
    std::lock_guard lock(mutex_);
    snapshot_ = std::move(snapshot);
    built_ = now;
  }
  published_.notify_all();
}

std::string status_json(const proto::StatusReply& status, const std::string& broker,
                        std::chrono::milliseconds heartbeat_interval, std::chrono::milliseconds uptime) {
  std::string out = "{\"version\":1";
  field(out, "broker", broker);
  field(out, "role", status.role);
  field(out, "epoch", status.epoch);
  if (status.peer.empty()) {
    out += ",\"peer\":null";
  } else {
    field(out, "peer", status.peer);
  }
  field(out, "peer_silent_ms", status.peer_silent_ms);
  field(out, "heartbeat_ms", static_cast<std::uint64_t>(heartbeat_interval.count()));
  field(out, "uptime_ms", static_cast<std::uint64_t>(std::max<std::int64_t>(0, uptime.count())));
  out += ",\"workers\":[";
  const std::size_t shown = std::min(status.workers.size(), kMaxWorkersShown);
  for (std::size_t i = 0; i < shown; ++i) {
    const proto::WorkerInfo& worker = status.workers[i];
    out += i == 0 ? "{" : ",{";
    out += "\"host\":";
    append_json_string(out, worker.host);
    field(out, "pid", worker.pid);
    field(out, "id", short_id(worker.instance));
    field(out, "supervisor", short_id(worker.supervisor));
    field(out, "chunks_in_flight", worker.in_flight);
    field(out, "chunks_done", worker.chunks_done);
    field(out, "chunks_failed", worker.chunks_failed);
    field(out, "last_seen_ms", worker.last_seen_ms);
    field(out, "credit", worker.credit);
    field(out, "running_task", worker.running_task);
    field(out, "running_job", worker.running_job);
    field(out, "running_first_index", worker.running_first_index);
    field(out, "running_items", worker.running_items);
    field(out, "running_ms", worker.running_ms);
    out += ",\"tasks\":[";
    for (std::size_t t = 0; t < worker.tasks.size(); ++t) {
      out += t == 0 ? "{\"name\":" : ",{\"name\":";
      append_json_string(out, worker.tasks[t].name);
      field(out, "signature", worker.tasks[t].signature);
      out += '}';
    }
    out += "]}";
  }
  out += ']';
  field(out, "workers_omitted", status.workers.size() - shown);
  field(out, "clients", status.clients);
  field(out, "chunks_queued", status.chunks_queued);
  field(out, "chunks_in_flight", status.chunks_in_flight);
  field(out, "chunks_done", status.chunks_done);
  field(out, "chunks_failed", status.chunks_failed);
  field(out, "chunks_redispatched", status.chunks_redispatched);
  field(out, "bad_messages", status.bad_messages);
  out += ",\"jobs\":[";
  for (std::size_t i = 0; i < status.jobs.size(); ++i) {
    const proto::JobInfo& job = status.jobs[i];
    out += i == 0 ? "{" : ",{";
    out += "\"client_host\":";
    append_json_string(out, job.client_host);
    field(out, "client_pid", job.client_pid);
    field(out, "job", job.job);
    field(out, "task", job.task);
    field(out, "items_done", job.items_done);
    field(out, "items_total", job.items_total);
    field(out, "chunks_queued", job.chunks_queued);
    field(out, "chunks_in_flight", job.chunks_in_flight);
    field(out, "age_ms", job.age_ms);
    out += job.stream != 0 ? ",\"stream\":true" : ",\"stream\":false";
    field(out, "items_failed", job.items_failed);
    field(out, "waiting", job.waiting);
    out += '}';
  }
  out += ']';
  field(out, "jobs_omitted", status.jobs_omitted);
  out += ",\"events\":[";
  for (std::size_t i = 0; i < status.events.size() && i < proto::kMaxStatusEvents; ++i) {
    const proto::EventInfo& event = status.events[i];
    out += i == 0 ? "{" : ",{";
    out += event.kind == proto::kEventFailed ? "\"kind\":\"failed\"" : "\"kind\":\"redispatched\"";
    field(out, "age_ms", event.age_ms);
    field(out, "task", event.task);
    field(out, "client_host", event.client_host);
    field(out, "client_pid", event.client_pid);
    field(out, "job", event.job);
    field(out, "item", event.item);
    field(out, "items", event.items);
    field(out, "attempt", event.attempt);
    field(out, "error", event.error);
    field(out, "message", event.message);
    field(out, "worker_host", event.worker_host);
    field(out, "worker_pid", event.worker_pid);
    out += '}';
  }
  out += "]}";
  return out;
}

bool same_token(const std::string& token, const std::string& expected) {
  // Every byte of the longer is looked at, whatever differs where.
  const std::size_t length = std::max(token.size(), expected.size());
  unsigned char differ = token.size() == expected.size() ? 0 : 1;
  for (std::size_t i = 0; i < length; ++i) {
    const auto a = static_cast<unsigned char>(i < token.size() ? token[i] : 0);
    const auto b = static_cast<unsigned char>(i < expected.size() ? expected[i] : 0);
    differ = static_cast<unsigned char>(differ | (a ^ b));
  }
  return differ == 0 && !expected.empty();
}

HttpServer::HttpServer(Options options, StatusBoard& board, std::function<std::string()> metrics_text)
    : options_(std::move(options)), board_(board), metrics_text_(std::move(metrics_text)) {
  mg_init_library(0);
  const char* settings[] = {"listening_ports", options_.address.c_str(),
                            "num_threads", "4",
                            "request_timeout_ms", "10000",
                            "enable_keep_alive", "yes",
                            nullptr};
  mg_callbacks callbacks{};
  callbacks.log_message = [](const mg_connection*, const char*) { return 1; };  // said by the exception below
  context_ = mg_start(&callbacks, this, settings);
  if (context_ == nullptr) {
    mg_exit_library();
    throw std::runtime_error("cannot serve HTTP on '" + options_.address +
                             "' (expected HOST:PORT with an address of this host and a free port)");
  }
  mg_set_request_handler(context_, "/", &HttpServer::handle, this);
  std::vector<mg_server_port> ports(4);
  const int count = mg_get_server_ports(context_, static_cast<int>(ports.size()), ports.data());
  const auto colon = options_.address.rfind(':');
  url_ = "http://" + options_.address.substr(0, colon) + ":" +
         (count > 0 ? std::to_string(ports[0].port) : options_.address.substr(colon + 1)) + "/";
}

HttpServer::~HttpServer() {
  mg_stop(context_);  // waits for the requests being served
  mg_exit_library();
}

int HttpServer::handle(mg_connection* connection, void* self) {
  return static_cast<HttpServer*>(self)->serve(connection);
}

int HttpServer::serve(mg_connection* connection) {
  const mg_request_info* request = mg_get_request_info(connection);
  const std::string_view method = request->request_method != nullptr ? request->request_method : "";
  const std::string_view path = request->local_uri != nullptr ? request->local_uri : "";
  if (method != "GET") {
    return respond(connection, 405, "Method Not Allowed", "text/plain; charset=utf-8", "only GET\n", "Allow: GET\r\n");
  }
  if (path == "/" || path == "/index.html") return respond(connection, 200, "OK", "text/html; charset=utf-8", kDashboardHtml);
  if (path == "/dashboard.js") return respond(connection, 200, "OK", "text/javascript; charset=utf-8", kDashboardJs);
  if (path == "/dashboard.css") return respond(connection, 200, "OK", "text/css; charset=utf-8", kDashboardCss);
  if (path != "/api/v1/status" && path != "/metrics") {
    return respond(connection, 404, "Not Found", "text/plain; charset=utf-8", "no such page\n");
  }
  if (!options_.token.empty()) {
    const char* header = mg_get_header(connection, "Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    const std::string given = header != nullptr && std::string_view(header).starts_with(kBearer)
                                  ? std::string(header + kBearer.size())
                                  : std::string();
    if (!same_token(given, options_.token)) {
      return respond(connection, 401, "Unauthorized", "application/json",
                     "{\"error\":\"this broker's dashboard needs its token (Authorization: Bearer TOKEN)\"}\n",
                     "WWW-Authenticate: Bearer realm=\"poolmap\"\r\n");
    }
  }
  if (path == "/metrics") {
    return respond(connection, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", metrics_text_());
  }
  const auto snapshot = board_.latest();
  if (!snapshot) {
    return respond(connection, 503, "Service Unavailable", "application/json",
                   "{\"error\":\"the broker made no status snapshot in time; try again\"}\n", "Retry-After: 1\r\n");
  }
  return respond(connection, 200, "OK", "application/json", *snapshot);
}

}  // namespace poolmap::detail
