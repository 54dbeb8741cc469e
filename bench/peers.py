#!/usr/bin/env python3
"""The Python peers of poolmap-bench: one run of one workload, printed as one JSON line.

    python3 bench/peers.py WORKLOAD --impl pool|executor [--processes N]

`pool` is multiprocessing.Pool, `executor` concurrent.futures.ProcessPoolExecutor, both with N
worker processes (default 2) and their default start method. The workloads are those of
poolmap-bench (bench/poolmap_bench.cpp), item for item: the same sizes, chunk sizes and checks.
Only the measured part is timed: the pool is started and warmed up first, except for `startup`.
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import random
import resource
import sys
import time

PI_SAMPLES = 200_000  # a tenth of poolmap-bench's: pure Python is ~10x slower per point; speed-ups compare


def square(x):
    return x * x


def identity(data):
    return data


def sleep_ms(ms):
    time.sleep(ms / 1000)
    return ms


def pi_hits(seed):
    # Not bit-identical to std::mt19937_64, but the same amount of work per point.
    rng = random.Random(seed)
    hits = 0
    for _ in range(PI_SAMPLES):
        x = rng.random()
        y = rng.random()
        hits += x * x + y * y <= 1.0
    return hits


class Runner:
    """map / submit over either peer, with the chunksize each peer understands."""

    def __init__(self, impl, processes):
        self.impl = impl
        if impl == "pool":
            self.pool = multiprocessing.Pool(processes)
        else:
            self.pool = concurrent.futures.ProcessPoolExecutor(processes)

    def map(self, fn, items, chunksize=None):
        if self.impl == "pool":
            return self.pool.map(fn, items) if chunksize is None else self.pool.map(fn, items, chunksize)
        # ProcessPoolExecutor's default chunksize is 1; give it Pool's default for "default".
        if chunksize is None:
            chunksize, extra = divmod(len(items), 4 * self.pool._max_workers)
            chunksize += bool(extra)
        return list(self.pool.map(fn, items, chunksize=max(1, chunksize)))

    def call(self, fn, arg):
        if self.impl == "pool":
            return self.pool.apply(fn, (arg,))
        return self.pool.submit(fn, arg).result()

    def close(self):
        if self.impl == "pool":
            self.pool.close()
            self.pool.join()
        else:
            self.pool.shutdown()


def wrong(workload):
    print(f"peers.py: {workload} returned wrong results", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workload")
    parser.add_argument("--impl", choices=["pool", "executor"], required=True)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    w = args.workload
    impl = "python-pool" if args.impl == "pool" else "python-executor"

    if w == "startup":
        start = time.perf_counter()
        runner = Runner(args.impl, args.processes)
        if runner.call(square, 7) != 49:
            wrong(w)
        runner.close()
        seconds = time.perf_counter() - start
        value, unit = seconds * 1e3, "ms"
    else:
        runner = Runner(args.impl, args.processes)
        if runner.map(square, list(range(1000))) != [x * x for x in range(1000)]:
            wrong("warm-up")
        if w == "tiny" or w == "memory":
            items = list(range(1_000_000 if w == "tiny" else 10_000_000))
            start = time.perf_counter()
            results = runner.map(square, items)
            seconds = time.perf_counter() - start
            if results != [x * x for x in items]:
                wrong(w)
            if w == "tiny":
                value, unit = len(items) / seconds, "items/s"
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                value, unit = peak / (2 * 8 * len(items)), "x data"
        elif w == "fine":
            items = list(range(50_000))
            start = time.perf_counter()
            results = runner.map(square, items, chunksize=1)
            seconds = time.perf_counter() - start
            if results != [x * x for x in items]:
                wrong(w)
            value, unit = len(items) / seconds, "items/s"
        elif w == "payload":
            try:
                import numpy
                items = [numpy.zeros(4 << 20, dtype=numpy.uint8) for _ in range(64)]
                for i, item in enumerate(items):
                    item[i] = i + 1
                same = lambda a, b: all((x == y).all() for x, y in zip(a, b)) and len(a) == len(b)
            except ImportError:
                items = [bytes(4 << 20) for _ in range(64)]
                same = lambda a, b: a == b
            start = time.perf_counter()
            results = runner.map(identity, items, chunksize=1)
            seconds = time.perf_counter() - start
            if not same(results, items):
                wrong(w)
            value, unit = 2 * 64 * (4 << 20) / seconds / 1e6, "MB/s"
        elif w == "latency":
            calls = 2000
            start = time.perf_counter()
            for i in range(calls):
                if runner.call(square, i) != i * i:
                    wrong(w)
            seconds = time.perf_counter() - start
            value, unit = seconds / calls * 1e6, "us/call"
        elif w == "sleep":
            naps = [100] * 24
            start = time.perf_counter()
            if runner.map(sleep_ms, naps, chunksize=1) != naps:
                wrong(w)
            seconds = time.perf_counter() - start
            value, unit = seconds, "s"
        elif w == "pi":
            seeds = list(range(1, 65))
            start = time.perf_counter()
            hits = runner.map(pi_hits, seeds, chunksize=1)
            seconds = time.perf_counter() - start
            pi = 4 * sum(hits) / (64 * PI_SAMPLES)
            if not 3.14 < pi < 3.143:
                wrong(w)
            value, unit = seconds, "s"
        elif w == "uneven":
            naps = [1000] + [10] * 199
            start = time.perf_counter()
            if runner.map(sleep_ms, naps, chunksize=1) != naps:
                wrong(w)
            seconds = time.perf_counter() - start
            ideal = max(1.0, sum(naps) / 1000 / args.processes)
            value, unit = seconds / ideal, "x ideal"
        else:
            print(f"peers.py: unknown workload '{w}'", file=sys.stderr)
            return 2
        runner.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"workload": w, "impl": impl, "processes": args.processes, "value": value, "unit": unit,
                      "seconds": seconds, "peak_rss_kib": peak_kib}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
