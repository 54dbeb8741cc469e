// What a supervisor adds to its worker processes' environment (proto/src/process_info.hpp).
#include <doctest/doctest.h>

#include "process_info.hpp"

using poolmap::detail::glibc_tunables_with_huge_pages;

TEST_CASE("ProcessInfo.GlibcTunables.HugePagesAddedUnlessSet" * doctest::timeout(10)) {
  CHECK(glibc_tunables_with_huge_pages(nullptr) == "glibc.malloc.hugetlb=1");
  CHECK(glibc_tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1");
  // Other tunables stay, in order; ours comes last.
  CHECK(glibc_tunables_with_huge_pages("glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1");
  // Whoever set it decided: off, or huge pages of a reserved pool, is kept as it is.
  CHECK(glibc_tunables_with_huge_pages("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0");
  CHECK(glibc_tunables_with_huge_pages("glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=2") ==
        "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=2");
}
