#!/usr/bin/env bash
# Before and after, side by side: bench's fine (embedded and remote) and scale workloads with two
# builds of poolmap, interleaved in one run (each repeat runs A then B, alternating which goes
# first), so that a noisy moment hits both. Prints every figure and the median ratio B/A.
#
#   bench/compare.sh BUILD_A BUILD_B [--repeats N]     (default 5; Release trees with poolmap-broker,
#                                                      poolmap-worker, poolmap-bench and the bench
#                                                      task library built, as scripts/bench makes)
#
# Each build runs its own broker (and, for scale, 64 worker processes in 8 supervisors and 8
# clients), started for its turn and stopped after it: only one cluster runs at a time.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,12p' "$0"; exit 2; }
a=$(realpath "$1")
b=$(realpath "$2")
shift 2
repeats=5
while (($# > 0)); do
  case $1 in
    --repeats) repeats=$2; shift 2 ;;
    *) echo "bench/compare.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
logs=$(mktemp -d "${TMPDIR:-/tmp}/poolmap-compare.XXXXXX")
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$logs"' EXIT

cluster() {  # cluster BUILD WORKER_PROCESSES: a broker and workers; sets clients= broker_pid=
  local build=$1 processes=$2
  "$build/broker/poolmap-broker" --clients 'tcp://127.0.0.1:*' --workers 'tcp://127.0.0.1:*' \
    > "$logs/broker.out" 2> "$logs/broker.log" &
  pids+=($!)
  broker_pid=$!
  for _ in $(seq 1 200); do
    grep -q '^poolmap-broker ready ' "$logs/broker.out" && break
    sleep 0.05
  done
  [[ "$(cat "$logs/broker.out")" =~ clients=([^ ]+)\ workers=([^ ]+) ]] || { echo "no broker" >&2; exit 1; }
  clients=${BASH_REMATCH[1]}
  local workers=${BASH_REMATCH[2]}
  local left=$processes
  while ((left > 0)); do
    local n=$((left < 8 ? left : 8))
    "$build/worker/poolmap-worker" --broker "$workers" --processes "$n" \
      --tasks "$build/bench/libpoolmap_bench_tasks.so" 2>> "$logs/worker.log" &
    pids+=($!)
    left=$((left - n))
  done
}

value() { sed -E 's/.*"value": ([^,]*),.*/\1/' <<< "$1"; }
declare -A figures
run_build() {  # run_build LABEL BUILD
  local label=$1 build=$2 line
  line=$("$build/bench/poolmap-bench" fine --processes 2)
  figures[fine-embedded-$label]+=" $(value "$line")"
  cluster "$build" 2
  line=$("$build/bench/poolmap-bench" fine --broker "$clients" --processes 2)
  figures[fine-remote-$label]+=" $(value "$line")"
  stop_all
  cluster "$build" 64
  line=$("$build/bench/poolmap-bench" scale --broker "$clients" --processes 64 --broker-pid "$broker_pid")
  figures[scale-$label]+=" $(value "$line")"
  figures[scale-cpu-$label]+=" $(sed -E 's/.*"broker_cpu_us_per_chunk": ([^,}]*).*/\1/' <<< "$line")"
  stop_all
}

for ((r = 1; r <= repeats; r++)); do
  if ((r % 2 == 1)); then run_build A "$a"; run_build B "$b"; else run_build B "$b"; run_build A "$a"; fi
  echo "repeat $r of $repeats done"
done
median() { tr ' ' '\n' <<< "$1" | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
printf '%-22s %-14s %-14s %s\n' workload "A (median)" "B (median)" "B/A"
for w in fine-embedded fine-remote scale scale-cpu; do
  ma=$(median "${figures[$w-A]}")
  mb=$(median "${figures[$w-B]}")
  printf '%-22s %-14s %-14s %.3f\n' "$w" "$ma" "$mb" "$(awk -v a="$ma" -v b="$mb" 'BEGIN {print b / a}')"
  echo "  A:${figures[$w-A]}"
  echo "  B:${figures[$w-B]}"
done
echo "(fine: items/s; scale: chunks/s through one broker, 64 workers, 8 clients; scale-cpu: broker CPU us per chunk)"
