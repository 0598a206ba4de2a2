#!/usr/bin/env bash
# Shows that the README's test command leaves the user's broker as it was. A throwaway node
# (scripts/rabbit-node.sh) plays the user's broker, and a client of the user's stays connected
# to it throughout (a bare AMQP connection; needs python3). scripts/test.sh then runs with AMQP_URL pointing
# at that node, and the check compares before and after: the active plugins, the node's uptime
# (no restart) and the client's connection (the same peer port and connected_at: never closed).
#
#   scripts/check-quickstart.sh [ARGS…]   ARGS go to scripts/test.sh; by default the tests that
#                                         close connections, block or alarm a broker
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "check-quickstart: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ $# -gt 0 ] || set -- -E 'test(/disruptive_(close_all_connections|a_worker_under_a_memory_alarm|a_blocked_broker)/)'
root=$(mktemp -d "${TMPDIR:-/tmp}/warren-quickstart.XXXXXX")
chmod 755 "$root"
client=""
cleanup() {
  if [ -n "$client" ]; then kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true; fi
  [ -f "$root/node/nodename" ] && scripts/rabbit-node.sh stop "$root/node" >/dev/null 2>&1
  rm -rf "$root"
}
trap cleanup EXIT

url=$(scripts/rabbit-node.sh start "$root/node")
ctl() { scripts/rabbit-node.sh ctl "$root/node" "$@"; }
# The user's other client: a bare AMQP connection (no heartbeats, no reconnects, python3's
# standard library), so only the broker side can close it.
cat >"$root/witness.py" <<'PY'
import socket, struct, sys, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port))
s.sendall(b"AMQP\x00\x00\x09\x01")
def frame():
    hdr = b""
    while len(hdr) < 7:
        hdr += s.recv(7 - len(hdr))
    t, ch, size = struct.unpack(">BHI", hdr)
    body = b""
    while len(body) < size + 1:
        body += s.recv(size + 1 - len(body))
    return t, body[:-1]
def method(cls, mid, args):
    payload = struct.pack(">HH", cls, mid) + args
    s.sendall(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")
def shortstr(v): return bytes([len(v)]) + v
def longstr(v): return struct.pack(">I", len(v)) + v
frame()  # Connection.Start
props = shortstr(b"connection_name") + b"S" + longstr(b"warren-quickstart-witness")
method(10, 11, longstr(props) + shortstr(b"PLAIN") + longstr(b"\x00guest\x00guest") + shortstr(b"en_US"))
_, tune = frame()  # Connection.Tune
channel_max, frame_max, _hb = struct.unpack(">HIH", tune[4:12])
method(10, 31, struct.pack(">HIH", channel_max, frame_max, 0))  # Tune-Ok: no heartbeats
method(10, 40, shortstr(b"/") + shortstr(b"") + b"\x00")  # Open
frame()  # Open-Ok
print("open", flush=True)
while True:
    data = s.recv(4096)
    if not data:
        print("closed by the broker", flush=True)
        sys.exit(1)
PY
port=${url##*:}
port=${port%%/*}
python3 "$root/witness.py" 127.0.0.1 "$port" >"$root/client.log" 2>&1 &
client=$!

plugins() { ctl eval 'lists:sort(rabbit_plugins:active()).'; }
uptime_ms() { ctl eval 'element(1, erlang:statistics(wall_clock)).'; }
# The client's connection: peer port and connected_at, which a reconnect would change.
client_connection() {
  ctl list_connections -q peer_port connected_at client_properties | grep 'warren-quickstart-witness' | cut -f1,2 || true
}
for _ in $(seq 1 30); do
  [ -n "$(client_connection)" ] && break
  sleep 1
done
before_conn=$(client_connection)
[ -n "$before_conn" ] || fail "the client never connected; its log: $(cat "$root/client.log")"
before_plugins=$(plugins)
before_uptime=$(uptime_ms)
started=$(date +%s)

AMQP_URL="$url" scripts/test.sh "$@"

elapsed_ms=$(( ($(date +%s) - started) * 1000 ))
after_plugins=$(plugins)
after_uptime=$(uptime_ms)
after_conn=$(client_connection)
[ "$after_plugins" = "$before_plugins" ] || fail "plugins changed: $before_plugins -> $after_plugins"
[ "$after_uptime" -ge $(( before_uptime + elapsed_ms - 2000 )) ] ||
  fail "the node restarted: uptime $before_uptime ms before, $after_uptime ms after $elapsed_ms ms"
[ "$after_conn" = "$before_conn" ] ||
  fail "the client's connection changed: '$before_conn' -> '${after_conn:-closed}'; its log: $(cat "$root/client.log")"
kill -0 "$client" 2>/dev/null || fail "the client exited; its log: $(cat "$root/client.log")"
say "the user's broker is as it was: plugins $after_plugins, up ${after_uptime} ms, the client's connection ($after_conn) untouched"
