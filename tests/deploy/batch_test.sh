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
# scontrol show hostnames NODELIST: one node, this machine's loopback address.
[[ "$1 $2" == "show hostnames" ]] && echo 127.0.0.1
STANDIN
cat > "$work/bin/srun" <<'STANDIN'
#!/usr/bin/env bash
# srun [--options...] COMMAND ARGS...: runs the command here, once (one node).
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
  if compgen -G "$work/job/.poolmap-keys.*" > /dev/null; then
    echo "FAIL: the $name job left its key directory behind"
    return 1
  fi
  if pgrep -f "$prefix/bin/poolmap-(broker|worker)" > /dev/null; then
    echo "FAIL: the $name job left daemons running:"
    pgrep -af "$prefix/bin/poolmap-(broker|worker)"
    return 1
  fi
  echo "$name job: the program printed $expected, the sum of the squares of 0..999"
}

run_job slurm "$source/deploy/slurm/poolmap.sbatch" SLURM_JOB_ID=4242 SLURM_JOB_NODELIST=127.0.0.1 \
  SLURM_JOB_NUM_NODES=1 SLURM_CPUS_PER_TASK=2
run_job pbs "$source/deploy/pbs/poolmap.pbs" PBS_JOBID=4243.server PBS_NODEFILE="$work/job/nodefile" \
  PBS_O_WORKDIR="$work/job" PBS_NCPUS=2
