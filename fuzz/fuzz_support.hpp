// Shared by the libFuzzer targets and the seed generator (not installed, not part of any library).
//
// - FuzzInput / FuzzInputWriter: the layout of a fuzz input. A target reads selector bytes, lengths
//   and frames from the front of its input; the seed generator writes inputs in the same layout
//   from the real encoders. Reading past the end gives zeros and empty frames, never an error, so
//   every byte string is a valid input.
// - AllocationGuard: fails the run (abort, so libFuzzer keeps the input) when a decoder holds far
//   more heap at its peak than the bytes it was given could justify. A size field that lies must be
//   refused before it allocates; this is how the targets notice one that is not.
// - touch(): reads every arithmetic field of a decoded value through its Cereal serialize(), so
//   that UndefinedBehaviorSanitizer sees a bool that holds neither 0 nor 1, as a daemon using that
//   value would.
#pragma once

#include <sanitizer/allocator_interface.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "poolmap/archive.hpp"

namespace poolmap::fuzz {

// ---- input layout ----

class FuzzInput {
 public:
  FuzzInput(const std::uint8_t* data, std::size_t size) : bytes_(reinterpret_cast<const std::byte*>(data), size) {}

  std::uint8_t take_u8() {
    if (bytes_.empty()) return 0;
    const auto value = static_cast<std::uint8_t>(bytes_.front());
    bytes_ = bytes_.subspan(1);
    return value;
  }
  std::uint16_t take_u16() {  // little-endian
    const std::uint16_t low = take_u8();
    return static_cast<std::uint16_t>(low | (take_u8() << 8));
  }
  // The next `size` bytes, or fewer if the input ends first, as their own heap buffer of exactly
  // that size, so that AddressSanitizer reports a decoder that reads one byte past its frame.
  Bytes take(std::size_t size) {
    size = std::min(size, bytes_.size());
    Bytes out(bytes_.begin(), bytes_.begin() + static_cast<std::ptrdiff_t>(size));
    bytes_ = bytes_.subspan(size);
    return out;
  }
  Bytes rest() { return take(bytes_.size()); }

 private:
  std::span<const std::byte> bytes_;
};

class FuzzInputWriter {
 public:
  FuzzInputWriter& u8(std::uint8_t value) {
    bytes_.push_back(std::byte{value});
    return *this;
  }
  FuzzInputWriter& u16(std::uint16_t value) {
    return u8(static_cast<std::uint8_t>(value & 0xff)).u8(static_cast<std::uint8_t>(value >> 8));
  }
  FuzzInputWriter& bytes(std::span<const std::byte> more) {
    bytes_.insert(bytes_.end(), more.begin(), more.end());
    return *this;
  }
  const Bytes& data() const { return bytes_; }

  // Writes the input to `path`; exits the program on failure (the seed generator's only use).
  void save(const std::string& path) const {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes_.data()), static_cast<std::streamsize>(bytes_.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      std::exit(1);
    }
  }

 private:
  Bytes bytes_;
};

// Encodes `values` with poolmap's archive, appended to `out`.
template <class... Ts>
void encode_into(Bytes& out, const Ts&... values) {
  OutputArchive archive(out);
  archive(values...);
}

// ---- allocation bound ----

// Heap bytes a decoder may hold at its peak: kFactor per input byte plus kSlack. The factor covers
// what honest inputs of the types the targets decode need (a 16-byte TaskInfo on the wire is a
// 64-byte struct in memory, plus vector growth); kSlack covers error messages and exceptions.
// A size field believed without a check costs sizeof(element) per byte left: 32 for strings,
// 64 for TaskInfo, far beyond this bound once the input is a few hundred bytes long.
inline constexpr std::size_t kAllocationFactor = 16;
inline constexpr std::size_t kAllocationSlack = 2048;

namespace detail {
struct AllocationCounter {
  bool armed = false;
  std::size_t live = 0;
  std::size_t peak = 0;
};
inline thread_local AllocationCounter counter;

inline void on_malloc(const volatile void*, std::size_t size) {
  if (!counter.armed) return;
  counter.live += size;
  counter.peak = std::max(counter.peak, counter.live);
}
inline void on_free(const volatile void* pointer) {
  if (!counter.armed || pointer == nullptr) return;
  const std::size_t size = __sanitizer_get_allocated_size(const_cast<const void*>(pointer));
  counter.live -= std::min(counter.live, size);
}
}  // namespace detail

// Call once, from LLVMFuzzerInitialize.
inline void install_allocation_hooks() {
  __sanitizer_install_malloc_and_free_hooks(&detail::on_malloc, &detail::on_free);
}

// Measures the heap held at the peak by what this thread does between construction and stop()
// (or destruction). Not reentrant.
class HeapPeak {
 public:
  HeapPeak() { detail::counter = {.armed = true, .live = 0, .peak = 0}; }
  ~HeapPeak() { stop(); }
  HeapPeak(const HeapPeak&) = delete;
  HeapPeak& operator=(const HeapPeak&) = delete;
  // Stops counting; returns the peak.
  std::size_t stop() {
    detail::counter.armed = false;
    return detail::counter.peak;
  }
};

// Aborts with a message when `peak` exceeds the bound for `input_bytes`, plus `extra` bytes the
// caller can account for otherwise (output a task legitimately produced).
inline void require_bounded(const char* what, std::size_t peak, std::size_t input_bytes, std::size_t extra = 0) {
  const std::size_t bound = kAllocationFactor * input_bytes + kAllocationSlack + extra;
  if (peak > bound) {
    std::fprintf(stderr,
                 "%s: decoding %zu bytes held %zu bytes of heap at its peak (bound: %zu per byte + %zu + %zu)\n", what,
                 input_bytes, peak, kAllocationFactor, kAllocationSlack, extra);
    std::abort();
  }
}

// Runs `decode()`, a call that returns a value, and checks the heap it held against the bound for
// `input_bytes`.
template <class Decode>
auto bounded_allocation(const char* what, std::size_t input_bytes, Decode&& decode) {
  HeapPeak heap;
  auto result = decode();
  require_bounded(what, heap.stop(), input_bytes);
  return result;
}

// ---- touching every field ----

// A Cereal output archive that stores nothing: it loads each arithmetic value once, as code that
// uses the value would.
class TouchArchive : public cereal::OutputArchive<TouchArchive, cereal::AllowEmptyClassElision> {
 public:
  TouchArchive() : cereal::OutputArchive<TouchArchive, cereal::AllowEmptyClassElision>(this) {}
  std::uint64_t sum = 0;
};

template <class T>
std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_SAVE_FUNCTION_NAME(TouchArchive& ar, const T& t) {
  const T copy = t;  // the load UBSan checks (-fsanitize=bool)
  unsigned char raw[sizeof(T)];
  std::memcpy(raw, &copy, sizeof(T));
  for (const unsigned char b : raw) ar.sum += b;
}
template <class Archive, class T>
CEREAL_ARCHIVE_RESTRICT(TouchArchive, TouchArchive)
CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(TouchArchive& ar, const cereal::SizeTag<T>& t) {
  ar.sum += static_cast<std::uint64_t>(t.size);
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(TouchArchive& ar, const cereal::BinaryData<T>& bd) {
  const auto* bytes = static_cast<const unsigned char*>(static_cast<const void*>(bd.data));
  for (std::size_t i = 0; i < static_cast<std::size_t>(bd.size); ++i) ar.sum += bytes[i];
}

// Reads every field of `value` (see TouchArchive); returns a checksum so the reads stay.
template <class T>
std::uint64_t touch(const T& value) {
  TouchArchive archive;
  archive(value);
  return archive.sum;
}

// Aborts with `message` when `condition` is false: a broken invariant is a finding.
inline void require(bool condition, const char* message) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", message);
    std::abort();
  }
}

}  // namespace poolmap::fuzz

CEREAL_REGISTER_ARCHIVE(poolmap::fuzz::TouchArchive)
