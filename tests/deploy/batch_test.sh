#!/usr/bin/env bash
# Deploy.Batch.PbsAndSlurmScriptsRunAJob: deploy/pbs/poolmap.pbs and deploy/slurm/poolmap.sbatch
# run a real job on this machine, with the batch system replaced by local stand-ins: the
# scheduler's variables (PBS_NODEFILE, PBS_JOBID, SLURM_JOB_ID, SLURM_JOB_NODELIST, ...) set by
# hand, and `pbsdsh`, `srun` and `scontrol` as small scripts that run the command here. Each job
# starts a CURVE broker bound to 127.0.0.1 (POOLMAP_BIND_HOST) and a worker supervisor with 2
# processes from an installed tree (with the test task library), and as its program a client that
# maps test.square over 0..999 through the job's variables. Checks the
# program's output and exit status, that the job's key directory is gone and that nothing it
# started is left running. Both scripts must also pass shellcheck.
#
# Then each script runs a job with POOLMAP_HA=1 on two stand-in nodes, 127.0.0.1 and localhost:
# two names for this host, so the two brokers of the pair (the primary on the first node, the
# backup on the second, through srun/pbsdsh) bind 127.0.0.1 too, on free ports of their own (the
# peer links on POOLMAP_HA_PORT and POOLMAP_BACKUP_HA_PORT, picked free here). The Slurm job's
# program maps through the pair; the PBS job's program starts a map of about 4 s (test.logged_hash,
# 800 items of 20 ms on 4 worker processes), kills the primary broker while it runs (SIGKILL, by
# its pid: the job script's child), and must still get every result, in order, from the backup,
# which takes over (its log says so in the job's output).
#
#   tests/deploy/batch_test.sh BUILD_DIR SOURCE_DIR WORK_DIR
set -euo pipefail
build=$(realpath "$1")
source=$(realpath "$2")
work=$(realpath -m "$3")

rm -rf "$work"
mkdir -p "$work/bin" "$work/job"
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
prefix=$work/prefix

if command -v shellcheck > /dev/null; then
  shellcheck "$source/deploy/pbs/poolmap.pbs" "$source/deploy/slurm/poolmap.sbatch"
  echo "shellcheck: clean"
else
  echo "shellcheck is missing: scripts/deps installs it"
  exit 1
fi

# ---- stand-ins for the batch system's launchers ----
cat > "$work/bin/scontrol" <<'STANDIN'
#!/usr/bin/env bash
# scontrol show hostnames NODELIST: the comma-separated names of NODELIST, one a line (no ranges).
[[ "$1 $2" == "show hostnames" ]] && tr ',' '\n' <<< "$3"
STANDIN
cat > "$work/bin/srun" <<'STANDIN'
#!/usr/bin/env bash
# srun [--options...] COMMAND ARGS...: runs the command here, once (whatever nodes it asks for).
while [[ $# -gt 0 && "$1" == --* ]]; do shift; done
exec "$@"
STANDIN
cat > "$work/bin/pbsdsh" <<'STANDIN'
#!/usr/bin/env bash
# pbsdsh -n INDEX -- COMMAND ARGS...: runs the command here.
while [[ $# -gt 0 && "$1" != -- ]]; do shift; done
shift
exec "$@"
STANDIN
chmod +x "$work/bin/"*
echo 127.0.0.1 > "$work/job/nodefile"

# The job's program: a client against the job's cluster, through the variables the script exports
# (POOLMAP_BROKER and the CURVE keys). It prints the sum of the squares of 0..999.
# shellcheck disable=SC2016  # expanded by the job's shell, not here
program=(bash -c 'exec "$0" map "$POOLMAP_BROKER" 1000' "$build/tests/poolmap_test_client")
expected=332833500
meaning="the sum of the squares of 0..999"

run_job() {  # run_job NAME SCRIPT [VAR=VALUE...]
  local name=$1 script=$2
  shift 2
  local out=$work/$name.out status=0
  (
    cd "$work/job"
    env PATH="$work/bin:$PATH" POOLMAP_PREFIX="$prefix" POOLMAP_BIND_HOST=127.0.0.1 \
        POOLMAP_TASKS="$build/tests/libpoolmap_test_tasks.so" \
        POOLMAP_WORKER_ARGS="--processes 2" POOLMAP_KEY_DIR="$work/job" TMPDIR="$work" "$@" \
        timeout 120 bash "$script" "${program[@]}"
  ) > "$out" 2>&1 || status=$?
  if ((status != 0)) || ! grep -qx "$expected" "$out"; then
    echo "FAIL: the $name job (exit status $status):"
    cat "$out"
    return 1
  fi
  local pattern
  while read -r pattern; do  # $want: lines the job's output must have, one pattern a line
    [[ -n "$pattern" ]] || continue
    if ! grep -q -- "$pattern" "$out"; then
      echo "FAIL: the $name job's output has no line with '$pattern':"
      cat "$out"
      return 1
    fi
  done <<< "${want:-}"
  if compgen -G "$work/job/.poolmap-keys.*" > /dev/null; then
    echo "FAIL: the $name job left its key directory behind"
    return 1
  fi
  if pgrep -f "$prefix/bin/poolmap-(broker|worker)" > /dev/null; then
    echo "FAIL: the $name job left daemons running:"
    pgrep -af "$prefix/bin/poolmap-(broker|worker)"
    return 1
  fi
  echo "$name job: the program printed $expected, $meaning"
  while read -r pattern; do
    [[ -z "$pattern" ]] || grep -- "$pattern" "$out" | sed 's/^/  /'
  done <<< "${want:-}"
}

run_job slurm "$source/deploy/slurm/poolmap.sbatch" SLURM_JOB_ID=4242 SLURM_JOB_NODELIST=127.0.0.1 \
  SLURM_JOB_NUM_NODES=1 SLURM_CPUS_PER_TASK=2
run_job pbs "$source/deploy/pbs/poolmap.pbs" PBS_JOBID=4243.server PBS_NODEFILE="$work/job/nodefile" \
  PBS_O_WORKDIR="$work/job" PBS_NCPUS=2

# ---- a broker pair (POOLMAP_HA=1) on two stand-in nodes ----
port_free() {  # port: nothing listens on it (on any address)
  ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && [[ -z "$(ss -Htln "( sport = :$1 )" 2> /dev/null)" ]]
}
ha_ports=()
while ((${#ha_ports[@]} < 2)); do
  port=$((20000 + RANDOM % 12000))
  if port_free "$port" && [[ "${ha_ports[*]:-}" != "$port" ]]; then ha_ports+=("$port"); fi
done
ha=(POOLMAP_HA=1 POOLMAP_HA_PORT="${ha_ports[0]}" POOLMAP_BACKUP_HA_PORT="${ha_ports[1]}")

want="broker pair, primary on 127.0.0.1, backup on localhost" \
  run_job slurm-ha "$source/deploy/slurm/poolmap.sbatch" "${ha[@]}" SLURM_JOB_ID=4244 \
  SLURM_JOB_NODELIST=127.0.0.1,localhost SLURM_JOB_NUM_NODES=2 SLURM_CPUS_PER_TASK=2

printf '%s\n' 127.0.0.1 localhost > "$work/job/nodefile"
# The program: a map through the pair; a second in, it kills the primary broker, the job script's
# child (--ha primary; [p]: the pattern must not match this program's own command line, which
# holds it); the map must end "exact". Client heartbeat as the brokers' (1 s).
# shellcheck disable=SC2016  # expanded by the job's shell, not here
program=(bash -c 'POOLMAP_TEST_HEARTBEAT_MS=1000 "$0" slow "$POOLMAP_BROKER" 800 20000 & client=$!
                  sleep 1
                  primary=$(pgrep -P "$PPID" -f -- "[p]oolmap-broker .*--ha primary") || exit 1
                  kill -KILL "$primary" && echo "killed the primary broker, pid $primary, while the map runs" >&2
                  wait "$client"' "$build/tests/poolmap_test_client")
expected=exact meaning="every result in place, across the failover" \
want=$'broker pair, primary on 127.0.0.1, backup on localhost\nkilled the primary broker\n(backup) is now ACTIVE' \
  run_job pbs-ha "$source/deploy/pbs/poolmap.pbs" "${ha[@]}" PBS_JOBID=4245.server \
  PBS_NODEFILE="$work/job/nodefile" PBS_O_WORKDIR="$work/job" PBS_NCPUS=2
