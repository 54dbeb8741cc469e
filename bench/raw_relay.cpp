// poolmap-bench-relay: the raw ZeroMQ ceiling for poolmap's pattern, printed as one JSON line.
//
//   poolmap-bench-relay [--items 50000] [--window 512] [--workers 2] [--credit 2] [--payload 8]
//   poolmap-bench-relay --latency [--items 2000] ...   (one request at a time: microseconds per call)
//   poolmap-bench-relay --bytes ...                     (MB/s sent + received: the payload workload)
//   poolmap-bench-relay --separate-processes ...        (client and workers as processes of their own)
//
// A client DEALER keeps `window` requests in flight to a relay (a ROUTER for clients and a ROUTER
// for workers, one thread, like poolmap-broker); the relay hands each request to a worker DEALER
// with credit (least recently served first, `credit` requests each, like poolmap's prefetch) and
// the reply back to the client. Each request is poolmap's three frames (4-byte signature, a
// 48-byte header, `payload` bytes); each worker answers at once with the same sizes. All over TCP
// on 127.0.0.1, each role with its own ZeroMQ context (as separate processes would have). Nothing
// is decoded or checked beyond counting: this is what the transport allows, the figure poolmap's
// fine-grained rate is read against.
//
// --separate-processes runs the client and each worker as a forked process of its own, as
// poolmap's remote mode runs them (a switch between threads of two processes also switches the
// address space, which costs more than one within a process); by default they are threads of this
// one process. The JSON line names the first "raw-zmq-relay-processes", the second "raw-zmq-relay".
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

namespace {

std::string bound_endpoint(zmq::socket_t& socket) {
  socket.bind("tcp://127.0.0.1:*");
  return socket.get(zmq::sockopt::last_endpoint);
}

void run_worker(const std::string& endpoint, int credit) {
  zmq::context_t context(1);
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  socket.set(zmq::sockopt::linger, 0);
  socket.connect(endpoint);
  for (int i = 0; i < credit; ++i) socket.send(zmq::str_buffer("READY"), zmq::send_flags::none);
  for (;;) {
    std::vector<zmq::message_t> frames;
    if (!zmq::recv_multipart(socket, std::back_inserter(frames))) return;
    if (frames.size() == 1) return;  // "STOP"
    // [client identity][signature][header][payload] back as they came.
    zmq::send_multipart(socket, frames);
  }
}

struct ClientOptions {
  std::size_t items = 50'000;
  std::size_t window = 512;
  int workers = 2;
  int credit = 2;
  std::size_t payload = 8;
  bool latency = false;
  bool bytes = false;               // print MB/s sent + received: the payload workload
  bool separate_processes = false;  // only named in the output
};

// Keeps `window` requests in flight until `items` replies came back; prints the JSON line.
void run_client(const std::string& client_endpoint, const ClientOptions& options) {
  const auto [items, window, workers, credit, payload, latency, bytes, separate_processes] = options;
  zmq::context_t context(1);
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  socket.set(zmq::sockopt::linger, 0);
  socket.connect(client_endpoint);
  const std::string signature(4, 'S');
  const std::string header(48, 'h');
  const std::string body(payload, 'p');
  std::size_t sent = 0;
  std::size_t received = 0;
  auto send_one = [&] {
    socket.send(zmq::buffer(signature), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(header), zmq::send_flags::sndmore);
    // The payload goes without a copy (a constant message: no free function), as poolmap's do.
    zmq::message_t payload_frame(const_cast<char*>(body.data()), body.size(), nullptr, nullptr);
    socket.send(payload_frame, zmq::send_flags::none);
    ++sent;
  };
  const auto start = std::chrono::steady_clock::now();  // poolmap's figures count the first sends too
  while (sent < std::min(window, items)) send_one();
  while (received < items) {
    std::vector<zmq::message_t> frames;
    (void)zmq::recv_multipart(socket, std::back_inserter(frames));
    ++received;
    if (sent < items) send_one();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double count = static_cast<double>(items);
  const char* workload = latency ? "latency" : bytes ? "payload" : "fine";
  const double value = latency ? seconds * 1e6 / count
                       : bytes ? 2.0 * count * static_cast<double>(payload) / seconds / 1e6
                               : count / seconds;
  const char* unit = latency ? "us/call" : bytes ? "MB/s" : "items/s";
  std::printf("{\"workload\": \"%s\", \"impl\": \"%s\", \"processes\": %d, \"value\": %.6g, "
              "\"unit\": \"%s\", \"seconds\": %.6g, \"window\": %zu, \"credit\": %d}\n",
              workload, separate_processes ? "raw-zmq-relay-processes" : "raw-zmq-relay", workers, value, unit, seconds,
              window, credit);
  std::fflush(stdout);
}

// A role forked before this process creates any ZeroMQ context: the child reads the two bound
// endpoints ("CLIENTS WORKERS\n") from a pipe, runs `role` with them and exits.
struct ForkedRole {
  pid_t pid = -1;
  int endpoints_pipe = -1;  // the parent's end, written once the relay has bound
};

template <typename Role>
ForkedRole fork_role(Role role) {
  int fds[2];
  if (::pipe(fds) != 0) {
    std::perror("poolmap-bench-relay: pipe");
    std::_Exit(1);
  }
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("poolmap-bench-relay: fork");
    std::_Exit(1);
  }
  if (pid == 0) {
    ::close(fds[1]);
    std::string text;
    char c = 0;
    while (::read(fds[0], &c, 1) == 1 && c != '\n') text.push_back(c);
    ::close(fds[0]);
    const auto space = text.find(' ');
    if (space == std::string::npos) std::_Exit(1);  // the parent died before it bound
    role(text.substr(0, space), text.substr(space + 1));
    std::fflush(stdout);
    std::_Exit(0);
  }
  ::close(fds[0]);
  return {pid, fds[1]};
}

void send_endpoints(const ForkedRole& child, const std::string& clients, const std::string& workers) {
  const std::string text = clients + " " + workers + "\n";
  if (::write(child.endpoints_pipe, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    std::perror("poolmap-bench-relay: write");
    std::_Exit(1);
  }
  ::close(child.endpoints_pipe);
}

bool reaped_within(pid_t pid, std::chrono::seconds limit) {
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < limit) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) && WEXITSTATUS(status) == 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"poolmap-bench-relay: raw ZeroMQ client -> relay -> worker and back"};
  std::size_t items = 50'000;
  std::size_t window = 512;
  int workers = 2;
  int credit = 2;
  std::size_t payload = 8;
  app.add_option("--items", items)->capture_default_str();
  app.add_option("--window", window)->capture_default_str();
  app.add_option("--workers", workers)->capture_default_str();
  app.add_option("--credit", credit)->capture_default_str();
  app.add_option("--payload", payload)->capture_default_str();
  bool latency = false;
  app.add_flag("--latency", latency,
               "one request in flight (window 1): print microseconds per call, the floor of poolmap's latency "
               "workload through a broker");
  bool bytes = false;
  app.add_flag("--bytes", bytes,
               "print MB/s sent + received instead of items/s, as poolmap's payload workload (with --items 64 "
               "--payload 4194304 --window 64)");
  bool separate_processes = false;
  app.add_flag("--separate-processes", separate_processes,
               "run the client and each worker as a process of its own, as poolmap's remote mode does");
  CLI11_PARSE(app, argc, argv);
  if (latency) window = 1;

  const ClientOptions client_options{items, window, workers, credit, payload, latency, bytes, separate_processes};
  ForkedRole client_process;
  std::vector<ForkedRole> worker_processes;
  if (separate_processes) {
    client_process = fork_role([&](const std::string& clients, const std::string&) { run_client(clients, client_options); });
    for (int i = 0; i < workers; ++i) {
      worker_processes.push_back(
          fork_role([&](const std::string&, const std::string& worker_endpoint) { run_worker(worker_endpoint, credit); }));
    }
  }

  zmq::context_t relay_context(1);
  zmq::socket_t front(relay_context, zmq::socket_type::router);
  zmq::socket_t back(relay_context, zmq::socket_type::router);
  front.set(zmq::sockopt::linger, 0);
  back.set(zmq::sockopt::linger, 0);
  // A reply the relay cannot hand on at once waits (or fails loudly) instead of being dropped.
  front.set(zmq::sockopt::router_mandatory, 1);
  back.set(zmq::sockopt::router_mandatory, 1);
  const std::string client_endpoint = bound_endpoint(front);
  const std::string worker_endpoint = bound_endpoint(back);
  std::vector<std::thread> worker_threads;
  std::atomic<bool> client_done{false};
  std::thread client;
  if (separate_processes) {
    send_endpoints(client_process, client_endpoint, worker_endpoint);
    for (const auto& worker : worker_processes) send_endpoints(worker, client_endpoint, worker_endpoint);
  } else {
    for (int i = 0; i < workers; ++i) worker_threads.emplace_back(run_worker, worker_endpoint, credit);
    client = std::thread([&] {
      run_client(client_endpoint, client_options);
      client_done = true;
    });
  }

  // The relay: credit per worker, least recently served first.
  std::deque<std::string> ready;
  std::deque<std::vector<zmq::message_t>> waiting;
  std::size_t answered = 0;
  std::vector<std::string> seen_workers;
  zmq::pollitem_t items_to_poll[] = {{front.handle(), 0, ZMQ_POLLIN, 0}, {back.handle(), 0, ZMQ_POLLIN, 0}};
  // A run that stalls (seen once in many: a reply that never came) ends with exit 1 after 10 s
  // without one, instead of hanging the suite; scripts/bench runs it again.
  auto last_answer = std::chrono::steady_clock::now();
  while (answered < items) {
    if (std::chrono::steady_clock::now() - last_answer > std::chrono::seconds(10)) {
      std::fprintf(stderr, "poolmap-bench-relay: no reply for 10 s after %zu of %zu (%zu waiting, %zu credits)\n",
                   answered, items, waiting.size(), ready.size());
      std::_Exit(1);
    }
    zmq::poll(items_to_poll, 2, std::chrono::milliseconds(100));
    if ((items_to_poll[1].revents & ZMQ_POLLIN) != 0) {
      for (;;) {
        std::vector<zmq::message_t> frames;
        if (!zmq::recv_multipart(back, std::back_inserter(frames), zmq::recv_flags::dontwait)) break;
        std::string worker = frames[0].to_string();
        if (frames.size() == 2) {  // READY: one unit of credit
          if (std::find(seen_workers.begin(), seen_workers.end(), worker) == seen_workers.end()) {
            seen_workers.push_back(worker);
          }
          ready.push_back(std::move(worker));
          continue;
        }
        // [worker][client][sig][header][payload] -> [client][sig][header][payload]
        frames.erase(frames.begin());
        zmq::send_multipart(front, frames);
        ++answered;
        last_answer = std::chrono::steady_clock::now();
        ready.push_back(std::move(worker));
      }
    }
    if ((items_to_poll[0].revents & ZMQ_POLLIN) != 0) {
      for (;;) {
        std::vector<zmq::message_t> frames;
        if (!zmq::recv_multipart(front, std::back_inserter(frames), zmq::recv_flags::dontwait)) break;
        waiting.push_back(std::move(frames));
      }
    }
    while (!ready.empty() && !waiting.empty()) {
      std::vector<zmq::message_t> out;
      out.emplace_back(ready.front().data(), ready.front().size());
      ready.pop_front();
      for (auto& frame : waiting.front()) out.push_back(std::move(frame));
      waiting.pop_front();
      zmq::send_multipart(back, out);
    }
  }
  // Every reply was handed on; the client thread may still wait for one it never got (seen once
  // in many runs, before the relay's sockets were ROUTER_MANDATORY): exit 1 after 10 s, as above.
  if (separate_processes) {
    if (!reaped_within(client_process.pid, std::chrono::seconds(10))) {
      std::fprintf(stderr, "poolmap-bench-relay: all %zu replies handed on, the client did not end within 10 s\n",
                   items);
      ::kill(client_process.pid, SIGKILL);
      for (const auto& worker : worker_processes) ::kill(worker.pid, SIGKILL);
      std::_Exit(1);
    }
  } else {
    const auto handed_on = std::chrono::steady_clock::now();
    while (!client_done.load() && std::chrono::steady_clock::now() - handed_on < std::chrono::seconds(10)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!client_done.load()) {
      std::fprintf(stderr, "poolmap-bench-relay: all %zu replies handed on, the client still waits after 10 s\n",
                   items);
      std::_Exit(1);
    }
    client.join();
  }
  for (const auto& worker : seen_workers) {
    std::vector<zmq::message_t> stop;
    stop.emplace_back(worker.data(), worker.size());
    stop.emplace_back("STOP", 4);
    zmq::send_multipart(back, stop);
  }
  for (auto& thread : worker_threads) thread.join();
  for (const auto& worker : worker_processes) ::waitpid(worker.pid, nullptr, 0);
  return 0;
}
