#!/usr/bin/env bash
# Build promtool (Prometheus' rule checker and rule unit-test runner) used by test/monitoring.test.ts
# (`promtool check rules` / `promtool test rules` on deploy/monitoring/) from its published Go module,
# github.com/prometheus/prometheus (cmd/promtool), into $CACHE_DIR/bin/promtool.
#
# Nothing is vendored: a helper module requiring github.com/prometheus/prometheus at PROMETHEUS_MODULE
# is generated in $CACHE_DIR/build/promtool/ and `go build`s ./cmd/promtool with the version ldflags
# Prometheus' own build (promu) sets, so `promtool --version` names the release.
#
# Idempotent: a stamp file records the version; when it is current the script exits at once.
#
# Environment:
#   STREAMSPACE_CACHE   cache root (default /var/cache/streamspace)
#   PROMETHEUS_MODULE   github.com/prometheus/prometheus module version (default below: v0.316.0 is
#                       Prometheus 3.16.0; its go.mod says go 1.26.7 and has no replace directives, so
#                       a local Go >= 1.26.7 builds it with GOTOOLCHAIN=local)
#   GO_BUILD_P          go build -p value (default 2; the build runs under nice)
#   FORCE=1             rebuild even if the stamp is current
set -euo pipefail

PROMETHEUS_MODULE="${PROMETHEUS_MODULE:-v0.316.0}"
CACHE_DIR="${STREAMSPACE_CACHE:-/var/cache/streamspace}"
BIN_DIR="$CACHE_DIR/bin"
BUILD_DIR="$CACHE_DIR/build/promtool"
GO_BUILD_P="${GO_BUILD_P:-2}"
FORCE="${FORCE:-0}"
STAMP="prometheus=$PROMETHEUS_MODULE cgo=0"

if [[ "$FORCE" != 1 && -x "$BIN_DIR/promtool" && -f "$BIN_DIR/.promtool.stamp" && "$(cat "$BIN_DIR/.promtool.stamp")" == "$STAMP" ]]; then
  echo "build-promtool: up to date (prometheus $PROMETHEUS_MODULE) in $BIN_DIR"
  exit 0
fi

if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
[[ -x "$GO" ]] || { echo "build-promtool: Go toolchain not found (need Go >= 1.26.7 for prometheus $PROMETHEUS_MODULE)" >&2; exit 1; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN_DIR"
rm -rf "$BUILD_DIR" && mkdir -p "$BUILD_DIR"
echo "build-promtool: prometheus $PROMETHEUS_MODULE with $("$GO" version), -p $GO_BUILD_P"
t0=$(date +%s)

dl="$("$GO" mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_MODULE")"
pmod="$(echo "$dl" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
pdir="$(echo "$dl" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
[[ -f "$pmod" ]] || { echo "build-promtool: cannot download github.com/prometheus/prometheus@$PROMETHEUS_MODULE" >&2; exit 1; }
go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$pmod" | head -1)"
release="$(cat "$pdir/VERSION" 2>/dev/null || echo "${PROMETHEUS_MODULE#v}")" # v0.316.0 -> 3.16.0

cat >"$BUILD_DIR/go.mod" <<EOF
module streamspace.local/build/promtool

go $go_directive

require github.com/prometheus/prometheus $PROMETHEUS_MODULE
EOF

v=github.com/prometheus/common/version
ldf="-s -w -X $v.Version=$release -X $v.Revision=$PROMETHEUS_MODULE -X $v.Branch=release -X $v.BuildUser=streamspace-provision"
ldf+=" -X $v.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"

# -mod=mod resolves prometheus' own requirements (minimal version selection, as `go install` would)
# and records their checksums in the helper's go.sum. Build tag netgo as in Prometheus' .promu.yml (builtinassets embeds the web UI, which promtool does not have).
(cd "$BUILD_DIR" && nice -n 10 "$GO" build -p "$GO_BUILD_P" -trimpath -tags netgo -ldflags "$ldf" \
  -o "$BIN_DIR/.promtool.tmp" github.com/prometheus/prometheus/cmd/promtool)
mv -f "$BIN_DIR/.promtool.tmp" "$BIN_DIR/promtool"
echo "$STAMP" >"$BIN_DIR/.promtool.stamp"
echo "build-promtool: built promtool $release in $(($(date +%s) - t0))s -> $BIN_DIR/promtool ($("$BIN_DIR/promtool" --version 2>&1 | head -1))"
