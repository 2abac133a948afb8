#!/usr/bin/env bash
# Build the helm CLI used by test/helm.test.ts (helm lint / helm template of deploy/helm/streamspace)
# from its published Go module, helm.sh/helm/v3, into $CACHE_DIR/bin/helm.
#
# Nothing is vendored: a helper module requiring helm.sh/helm/v3 at HELM_VERSION is generated in
# $CACHE_DIR/build/helm/ and `go build`s helm.sh/helm/v3/cmd/helm with the ldflags helm's Makefile sets
# (version, and the Kubernetes version helm assumes without a cluster, taken from helm's client-go).
#
# Idempotent: a stamp file records the version; when it is current the script exits at once.
#
# Environment:
#   STREAMSPACE_CACHE   cache root (default /var/cache/streamspace)
#   HELM_VERSION        helm.sh/helm/v3 tag (default below; its go.mod says go 1.26.0 and has no
#                       replace directives, so a local Go 1.26 builds it with GOTOOLCHAIN=local)
#   GO_BUILD_P          go build -p value (default 2; the build runs under nice)
#   FORCE=1             rebuild even if the stamp is current
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE_DIR="${STREAMSPACE_CACHE:-/var/cache/streamspace}"
BIN_DIR="$CACHE_DIR/bin"
BUILD_DIR="$CACHE_DIR/build/helm"
GO_BUILD_P="${GO_BUILD_P:-2}"
FORCE="${FORCE:-0}"
STAMP="helm=$HELM_VERSION cgo=0"

if [[ "$FORCE" != 1 && -x "$BIN_DIR/helm" && -f "$BIN_DIR/.helm.stamp" && "$(cat "$BIN_DIR/.helm.stamp")" == "$STAMP" ]]; then
  echo "build-helm: up to date (helm $HELM_VERSION) in $BIN_DIR"
  exit 0
fi

if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
[[ -x "$GO" ]] || { echo "build-helm: Go toolchain not found (need Go >= 1.26 for helm $HELM_VERSION)" >&2; exit 1; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN_DIR"
rm -rf "$BUILD_DIR" && mkdir -p "$BUILD_DIR"
echo "build-helm: helm $HELM_VERSION with $("$GO" version), -p $GO_BUILD_P"
t0=$(date +%s)

hmod="$("$GO" mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
[[ -f "$hmod" ]] || { echo "build-helm: cannot download helm.sh/helm/v3@$HELM_VERSION" >&2; exit 1; }
go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$hmod" | head -1)"
client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$hmod")" # v0.37.0 -> Kubernetes 1.37
k8s_minor="$(echo "$client_go" | cut -d. -f2)"
[[ -n "$k8s_minor" ]] || { echo "build-helm: no k8s.io/client-go in helm's go.mod" >&2; exit 1; }

cat >"$BUILD_DIR/go.mod" <<EOF
module streamspace.local/build/helm

go $go_directive

require helm.sh/helm/v3 $HELM_VERSION
EOF

ldf="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata="
ldf+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldf+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done

# -mod=mod resolves helm's own requirements (minimal version selection, as `go install` would) and
# records their checksums in the helper's go.sum.
(cd "$BUILD_DIR" && nice -n 10 "$GO" build -p "$GO_BUILD_P" -trimpath -ldflags "$ldf" \
  -o "$BIN_DIR/.helm.tmp" helm.sh/helm/v3/cmd/helm)
mv -f "$BIN_DIR/.helm.tmp" "$BIN_DIR/helm"
echo "$STAMP" >"$BIN_DIR/.helm.stamp"
echo "build-helm: built helm $HELM_VERSION in $(($(date +%s) - t0))s -> $BIN_DIR/helm ($("$BIN_DIR/helm" version --short))"
