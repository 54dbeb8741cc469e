// Internal (not installed): the broker's Prometheus metrics (poolmap-broker --metrics HOST:PORT).
//
// With an address, serves the text format at http://HOST:PORT/metrics (prometheus-cpp's exposer,
// on threads of its own); with `text`, text() gives it (for --http's /metrics); with neither every
// call does nothing. The broker's loop thread counts
// events as they happen and sets the gauges once per turn; the counters are atomic, so a scrape
// reads them while the loop runs.
//
//   poolmap_chunks_dispatched_total     chunks sent to workers (each attempt)
//   poolmap_chunks_completed_total      chunks answered ok
//   poolmap_chunks_failed_total         chunks answered with an error (task error, worker-lost, ...)
//   poolmap_chunks_redispatched_total   chunks queued again after losing their worker
//   poolmap_bytes_received_total        payload bytes in (chunks and contexts from clients, results from workers)
//   poolmap_bytes_sent_total            payload bytes out (chunks and contexts to workers, results to clients)
//   poolmap_workers, poolmap_clients    registered now
//   poolmap_chunks_queued, poolmap_chunks_in_flight
//   poolmap_chunk_seconds               histogram: from SUBMIT received to RESULT sent, ok chunks
//   poolmap_broker_active               1 while this broker serves work (always, without a peer), 0 passive
//   poolmap_broker_epoch                its epoch (0 without a peer)
//   poolmap_broker_peer_up              1 while its peer (--ha-peer) is heard, 0 when silent or none
//   poolmap_broker_transitions_total    times it became active or stepped down
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace poolmap::detail {

class Metrics {
 public:
  // "" = not served. Otherwise "HOST:PORT" (port 0 picks a free one); throws std::runtime_error
  // when it cannot listen there. `text`: keep the metrics for text() even without an address.
  explicit Metrics(const std::string& address, bool text = false);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // "http://127.0.0.1:9464/metrics", or "" when off.
  std::string url() const;
  // The Prometheus text format of every metric now ("" when off). Any thread.
  std::string text() const;

  void dispatched();
  void completed(double seconds);
  void failed();
  void redispatched();
  void bytes_received(std::uint64_t bytes);
  void bytes_sent(std::uint64_t bytes);
  void set_gauges(std::size_t workers, std::size_t clients, std::size_t queued, std::size_t in_flight);
  void set_pair(bool active, std::uint64_t epoch, bool peer_up);
  void transition();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace poolmap::detail
