#!/usr/bin/env bash
# Peak RSS of the client, the broker and one worker process for imap over 10^5 and 10^7 tiny items
# (test.square, same window), each size with a fresh broker and worker.
#   bench/imap_memory.sh [build-dir] [item counts...]     (default counts: 100000 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
sizes=("$@")
((${#sizes[@]} > 0)) || sizes=(100000 10000000)
ninja -C "$build" poolmap-bench-imap-memory poolmap-broker poolmap-worker poolmap_test_tasks > /dev/null
logs=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$logs"; }
trap cleanup EXIT INT TERM
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
printf '%-10s %18s %18s %18s %8s %10s\n' items client_peak_KiB broker_peak_KiB worker_peak_KiB chunks chunksize
for n in "${sizes[@]}"; do
  "$build/broker/poolmap-broker" --clients 'tcp://127.0.0.1:*' --workers 'tcp://127.0.0.1:*' \
    > "$logs/broker.out" 2> "$logs/broker.err" &
  broker=$!
  pids+=("$broker")
  for _ in $(seq 100); do grep -q ready "$logs/broker.out" && break; sleep 0.05; done
  clients=$(sed -n 's/.*clients=\([^ ]*\).*/\1/p' "$logs/broker.out")
  workers=$(sed -n 's/.*workers=\(.*\)/\1/p' "$logs/broker.out")
  "$build/worker/poolmap-worker" --broker "$workers" --processes 1 --tasks "$build/tests/libpoolmap_test_tasks.so" \
    --log-level warn 2> "$logs/worker.err" &
  supervisor=$!
  pids+=("$supervisor")
  line=$("$build/bench/poolmap-bench-imap-memory" "$clients" "$n")
  worker=$(pgrep -P "$supervisor" | head -n 1)
  client_kib=$(sed -n 's/.*client_peak_rss_kib=\([0-9]*\).*/\1/p' <<< "$line")
  chunks=$(sed -n 's/.*chunks=\([0-9]*\).*/\1/p' <<< "$line")
  chunksize=$(sed -n 's/.*final_chunksize=\([0-9]*\).*/\1/p' <<< "$line")
  printf '%-10s %18s %18s %18s %8s %10s\n' "$n" "$client_kib" "$(hwm "$broker")" "$(hwm "$worker")" "$chunks" "$chunksize"
  kill "$supervisor" "$broker"
  wait "$supervisor" "$broker" 2>/dev/null || true
  pids=()
done
