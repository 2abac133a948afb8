#!/usr/bin/env bash
# Build the real kube-apiserver and etcd binaries used by the test harness
# (test/harness/kube.ts) from their published Go modules.
#
# Nothing is vendored into the repository: the helper modules are generated in
# $CACHE_DIR/build/<name>/ from the wrappers in scripts/k8s/<name>/main.go, the
# binaries land in $CACHE_DIR/bin/, and the Go module/build caches stay in their
# default locations (GOMODCACHE, GOCACHE).
#
# Idempotent: each binary has a stamp file recording the pinned version and a
# hash of its wrapper; when both are current the script exits immediately.
#
# Environment:
#   STREAMSPACE_CACHE   cache root (default /var/cache/streamspace)
#   K8S_VERSION         k8s.io/kubernetes tag   (default below)
#   ETCD_VERSION        go.etcd.io/etcd tag      (default below)
#   GO_BUILD_P          go build -p value        (default 2; builds run under nice)
#   FORCE=1             rebuild even if the stamps are current
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE_DIR="${STREAMSPACE_CACHE:-/var/cache/streamspace}"
BIN_DIR="$CACHE_DIR/bin"
BUILD_DIR="$CACHE_DIR/build"
GO_BUILD_P="${GO_BUILD_P:-2}"
FORCE="${FORCE:-0}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPES="$SCRIPT_DIR/k8s"

hash_file() { sha256sum "$1" | cut -c1-16; }

# Stamp lines, computed without invoking go so the up-to-date check is instant.
ETCD_STAMP="etcd=$ETCD_VERSION recipe=$(hash_file "$RECIPES/etcd/main.go") cgo=0"
KAS_STAMP="kube-apiserver=$K8S_VERSION recipe=$(hash_file "$RECIPES/kube-apiserver/main.go") cgo=0"

is_current() { # name expected-stamp
  [[ "$FORCE" != 1 && -x "$BIN_DIR/$1" && -f "$BIN_DIR/.$1.stamp" && "$(cat "$BIN_DIR/.$1.stamp")" == "$2" ]]
}

write_versions() {
  {
    echo "kube-apiserver $K8S_VERSION"
    echo "etcd $ETCD_VERSION"
  } >"$BIN_DIR/k8s-versions.txt"
}

if is_current etcd "$ETCD_STAMP" && is_current kube-apiserver "$KAS_STAMP"; then
  echo "build-k8s: up to date (kube-apiserver $K8S_VERSION, etcd $ETCD_VERSION) in $BIN_DIR"
  exit 0
fi

if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
[[ -x "$GO" ]] || { echo "build-k8s: Go toolchain not found (need Go >= 1.26)" >&2; exit 1; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN_DIR" "$BUILD_DIR"
echo "build-k8s: using $("$GO" version), -p $GO_BUILD_P"

# build_binary name pkg-dir ldflags-extra
build_binary() {
  local name="$1" dir="$2" extra_ldflags="$3" t0 t1
  t0=$(date +%s)
  (cd "$dir" && "$GO" mod tidy)
  (cd "$dir" && nice -n 10 "$GO" build -p "$GO_BUILD_P" -trimpath \
      -ldflags "-s -w $extra_ldflags" -o "$BIN_DIR/.$name.tmp" .)
  mv -f "$BIN_DIR/.$name.tmp" "$BIN_DIR/$name"
  t1=$(date +%s)
  echo "build-k8s: built $name in $((t1 - t0))s -> $BIN_DIR/$name"
}

# ---------------------------------------------------------------- etcd
if ! is_current etcd "$ETCD_STAMP"; then
  d="$BUILD_DIR/etcd"
  rm -rf "$d" && mkdir -p "$d"
  cp "$RECIPES/etcd/main.go" "$d/main.go"
  cat >"$d/go.mod" <<EOF
module streamspace.local/build/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  # etcd's server module replaces its sibling modules with ../ paths; those
  # replaces are ignored for a dependency, so pin the siblings explicitly.
  for m in go.etcd.io/etcd/api/v3 go.etcd.io/etcd/client/pkg/v3 go.etcd.io/etcd/client/v3 go.etcd.io/etcd/pkg/v3; do
    echo "require $m $ETCD_VERSION" >>"$d/go.mod"
  done
  build_binary etcd "$d" \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"
  echo "$ETCD_STAMP" >"$BIN_DIR/.etcd.stamp"
fi

# ---------------------------------------------------------------- kube-apiserver
if ! is_current kube-apiserver "$KAS_STAMP"; then
  d="$BUILD_DIR/kube-apiserver"
  rm -rf "$d" && mkdir -p "$d"
  cp "$RECIPES/kube-apiserver/main.go" "$d/main.go"

  # k8s.io/kubernetes replaces every k8s.io/* staging module with a local path;
  # derive that list from its go.mod and point each at the matching v0.Y.Z tag.
  kmod="$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  [[ -f "$kmod" ]] || { echo "build-k8s: cannot download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
  staging_version="v0.${K8S_VERSION#v1.}"
  go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kmod" | head -1)"
  godebug="$(grep -E '^godebug ' "$kmod" || true)"
  replaces="$(sed -n '/^replace (/,/^)/p; /^replace [^(]/p' "$kmod" |
    grep '=>' | sed 's/^replace //' |
    awk -v sv="$staging_version" '{
      if ($3 ~ /^\.\/staging\//) printf "\t%s => %s %s\n", $1, $1, sv;
      else { sub(/^[ \t]+/, ""); print "\t" $0 }
    }')"
  n="$(printf '%s\n' "$replaces" | grep -c '=>' || true)"
  echo "build-k8s: k8s.io/kubernetes $K8S_VERSION: go $go_directive, $n replace directives (staging -> $staging_version)"

  {
    echo "module streamspace.local/build/kube-apiserver"
    echo
    echo "go $go_directive"
    [[ -n "$godebug" ]] && { echo; echo "$godebug"; }
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    printf '%s\n' "$replaces"
    echo ")"
  } >"$d/go.mod"

  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  ldf=""
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldf+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldf+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  build_binary kube-apiserver "$d" "$ldf"
  echo "$KAS_STAMP" >"$BIN_DIR/.kube-apiserver.stamp"
fi

write_versions
echo "build-k8s: done: $(tr '\n' ' ' <"$BIN_DIR/k8s-versions.txt")in $BIN_DIR"
