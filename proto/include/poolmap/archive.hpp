// Cereal archives for poolmap's wire format: Cereal's portable binary encoding (little-endian,
// fixed-width integers, 64-bit size tags), written to and read from memory buffers, with one
// difference that matters on a network: the input archive is *bounded*.
//
// Stock Cereal archives trust size fields: a 9-byte message that claims a vector of 2^60 elements
// makes `std::vector::resize` allocate before a single element is read. poolmap::InputArchive
// checks every size tag against the bytes still unread and throws cereal::Exception before any
// allocation when a sequence claims more elements than there are bytes left. The consequence for
// users: a serialized element must take at least one byte (a vector of empty structs is refused).
// A vector is not sized from its size field: it grows as its elements decode, so the memory a
// message costs follows the bytes it holds, not what it claims. A bool must be the byte 0 or 1.
//
// Any type with a Cereal `serialize`/`save`/`load` function works, as do the standard types from
// <cereal/types/...> (string, vector, map, tuple, optional, ...), which this header includes.
//
// Thread-safety: an archive is used by one thread at a time.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

namespace poolmap {

// The byte buffer every encoder appends to.
using Bytes = std::vector<std::byte>;

namespace detail {
// Copies `size` bytes of elements of `element_size` bytes, reversing each element's bytes on a
// big-endian host so that the wire is always little-endian.
inline void copy_little_endian(void* dst, const void* src, std::size_t size, std::size_t element_size) {
  if (size == 0) return;  // empty strings and vectors may have null data pointers
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(dst, src, size);
  } else {
    auto* out = static_cast<unsigned char*>(dst);
    const auto* in = static_cast<const unsigned char*>(src);
    for (std::size_t i = 0; i + element_size <= size; i += element_size) {
      for (std::size_t j = 0; j < element_size; ++j) out[i + j] = in[i + element_size - 1 - j];
    }
  }
}

// True for the types whose encoding is their bytes in memory (arithmetic types but bool, on a
// little-endian host): a run of them is encoded or decoded with one copy.
template <class T>
inline constexpr bool kEncodedAsBytes =
    std::is_arithmetic_v<T> && !std::is_same_v<T, bool> && std::endian::native == std::endian::little;

// The capacity to reserve for `items` encodings once the first took `first_bytes`: room for all at
// that size, so that a buffer filled item by item is not regrown (each regrowth copies it and
// touches fresh pages), but at most 64 MiB (past that it grows as it fills). 0 when the first
// took none.
inline std::size_t expected_bytes(std::size_t first_bytes, std::size_t items) {
  constexpr std::size_t kMostReserved = 64 << 20;
  if (first_bytes == 0) return 0;
  if (items > kMostReserved / first_bytes) return kMostReserved;
  return first_bytes * items;
}

// Transparent huge pages for the large buffers a map writes, as numpy asks for its arrays: the
// first write to a fresh buffer then takes one page fault per 2 MiB instead of one per 4 KiB,
// which on a virtual machine is most of what a fresh buffer costs (docs/BENCHMARKS.md), and later
// accesses miss the TLB less. Both are advice (madvise MADV_HUGEPAGE) and change no content; both
// do nothing until keep_freed_memory() ran in this process (PoolOptions::reuse_freed_memory).
// advise_heap_growth(): the heap's memory that nothing has touched yet, as far as it reaches now
// (call it before filling a buffer that may have come from there). advise_huge_pages(): the same,
// and, for a buffer of at least 1 MiB in its own mapping (larger than the heap takes), that
// buffer. Call it before the buffer is first written.
void advise_heap_growth() noexcept;
void advise_huge_pages(const void* data, std::size_t bytes) noexcept;
}  // namespace detail

// Appends the encoding of everything passed to it to a Bytes buffer (which it does not own).
class OutputArchive : public cereal::OutputArchive<OutputArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit OutputArchive(Bytes& out)
      : cereal::OutputArchive<OutputArchive, cereal::AllowEmptyClassElision>(this), out_(out) {}

  void save_bytes(const void* data, std::size_t size, std::size_t element_size) {
    const std::size_t offset = out_.size();
    out_.resize(offset + size);
    detail::copy_little_endian(out_.data() + offset, data, size, element_size);
  }

 private:
  Bytes& out_;
};

// Decodes from a byte span (which it does not own and which must outlive it). Throws
// cereal::Exception on truncation or on a size tag larger than the bytes left.
class InputArchive : public cereal::InputArchive<InputArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit InputArchive(std::span<const std::byte> in)
      : cereal::InputArchive<InputArchive, cereal::AllowEmptyClassElision>(this), in_(in) {}

  // Small enough to inline into every field's load: the message of a failure is built out of line.
  void load_bytes(void* data, std::size_t size, std::size_t element_size) {
    if (size > remaining()) [[unlikely]] throw_truncated(size, remaining());
    detail::copy_little_endian(data, in_.data() + position_, size, element_size);
    position_ += size;
  }

  // A sequence of `count` elements is about to be allocated: refuse it unless at least `count`
  // bytes are left.
  void check_sequence(std::uint64_t count) const {
    if (count > remaining()) [[unlikely]] throw_oversized(count, remaining());
  }

  std::size_t remaining() const noexcept { return in_.size() - position_; }
  std::size_t position() const noexcept { return position_; }

  // Reads `in` from its start from now on: one archive decodes message after message without
  // being built and torn down for each (Cereal's archive carries tables for shared and
  // polymorphic pointers, unused by poolmap's headers).
  void reset(std::span<const std::byte> in) noexcept {
    in_ = in;
    position_ = 0;
  }

 private:
  [[noreturn, gnu::noinline, gnu::cold]] static void throw_truncated(std::size_t size, std::size_t left) {
    throw cereal::Exception("truncated: need " + std::to_string(size) + " bytes, " + std::to_string(left) + " left");
  }
  [[noreturn, gnu::noinline, gnu::cold]] static void throw_oversized(std::uint64_t count, std::size_t left) {
    throw cereal::Exception("size field claims " + std::to_string(count) + " elements but only " +
                            std::to_string(left) + " bytes are left");
  }

  std::span<const std::byte> in_;
  std::size_t position_ = 0;
};

// ---- Cereal hooks (found by argument-dependent lookup on the archive type) ----

template <class T>
std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const T& t) {
  ar.save_bytes(std::addressof(t), sizeof(T), sizeof(T));
}

template <class T>
std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, T& t) {
  if constexpr (std::is_same_v<T, bool>) {
    // A bool is one byte, 0 or 1. Copying any other byte into a bool makes a value that is
    // neither true nor false (undefined behaviour once it is read), so it is refused.
    std::uint8_t byte = 0;
    ar.load_bytes(&byte, 1, 1);
    if (byte > 1) throw cereal::Exception("a bool holds " + std::to_string(byte) + ", not 0 or 1");
    t = byte == 1;
  } else {
    ar.load_bytes(std::addressof(t), sizeof(T), sizeof(T));
  }
}

template <class Archive, class T>
CEREAL_ARCHIVE_RESTRICT(InputArchive, OutputArchive)
CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}

template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const cereal::SizeTag<T>& t) {
  const std::uint64_t size = static_cast<std::uint64_t>(t.size);
  ar(size);
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, cereal::SizeTag<T>& t) {
  std::uint64_t size = 0;
  ar(size);
  ar.check_sequence(size);
  t.size = static_cast<std::remove_reference_t<T>>(size);
}

// Vectors. Cereal's own load resizes a vector to its size field before reading an element: the
// size is at most the bytes left (check_sequence), but each element takes sizeof(T) bytes of
// memory, so a forged size cost up to sizeof(T) times the message (64 for a TaskInfo: a 1 GiB
// READY would have asked for 64 GiB). This load reserves up front only what the bytes left can
// hold and grows the vector as elements actually decode, so memory follows the data present.
template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, std::vector<T, A>& vector) {
  cereal::size_type size = 0;
  ar(cereal::make_size_tag(size));
  if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
    if (size > ar.remaining() / sizeof(T)) {
      throw cereal::Exception("size field claims " + std::to_string(size) + " elements of " +
                              std::to_string(sizeof(T)) + " bytes but only " + std::to_string(ar.remaining()) +
                              " bytes are left");
    }
    vector.resize(static_cast<std::size_t>(size));
    ar(cereal::binary_data(vector.data(), static_cast<std::size_t>(size) * sizeof(T)));
  } else {
    vector.clear();
    vector.reserve(std::min(static_cast<std::size_t>(size), ar.remaining() / sizeof(T)));
    for (cereal::size_type i = 0; i < size; ++i) {
      ar(vector.emplace_back());
    }
  }
}

template <class A>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, std::vector<bool, A>& vector) {
  cereal::size_type size = 0;
  ar(cereal::make_size_tag(size));
  vector.clear();
  vector.reserve(static_cast<std::size_t>(size));  // a bit per element, a byte each on the wire
  for (cereal::size_type i = 0; i < size; ++i) {
    bool value = false;
    ar(value);
    vector.push_back(value);
  }
}

template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const cereal::BinaryData<T>& bd) {
  using Element = std::remove_pointer_t<T>;
  constexpr std::size_t kElement = std::is_void_v<std::remove_cv_t<Element>> ? 1 : sizeof(Element);
  ar.save_bytes(bd.data, static_cast<std::size_t>(bd.size), kElement);
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, cereal::BinaryData<T>& bd) {
  using Element = std::remove_pointer_t<T>;
  constexpr std::size_t kElement = std::is_void_v<std::remove_cv_t<Element>> ? 1 : sizeof(Element);
  ar.load_bytes(bd.data, static_cast<std::size_t>(bd.size), kElement);
}

}  // namespace poolmap

CEREAL_REGISTER_ARCHIVE(poolmap::OutputArchive)
CEREAL_REGISTER_ARCHIVE(poolmap::InputArchive)
CEREAL_SETUP_ARCHIVE_TRAITS(poolmap::InputArchive, poolmap::OutputArchive)
