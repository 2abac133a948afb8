#!/usr/bin/env bash
# Starts the whole StreamSpace v2 stack on this machine with embedded defaults and prints its URLs:
#   PostgreSQL, Redis, Docker engine, Temporal dev server (+ Web UI)   scripts/services.sh
#   gateway (API :8080, agents :8081), worker, a Docker agent            this script
# and creates a demo session whose VNC viewer URL it prints. Ctrl-C stops the StreamSpace
# processes (the backing services keep running: `bash scripts/services.sh stop` stops them).
set -euo pipefail
cd "$(dirname "$0")/.."

API_PORT=${PORT:-8080}
AGENT_WS_PORT=${AGENT_WS_PORT:-8081}
LOGS=${STREAMSPACE_DEV_LOGS:-/var/log/streamspace/dev}
mkdir -p "$LOGS"

bash scripts/provision.sh dev
npm run build --silent

export DATABASE_URL=${DATABASE_URL:-postgres://streamspace:streamspace@127.0.0.1:55432/streamspace}
export TEMPORAL_ADDRESS=${TEMPORAL_ADDRESS:-127.0.0.1:57233}
# Explicit dev mode: unset JWT_SECRET / AGENT_TOKEN_SECRET / ADMIN_PASSWORD get public development
# values (every process logs a warning). Never set this outside a developer machine.
export STREAMSPACE_DEV_MODE=true
export HOST=127.0.0.1 PORT=$API_PORT AGENT_WS_PORT
export LOG_LEVEL=${LOG_LEVEL:-info}

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping StreamSpace processes..."
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

wait_log() { # wait_log FILE REGEX SECONDS
  local deadline=$((SECONDS + $3))
  until grep -qE "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "timed out; see $1:" >&2; tail -20 "$1" >&2; exit 1; }
    sleep 0.2
  done
}

# A 64 MB young generation for the VNC relay's short-lived buffers (README "Capacity", relay).
node --max-semi-space-size=64 dist/api/main.js >"$LOGS/api.log" 2>&1 &
pids+=($!)
wait_log "$LOGS/api.log" 'Server started' 60
node dist/workers/main.js >"$LOGS/worker.log" 2>&1 &
pids+=($!)
wait_log "$LOGS/worker.log" 'Worker started' 60

if docker info >/dev/null 2>&1; then
  AGENT_TOKEN=$(node dist/api/auth/agent-token-cli.js docker-local-01 --rotate) \
    AGENT_ID=docker-local-01 CONTROL_PLANE_URL=ws://127.0.0.1:$AGENT_WS_PORT PLATFORM=docker REGION=local \
    DOCKER_NETWORK=host VNC_LISTEN=127.0.0.1 HEALTH_PORT=8082 \
    node dist/agents/docker/main.js >"$LOGS/docker-agent.log" 2>&1 &
  pids+=($!)
  wait_log "$LOGS/docker-agent.log" 'registered successfully' 60
fi

API=http://127.0.0.1:$API_PORT
TOKEN=$(curl -fsS -X POST "$API/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d "{\"username\":\"${ADMIN_USERNAME:-admin}\",\"password\":\"${ADMIN_PASSWORD:-admin}\"}" | node -pe 'JSON.parse(require("fs").readFileSync(0)).token')
SESSION=$(curl -fsS -X POST "$API/api/v1/sessions" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"user":"admin","template":"terminal","platform":"docker","state":"running"}' | node -pe 'JSON.parse(require("fs").readFileSync(0)).id')

cat <<EOF2

StreamSpace v2 is running.
  Console          $API/   (sign in as admin/admin)
  API              $API/api/v1   (OpenAPI: $API/openapi.json; login admin/admin)
  Temporal UI      http://127.0.0.1:58233/namespaces/default/workflows
  VNC viewer       $API/vnc-viewer/$SESSION   (demo session)
  Agents connect   ws://127.0.0.1:$AGENT_WS_PORT
  Metrics          $API/metrics
  Logs             $LOGS
Press Ctrl-C to stop.
EOF2
wait -n "${pids[@]}"
