#!/usr/bin/env bash
# Docs.Operations.FlagTablesMatchHelp: the flag tables of docs/OPERATIONS.md list exactly the
# flags each daemon's --help shows, and every flag (but --help and --version) names the environment
# variable it also reads.
#
#   tests/docs/flags_test.sh BUILD_DIR OPERATIONS_MD
set -euo pipefail
build=$1
operations=$2
failed=0

# The long flags in the first column of the table in section "## N. `PROGRAM`".
table_flags() {
  awk -v heading="\`$1\`" '
    /^## / { inside = index($0, heading) > 0; next }
    inside && /^\| `-/ { split($0, cells, "|"); print cells[2] }' "$operations" |
    grep -o -- '--[a-z0-9-]*' | sort -u
}

# The long flags --help lists (internal ones are hidden from it).
help_flags() { "$1" --help | grep -E '^  +-' | awk '{print $1}' | grep -o -- '--[a-z0-9-]*' | sort -u; }

check() {
  local program=$1 binary=$2
  local documented shown
  documented=$(table_flags "$program")
  shown=$(help_flags "$binary")
  if [[ -z "$documented" ]]; then
    echo "FAIL: no flag table found for $program in $operations"
    failed=1
    return
  fi
  local missing extra
  missing=$(comm -13 <(echo "$documented") <(echo "$shown"))
  extra=$(comm -23 <(echo "$documented") <(echo "$shown"))
  if [[ -n "$missing" ]]; then
    echo "FAIL: $program --help has flags its table in docs/OPERATIONS.md lacks:" "$(tr '\n' ' ' <<< "$missing")"
    failed=1
  fi
  if [[ -n "$extra" ]]; then
    echo "FAIL: docs/OPERATIONS.md documents $program flags its --help does not have:" "$(tr '\n' ' ' <<< "$extra")"
    failed=1
  fi
  local without_env
  without_env=$("$binary" --help | grep -E '^  +-' | grep -v -E -- '--(help|version)\b' | grep -v 'Env:' || true)
  if [[ -n "$without_env" ]]; then
    echo "FAIL: $program flags that read no environment variable:"
    echo "$without_env"
    failed=1
  fi
  echo "$program: $(echo "$shown" | wc -l) flags in --help, $(echo "$documented" | wc -l) in the table"
}

check poolmap-broker "$build/broker/poolmap-broker"
check poolmap-worker "$build/worker/poolmap-worker"
exit $failed
