#!/usr/bin/env bash
# The docker-compose demo, really run, with a broker failover in the middle: builds the image of
# deploy/Dockerfile, starts the standby pair of brokers (`broker`, the primary, and `broker-backup`)
# and three worker containers of docker-compose.yml with host networking, both brokers bound to
# 127.0.0.1 only (every packet stays on loopback), and runs the demo (Monte Carlo pi) against both
# brokers' endpoints. Once the demo's map runs (its job shows in `poolmap status --json` of the
# active broker), it kills the active broker's container with SIGKILL (`docker kill`), then checks
# that the demo still prints its row, right, that the other broker reports itself active, and that
# every worker container ran chunks (`poolmap status --json` of both brokers against the worker
# containers' logs), and tears everything down, also on failure or Ctrl-C.
#
#   tests/compose/run.sh
#
# Needs: Debian 12, root (or sudo), the host's Debian mirror; no image registry. What is missing is
# set up first: docker.io, docker-compose (v1) and jq are installed with apt-get, dockerd is started
# when none answers (and left running; log in /var/log/poolmap-dockerd.log), and the base image the
# Dockerfile starts FROM (poolmap-base:bookworm) is made with `debootstrap --variant=minbase` and
# `docker import` when it does not exist.
#
# Takes, on 2 cores: about 9 minutes the first time (base image 2 to 3 min, the image build with
# its compile about 6 min), about 6 minutes after a change to the sources (the compile layer is
# built again), under a minute when the images are cached (the demo runs a longer map than its
# default, POOLMAP_DEMO_SAMPLES below, so that the failover lands in it; the failover itself takes
# about 4 s).
#
# Exit status: 0 passed, 77 skipped (no Docker engine can be started on this machine), else failed.
#
# Environment:
#   POOLMAP_CLIENT_PORT, POOLMAP_WORKER_PORT, POOLMAP_HA_PORT
#                                             the primary broker's ports: clients, workers, peer link
#   POOLMAP_BACKUP_CLIENT_PORT, POOLMAP_BACKUP_WORKER_PORT, POOLMAP_BACKUP_HA_PORT
#                                             the backup broker's (default, when none of the six is
#                                             set: 5555-5557 and 5565-5567 when all are free, else
#                                             six free ports picked here; when some are set, the
#                                             others take those defaults)
#   POOLMAP_DEMO_SAMPLES                      random points per task of the demo (default here
#                                             10000000, five times the compose file's: a map of
#                                             several seconds, long enough to kill a broker in)
#   POOLMAP_DEBIAN_MIRROR                     mirror for debootstrap (default: the first bookworm
#                                             source in /etc/apt, else http://deb.debian.org/debian)
#
# The compose project is the test's own (poolmap-compose-test-PID): `docker-compose down -v
# --remove-orphans` at the end removes its containers and its key volume and touches no other
# project. The images (poolmap-base:bookworm, poolmap:local) stay, for the next run.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
workers=3             # worker containers
processes=2           # worker processes per container
started=$SECONDS
project=poolmap-compose-test-$$
work=$(mktemp -d "${TMPDIR:-/tmp}/poolmap-compose-test.XXXXXX")
rootfs=""             # debootstrap's directory while the base image is made
compose_started=0
child=""              # the time-limited command running now (see bounded)

say() { echo "compose test [$((SECONDS - started))s]: $*" >&2; }
fail() {
  echo "compose test: FAIL: $*" >&2
  exit 1
}
# No Docker engine can run on this machine (a container without the kernel features dockerd needs):
# exit 77, "skipped", which scripts/test reports without failing; every other problem fails.
skip() {
  echo "compose test: SKIPPED: $*" >&2
  exit 77
}
show_log() {  # file [lines]: the end of a log, to stderr
  echo "---- ${1##*/} (last ${2:-30} lines) ----" >&2
  tail -n "${2:-30}" "$1" >&2 || true
  echo "----" >&2
}

sudo=()
if ((EUID != 0)); then
  command -v sudo > /dev/null 2>&1 || fail "run as root or install sudo (apt-get, dockerd and debootstrap need root)"
  sudo=(sudo)
fi
docker=(docker)
compose=()

exec 3>&1 4>&2  # the script's own stdout and stderr, for cleanup (below)
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  exec 1>&3 2>&4  # a signal can land while a step's output goes to its log
  if [[ -n "$child" ]]; then  # interrupted: stop what was running (timeout passes TERM on)
    kill -TERM "$child" 2> /dev/null || true
    wait "$child" 2> /dev/null || true
  fi
  if ((compose_started)); then
    if ((status != 0)); then
      echo "compose test: the services' last log lines:" >&2
      timeout 60 "${compose[@]}" logs --no-color --tail=25 >&2 || true
    fi
    say "tearing down (docker-compose -p $project down -v --remove-orphans)"
    if ! timeout 180 "${compose[@]}" down -v --remove-orphans > "$work/down.log" 2>&1; then
      show_log "$work/down.log"
      echo "compose test: FAIL: teardown failed; remove project $project by hand" >&2
      ((status != 0)) || status=1
    fi
  fi
  [[ -z "$rootfs" ]] || remove_rootfs || true
  rm -rf "$work"
  if ((status == 0)); then
    say "passed"
  elif ((status == 77)); then
    :
  else
    echo "compose test: failed after $((SECONDS - started)) s (exit status $status)" >&2
  fi
  exit "$status"
}
remove_rootfs() {  # debootstrap's tree, and /proc, /sys... that an interrupted debootstrap left mounted in it
  local mount
  awk -v dir="$rootfs/" 'index($2, dir) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r mount; do
    "${sudo[@]}" umount -l "$mount" || true
  done
  "${sudo[@]}" rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Long steps run under `timeout`, in the background while the script waits for them: a signal
# reaches the trap at once (a foreground `timeout` keeps Ctrl-C from its command and holds the
# trap until the command ends), and cleanup stops the step.
start_bounded() {  # SECONDS COMMAND...
  timeout "$1" "${@:2}" &
  child=$!
}
wait_bounded() {  # the command's status; 124 when it ran out of time
  local status=0
  wait "$child" || status=$?
  child=""
  return "$status"
}
bounded() {  # SECONDS COMMAND...
  start_bounded "$@"
  wait_bounded
}

apt_install() {  # packages...
  command -v apt-get > /dev/null 2>&1 || fail "missing $* and no apt-get to install them with"
  say "installing $* with apt-get"
  bounded 600 "${sudo[@]}" apt-get update -qq > "$work/apt.log" 2>&1 || { show_log "$work/apt.log"; fail "apt-get update failed"; }
  bounded 900 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >> "$work/apt.log" 2>&1 || { show_log "$work/apt.log"; fail "apt-get install $* failed"; }
}

# ---- 1. docker, docker-compose, jq ----------------------------------------------------------------
missing=()
{ command -v docker && command -v dockerd; } > /dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose > /dev/null 2>&1 || missing+=(docker-compose)
command -v jq > /dev/null 2>&1 || missing+=(jq)
((${#missing[@]} == 0)) || apt_install "${missing[@]}"

# ---- 2. a docker daemon that answers --------------------------------------------------------------
if ((EUID != 0)) && ! docker info > /dev/null 2>&1; then
  docker=(sudo docker)  # not in the docker group: talk to the daemon through sudo
fi
if ! "${docker[@]}" info > /dev/null 2>&1; then
  if pgrep -x dockerd > /dev/null 2>&1; then
    say "dockerd is running but does not answer yet; waiting"
  else
    say "no docker daemon answers: starting dockerd (it keeps running; log: /var/log/poolmap-dockerd.log)"
    # In a session of its own, so that Ctrl-C on this script does not stop it.
    "${sudo[@]}" setsid -f sh -c 'exec dockerd >> /var/log/poolmap-dockerd.log 2>&1' < /dev/null
  fi
  for ((i = 0; i < 60; ++i)); do
    "${docker[@]}" info > /dev/null 2>&1 && break
    sleep 1
  done
  if ! "${docker[@]}" info > /dev/null 2>&1; then
    [[ ! -r /var/log/poolmap-dockerd.log ]] || show_log /var/log/poolmap-dockerd.log
    skip "no Docker engine runs here: dockerd did not answer within 60 s (its log is above)"
  fi
fi
say "docker $("${docker[@]}" version --format '{{.Server.Version}}'), $(docker-compose version --short 2>/dev/null || echo 'docker-compose ?')"

# ---- 3. the base image (no registry: debootstrap + docker import) --------------------------------
base=$(awk 'toupper($1) == "FROM" { print $2; exit }' "$root/deploy/Dockerfile")
[[ -n "$base" ]] || fail "no FROM line in deploy/Dockerfile"

debian_mirror() {  # the first `deb` source for bookworm in the host's apt configuration
  local file found
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r "$file" ]] || continue
    found=$(sed -E 's/\[[^]]*\]//g' "$file" | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
    [[ -z "$found" ]] || { echo "$found"; return; }
  done
  for file in /etc/apt/sources.list.d/*.sources; do  # deb822: Types, URIs, Suites, Enabled
    [[ -r "$file" ]] || continue
    found=$(awk 'BEGIN { RS = "" }
      { types = ""; uris = ""; suites = ""; enabled = "yes"
        n = split($0, lines, "\n")
        for (i = 1; i <= n; ++i) {
          if (lines[i] ~ /^[ \t]*#/ || index(lines[i], ":") == 0) continue
          key = tolower(substr(lines[i], 1, index(lines[i], ":") - 1))
          value = " " substr(lines[i], index(lines[i], ":") + 1) " "
          gsub(/[ \t]+/, " ", value)
          if (key == "types") types = value; else if (key == "uris") uris = value
          else if (key == "suites") suites = value; else if (key == "enabled") enabled = value
        }
        if (types ~ / deb / && suites ~ / bookworm / && enabled !~ / no /) { split(uris, u, " "); print u[1]; exit }
      }' "$file")
    [[ -z "$found" ]] || { echo "$found"; return; }
  done
}

if "${docker[@]}" image inspect "$base" > /dev/null 2>&1; then
  say "base image $base exists"
else
  command -v debootstrap > /dev/null 2>&1 || apt_install debootstrap
  mirror=${POOLMAP_DEBIAN_MIRROR:-$(debian_mirror)}
  if [[ -z "$mirror" ]]; then
    mirror=http://deb.debian.org/debian
    say "no bookworm source found in /etc/apt; using $mirror (set POOLMAP_DEBIAN_MIRROR to choose)"
  fi
  rootfs=$(mktemp -d /var/tmp/poolmap-base.XXXXXX)
  say "making base image $base: debootstrap --variant=minbase bookworm from $mirror (1 to 3 min)"
  bounded 900 "${sudo[@]}" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { show_log "$work/debootstrap.log"; fail "debootstrap failed (mirror $mirror)"; }
  "${sudo[@]}" tar --numeric-owner -C "$rootfs" -c . | timeout 600 "${docker[@]}" import - "$base" > /dev/null \
    || fail "docker import of the debootstrap tree failed"
  remove_rootfs
  rootfs=""
  say "base image $base made"
fi

# ---- 4. six free loopback ports --------------------------------------------------------------------
port_busy() {  # port: is something listening on it (on 127.0.0.1 or every address)?
  if command -v ss > /dev/null 2>&1; then
    [[ -n "$(ss -Htln "( sport = :$1 )")" ]]
  else
    (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null
  fi
}
# The primary's clients, workers and peer link, then the backup's (the compose file's variables).
port_vars=(POOLMAP_CLIENT_PORT POOLMAP_WORKER_PORT POOLMAP_HA_PORT
           POOLMAP_BACKUP_CLIENT_PORT POOLMAP_BACKUP_WORKER_PORT POOLMAP_BACKUP_HA_PORT)
ports=(5555 5556 5557 5565 5566 5567)
given=0
for var in "${port_vars[@]}"; do
  [[ -z "${!var:-}" ]] || given=1
done
if ((given)); then
  for i in "${!port_vars[@]}"; do
    var=${port_vars[i]}
    ports[i]=${!var:-${ports[i]}}
    [[ "${ports[i]}" =~ ^[0-9]+$ ]] || fail "$var=${ports[i]} is not a port number"
    ! port_busy "${ports[i]}" || fail "port ${ports[i]} ($var) is in use on this host; choose others with ${port_vars[*]}, or leave them all unset to have free ones picked"
  done
  (($(printf '%s\n' "${ports[@]}" | sort -u | wc -l) == ${#ports[@]})) || fail "the six broker ports must differ: ${ports[*]}"
else
  for ((tries = 0; ; ++tries)); do
    busy=0
    for port in "${ports[@]}"; do
      if port_busy "$port"; then
        busy=1
        break
      fi
    done
    ((busy)) || break
    ((tries < 50)) || fail "found no six free TCP ports"
    base=$((20000 + RANDOM % 12000))  # below the usual ephemeral range (32768-)
    ports=("$base" $((base + 1)) $((base + 2)) $((base + 10)) $((base + 11)) $((base + 12)))
  done
fi
client_port=${ports[0]}
worker_port=${ports[1]}
ha_port=${ports[2]}
backup_client_port=${ports[3]}
backup_worker_port=${ports[4]}
backup_ha_port=${ports[5]}
say "primary broker: clients 127.0.0.1:$client_port, workers 127.0.0.1:$worker_port, peer link 127.0.0.1:$ha_port"
say "backup broker:  clients 127.0.0.1:$backup_client_port, workers 127.0.0.1:$backup_worker_port, peer link 127.0.0.1:$backup_ha_port"
samples=${POOLMAP_DEMO_SAMPLES:-10000000}

# docker-compose with this test's project and settings (the compose file reads them).
compose=(env COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
          POOLMAP_BIND_ADDRESS=127.0.0.1 POOLMAP_CLIENT_PORT="$client_port" POOLMAP_WORKER_PORT="$worker_port"
          POOLMAP_HA_PORT="$ha_port" POOLMAP_BACKUP_CLIENT_PORT="$backup_client_port"
          POOLMAP_BACKUP_WORKER_PORT="$backup_worker_port" POOLMAP_BACKUP_HA_PORT="$backup_ha_port"
          POOLMAP_WORKER_PROCESSES="$processes" POOLMAP_DEMO_WORKERS="$((workers * processes))"
          POOLMAP_DEMO_SAMPLES="$samples"
          docker-compose --project-name "$project" --project-directory "$root" --file "$root/docker-compose.yml")
if [[ "${docker[0]}" == sudo ]]; then
  compose=(sudo "${compose[@]}")
fi

# ---- 5. the image ---------------------------------------------------------------------------------
# All services share one image (poolmap:local) and one build section: building it for one service
# builds it for all.
say "building poolmap:local from deploy/Dockerfile (seconds when cached; after a source change about 6 min on 2 cores)"
# Progress: the Dockerfile's steps and every 10th compile step; the end of the log on failure.
build_progress() {
  local line
  while IFS= read -r line; do
    if [[ "$line" =~ ^Step\ [0-9]+/[0-9]+\ : ]]; then
      echo "${line:0:100}"
    elif [[ "$line" =~ ^\[([0-9]+)/([0-9]+)\]\  ]] \
         && ((BASH_REMATCH[1] % 10 == 0 || BASH_REMATCH[1] == BASH_REMATCH[2])); then
      echo "  compiled ${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
    fi
  done
}
start_bounded 2400 "${compose[@]}" build --force-rm keys > "$work/build.log" 2>&1
tail -n +1 --pid="$child" -f "$work/build.log" | build_progress >&2 &  # ends with the build
progress=$!
build_status=0
wait_bounded || build_status=$?
wait "$progress" || true
if ((build_status != 0)); then
  show_log "$work/build.log" 40
  ((build_status != 124)) || fail "the image build took longer than 40 min"
  fail "the image build failed"
fi

# ---- 6. the cluster and the demo ------------------------------------------------------------------
say "docker-compose up -d --scale worker=$workers (keys, broker and broker-backup, $workers workers x $processes processes, demo)"
compose_started=1
bounded 300 "${compose[@]}" up -d --no-build --scale worker="$workers" > "$work/up.log" 2>&1 \
  || { show_log "$work/up.log"; fail "docker-compose up failed"; }
container_of() {  # service: its (one) container's id
  local id
  id=$(timeout 60 "${compose[@]}" ps -q "$1")
  [[ -n "$id" && "$id" != *$'\n'* ]] || fail "expected one $1 container after docker-compose up, found: ${id:-none}"
  echo "$id"
}
demo=$(container_of demo)
primary=$(container_of broker)
backup=$(container_of broker-backup)

# With host networking the brokers' sockets are the host's: all six must listen on 127.0.0.1 only.
if command -v ss > /dev/null 2>&1; then
  for ((i = 0; i < 300; ++i)); do  # 30 s for both brokers to bind
    unbound=0
    for port in "${ports[@]}"; do
      port_busy "$port" || unbound=$((unbound + 1))
    done
    ((unbound == 0)) && break
    sleep 0.1
  done
  for port in "${ports[@]}"; do
    listeners=$(ss -Htln "( sport = :$port )" | awk '{ print $4 }' | sort -u | tr '\n' ' ')
    [[ "$listeners" == "127.0.0.1:$port " ]] || fail "port $port: expected one listener on 127.0.0.1, found: ${listeners:-none}"
  done
  say "the brokers listen on 127.0.0.1 only: ports ${ports[*]}"
fi

# `poolmap status --json` of one broker, run inside its container (with the client key of its
# healthcheck): broker_status CONTAINER CLIENT_PORT FILE.
broker_status() {
  timeout 20 "${docker[@]}" exec "$1" poolmap status --json --broker "tcp://127.0.0.1:$2" --timeout-ms 3000 \
    > "$3" 2> "$work/status.err"
}
# The role a status reports: "active", "passive", or "" when the status has no role field.
role_of() { jq -r '.role // ""' "$1"; }
# Whether the demo's map runs (or ran) on the broker of that status: a job, or chunks.
map_seen() { jq -e '(.jobs | length) > 0 or .chunks_in_flight > 0 or .chunks_done > 0' "$1" > /dev/null; }

# ---- 7. the map runs: kill the active broker -------------------------------------------------------
say "waiting for the demo's map to run (it waits for $((workers * processes)) worker processes, then its serial loop, then maps)"
active=""
deadline=$((SECONDS + 300))
while [[ -z "$active" ]]; do
  [[ "$("${docker[@]}" inspect --format '{{.State.Running}}' "$demo")" == true ]] \
    || { "${docker[@]}" logs "$demo" >&2 2>&1 || true; fail "the demo ended before its map was seen running (a longer map: POOLMAP_DEMO_SAMPLES, now $samples)"; }
  ((SECONDS < deadline)) || fail "the demo's map did not start within 300 s"
  declare -A roles=([primary]=none [backup]=none)  # none: no answer
  if broker_status "$primary" "$client_port" "$work/primary.json"; then roles[primary]=$(role_of "$work/primary.json"); fi
  if broker_status "$backup" "$backup_client_port" "$work/backup.json"; then roles[backup]=$(role_of "$work/backup.json"); fi
  # The active one: by the role its status reports; without a role field, the one the map runs on.
  for broker in primary backup; do
    if [[ "${roles[$broker]}" == active || -z "${roles[$broker]}" ]] && map_seen "$work/$broker.json"; then
      active=$broker
      break
    fi
  done
  [[ -n "$active" ]] || sleep 0.2
done
if [[ "$active" == primary ]]; then
  active_container=$primary other=backup other_container=$backup other_port=$backup_client_port
  active_service=broker other_service=broker-backup
else
  active_container=$backup other=primary other_container=$primary other_port=$client_port
  active_service=broker-backup other_service=broker
fi
cp "$work/$active.json" "$work/before.json"  # the killed broker's last word, for step 9
role=$(role_of "$work/before.json")
say "the map runs on the $active broker ($active_service, role ${role:-not reported: told by its job}):" \
    "$(jq '.jobs | length' "$work/before.json") job(s), $(jq '.chunks_done' "$work/before.json") chunks done, $(jq '.chunks_in_flight' "$work/before.json") in flight"
say "killing it: docker kill (SIGKILL) $active_service"
"${docker[@]}" kill "$active_container" > /dev/null || fail "docker kill $active_service failed"

# ---- 8. the demo's row, and the other broker active -------------------------------------------------
say "waiting for the demo to finish (the $other broker takes over after 3 s of silence)"
bounded 300 "${docker[@]}" wait "$demo" > "$work/demo.status" || fail "the demo did not finish within 300 s"
demo_status=$(< "$work/demo.status")
"${docker[@]}" logs "$demo" > "$work/demo.log" 2>&1
echo "---- demo output ----" >&2
cat "$work/demo.log" >&2
echo "----" >&2
((demo_status == 0)) || fail "the demo exited with status $demo_status"
# "pi ~ 3.14... (64 tasks)": 64 seeded tasks (at 2,000,000 samples each one standard deviation is
# 0.00015); the program itself fails when the pool's counts differ from its serial loop's.
grep -Eq '^pi +\| pi ~ 3\.14[0-9]+ \(64 tasks\) +\| +[0-9.]+ \| +[0-9.]+ \| +[0-9.]+x$' "$work/demo.log" \
  || fail "the demo's output has no row 'pi | pi ~ 3.14... (64 tasks) | ...'"

broker_status "$other_container" "$other_port" "$work/status.json" \
  || { show_log "$work/status.err"; fail "poolmap status in the $other_service container failed"; }
jq -e '.workers | type == "array"' "$work/status.json" > /dev/null \
  || { show_log "$work/status.json"; fail "poolmap status --json printed no workers array"; }
role=$(role_of "$work/status.json")
if [[ -n "$role" ]]; then
  [[ "$role" == active ]] || fail "after the kill, the $other broker ($other_service) reports role '$role', not active"
  say "the $other broker ($other_service) reports role active, epoch $(jq -r '.epoch // "?"' "$work/status.json")"
else
  # No role in the status (yet): only an active broker has workers registered and chunks done.
  jq -e '(.workers | length) > 0 and .chunks_done > 0' "$work/status.json" > /dev/null \
    || { show_log "$work/status.json"; fail "after the kill, the $other broker ($other_service) has no workers or no chunks done: it did not take over"; }
  say "the $other broker ($other_service) took over (its status has no role field; it has the workers and chunks done)"
fi
say "the $other broker: $(jq '.workers | length' "$work/status.json") worker processes, $(jq '.chunks_done' "$work/status.json") chunks done, $(jq '.chunks_redispatched' "$work/status.json") redispatched"

# ---- 9. every worker container did work -----------------------------------------------------------
# The brokers' view: worker processes with their instance ids, supervisors and chunks done, from the
# killed broker's last status before the kill and the other broker's after the demo (a worker
# process keeps its ids across the failover). With host networking every container has the host's
# name and pids repeat across pid namespaces, so each container is told apart by the instance ids
# in its log: its supervisor's and its processes'.
jq -s '{workers: [.[].workers[]]}' "$work/before.json" "$work/status.json" > "$work/both.json"
supervisors=$(jq '[.workers[] | select(.chunks_done > 0) | .supervisor] | unique | length' "$work/both.json")
say "both brokers: $supervisors supervisors with chunks done"

mapfile -t containers < <(timeout 60 "${compose[@]}" ps -q worker)
((${#containers[@]} == workers)) || fail "expected $workers worker containers, docker-compose ps shows ${#containers[@]}"
idle=0
for container in "${containers[@]}"; do
  name=$("${docker[@]}" inspect --format '{{.Name}}' "$container")
  name=${name#/}
  # "supervisor [ID] started N worker processes" and "worker HOST pid P [ID] connected to EP".
  ids=$("${docker[@]}" logs "$container" 2>&1 \
        | sed -nE 's/.* supervisor \[([0-9a-f]{8})\] started .*/\1/p; s/.* pid [0-9]+ \[([0-9a-f]{8})\] connected to .*/\1/p' | sort -u)
  if [[ -z "$ids" ]]; then
    say "$name: its log names no supervisor or worker process (log below)"
    "${docker[@]}" logs --tail 20 "$container" >&2 2>&1 || true
    idle=$((idle + 1))
    continue
  fi
  chunks=$(jq --arg ids "$ids" '($ids | split("\n")) as $mine
           | [.workers[] | select(.id[0:8] as $id | .supervisor[0:8] as $sup | any($mine[]; . == $id or . == $sup))
            | .chunks_done] | add // 0' "$work/both.json")
  say "$name: supervisor and worker processes $(tr '\n' ' ' <<< "$ids")ran $chunks chunks"
  ((chunks > 0)) || idle=$((idle + 1))
done
((idle == 0)) || fail "$idle of $workers worker containers ran no chunk"
((supervisors == workers)) || fail "chunks done by $supervisors worker supervisors, expected $workers"
say "the demo ran on all $workers worker containers, across the failover from the $active broker to the $other"
