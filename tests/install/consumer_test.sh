#!/usr/bin/env bash
# Installs the build tree into a fresh prefix, builds an outside project against it with
# find_package(poolmap) and runs it.   usage: consumer_test.sh BUILD_DIR CONSUMER_SOURCE WORK_DIR
set -euo pipefail
build_dir=$1
consumer_source=$2
work_dir=$3
rm -rf "$work_dir"
mkdir -p "$work_dir"
cmake --install "$build_dir" --prefix "$work_dir/prefix" > "$work_dir/install.log"
test -f "$work_dir/prefix/lib/cmake/poolmap/poolmapConfig.cmake"
test -f "$work_dir/prefix/lib/pkgconfig/poolmap.pc"
test -x "$work_dir/prefix/bin/poolmap-broker"
cmake -S "$consumer_source" -B "$work_dir/build" -DCMAKE_PREFIX_PATH="$work_dir/prefix" > "$work_dir/configure.log"
cmake --build "$work_dir/build" > "$work_dir/build.log"
output=$("$work_dir/build/consumer")
echo "$output"
[[ "$output" == "consumer ok "* ]]
# The installed daemons run from the prefix too.
"$work_dir/prefix/bin/poolmap-broker" --help | grep -q "Usage:"
