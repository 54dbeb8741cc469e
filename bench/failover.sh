#!/usr/bin/env bash
# Failover time of a pair of brokers (poolmap-broker --ha): kill -9 of the active broker, again and
# again, until the first chunk completed through the standby (docs/BENCHMARKS.md, "Failover").
#
#   bench/failover.sh BUILD_DIR [--kills N] [--heartbeat-ms LIST] [--processes N] [--json FILE]
#                     [--keep-logs] [more poolmap_failover_bench options: --liveness, --sleep-us,
#                     --pause-reads-ms, --seed, --daemon-log-level]
#
# Defaults: 20 kills per setting, heartbeat intervals 1000,250 ms (liveness 3), one worker process
# per core (at least 2), JSON lines appended to BUILD_DIR/failover.jsonl. Builds nothing: BUILD_DIR
# must hold poolmap-broker, poolmap-worker, poolmap_failover_bench and the bench task library, e.g.
#   cmake --build BUILD_DIR --target poolmap-broker poolmap-worker poolmap_bench_tasks poolmap_failover_bench
# About 3 minutes at the defaults on 2 cores. Prints a line per kill, then a markdown table and the
# JSON lines. Everything started is stopped on exit, also on failure and Ctrl-C; the daemons' logs
# (and the task's run logs) are kept, and their folder named, when the run fails or with --keep-logs.
set -euo pipefail
[[ $# -ge 1 && $1 != -h && $1 != --help ]] || { sed -n '2,15p' "$0"; exit 2; }
build=$(realpath -- "$1")
shift
json=$build/failover.jsonl
args=()
keep_logs=0
while (($# > 0)); do
  case $1 in
    --json) json=$(realpath -m -- "$2"); shift 2 ;;
    --keep-logs) keep_logs=1; shift ;;
    --kills|--heartbeat-ms|--processes|--liveness|--sleep-us|--pause-reads-ms|--seed|--daemon-log-level)
      (($# >= 2)) || { echo "bench/failover.sh: $1 needs a value" >&2; exit 2; }
      args+=("$1" "$2"); shift 2 ;;
    *) echo "bench/failover.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
bench=$build/bench/poolmap_failover_bench
for file in "$build/broker/poolmap-broker" "$build/worker/poolmap-worker" "$bench" \
            "$build/bench/libpoolmap_bench_tasks.so"; do
  [[ -e $file ]] || { echo "bench/failover.sh: $file is missing (build it first; see --help)" >&2; exit 2; }
done

logs=$(mktemp -d "${TMPDIR:-/tmp}/poolmap-failover.XXXXXX")
pid=
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    # The bench has a process group of its own (set -m below): the bench, its brokers, its worker
    # supervisor and the supervisor's processes. SIGTERM to the bench first (it cancels its map and
    # stops its children), then SIGKILL for whatever of the group is left after 20 s.
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 -- "-$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if ((status == 0 && keep_logs == 0)); then
    rm -rf "$logs"
  elif ((status == 0)); then
    echo "bench/failover.sh: logs kept in $logs"
  else
    echo "bench/failover.sh: failed ($status); logs in $logs" >&2
    tail -n 20 "$logs/bench.err" >&2 2>/dev/null || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The client's warnings (lost the broker, reconnecting) go to bench.err with the rest of its stderr.
set -m  # the bench in a process group of its own, so that cleanup can stop all of it
"$bench" --broker-bin "$build/broker/poolmap-broker" --worker-bin "$build/worker/poolmap-worker" \
  --tasks "$build/bench/libpoolmap_bench_tasks.so" --log-dir "$logs" --json "$json" "${args[@]}" \
  < /dev/null 2> "$logs/bench.err" &
pid=$!
set +m
status=0
wait "$pid" || status=$?
pid=
echo "JSON lines appended to $json"
exit "$status"
