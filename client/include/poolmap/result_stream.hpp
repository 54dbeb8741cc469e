// poolmap::ResultStream<R>: the lazy results of Pool::imap and Pool::imap_unordered.
//
//   for (std::int64_t r : pool.imap(square, std::views::iota(0, 100'000'000))) use(r);
//
// A C++20 input range. Input is pulled from the caller's range only as results are consumed, and
// at most `window` chunks are in flight, so client, broker and worker memory stay flat however long
// the input is. imap yields in input order, imap_unordered in completion order. Unless a chunk
// size is given, it adapts: chunks start at one item and grow or shrink (at most ×2 per step)
// towards `target_chunk_time` of worker compute time, as measured by the workers, and never hold
// more than `max_chunk_bytes` of input. Destroying a stream that was not read to the end cancels
// what is left (queued chunks are dropped at the broker).
//
// Errors: the exception of a failed chunk (TaskError, Error) is thrown by the iterator increment
// (or begin()) that reaches its first item; the stream then ends and cancels the rest. An exception
// thrown by the input range itself (Python's failing generator) is kept until the results of every
// item before it have been yielded (in order for imap, as they come for imap_unordered), then
// thrown unchanged from the iteration; the stream then ends.
//
// Thread-safety: one thread reads a stream. The input range is read on that thread, inside
// begin() and ++.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "poolmap/future.hpp"

namespace poolmap {

// Options of imap and imap_unordered.
struct StreamOptions {
  // Items per chunk. Default: 0 = adaptive (see above). An explicit chunk size always wins.
  std::size_t chunksize = 0;
  // Chunks in flight at once. Default: 0 = 4 × workers (at least 4).
  std::size_t window = 0;
  // Adaptive chunk size: worker compute time a chunk aims at. Default: 20 ms.
  std::chrono::milliseconds target_chunk_time{20};
  // Adaptive chunk size: most input bytes in one chunk. Default: 1 MiB.
  std::size_t max_chunk_bytes = 1 << 20;
  // Longest time one item may run on a worker (as MapOptions::task_deadline). Default: 0 = none.
  std::chrono::milliseconds task_deadline{0};
};

namespace detail {
// Encodes up to `max_items` next input items into `payload`; returns how many (0 = input ended).
// When reading the input throws, returns the items encoded before it and stores the exception in
// `input_error` (the input then counts as ended).
using StreamProducer = std::function<std::size_t(std::size_t max_items, Bytes& payload, std::exception_ptr& input_error)>;
// Starts one job (Pool::start).
using JobStarter = std::function<std::shared_ptr<FutureCore>(JobRequest)>;
// Writes a debug line to the Pool's logger.
using DebugLog = std::function<void(const std::string&)>;
}  // namespace detail

template <class R>
class ResultStream {
 public:
  ResultStream(detail::StreamProducer producer, detail::JobStarter starter, std::string task, std::string signature,
               StreamOptions options, std::size_t window, bool ordered, detail::DebugLog debug_log = {})
      : state_(std::make_unique<State>()) {
    State& s = *state_;
    s.debug_log = std::move(debug_log);
    s.producer = std::move(producer);
    s.starter = std::move(starter);
    s.task = std::move(task);
    s.signature = std::move(signature);
    s.options = options;
    s.window = std::max<std::size_t>(1, window);
    s.ordered = ordered;
    s.chunksize = options.chunksize != 0 ? options.chunksize : 1;
  }
  ResultStream(ResultStream&&) noexcept = default;
  ResultStream& operator=(ResultStream&&) noexcept = default;
  ~ResultStream() {
    if (state_) state_->cancel_all();
  }

  class iterator {
   public:
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(ResultStream* stream) : stream_(stream) { advance(); }
    const R& operator*() const { return *current_; }
    R& operator*() { return *current_; }
    iterator& operator++() {
      advance();
      return *this;
    }
    void operator++(int) { advance(); }
    bool operator==(std::default_sentinel_t) const { return !current_.has_value(); }

   private:
    void advance() {
      current_.reset();
      if (stream_ != nullptr) current_ = stream_->state_->next();
    }
    ResultStream* stream_ = nullptr;
    std::optional<R> current_;
  };

  // Call once.
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const { return {}; }

  // The chunk size the next chunk will have (adaptive or fixed).
  std::size_t chunksize() const { return state_->chunksize; }
  // Chunks sent so far.
  std::size_t chunks_sent() const { return state_->chunks_sent; }

 private:
  struct Chunk {
    std::shared_ptr<detail::FutureCore> core;
    std::uint32_t count = 0;
    std::size_t bytes = 0;
  };

  struct State {
    detail::StreamProducer producer;
    detail::JobStarter starter;
    detail::DebugLog debug_log;
    std::string task;
    std::string signature;
    StreamOptions options;
    std::size_t window = 4;
    bool ordered = true;
    std::size_t chunksize = 1;
    std::size_t chunks_sent = 0;
    std::uint64_t stream = 0;  // its name at the broker: the job number of its first chunk (0: none sent yet)
    std::uint64_t next_index = 0;
    bool input_done = false;
    bool failed = false;
    std::exception_ptr input_error;  // the input range threw: thrown once every earlier result is out
    std::deque<Chunk> in_order;                     // ordered: chunks in input order
    std::unordered_map<std::size_t, Chunk> by_seq;  // unordered: chunks by sequence number
    std::shared_ptr<detail::CompletionQueue> completions = std::make_shared<detail::CompletionQueue>();
    std::size_t next_seq = 0;
    std::deque<R> ready;  // decoded results not yet handed out

    std::size_t in_flight() const { return ordered ? in_order.size() : by_seq.size(); }

    void top_up() {
      while (!input_done && in_flight() < window) {
        detail::ChunkRequest chunk;
        chunk.first_index = next_index;
        const std::size_t count = producer(chunksize, chunk.payload, input_error);
        if (input_error) input_done = true;
        if (count == 0) {
          input_done = true;
          break;
        }
        chunk.count = static_cast<std::uint32_t>(count);
        next_index += count;
        const std::size_t bytes = chunk.payload.size();
        detail::JobRequest job{task, signature, {}, static_cast<std::uint32_t>(options.task_deadline.count()), 0,
                               std::chrono::milliseconds(0), count};
        job.chunks.push_back(std::move(chunk));
        job.sink = detail::CheckingSink<R>::shared();  // a lying worker's answer is run again, not returned
        job.stream = stream != 0 ? stream : detail::kStartStream;  // status shows the imap as one job
        Chunk sent{starter(std::move(job)), static_cast<std::uint32_t>(count), bytes};
        if (stream == 0) stream = sent.core->job_id;
        ++chunks_sent;
        if (ordered) {
          in_order.push_back(std::move(sent));
        } else {
          const std::size_t seq = next_seq++;
          sent.core->on_ready([queue = completions, seq] { queue->push(seq); });
          by_seq.emplace(seq, std::move(sent));
        }
      }
    }

    // Adapts the chunk size to what the workers measured for `chunk`.
    void adapt(const Chunk& chunk) {
      if (options.chunksize != 0) return;
      const double per_item_us =
          static_cast<double>(chunk.core->compute_us()) / static_cast<double>(std::max<std::uint32_t>(1, chunk.count));
      const double target_us = static_cast<double>(options.target_chunk_time.count()) * 1000.0;
      double wanted = per_item_us > 0 ? target_us / per_item_us : static_cast<double>(chunksize) * 2;
      wanted = std::clamp(wanted, static_cast<double>(chunksize) / 2, static_cast<double>(chunksize) * 2);
      const double bytes_per_item =
          std::max(1.0, static_cast<double>(chunk.bytes) / static_cast<double>(std::max<std::uint32_t>(1, chunk.count)));
      const double byte_cap = std::max(1.0, static_cast<double>(options.max_chunk_bytes) / bytes_per_item);
      const std::size_t before = chunksize;
      chunksize = static_cast<std::size_t>(std::clamp(wanted, 1.0, std::min(byte_cap, 4294967295.0)));
      if (chunksize != before && debug_log) {
        debug_log("imap of task '" + task + "': chunk size " + std::to_string(before) + " -> " +
                  std::to_string(chunksize) + " (" + std::to_string(static_cast<long long>(per_item_us)) +
                  " us per item on the worker)");
      }
    }

    void decode(const Chunk& chunk) {
      const auto& outcome = chunk.core->outcome();
      if (!outcome.error.is_ok()) {
        failed = true;
        cancel_all();
        detail::throw_outcome(outcome);
      }
      std::vector<R> values;
      detail::decode_results(outcome.results, chunk.count, task, values);
      for (auto& value : values) ready.push_back(std::move(value));
      adapt(chunk);
    }

    std::optional<R> next() {
      while (ready.empty()) {
        if (failed) return std::nullopt;
        top_up();
        if (in_flight() == 0) {
          if (input_error) {
            failed = true;
            std::rethrow_exception(std::exchange(input_error, nullptr));
          }
          return std::nullopt;
        }
        if (ordered) {
          Chunk chunk = std::move(in_order.front());
          in_order.pop_front();
          chunk.core->wait();
          decode(chunk);
        } else {
          const std::size_t seq = *completions->pop_until(std::chrono::steady_clock::time_point::max());
          Chunk chunk = std::move(by_seq.at(seq));
          by_seq.erase(seq);
          decode(chunk);
        }
      }
      R value = std::move(ready.front());
      ready.pop_front();
      return value;
    }

    void cancel_all() {
      for (auto& chunk : in_order) chunk.core->cancel();
      for (auto& [seq, chunk] : by_seq) chunk.core->cancel();
      in_order.clear();
      by_seq.clear();
      input_done = true;
    }
  };

  std::unique_ptr<State> state_;
};

}  // namespace poolmap
