#!/usr/bin/env bash
# Runs a built entry point (`scripts/with-build.sh dist/db/cli.js up`), building first when dist/
# is missing or older than the sources, and saying so: npm scripts that run code never fail with
# "Cannot find module dist/...".
set -euo pipefail
cd "$(dirname "$0")/.."
entry=$1
shift
stamp=dist/.built
if [[ ! -f $entry || ! -f $stamp ]] || [[ -n $(find api activities agents config db protocol workers workflows bench -name '*.ts' -newer "$stamp" -print -quit 2>/dev/null) ]]; then
  echo "[streamspace] building first (dist/ is missing or older than the sources): npm run build" >&2
  npm run build --silent >&2
fi
exec node "$entry" "$@"
