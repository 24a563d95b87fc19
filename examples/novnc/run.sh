#!/usr/bin/env bash
# A desktop in your browser through tunnelgw: noVNC's page and its wss://
# session on one gateway port, relayed to a TigerVNC desktop on loopback.
#
#   sudo apt-get install novnc tigervnc-standalone-server x11-xserver-utils xterm x11-apps openssl
#   examples/novnc/run.sh            # then open the address it prints; Ctrl-C stops it all
#
# Settings (environment): PORT (default 8443), GEOMETRY (default 1280x800),
# NOVNC (default /usr/share/novnc), WORKDIR (default: a new temporary folder,
# removed on exit; the certificate, configuration and Xvnc's log go there).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
PORT="${PORT:-8443}"
GEOMETRY="${GEOMETRY:-1280x800}"
NOVNC="${NOVNC:-/usr/share/novnc}"
if [ -n "${WORKDIR:-}" ]; then work="$WORKDIR"; keep=1; else work="$(mktemp -d)"; keep=0; fi

for tool in Xvnc xsetroot xterm openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: see the apt-get line at the top of $0" >&2; exit 1; }
done
[ -f "$NOVNC/vnc.html" ] || { echo "noVNC is not in $NOVNC: apt-get install novnc" >&2; exit 1; }

cleanup() {
  trap - EXIT INT TERM
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "$keep" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. A self-signed certificate for localhost and 127.0.0.1 (your browser will ask once).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# 2. A VNC desktop on the first free display; RFB on loopback only, no password
#    (only the gateway, on this machine, can reach it).
display=""
for n in $(seq 7 60); do
  [ -e "/tmp/.X$n-lock" ] || [ -e "/tmp/.X11-unix/X$n" ] || { display="$n"; break; }
done
[ -n "$display" ] || { echo "no free X display in :7..:60" >&2; exit 1; }
vnc_port=$((5900 + display))
Xvnc ":$display" -geometry "$GEOMETRY" -depth 24 -SecurityTypes None \
  -localhost -interface 127.0.0.1 -rfbport "$vnc_port" -nolisten tcp \
  -desktop "tunnelgw example" >"$work/xvnc.log" 2>&1 &
for _ in $(seq 100); do [ -S "/tmp/.X11-unix/X$display" ] && break; sleep 0.1; done
export DISPLAY=":$display"
xsetroot -solid '#2e5e8e'
xterm -geometry 80x24+40+40 -title "tunnelgw example" >/dev/null 2>&1 &
if command -v xclock >/dev/null; then xclock -geometry 160x160-40+40 >/dev/null 2>&1 & fi

# 3. The gateway: noVNC's files at /novnc, sessions at /websockify, over TLS.
cat >"$work/tunnelgw.conf" <<CONF
Listen ssl:port=$PORT:interface=127.0.0.1:privateKey=$work/key.pem:certKey=$work/cert.pem
Alias /novnc $NOVNC
ProxyPass /websockify tcp:host=127.0.0.1:port=$vnc_port
CONF
echo "Open https://localhost:$PORT/novnc/vnc.html?autoconnect=true&resize=scale"
echo "(display :$display, VNC on 127.0.0.1:$vnc_port, files in $work; Ctrl-C stops everything)"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" python3 -c \
  'import sys; from twisted.scripts.twistd import run; sys.exit(run())' \
  -n --pidfile= tunnelgw --config "$work/tunnelgw.conf" &
wait "$!"
