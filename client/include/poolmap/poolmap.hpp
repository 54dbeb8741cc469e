// The one header a poolmap client program includes.
//
//   poolmap::init(argc, argv);   // first line of main()
//   poolmap::Pool pool;          // or poolmap::Pool pool{{.broker = "tcp://head-node:5555"}};
//   std::vector<std::int64_t> squares = pool.map(square, inputs);
#pragma once

#include "poolmap/curve.hpp"
#include "poolmap/error.hpp"
#include "poolmap/exec.hpp"
#include "poolmap/pool.hpp"
#include "poolmap/status.hpp"
#include "poolmap/task.hpp"
