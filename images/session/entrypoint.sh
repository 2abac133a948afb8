#!/bin/bash
# Session container entrypoint: Xtigervnc on $VNC_LISTEN:$VNC_PORT, a coloured root window and an
# xterm kept alive. The VNC server demands VncAuth (RFB security type 2) with the per-session
# password in $VNC_PASSWORD, which only the session's agent knows (it completes the handshake and
# offers the viewer no auth once the gateway has checked the ticket). Without a password the
# container refuses to start: there is no unauthenticated mode.
#
#   VNC_PASSWORD  the session's VNC password (VncAuth uses the first 8 characters); required.
#                 Written to a 0600 password file outside $HOME, removed from the environment
#                 before anything else starts, never printed.
#   VNC_PORT      RFB port (default 5900)
#   VNC_LISTEN    address to bind (default 0.0.0.0; tests use 127.0.0.1)
#   VNC_DISPLAY   X display number (default 1). Sessions share the host network namespace
#                 (--network host) and X abstract sockets are per network namespace, so each
#                 session needs its own display number.
#   VNC_GEOMETRY  screen size (default 1280x800)
set -u

# Started as root (a plain `docker run`): drop to the session user, with no capabilities and no
# way back, before doing anything else. The agents already start the container as that user.
if [[ $(id -u) == 0 ]]; then
  exec setpriv --reuid=1000 --regid=1000 --clear-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all -- "$0" "$@"
fi

# The password goes into Xvnc's password file (obfuscated, 0600, on the container's own /tmp) and
# out of the environment, so the desktop's shells do not inherit it.
if [[ -z ${VNC_PASSWORD:-} ]]; then
  echo "VNC_PASSWORD is not set: refusing to start a VNC server without authentication" >&2
  exit 1
fi
umask 077
VNC_PASSWORD_FILE=$(mktemp -d /tmp/.streamspace-vnc.XXXXXX)/passwd
printf '%s\n' "${VNC_PASSWORD:0:8}" | vncpasswd -f >"$VNC_PASSWORD_FILE" || {
  echo "cannot write the VNC password file" >&2
  exit 1
}
unset VNC_PASSWORD
umask 022

VNC_PORT=${VNC_PORT:-5900}
VNC_LISTEN=${VNC_LISTEN:-0.0.0.0}
VNC_DISPLAY=${VNC_DISPLAY:-1}
VNC_GEOMETRY=${VNC_GEOMETRY:-1280x800}
export HOME=${HOME:-/config}
export DISPLAY=:$VNC_DISPLAY

mkdir -p "$HOME"
cd "$HOME" || exit 1

xvnc_pid=""
xterm_pid=""
stopping=0

# docker stop sends SIGTERM to PID 1 (this shell): stop children and exit at once.
shutdown() {
  stopping=1
  [[ -n $xterm_pid ]] && kill -TERM "$xterm_pid" 2>/dev/null
  [[ -n $xvnc_pid ]] && kill -TERM "$xvnc_pid" 2>/dev/null
  wait 2>/dev/null
  exit 0
}
trap shutdown TERM INT HUP

# Stale lock/socket files from an earlier run of this container would make X refuse the display.
rm -f "/tmp/.X${VNC_DISPLAY}-lock" "/tmp/.X11-unix/X${VNC_DISPLAY}"

# -SecurityTypes VncAuth -PasswordFile: the only way in is the session's password.
# -AlwaysShared: several viewers may be connected at once without kicking each other off.
# -nolisten tcp: no X11 TCP port (6000+N) on the host network.
# Every viewer reaches this server from the agent's one address, so TigerVNC's per-host
# blacklist (5 failed attempts by default) would let anyone sharing that address (all sessions,
# with host networking) lock out the agent: turn it off. Guessing the 48-bit password online,
# one DES handshake per TCP connection, is not a practical attack.
Xtigervnc ":$VNC_DISPLAY" \
  -rfbport "$VNC_PORT" -interface "$VNC_LISTEN" \
  -SecurityTypes VncAuth -PasswordFile "$VNC_PASSWORD_FILE" -AlwaysShared \
  -BlacklistThreshold 1000000 \
  -geometry "$VNC_GEOMETRY" -depth 24 \
  -desktop streamspace -nolisten tcp &
xvnc_pid=$!

# Wait for the X server to accept clients (xsetroot fails until then); give up after 15 s.
for _ in $(seq 150); do
  xsetroot -solid '#2e5a88' 2>/dev/null && break
  kill -0 "$xvnc_pid" 2>/dev/null || { echo "Xtigervnc exited" >&2; exit 1; }
  sleep 0.1
done

# Keep an xterm on screen; restart it when the user closes it. `wait` returns early on a
# trapped signal, so SIGTERM is handled at once.
while ((!stopping)); do
  kill -0 "$xvnc_pid" 2>/dev/null || { echo "Xtigervnc exited" >&2; exit 1; }
  xterm -title streamspace -geometry 80x24+40+40 -fa 'DejaVu Sans Mono' -fs 16 \
    -bg black -fg '#e0e0e0' &
  xterm_pid=$!
  wait "$xterm_pid"
  sleep 0.2
done
