#!/usr/bin/env bash
# The README's snippets, verbatim, against an installed tree: what a new user copies must build and
# run.   usage: readme_test.sh BUILD_DIR README WORK_DIR
#
# Convention in README.md: a line `<!-- snippet: NAME -->` right before a code fence saves that
# fence's body as NAME. Every ```cpp and ```cmake fence must carry one (so every C++ snippet is
# compiled here); these are expected:
#   main.cpp         the first program (embedded mode; POOLMAP_BROKER picks remote mode)
#   more.cpp         the rest of the Pool API; any other *.cpp except tasks.cpp is built and run too
#   CMakeLists.txt   a whole consumer project: builds app from main.cpp and the task library
#                    mytasks from tasks.cpp with poolmap_add_task_library
#   tasks.cpp        the task library's source
#   pkg-config.sh    the pkg-config command line, run in a folder holding main.cpp
#
# Steps: install BUILD_DIR into a staging prefix, move it to an unusual prefix (the package must
# be relocatable: no path of the install step may survive in it), build with the README's CMake
# lines (and -Werror) and with its pkg-config line, run each program in embedded mode, then run
# app in remote mode (POOLMAP_BROKER) against poolmap-broker and poolmap-worker from the installed
# tree, the worker loading the task library built by poolmap_add_task_library. Every process it
# starts is bounded by `timeout` and reaped on exit.
set -euo pipefail
unset POOLMAP_BROKER  # embedded mode unless this script says otherwise
build_dir=$(cd "$1" && pwd)
readme=$2
work_dir=$3

started=$SECONDS
step() { printf '[%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
# Prints a log file and fails.
fail_with_log() {
  local log=$1
  shift
  echo "---- $log" >&2
  tail -n 60 "$log" >&2 || true
  fail "$@"
}

rm -rf "$work_dir"
mkdir -p "$work_dir/snippets"
snippets=$work_dir/snippets

# ---- extract the snippets ----
awk -v out="$snippets" '
  function fail(msg) { print FILENAME ":" NR ": " msg > "/dev/stderr"; bad = 1; exit 1 }
  /^<!-- snippet: [^ ]+ -->$/ {
    if (name != "") fail("snippet marker inside a snippet")
    pending = $3
    if (pending in seen) fail("snippet " pending " given twice")
    seen[pending] = 1
    next
  }
  /^```/ {
    if (name != "") { name = ""; next }                 # closing fence
    if (pending == "" && $0 ~ /^```(cpp|c\+\+|cmake)/) fail("a " substr($0, 4) " fence without a <!-- snippet: NAME --> line before it")
    if (pending != "") { name = pending; pending = ""; printf "" > (out "/" name); next }
    inside_other = !inside_other                         # a fence not extracted (shell commands)
    next
  }
  { if (pending != "") fail("snippet marker for " pending " not followed by a code fence")
    if (name != "") print > (out "/" name) }
  END { if (!bad && name != "") fail("snippet " name " not closed") }
' "$readme" || fail "cannot extract the snippets from $readme"
for expected in main.cpp more.cpp CMakeLists.txt tasks.cpp pkg-config.sh; do
  [[ -s $snippets/$expected ]] || fail "README.md has no snippet $expected"
done
grep -q 'poolmap_add_task_library(mytasks tasks.cpp)' "$snippets/CMakeLists.txt" ||
  fail "the README's CMakeLists.txt does not build the task library mytasks from tasks.cpp"
step "extracted: $(cd "$snippets" && echo *)"

# ---- install at one prefix, use it at another ----
staging=$work_dir/staging
prefix=$work_dir/odd.prefix-v0+relocated
cmake --install "$build_dir" --prefix "$staging" > "$work_dir/install.log" 2>&1 ||
  fail_with_log "$work_dir/install.log" "cmake --install"
mv "$staging" "$prefix"
for file in lib/cmake/poolmap/poolmapConfig.cmake lib/cmake/poolmap/poolmapTaskLibrary.cmake \
  lib/pkgconfig/poolmap.pc bin/poolmap-broker bin/poolmap-worker bin/poolmap; do
  [[ -e $prefix/$file ]] || fail "not installed: $file"
done
if grep -rIl -e "$staging" -e /usr/local "$prefix/lib/cmake" "$prefix/lib/pkgconfig"; then
  fail "the package names a path of the install step (above); it must be relocatable"
fi
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[[ $(pkg-config --variable=pcfiledir poolmap) == "$prefix/lib/pkgconfig" ]] ||
  fail "pkg-config finds another poolmap.pc: $(pkg-config --variable=pcfiledir poolmap)"
pc_includedir=$(pkg-config --variable=includedir poolmap)
[[ -f $pc_includedir/poolmap/poolmap.hpp ]] || fail "poolmap.pc: includedir=$pc_includedir has no poolmap/poolmap.hpp"
pc_libdir=$(pkg-config --variable=libdir poolmap)
[[ -e $pc_libdir/libpoolmap_client.so ]] || fail "poolmap.pc: libdir=$pc_libdir has no libpoolmap_client.so"
step "installed into $staging, moved to $prefix"

# ---- the README's CMake lines (verbatim; the compiler's default standard, C++17 for g++ 12) ----
project_dir=$work_dir/cmake-project
mkdir -p "$project_dir"
cp "$snippets"/*.cpp "$snippets/CMakeLists.txt" "$project_dir/"
extra_programs=()
for source in "$snippets"/*.cpp; do
  name=$(basename "$source" .cpp)
  [[ $name == main || $name == tasks ]] || extra_programs+=("$name")
done
{
  echo
  echo "# Added by tests/install/readme_test.sh: the README's other programs."
  for name in "${extra_programs[@]}"; do
    echo "add_executable($name $name.cpp)"
    echo "target_link_libraries($name PRIVATE poolmap::client)"
  done
} >> "$project_dir/CMakeLists.txt"
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
cmake -S "$project_dir" -B "$project_dir/build" "${generator[@]}" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_CXX_FLAGS="-Wall -Wextra -Werror" > "$work_dir/cmake-configure.log" 2>&1 ||
  fail_with_log "$work_dir/cmake-configure.log" "configuring the README's CMakeLists.txt"
poolmap_dir=$(sed -n 's/^poolmap_DIR:PATH=//p' "$project_dir/build/CMakeCache.txt")
[[ $poolmap_dir == "$prefix/lib/cmake/poolmap" ]] || fail "find_package(poolmap) found $poolmap_dir"
cmake --build "$project_dir/build" --parallel 2 > "$work_dir/cmake-build.log" 2>&1 ||
  fail_with_log "$work_dir/cmake-build.log" "building the README's CMake project"
task_library=$project_dir/build/libmytasks.so
[[ -f $task_library ]] || fail "poolmap_add_task_library(mytasks ...) built no libmytasks.so"
step "built with CMake: app, ${extra_programs[*]}, libmytasks.so"

# ---- the README's pkg-config line (verbatim) ----
pc_dir=$work_dir/pkg-config-project
mkdir -p "$pc_dir"
cp "$snippets/main.cpp" "$pc_dir/"
(cd "$pc_dir" && bash -euo pipefail "$snippets/pkg-config.sh") > "$work_dir/pkg-config-build.log" 2>&1 ||
  fail_with_log "$work_dir/pkg-config-build.log" "building with the README's pkg-config line"
[[ -x $pc_dir/app ]] || fail "the README's pkg-config line built no ./app"
step "built with pkg-config: app"

# ---- run them ----
# Runs a program (bounded) and checks that its output holds the line the README promises.
expect_line() {
  local expected=$1
  shift
  local output rc=0
  output=$(timeout -k 5 60 "$@" 2> "$work_dir/run.err") || rc=$?
  if ((rc != 0)); then
    cat "$work_dir/run.err" >&2
    fail "$* failed (exit $rc)"
  fi
  grep -qxF -- "$expected" <<< "$output" || fail "$*: expected a line '$expected', got: $output"
}
# What a program prints, as the README says: the comment on its last line that writes to std::cout
# (`std::cout << squares.back() << "\n";   // 999998000001`).
promised_line() {
  local expected
  expected=$(sed -n 's|.*std::cout <<.*// *\([^/]*[^ /]\) *$|\1|p' "$snippets/$1.cpp" | tail -n 1)
  [[ -n $expected ]] || fail "$1.cpp: no '// OUTPUT' comment on its last line that writes to std::cout"
  echo "$expected"
}
main_result=$(promised_line main)
expect_line "$main_result" "$project_dir/build/app"
expect_line "$main_result" "$pc_dir/app"
for name in "${extra_programs[@]}"; do
  expected=$(promised_line "$name")
  expect_line "$expected" "$project_dir/build/$name"
done
step "ran in embedded mode: app (CMake), app (pkg-config), ${extra_programs[*]}"

# ---- remote mode: the installed daemons, the task library from poolmap_add_task_library ----
broker_pid=
worker_pid=
reap() {
  local pid
  for pid in $worker_pid $broker_pid; do
    kill -TERM "$pid" 2> /dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
  done
}
trap reap EXIT
timeout -k 5 120 "$prefix/bin/poolmap-broker" --clients 'tcp://127.0.0.1:*' --workers 'tcp://127.0.0.1:*' \
  > "$work_dir/broker.out" 2> "$work_dir/broker.log" &
broker_pid=$!
ready=
for _ in $(seq 200); do
  ready=$(grep -m1 '^poolmap-broker ready ' "$work_dir/broker.out" || true)
  [[ -n $ready ]] && break
  kill -0 "$broker_pid" 2> /dev/null || break
  sleep 0.05
done
[[ -n $ready ]] || fail_with_log "$work_dir/broker.log" "poolmap-broker did not print its ready line within 10 s"
client_endpoint=$(sed -n 's/.* clients=\([^ ]*\).*/\1/p' <<< "$ready")
worker_endpoint=$(sed -n 's/.* workers=\([^ ]*\).*/\1/p' <<< "$ready")
timeout -k 5 120 "$prefix/bin/poolmap-worker" --broker "$worker_endpoint" --tasks "$task_library" --processes 2 \
  > "$work_dir/worker.log" 2>&1 &
worker_pid=$!
expect_line "$main_result" env POOLMAP_BROKER="$client_endpoint" "$project_dir/build/app"
status=$(timeout -k 5 30 "$prefix/bin/poolmap" status --broker "$client_endpoint" --json) ||
  fail_with_log "$work_dir/broker.log" "poolmap status failed"
chunks_done=$(sed -n 's/.*"chunks_done":\([0-9]*\).*/\1/p' <<< "$status")
((${chunks_done:-0} > 0)) || fail "the broker did no chunks: the remote run did not go through it: $status"
step "ran in remote mode: app via $client_endpoint, libmytasks.so in poolmap-worker ($chunks_done chunks)"
reap
trap - EXIT
step "ok"
