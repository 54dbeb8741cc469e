// Fuzz target: a client decoding the results of a job's chunks (detail::decode_results, which
// Pool::map, Pool::submit and ResultStream use) for several result types (fuzz_tasks.hpp).
//
// Input layout (see fuzz_support.hpp; seeds from make_seeds.cpp):
//   byte 0            the result type (index into ResultTypes, modulo its size)
//   byte 1            chunks in the job, minus one (low 2 bits: 1..4 chunks)
//   byte 2            the total the caller expects: 1 = one more than the chunks' counts add up
//                     to, 2 = one less, anything else = their sum
//   per chunk but the last: [u8 count][u16 N][N bytes]; the last: [u8 count][the rest]
//
// Properties checked, beyond "no crash, no leak, no undefined behaviour":
//   - decoding allocates within the bound of fuzz_support.hpp, whatever the size fields say (the
//     `expected` results the client reserves room for are its own number, not the peer's);
//   - decode_results either returns exactly `expected` values or throws poolmap::Error with
//     kMalformed; nothing else escapes it;
//   - for types whose encoding is canonical (all but the map, which drops repeated keys), the
//     values re-encode to exactly the bytes of the chunks.
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "poolmap/future.hpp"
#include "fuzz_support.hpp"
#include "fuzz_tasks.hpp"

using poolmap::Bytes;
using poolmap::ErrorCode;
using poolmap::fuzz::require;
namespace fz = poolmap::fuzz;

namespace {

template <class T>
struct IsMap : std::false_type {};
template <class K, class V, class C, class A>
struct IsMap<std::map<K, V, C, A>> : std::true_type {};

template <class R>
void check_results(const std::vector<Bytes>& chunk_bytes, const std::vector<std::uint32_t>& counts,
                   std::size_t expected) {
  std::vector<poolmap::detail::ChunkResult> chunks;
  std::size_t total_bytes = 0;
  for (std::size_t c = 0; c < chunk_bytes.size(); ++c) {
    chunks.push_back({.bytes = chunk_bytes[c], .owner = nullptr, .count = counts[c]});
    total_bytes += chunk_bytes[c].size();
  }
  std::vector<R> out;
  bool decoded = false;
  {
    fz::HeapPeak heap;
    try {
      poolmap::detail::decode_results(chunks, expected, "fuzz", out);
      decoded = true;
    } catch (const poolmap::Error& e) {
      require(e.code() == ErrorCode::kMalformed, "results that do not decode are kMalformed");
    }
    // The room reserved for `expected` results is the client's own doing, not the peer's.
    fz::require_bounded("results", heap.stop(), total_bytes, expected * sizeof(R));
  }
  if (!decoded) return;
  require(out.size() == expected, "decode_results returns the expected number of results");
  for (const R& value : out) (void)fz::touch(value);
  if constexpr (!IsMap<R>::value) {
    Bytes all;
    for (const Bytes& b : chunk_bytes) all.insert(all.end(), b.begin(), b.end());
    Bytes again;
    {
      poolmap::OutputArchive archive(again);
      for (const R& value : out) archive(value);
    }
    require(again == all, "decoded results re-encode to the same bytes");
  }
}

template <std::size_t... I>
void check_type(std::size_t index, const std::vector<Bytes>& chunk_bytes, const std::vector<std::uint32_t>& counts,
                std::size_t expected, std::index_sequence<I...>) {
  ((index == I ? check_results<std::tuple_element_t<I, fz::ResultTypes>>(chunk_bytes, counts, expected) : void()),
   ...);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fz::install_allocation_hooks();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::size_t kTypes = std::tuple_size_v<fz::ResultTypes>;
  fz::FuzzInput input(data, size);
  const std::size_t type = input.take_u8() % kTypes;
  const std::size_t chunk_count = (input.take_u8() & 3U) + 1;
  const std::uint8_t expectation = input.take_u8();
  std::vector<Bytes> chunk_bytes;
  std::vector<std::uint32_t> counts;
  std::size_t total = 0;
  for (std::size_t c = 0; c < chunk_count; ++c) {
    counts.push_back(input.take_u8());
    total += counts.back();
    chunk_bytes.push_back(c + 1 < chunk_count ? input.take(input.take_u16()) : input.rest());
  }
  const std::size_t expected = expectation == 1 ? total + 1 : (expectation == 2 && total > 0 ? total - 1 : total);
  check_type(type, chunk_bytes, counts, expected, std::make_index_sequence<kTypes>{});
  return 0;
}
