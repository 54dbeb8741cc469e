// poolmap-broker: the daemon between clients and workers.
//
//   poolmap-broker --curve-secret broker.key --client-keys clients/ --worker-keys workers/
//   poolmap-broker --clients tcp://127.0.0.1:5555 --workers tcp://127.0.0.1:5556   (no CURVE: loopback)
//
// With CURVE the endpoints default to every interface (tcp://*:5555, tcp://*:5556); without it to
// loopback, and binding anything else without CURVE needs --insecure; without CURVE clients and
// workers must also give this user's secret (--secret-file, POOLMAP_SECRET_FILE, by default
// ${XDG_CONFIG_HOME:-$HOME/.config}/poolmap/secret, made on first start). SIGHUP reloads the key
// directories.
// A pair of brokers (docs/OPERATIONS.md, "A standby broker"): --ha primary|backup, --ha-bind (where
// this one publishes its state), --ha-peer (the other's --ha-bind), with CURVE --ha-peer-key; SIGUSR1
// makes the active one hand the work over to its passive peer (failing back). --http HOST:PORT
// serves the live dashboard, /api/v1/status and /metrics (a non-loopback one needs --http-token-file).
// Runs in the foreground (--daemon: in the background, see daemon.hpp). Once both endpoints are
// bound it prints one line on stdout,
//   poolmap-broker ready clients=<endpoint> workers=<endpoint>[ ha=<endpoint>][ http=<url>]
// with wildcard ports resolved, so scripts and tests can bind port 0 (tcp://127.0.0.1:*) and read
// the real endpoints back. Logs go to stderr, or to --log-file (reopened on SIGHUP). SIGINT/SIGTERM
// stop it cleanly. Every flag can also be given as an environment variable, POOLMAP_BROKER_ and
// the flag's name in upper case with '_' for '-' (POOLMAP_BROKER_HEARTBEAT_MS=500), except
// --secret-file, whose POOLMAP_SECRET_FILE the workers and clients read too.
#include <unistd.h>

#include <iostream>
#include <optional>

#include <CLI/CLI.hpp>

#include "daemon.hpp"
#include "log.hpp"
#include "process_info.hpp"
#include "poolmap/broker.hpp"
#include "signals.hpp"

int main(int argc, char** argv) {
  poolmap::detail::keep_freed_memory();  // chunk after chunk of similar size: reuse the pages
  CLI::App app{"poolmap-broker: hands chunks of work from poolmap clients to poolmap workers"};
  app.set_version_flag("--version", std::string("poolmap-broker ") + POOLMAP_VERSION);
  poolmap::BrokerOptions options;
  int heartbeat_ms = 1000;
  std::string log_level = "info";
  auto* clients = app.add_option("--clients", options.client_endpoint, "endpoint clients connect to")
                      ->default_str("tcp://*:5555 with CURVE, tcp://127.0.0.1:5555 without");
  auto* workers = app.add_option("--workers", options.worker_endpoint, "endpoint workers connect to")
                      ->default_str("tcp://*:5556 with CURVE, tcp://127.0.0.1:5556 without");
  app.add_option("--curve-secret", options.curve_secret_file,
                 "this broker's CURVE secret key file (from `poolmap keygen`); turns CURVE on")
      ->check(CLI::ExistingFile);
  app.add_option("--client-keys", options.client_keys_dir, "directory of *.pub files: the clients allowed (CURVE)")
      ->check(CLI::ExistingDirectory);
  app.add_option("--worker-keys", options.worker_keys_dir, "directory of *.pub files: the workers allowed (CURVE)")
      ->check(CLI::ExistingDirectory);
  app.add_flag("--insecure", options.insecure,
               "without CURVE, allow binding endpoints other hosts can reach (anyone there can run tasks)");
  app.add_option("--secret-file", options.secret_file,
                 "without CURVE: the file of this user's secret that clients and workers must give (made if "
                 "missing; 'none': no secret)")
      ->default_str("${XDG_CONFIG_HOME:-$HOME/.config}/poolmap/secret")
      ->envname("POOLMAP_SECRET_FILE");
  app.add_option("--heartbeat-ms", heartbeat_ms, "heartbeat interval in milliseconds")
      ->default_val(1000)
      ->check(CLI::PositiveNumber);
  app.add_option("--liveness", options.heartbeat_liveness, "missed heartbeats before a peer counts as gone")
      ->default_val(3)
      ->check(CLI::PositiveNumber);
  app.add_option("--max-retries", options.max_retries,
                 "re-dispatches of a chunk after losing workers (silent, unreachable) before it fails as worker-lost")
      ->default_val(3)
      ->check(CLI::NonNegativeNumber);
  app.add_option("--poison-kills", options.poison_kills,
                 "crashed worker processes a chunk may have been running in before it fails as worker-lost")
      ->default_val(3)
      ->check(CLI::PositiveNumber);
  int drain_ms = 5000;
  app.add_option("--drain-ms", drain_ms, "on SIGTERM, how long to wait for chunks in flight")
      ->default_val(5000)
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-message-bytes", options.max_message_bytes,
                 "largest message accepted, in bytes; keep equal on clients and workers")
      ->default_val(64LL << 20)
      ->check(CLI::Range(std::int64_t{4096}, std::int64_t{1} << 40));
  app.add_option("--max-workers", options.max_workers, "most worker processes registered at once")
      ->default_val(10000)
      ->check(CLI::PositiveNumber);
  app.add_option("--max-clients", options.max_clients, "most clients connected at once")
      ->default_val(1000)
      ->check(CLI::PositiveNumber);
  app.add_option("--max-client-chunks", options.max_client_chunks,
                 "per-client quota: chunks queued or running (more wait in the client)")
      ->default_val(4096)
      ->check(CLI::PositiveNumber);
  app.add_option("--max-client-bytes", options.max_client_bytes,
                 "per-client quota: payload bytes of those chunks (a larger chunk fails)")
      ->default_val(1LL << 30)
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 50));
  app.add_option("--max-client-jobs", options.max_client_jobs, "per-client quota: jobs with a chunk queued or running")
      ->default_val(1024)
      ->check(CLI::PositiveNumber);
  app.add_option("--max-client-contexts", options.max_client_contexts, "per-client quota: broadcast contexts held")
      ->default_val(64)
      ->check(CLI::PositiveNumber);
  app.add_option("--max-client-context-bytes", options.max_client_context_bytes,
                 "per-client quota: bytes of those contexts (a larger context fails)")
      ->default_val(256LL << 20)
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 50));
  app.add_option("--max-ready-per-second", options.max_ready_per_second,
                 "worker registrations (READY) accepted per second from one address or key")
      ->default_val(1000)
      ->check(CLI::PositiveNumber);
  app.add_option("--metrics", options.metrics_address,
                 "serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9464 (port 0: a free one)");
  app.add_option("--http", options.http_address,
                 "serve the live dashboard at http://HOST:PORT/ (and /api/v1/status, /metrics), e.g. 127.0.0.1:8080 "
                 "(port 0: a free one); an address that is not loopback needs --http-token-file");
  app.add_option("--http-token-file", options.http_token_file,
                 "with --http: a file (not readable by others) holding the token every request for data must carry "
                 "(Authorization: Bearer TOKEN)")
      ->check(CLI::ExistingFile);
  app.add_option("--ha", options.ha_role,
                 "one of a pair of brokers: 'primary' or 'backup' (both start passive; one is active at a time)")
      ->check(CLI::IsMember({"primary", "backup"}));
  app.add_option("--ha-bind", options.ha_bind,
                 "with --ha: where this broker publishes its state to its peer, e.g. tcp://10.0.0.1:5557");
  app.add_option("--ha-peer", options.ha_peer, "with --ha: the other broker's --ha-bind endpoint");
  app.add_option("--ha-peer-key", options.ha_peer_key_file,
                 "with --ha and CURVE: the other broker's public key file (.pub)")
      ->check(CLI::ExistingFile);
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")->default_val("info");
  bool daemon = false;
  std::string pidfile;
  std::string log_file;
  app.add_flag("--daemon", daemon, "run in the background (needs --log-file); exits once the broker is ready");
  app.add_option("--pidfile", pidfile, "write the broker's pid to this file (removed at exit)");
  app.add_option("--log-file", log_file, "append the log to this file instead of stderr (reopened on SIGHUP)");
  poolmap::detail::name_environment_variables(app, "POOLMAP_BROKER_");  // POOLMAP_BROKER_HEARTBEAT_MS, ...
  CLI11_PARSE(app, argc, argv);
  if (daemon && log_file.empty()) {
    std::cerr << "poolmap-broker: --daemon needs --log-file (a daemon has no terminal to log to)\n";
    return 2;
  }
  const bool curve = !options.curve_secret_file.empty();
  if (clients->count() == 0) options.client_endpoint = curve ? "tcp://*:5555" : "tcp://127.0.0.1:5555";
  if (workers->count() == 0) options.worker_endpoint = curve ? "tcp://*:5556" : "tcp://127.0.0.1:5556";
  options.heartbeat_interval = std::chrono::milliseconds(heartbeat_ms);
  options.drain_timeout = std::chrono::milliseconds(drain_ms);

  if (!poolmap::detail::configure_program_logging(log_level, "broker")) {
    std::cerr << "poolmap-broker: unknown --log-level '" << log_level << "'\n";
    return 2;
  }
  // Forked before the log moves, so that the waiting command can still say why a daemon failed.
  std::optional<poolmap::detail::Daemon> background;
  if (daemon) background.emplace(poolmap::detail::Daemon::start());  // before any thread exists
  if (!log_file.empty()) {
    try {
      poolmap::detail::redirect_stderr(log_file);
    } catch (const std::exception& e) {
      std::cerr << "poolmap-broker: " << e.what() << '\n';
      return 1;
    }
  }
  poolmap::detail::SignalWaiter signals;
  auto log = poolmap::detail::logger("poolmap.broker");
  try {
    std::optional<poolmap::detail::PidFile> pid_file;
    if (!pidfile.empty()) pid_file.emplace(pidfile);
    poolmap::Broker broker(options);
    const std::string ready = "poolmap-broker ready clients=" + broker.client_endpoint() +
                              " workers=" + broker.worker_endpoint() +
                              (broker.ha_endpoint().empty() ? "" : " ha=" + broker.ha_endpoint()) +
                              (broker.http_url().empty() ? "" : " http=" + broker.http_url());
    if (!broker.metrics_url().empty()) log->info("metrics at {}", broker.metrics_url());
    if (!broker.http_url().empty()) log->info("dashboard at {}", broker.http_url());
    if (background) {
      log->info("{} (pid {}, in the background)", ready, ::getpid());
      background->ready(ready);
    } else {
      std::cout << ready << std::endl;
    }
    signals.on_signal([&broker, &log, &log_file](int signo) {
      if (signo == SIGHUP) {
        poolmap::detail::reopen_log_file(log_file, *log);
        log->info("SIGHUP: reloading the key directories");
        broker.reload_keys();
        return;
      }
      if (signo == SIGUSR1) {
        log->info("SIGUSR1: handing the work over to the peer broker");
        broker.hand_over();
        return;
      }
      log->info("signal {}: draining (a second signal stops at once)", signo);
      broker.stop();
    });
    broker.run();
    signals.on_signal(nullptr);
    return 0;
  } catch (const std::exception& e) {
    log->critical("{}", e.what());
    return 1;
  }
}
