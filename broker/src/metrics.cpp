#include "metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <optional>
#include <stdexcept>

namespace poolmap::detail {

struct Metrics::Impl {
  explicit Impl(const std::string& address)
      : registry(std::make_shared<prometheus::Registry>()),
        dispatched(counter("poolmap_chunks_dispatched_total", "Chunks sent to workers (each attempt)")),
        completed(counter("poolmap_chunks_completed_total", "Chunks answered ok")),
        failed(counter("poolmap_chunks_failed_total", "Chunks answered with an error")),
        redispatched(counter("poolmap_chunks_redispatched_total", "Chunks queued again after losing their worker")),
        bytes_received(counter("poolmap_bytes_received_total",
                               "Payload bytes received: chunks and contexts from clients, results from workers")),
        bytes_sent(counter("poolmap_bytes_sent_total",
                           "Payload bytes sent: chunks and contexts to workers, results to clients")),
        workers(gauge("poolmap_workers", "Worker processes registered")),
        clients(gauge("poolmap_clients", "Clients connected")),
        queued(gauge("poolmap_chunks_queued", "Chunks waiting for a worker")),
        in_flight(gauge("poolmap_chunks_in_flight", "Chunks on workers")),
        active(gauge("poolmap_broker_active", "1 while this broker serves work, 0 while it is the passive one of a pair")),
        epoch(gauge("poolmap_broker_epoch", "This broker's epoch (0 without a peer)")),
        peer_up(gauge("poolmap_broker_peer_up", "1 while the peer broker of the pair is heard")),
        transitions(counter("poolmap_broker_transitions_total", "Times this broker became active or stepped down")),
        latency(prometheus::BuildHistogram()
                    .Name("poolmap_chunk_seconds")
                    .Help("Seconds from a chunk's SUBMIT to its RESULT, chunks answered ok")
                    .Register(*registry)
                    .Add({}, prometheus::Histogram::BucketBoundaries{0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1,
                                                                     0.3, 1, 3, 10, 30, 100})) {
    if (address.empty()) return;
    exposer.emplace(address, 1);
    exposer->RegisterCollectable(registry);
    const auto ports = exposer->GetListeningPorts();
    const auto colon = address.rfind(':');
    url = "http://" + address.substr(0, colon) + ":" + (ports.empty() ? address.substr(colon + 1) : std::to_string(ports[0])) +
          "/metrics";
  }

  prometheus::Counter& counter(const std::string& name, const std::string& help) {
    return prometheus::BuildCounter().Name(name).Help(help).Register(*registry).Add({});
  }
  prometheus::Gauge& gauge(const std::string& name, const std::string& help) {
    return prometheus::BuildGauge().Name(name).Help(help).Register(*registry).Add({});
  }

  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Counter& dispatched;
  prometheus::Counter& completed;
  prometheus::Counter& failed;
  prometheus::Counter& redispatched;
  prometheus::Counter& bytes_received;
  prometheus::Counter& bytes_sent;
  prometheus::Gauge& workers;
  prometheus::Gauge& clients;
  prometheus::Gauge& queued;
  prometheus::Gauge& in_flight;
  prometheus::Gauge& active;
  prometheus::Gauge& epoch;
  prometheus::Gauge& peer_up;
  prometheus::Counter& transitions;
  prometheus::Histogram& latency;
  std::string url;
  std::optional<prometheus::Exposer> exposer;  // last: stopped before what it serves goes
};

Metrics::Metrics(const std::string& address, bool text) {
  if (address.empty() && !text) return;
  try {
    impl_ = std::make_unique<Impl>(address);
    impl_->active.Set(1);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot serve metrics on '" + address + "': " + e.what());
  }
}

Metrics::~Metrics() = default;

std::string Metrics::url() const { return impl_ ? impl_->url : std::string(); }
std::string Metrics::text() const {
  return impl_ ? prometheus::TextSerializer().Serialize(impl_->registry->Collect()) : std::string();
}
void Metrics::dispatched() {
  if (impl_) impl_->dispatched.Increment();
}
void Metrics::completed(double seconds) {
  if (!impl_) return;
  impl_->completed.Increment();
  impl_->latency.Observe(seconds);
}
void Metrics::failed() {
  if (impl_) impl_->failed.Increment();
}
void Metrics::redispatched() {
  if (impl_) impl_->redispatched.Increment();
}
void Metrics::bytes_received(std::uint64_t bytes) {
  if (impl_) impl_->bytes_received.Increment(static_cast<double>(bytes));
}
void Metrics::bytes_sent(std::uint64_t bytes) {
  if (impl_) impl_->bytes_sent.Increment(static_cast<double>(bytes));
}
void Metrics::set_gauges(std::size_t workers, std::size_t clients, std::size_t queued, std::size_t in_flight) {
  if (!impl_) return;
  impl_->workers.Set(static_cast<double>(workers));
  impl_->clients.Set(static_cast<double>(clients));
  impl_->queued.Set(static_cast<double>(queued));
  impl_->in_flight.Set(static_cast<double>(in_flight));
}
void Metrics::set_pair(bool active, std::uint64_t epoch, bool peer_up) {
  if (!impl_) return;
  impl_->active.Set(active ? 1 : 0);
  impl_->epoch.Set(static_cast<double>(epoch));
  impl_->peer_up.Set(peer_up ? 1 : 0);
}
void Metrics::transition() {
  if (impl_) impl_->transitions.Increment();
}

}  // namespace poolmap::detail
