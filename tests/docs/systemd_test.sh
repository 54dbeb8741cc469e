#!/usr/bin/env bash
# Deploy.Systemd.UnitsVerify: the units in deploy/systemd pass `systemd-analyze verify` without a
# word (an unknown key or a missing program is only a warning there, so any output fails the test),
# with their /opt/poolmap paths pointed at a real installed tree.
#
#   tests/docs/systemd_test.sh BUILD_DIR SOURCE_DIR WORK_DIR
set -euo pipefail
build=$1
source=$2
work=$3

if ! command -v systemd-analyze > /dev/null; then
  echo "systemd-analyze is missing: scripts/deps installs it (package systemd)"
  exit 1
fi
rm -rf "$work"
mkdir -p "$work/units"
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
for unit in "$source"/deploy/systemd/*.service; do
  sed "s|/opt/poolmap|$work/prefix|g" "$unit" > "$work/units/$(basename "$unit")"
done
cd "$work/units"
status=0
output=$(systemd-analyze verify ./*.service 2>&1) || status=$?
# Said by systemd itself in some containers, about the container, not about the units.
# shellcheck disable=SC2016  # a literal $
output=$(grep -v -e 'Failed to read \$container of PID 1' <<< "$output" || true)
if ((status != 0)) || [[ -n "$output" ]]; then
  echo "systemd-analyze verify (exit status $status) says:"
  echo "$output"
  exit 1
fi
echo "verified: $(ls)"
