#!/bin/bash
# Session container entrypoint: Xtigervnc on $VNC_LISTEN:$VNC_PORT (no VNC auth: the control
# plane's proxy is the only way in), a coloured root window and an xterm kept alive.
#
#   VNC_PORT      RFB port (default 5900)
#   VNC_LISTEN    address to bind (default 0.0.0.0; tests use 127.0.0.1)
#   VNC_DISPLAY   X display number (default 1). Sessions share the host network namespace
#                 (--network host) and X abstract sockets are per network namespace, so each
#                 session needs its own display number.
#   VNC_GEOMETRY  screen size (default 1280x800)
set -u

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

# -AlwaysShared: several viewers may be connected at once without kicking each other off.
# -nolisten tcp: no X11 TCP port (6000+N) on the host network.
# Every viewer reaches this server from the agent's one address, so TigerVNC's per-host
# blacklist (5 unauthenticated attempts by default) would lock out all viewers: turn it off.
Xtigervnc ":$VNC_DISPLAY" \
  -rfbport "$VNC_PORT" -interface "$VNC_LISTEN" \
  -SecurityTypes None -AlwaysShared \
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
