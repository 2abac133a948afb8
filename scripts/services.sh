#!/usr/bin/env bash
# Local backing services for StreamSpace v2 development, tests and CI.
#
#   scripts/services.sh start|stop|status|restart
#
# Everything binds to 127.0.0.1 only, keeps its state under /var/lib/streamspace and logs under
# /var/log/streamspace. No systemd here: each daemon is started directly in the background and
# only if it is not already answering, so `start` is cheap to call again and again.
#
#   PostgreSQL  127.0.0.1:55432  user/password/db streamspace (superuser: tests create databases)
#   Redis       127.0.0.1:56379  password $REDIS_PASSWORD (default streamspace):
#               redis://:streamspace@127.0.0.1:56379
#   Docker      /var/run/docker.sock (no bridge: containers use --network host)
#   Temporal    127.0.0.1:57233 (gRPC), Web UI http://127.0.0.1:58233
set -euo pipefail
# dockerd, runuser and friends live in sbin, which a minimal CI environment may leave out of PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

STATE=${STREAMSPACE_STATE:-/var/lib/streamspace}
LOGS=${STREAMSPACE_LOGS:-/var/log/streamspace}
CACHE_BIN=${STREAMSPACE_CACHE_BIN:-/var/cache/streamspace/bin}

PG_PORT=55432
PG_DATA=$STATE/pg
PG_SOCK=$STATE/pg-socket
PG_LOG=$LOGS/postgres.log
REDIS_PORT=56379
# Redis always demands a password (requirepass), even on loopback: whoever can write to the agent
# hub's channels must not be anyone with a local socket. Tests read the same default (test/harness/env.ts).
REDIS_PASSWORD=${REDIS_PASSWORD:-streamspace}
TEMPORAL_PORT=57233
TEMPORAL_UI_PORT=58233
# Fixed (not random) so they never collide with ports the tests pick.
TEMPORAL_HTTP_PORT=57234
TEMPORAL_METRICS_PORT=57235
TEMPORAL_BIN=$CACHE_BIN/temporal
DOCKER_DATA=$STATE/docker

# Search attributes the workflows index on (registered at every dev-server start; idempotent).
SEARCH_ATTRIBUTES=(StreamSpaceSessionId StreamSpaceUser StreamSpacePlatform StreamSpaceAgent
  StreamSpaceState StreamSpaceMigrationPhase)

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_for NAME TIMEOUT_S LOGFILE CMD... — poll CMD every 0.25 s; on timeout show the log tail and fail.
wait_for() {
  local name=$1 timeout=$2 logfile=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$name did not come up within ${timeout}s; last lines of $logfile:"
      tail -n 40 "$logfile" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.25
  done
}

# Daemonise: new session, no inherited stdio, so a caller's shell or CI step never waits on it.
spawn() {
  local logfile=$1
  shift
  setsid "$@" </dev/null >>"$logfile" 2>&1 &
  echo $!
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------- PostgreSQL
pg_bin() {
  # Newest installed major version (bookworm: 15), found at run time rather than hard-coded.
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $d ]] || die "PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
  echo "$d"
}
as_postgres() { runuser -u postgres -- "$@"; }
pg_up() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

pg_start() {
  if pg_up; then log "postgres already answering on 127.0.0.1:$PG_PORT"; return 0; fi
  local bin
  bin=$(pg_bin)
  mkdir -p "$STATE" "$LOGS" "$PG_SOCK"
  touch "$PG_LOG"
  chown postgres:postgres "$PG_SOCK" "$PG_LOG"
  if [[ ! -f $PG_DATA/PG_VERSION ]]; then
    # Our own cluster (not Debian's 'main'): its superuser is `streamspace`, so tests can
    # CREATE/DROP DATABASE. Local socket is trust (socket dir is ours only), TCP needs the password.
    log "initdb $PG_DATA"
    rm -rf "$PG_DATA"
    mkdir -p "$PG_DATA"
    chown postgres:postgres "$PG_DATA"
    chmod 700 "$PG_DATA"
    local pw
    pw=$(mktemp)
    echo streamspace >"$pw"
    chown postgres "$pw"
    as_postgres "$bin/initdb" -D "$PG_DATA" -U streamspace --pwfile="$pw" -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >>"$PG_LOG" 2>&1 || { rm -f "$pw"; tail -n 20 "$PG_LOG" >&2; die "initdb failed"; }
    rm -f "$pw"
    echo "include_if_exists = 'streamspace.conf'" >>"$PG_DATA/postgresql.conf"
  fi
  # Rewritten on every start so a change here takes effect without re-initdb.
  # fsync etc. off: this is a throw-away dev/test database and speed matters more than durability.
  cat >"$PG_DATA/streamspace.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
dynamic_shared_memory_type = mmap
logging_collector = off
EOF
  # Per-statement counts and times (npm run bench -- --scale prints the heaviest per operation),
  # when this PostgreSQL has the module (Debian's postgresql-NN package does).
  if [[ -f $bin/../lib/pg_stat_statements.so ]]; then
    printf '%s\n' "shared_preload_libraries = 'pg_stat_statements'" "pg_stat_statements.max = 2000" >>"$PG_DATA/streamspace.conf"
  fi
  chown postgres:postgres "$PG_DATA/streamspace.conf"
  log "starting postgres ($bin) on 127.0.0.1:$PG_PORT"
  as_postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null 2>&1 ||
    { tail -n 40 "$PG_LOG" >&2; die "postgres failed to start (log: $PG_LOG)"; }
  wait_for postgres 60 "$PG_LOG" pg_up || die "postgres not answering"
  # Application database (idempotent).
  local psql=("$bin/psql" -h "$PG_SOCK" -p "$PG_PORT" -U streamspace -d postgres -qAt -v ON_ERROR_STOP=1)
  if [[ $(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='streamspace'") != 1 ]]; then
    as_postgres "${psql[@]}" -c "CREATE DATABASE streamspace OWNER streamspace" >/dev/null
  fi
}

pg_stop() {
  if [[ -f $PG_DATA/postmaster.pid ]]; then
    log "stopping postgres"
    as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------- Redis
redis_cli() { REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
redis_up() { [[ $(redis_cli ping 2>/dev/null) == PONG ]] || redis_open; }
# Answering without any password (started by an older version of this script).
redis_open() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

redis_start() {
  if redis_up; then
    if redis_open; then
      # Keep it running (others may be using it), but close it from now on.
      log "redis on 127.0.0.1:$REDIS_PORT has no password; setting requirepass"
      printf %s "$REDIS_PASSWORD" | redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -x config set requirepass >/dev/null
    fi
    log "redis already answering on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  command -v redis-server >/dev/null || die "redis-server not installed (apt-get install redis-server)"
  mkdir -p "$STATE/redis" "$LOGS"
  log "starting redis on 127.0.0.1:$REDIS_PORT"
  # No persistence: cache/hub state only. maxclients high for the 100-agent benchmarks.
  # The password goes in through stdin (a config file), not the command line other users can read.
  printf 'requirepass "%s"\n' "$REDIS_PASSWORD" | redis-server - --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$STATE/redis" --pidfile "$STATE/redis.pid" --logfile "$LOGS/redis.log" \
    --maxclients 10000 >/dev/null
  wait_for redis 30 "$LOGS/redis.log" redis_up || die "redis not answering"
}

redis_stop() {
  if redis_up; then
    log "stopping redis"
    redis_cli shutdown nosave >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------- Docker engine
docker_up() { timeout 5 docker info >/dev/null 2>&1; }

docker_start() {
  if docker_up; then log "docker already answering"; return 0; fi
  command -v dockerd >/dev/null || die "dockerd not installed (apt-get install docker.io)"
  mkdir -p "$DOCKER_DATA" "$LOGS"
  # No bridge and no iptables: this machine's network must stay untouched; sessions use host
  # networking on 127.0.0.1. Only pass flags this dockerd knows (e.g. --ip6tables is 20.10+).
  local help flags=(--bridge=none --iptables=false --data-root "$DOCKER_DATA" --pidfile /var/run/docker.pid)
  help=$(dockerd --help 2>&1 || true)
  grep -q -- '--ip6tables' <<<"$help" && flags+=(--ip6tables=false)
  grep -q -- '--ip-masq' <<<"$help" && flags+=(--ip-masq=false)
  # A stale pidfile from a killed daemon makes dockerd refuse to start.
  if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  local attempt
  for attempt in default vfs; do
    local extra=()
    [[ $attempt == vfs ]] && extra=(--storage-driver=vfs)
    log "starting dockerd (storage driver: $attempt)"
    echo "=== $(date -Is) dockerd ${flags[*]} ${extra[*]}" >>"$LOGS/dockerd.log"
    local pid
    pid=$(spawn "$LOGS/dockerd.log" dockerd "${flags[@]}" "${extra[@]}")
    echo "$pid" >"$STATE/dockerd.pid"
    # Up, or the process died (wrong storage driver exits quickly): stop polling either way.
    local deadline=$((SECONDS + 60))
    while ! docker_up && kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if docker_up; then return 0; fi
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f /var/run/docker.pid
    log "dockerd ($attempt) did not come up; last lines of $LOGS/dockerd.log:"
    tail -n 25 "$LOGS/dockerd.log" >&2 || true
  done
  die "dockerd failed to start with the default and the vfs storage driver"
}

docker_stop() {
  local pid=""
  [[ -f /var/run/docker.pid ]] && pid=$(cat /var/run/docker.pid)
  [[ -z $pid && -f $STATE/dockerd.pid ]] && pid=$(cat "$STATE/dockerd.pid")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    log "stopping dockerd (pid $pid)"
    kill "$pid"
    local i
    for i in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "dockerd still running after 30s, killing"; kill -9 "$pid"; }
  fi
  rm -f "$STATE/dockerd.pid"
}

# ---------------------------------------------------------------- Temporal dev server
temporal_up() {
  [[ -x $TEMPORAL_BIN ]] &&
    timeout 5 "$TEMPORAL_BIN" operator cluster health --address "127.0.0.1:$TEMPORAL_PORT" 2>/dev/null | grep -q SERVING
}

temporal_start() {
  if temporal_up; then log "temporal already answering on 127.0.0.1:$TEMPORAL_PORT"; return 0; fi
  [[ -x $TEMPORAL_BIN ]] || die "$TEMPORAL_BIN missing: run scripts/provision.sh (it builds the Temporal CLI)"
  mkdir -p "$STATE" "$LOGS"
  local args=(server start-dev --ip 127.0.0.1 --port "$TEMPORAL_PORT" --ui-port "$TEMPORAL_UI_PORT"
    --http-port "$TEMPORAL_HTTP_PORT" --metrics-port "$TEMPORAL_METRICS_PORT"
    --db-filename "$STATE/temporal.db" --log-level warn
    # Activities start in the same round trip that schedules them (the SDK asks for it).
    --dynamic-config-value system.enableActivityEagerExecution=true
    # The dev server's SQLite file: WAL without fsync per write (it is a dev/test server).
    --sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=off)
  local sa
  for sa in "${SEARCH_ATTRIBUTES[@]}"; do args+=(--search-attribute "$sa=Keyword"); done
  log "starting temporal dev server on 127.0.0.1:$TEMPORAL_PORT (UI :$TEMPORAL_UI_PORT)"
  echo "=== $(date -Is) temporal ${args[*]}" >>"$LOGS/temporal.log"
  spawn "$LOGS/temporal.log" "$TEMPORAL_BIN" "${args[@]}" >"$STATE/temporal.pid"
  wait_for temporal 60 "$LOGS/temporal.log" temporal_up || die "temporal not answering"
}

temporal_stop() {
  if pid_alive "$STATE/temporal.pid"; then
    local pid
    pid=$(cat "$STATE/temporal.pid")
    log "stopping temporal (pid $pid)"
    kill "$pid"
    local i
    for i in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/temporal.pid"
}

# ---------------------------------------------------------------- commands
status() {
  local rc=0
  report() { # NAME WHERE CHECK...
    local name=$1 where=$2
    shift 2
    if "$@" >/dev/null 2>&1; then printf '  %-9s up    %s\n' "$name" "$where"; else printf '  %-9s DOWN  %s\n' "$name" "$where"; rc=1; fi
  }
  report postgres "postgres://streamspace:streamspace@127.0.0.1:$PG_PORT/streamspace" pg_up
  report redis "redis://:***@127.0.0.1:$REDIS_PORT (REDIS_PASSWORD)" redis_up
  report docker "unix:///var/run/docker.sock (data $DOCKER_DATA)" docker_up
  report temporal "127.0.0.1:$TEMPORAL_PORT, UI http://127.0.0.1:$TEMPORAL_UI_PORT" temporal_up
  echo "  logs: $LOGS"
  return $rc
}

[[ $(id -u) == 0 ]] || die "run as root (starts daemons, chowns the postgres data directory)"
case "${1:-}" in
  start)
    pg_start
    redis_start
    docker_start
    temporal_start
    ;;
  stop)
    temporal_stop
    docker_stop
    redis_stop
    pg_stop
    ;;
  restart)
    "$0" stop
    exec "$0" start
    ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status|restart" >&2
    exit 2
    ;;
esac
