// doctest runner for poolmap's suites. poolmap::init comes first so that an embedded Pool created by
// a test can start worker copies of this very binary.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "poolmap/pool.hpp"

int main(int argc, char** argv) {
  poolmap::init(argc, argv);
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  return context.run();
}
