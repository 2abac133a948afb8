#!/usr/bin/env bash
# Builds streamspace/session:local (images/session) without any registry:
#   1. bookworm minbase rootfs by debootstrap, cached as /var/cache/streamspace/bookworm-minbase.tar
#   2. `docker import` of that tar -> streamspace/base:bookworm
#   3. `docker build --network host` of images/session on top (no docker bridge exists here)
# Skips everything when the image exists with a label matching the hash of images/session/*.
#
#   scripts/build-session-image.sh [--force] [--test]
#     --force  rebuild even if up to date
#     --test   afterwards run two containers on 127.0.0.1:15901/15902 and check the RFB greeting,
#              that they offer only VncAuth, run as uid 1000, and refuse to start without a password
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=streamspace/session:local
BASE=streamspace/base:bookworm
CACHE=/var/cache/streamspace
ROOTFS_TAR=$CACHE/bookworm-minbase.tar
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LABEL=io.streamspace.session.hash
# The legacy builder: the Debian daemon (20.10) may have no buildx/BuildKit plugin next to the CLI.
export DOCKER_BUILDKIT=0

FORCE=0 TEST=0
for a in "$@"; do
  case $a in
    --force) FORCE=1 ;;
    --test) TEST=1 ;;
    *) echo "usage: $0 [--force] [--test]" >&2; exit 2 ;;
  esac
done

say() { printf '[session-image] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

mkdir -p "$CACHE"
docker info >/dev/null 2>&1 || die "docker engine not answering (run scripts/services.sh start)"

# Hash of what goes into the image; stored as a label so an edit triggers a rebuild.
HASH=$(cat images/session/Dockerfile images/session/entrypoint.sh | sha256sum | cut -c1-16)

rfb_check() { # PORT -> succeeds when the port greets with "RFB 003.008\n" within 10 s
  local port=$1 deadline=$((SECONDS + 10)) got
  while ((SECONDS < deadline)); do
    got=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && head -c 12 <&3" 2>/dev/null | od -An -c | tr -s ' ') || true
    [[ $got == *'R F B 0 0 3 . 0 0 8 \n'* ]] && return 0
    sleep 0.2
  done
  say "port $port greeted with: '${got:-nothing}'"
  return 1
}

security_check() { # PORT -> succeeds when the server offers exactly one security type, VncAuth (2)
  local port=$1 got
  got=$(timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && head -c 12 <&3 >/dev/null && printf 'RFB 003.008\n' >&3 && head -c 2 <&3" 2>/dev/null | od -An -tu1 | tr -s ' ') || true
  [[ $got == ' 1 2' ]] && return 0
  say "port $port offered security types (count, types...): '${got:-nothing}'"
  return 1
}

smoke_test() {
  say "smoke test: two sessions on 127.0.0.1:15901 (display :11) and :15902 (display :12)"
  local names=(ss-imgtest-1 ss-imgtest-2) rc=0 pw
  docker rm -f "${names[@]}" >/dev/null 2>&1 || true
  # Like the Docker agent: unprivileged user, no capabilities, a random password each.
  for i in 1 2; do
    pw=$(head -c 6 /dev/urandom | base64 | tr '+/' '-_')
    docker run -d --rm --name "ss-imgtest-$i" --network host --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges \
      -e VNC_LISTEN=127.0.0.1 -e VNC_PORT=1590$i -e VNC_DISPLAY=1$i -e VNC_PASSWORD="$pw" "$IMAGE" >/dev/null
  done
  rfb_check 15901 || rc=1
  rfb_check 15902 || rc=1
  security_check 15901 || rc=1
  security_check 15902 || rc=1
  [[ $(docker exec ss-imgtest-1 id -u) == 1000 ]] || { say "the desktop does not run as uid 1000"; rc=1; }
  if docker run --rm --network none "$IMAGE" >/dev/null 2>&1; then say "started without VNC_PASSWORD"; rc=1; fi
  if ((rc)); then docker logs ss-imgtest-1 2>&1 | tail -n 20 >&2; docker logs ss-imgtest-2 2>&1 | tail -n 20 >&2; fi
  local t=$SECONDS
  docker stop -t 10 "${names[@]}" >/dev/null 2>&1 || true
  say "smoke test $( ((rc)) && echo FAILED || echo passed); docker stop took $((SECONDS - t))s"
  return $rc
}

current=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null || true)
if ((!FORCE)) && [[ $current == "$HASH" ]]; then
  say "$IMAGE is up to date ($HASH)"
  ((TEST)) && smoke_test
  exit 0
fi

T0=$SECONDS
# ---------------------------------------------------------------- 1-2. base image
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  if [[ ! -s $ROOTFS_TAR ]]; then
    command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install debootstrap)"
    mkdir -p "$CACHE"
    dir=$(mktemp -d /var/tmp/streamspace-rootfs.XXXXXX)
    trap 'rm -rf "$dir"' EXIT
    say "debootstrap --variant=minbase bookworm from $MIRROR (about a minute)"
    debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
      { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    # Smaller image: downloaded .debs and package lists are not needed at run time.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    # Write to a temp name first so an interrupted run never leaves a truncated cache.
    tar -C "$dir" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$dir"
    trap - EXIT
  fi
  say "docker import $ROOTFS_TAR -> $BASE"
  docker import "$ROOTFS_TAR" "$BASE" >/dev/null
fi

# ---------------------------------------------------------------- 3. session image
say "docker build $IMAGE ($HASH)"
docker build --network host --label "$LABEL=$HASH" -t "$IMAGE" images/session >"$CACHE/session-build.log" 2>&1 ||
  { tail -n 40 "$CACHE/session-build.log" >&2; die "docker build failed (log: $CACHE/session-build.log)"; }
# Old builds of the tag are left dangling; drop them so the disk does not fill over many edits.
docker image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true
say "built $IMAGE in $((SECONDS - T0))s"

((TEST)) && smoke_test
exit 0
