#!/usr/bin/env bash
# Deploy.Grafana.EveryMetricTheBoardAndAlertsUseIsServed: every metric name that the Grafana
# dashboard (deploy/grafana/poolmap.json) and the Prometheus alert rules (deploy/prometheus/alerts.yml)
# use in their `expr` fields is one that a real broker serves.
#
# Starts poolmap-broker on loopback (client and worker endpoints on free ports, --metrics
# 127.0.0.1:0), reads the metrics URL from its log line `metrics at URL` once its ready line is on
# stdout, fetches /metrics with curl and compares. A name counts as served when /metrics has a
# sample of it or declares it in a `# TYPE` line; NAME_bucket, NAME_sum and NAME_count count as
# served when NAME is declared a histogram (_sum and _count also for a summary). An idle broker
# serves every poolmap_ name, the histogram's buckets included, but going by the declarations
# keeps the check right for a metric that would print no sample before its first event.
# Also: the dashboard parses as JSON, its uid is "poolmap" and its panel ids are unique; with
# promtool on PATH (Debian's prometheus package) `promtool check rules` passes on the rules.
#
#   tests/deploy/grafana_metrics_test.sh POOLMAP_BROKER SOURCE_DIR
set -euo pipefail
broker=$(realpath "$1")
source=$(realpath "$2")
dashboard=$source/deploy/grafana/poolmap.json
rules=$source/deploy/prometheus/alerts.yml

fail() {
  echo "FAIL: $*"
  exit 1
}

command -v curl > /dev/null || fail "curl is missing (scripts/deps installs it): cannot fetch /metrics"
if command -v jq > /dev/null; then
  json=jq
elif command -v python3 > /dev/null; then
  json=python3
else
  fail "neither jq nor python3 is installed: cannot read $dashboard"
fi

work=$(mktemp -d)
broker_pid=
cleanup() {  # on every exit: stop the broker (SIGTERM, then SIGKILL after 5 s), reap it, remove $work
  if [[ -n "$broker_pid" ]]; then
    kill -TERM "$broker_pid" 2> /dev/null || true
    local deadline=$((SECONDS + 5))
    while kill -0 "$broker_pid" 2> /dev/null && ((SECONDS < deadline)); do sleep 0.05; done
    kill -KILL "$broker_pid" 2> /dev/null || true
    wait "$broker_pid" 2> /dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- the dashboard's JSON and both files' expressions ----
if [[ $json == jq ]]; then
  jq empty "$dashboard" 2> "$work/json.err" || fail "$dashboard is not valid JSON: $(cat "$work/json.err")"
  [[ "$(jq -r '.uid' "$dashboard")" == poolmap ]] || fail "$dashboard: uid is not \"poolmap\""
  duplicates=$(jq -r '[.. | objects | select(has("gridPos")) | .id] | group_by(.) | map(select(length > 1) | .[0]) | .[]' \
    "$dashboard")
  jq -r '.. | objects | select(has("expr")) | .expr' "$dashboard" > "$work/board.exprs"
else
  if ! python3 - "$dashboard" "$work/board.exprs" > "$work/duplicates" 2> "$work/json.err" <<'PY'; then
import collections, json, sys

board = json.load(open(sys.argv[1]))
if board.get("uid") != "poolmap":
    sys.exit('uid is not "poolmap"')
ids, exprs = [], []

def walk(node):
    if isinstance(node, dict):
        if "gridPos" in node:
            ids.append(node.get("id"))
        if isinstance(node.get("expr"), str):
            exprs.append(node["expr"])
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)

walk(board)
open(sys.argv[2], "w").write("".join(expr + "\n" for expr in exprs))
for panel_id, count in collections.Counter(ids).items():
    if count > 1:
        print(panel_id)
PY
    fail "$dashboard: $(tail -n 1 "$work/json.err")"
  fi
  duplicates=$(cat "$work/duplicates")
fi
[[ -z "$duplicates" ]] || fail "$dashboard: panel ids used more than once: $(echo "$duplicates" | tr '\n' ' ')"
echo "$dashboard: valid JSON, uid poolmap, unique panel ids"

# The rules' `expr` values: on the key's line, or a block scalar (expr: | or >) on the lines below
# that are indented deeper than the key.
awk '
  block { match($0, /^ */); if ($0 ~ /^ *$/ || RLENGTH > indent) { print; next } block = 0 }
  /^ *(- )?expr:/ {
    match($0, /^ *(- )?/); indent = RLENGTH
    value = $0; sub(/^ *(- )?expr: */, "", value)
    if (value ~ /^[|>][-+0-9]*$/) block = 1; else print value
  }' "$rules" > "$work/rules.exprs"

names_in() {  # the poolmap_ identifiers in a file, one a line, sorted
  grep -oE '[A-Za-z0-9_:]*poolmap_[A-Za-z0-9_:]*' "$1" | grep '^poolmap_' | sort -u || true
}
names_in "$work/board.exprs" > "$work/board.names"
names_in "$work/rules.exprs" > "$work/rules.names"
[[ -s "$work/board.names" ]] || fail "found no poolmap_ metric in the expr fields of $dashboard"
[[ -s "$work/rules.names" ]] || fail "found no poolmap_ metric in the expr fields of $rules"
echo "$dashboard: $(wc -l < "$work/board.exprs") expressions, $(wc -l < "$work/board.names") metric names"
echo "$rules: $(grep -c '' "$work/rules.exprs") expression lines, $(wc -l < "$work/rules.names") metric names"

# ---- a broker, and its /metrics ----
# Nothing from the environment (POOLMAP_BROKER_DAEMON=1, ...) changes how it starts.
while read -r variable; do unset "$variable"; done < <(compgen -e | grep '^POOLMAP_BROKER_' || true)
"$broker" --clients 'tcp://127.0.0.1:*' --workers 'tcp://127.0.0.1:*' --metrics 127.0.0.1:0 \
  --secret-file "$work/secret" --log-level info > "$work/broker.out" 2> "$work/broker.err" &
broker_pid=$!

url=
deadline=$((SECONDS + 30))
while :; do
  if grep -q '^poolmap-broker ready ' "$work/broker.out"; then
    url=$(grep -oE 'metrics at http://[^ ]+/metrics' "$work/broker.err" | head -n 1 | cut -d' ' -f3)
    [[ -n "$url" ]] && break
  fi
  if ! kill -0 "$broker_pid" 2> /dev/null; then
    status=0
    wait "$broker_pid" || status=$?
    broker_pid=
    echo "the broker exited (status $status) before it was ready; its output:"
    cat "$work/broker.out" "$work/broker.err"
    fail "no broker to scrape"
  fi
  if ((SECONDS >= deadline)); then
    echo "the broker's output so far:"
    cat "$work/broker.out" "$work/broker.err"
    fail "no ready line and 'metrics at URL' log line from the broker within 30 s"
  fi
  sleep 0.05
done
echo "broker: $(cat "$work/broker.out"), metrics at $url"

curl -fsS --noproxy '*' --max-time 10 "$url" > "$work/metrics" || fail "curl could not fetch $url"

# What /metrics serves: every sample's name, every declared name, and a histogram's (summary's)
# series names.
{
  grep -vE '^(#|$)' "$work/metrics" | sed -E 's/[{ ].*//'
  awk '$1 == "#" && $2 == "TYPE" {
    print $3
    if ($4 == "histogram") print $3 "_bucket"
    if ($4 == "histogram" || $4 == "summary") { print $3 "_sum"; print $3 "_count" }
  }' "$work/metrics"
} | sort -u > "$work/served.names"
grep '^poolmap_' "$work/served.names" > /dev/null || {
  cat "$work/metrics"
  fail "$url serves no poolmap_ metric"
}

missing=0
for file in board rules; do
  [[ $file == board ]] && path=$dashboard || path=$rules
  while read -r name; do
    if ! grep -qxF "$name" "$work/served.names"; then
      echo "FAIL: $path uses $name, which $url does not serve"
      missing=$((missing + 1))
    fi
  done < "$work/$file.names"
done
if ((missing > 0)); then
  echo "what the broker serves:"
  grep '^# TYPE poolmap_' "$work/metrics"
  exit 1
fi
echo "every metric the dashboard and the alert rules use is served: $(sort -u "$work/board.names" "$work/rules.names" | tr '\n' ' ')"
unused=$(grep -E '^# TYPE poolmap_' "$work/metrics" | cut -d' ' -f3 | sort -u \
  | comm -23 - <(sed -E 's/_(bucket|sum|count)$//' "$work/board.names" | sort -u) | tr '\n' ' ')
[[ -z "$unused" ]] || echo "note: served but not on the dashboard: $unused"

# ---- the rules' syntax ----
if command -v promtool > /dev/null; then
  promtool check rules "$rules"
else
  echo "promtool not found: rules syntax not checked"
fi
echo "PASS"
