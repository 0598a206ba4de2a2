#!/usr/bin/env bash
# A throwaway RabbitMQ node of the installed RabbitMQ, beside any broker already running: its own
# node name, AMQP and distribution ports, config, data, log and pid paths under one directory.
# The tests that stop, block or restart a broker use it, so they never disturb one they did
# not start.
#
#   scripts/rabbit-node.sh start DIR [--port P] [--management]
#       start a node in DIR (created; P default: a free port in 20000-29999), wait until it
#       answers, print its AMQP URL. --management enables the management plugin on port P+20000.
#   scripts/rabbit-node.sh stop DIR           stop the node cleanly and remove DIR
#   scripts/rabbit-node.sh ctl DIR ARGS…      rabbitmqctl against the node
#   scripts/rabbit-node.sh url DIR            print its AMQP URL again
#   scripts/rabbit-node.sh management-url DIR print its management API's URL
#
# RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS passes on (scripts/rabbit-cluster.sh sets one scheduler).
# Runs as the `rabbitmq` user with the system's Erlang cookie (root switches to it). Progress
# goes to stderr, so `url=$(scripts/rabbit-node.sh start "$dir")` works. Needs rabbitmq-server.
set -euo pipefail

say() { echo "rabbit-node: $*" >&2; }
die() { say "$*"; exit 1; }

BIN=/usr/lib/rabbitmq/bin
[ -x "$BIN/rabbitmq-server" ] || die "rabbitmq-server is not installed (apt-get install -y rabbitmq-server)"
COOKIE_HOME=/var/lib/rabbitmq

# Runs a RabbitMQ command as the rabbitmq user (whose HOME holds the cluster's Erlang cookie).
as_rabbitmq() {
  if [ "$(id -u)" = "$(id -u rabbitmq)" ]; then
    env HOME="$COOKIE_HOME" "$@"
  elif [ "$(id -u)" = 0 ]; then
    runuser -u rabbitmq -- env HOME="$COOKIE_HOME" "$@"
  else
    die "run as root or as the rabbitmq user (the node runs with the system's Erlang cookie)"
  fi
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# An AMQP port in 20000-29999 whose distribution port (+10000) is free too.
free_port() {
  local p i
  for i in $(seq 1 50); do
    p=$(shuf -i 20000-29999 -n 1)
    if ! answers "$p" && ! answers $((p + 10000)) && ! answers $((p + 20000)); then
      echo "$p"
      return 0
    fi
  done
  die "no free port pair found"
}

node_of() { cat "$1/nodename"; }
port_of() { cat "$1/port"; }
url_of() { echo "amqp://guest:guest@127.0.0.1:$(port_of "$1")/%2f"; }
management_url_of() {
  [ -f "$1/management" ] || die "$1: the node runs without the management plugin (start it with --management)"
  echo "http://127.0.0.1:$(($(port_of "$1") + 20000))"
}

ctl() {
  local dir="$1"
  shift
  as_rabbitmq "$BIN/rabbitmqctl" -n "$(node_of "$dir")" "$@"
}

start() {
  local dir="$1" port="" management=0
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --management) management=1; shift ;;
      *) die "start: unknown argument $1" ;;
    esac
  done
  [ -n "$port" ] || port=$(free_port)
  answers "$port" && die "port $port is taken"
  local dist=$((port + 10000))
  # The distribution port must be free too; pick another AMQP port if it is not.
  if answers "$dist"; then die "distribution port $dist (AMQP port + 10000) is taken; give another PORT"; fi
  mkdir -p "$dir"
  local node="warren-test-$port@localhost"
  echo "$node" >"$dir/nodename"
  echo "$port" >"$dir/port"
  # The guest user may log in over loopback only, which is where tests connect from.
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$port
loopback_users.guest = true
log.file.level = warning
log.console = false
EOF
  if [ "$management" = 1 ]; then
    printf 'management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %s\n' $((port + 20000)) >>"$dir/rabbitmq.conf"
    echo "[rabbitmq_management]." >"$dir/enabled_plugins"
    : >"$dir/management"
  else
    echo "[]." >"$dir/enabled_plugins"
  fi
  mkdir -p "$dir/data" "$dir/log"
  chown -R rabbitmq:rabbitmq "$dir" 2>/dev/null || true
  as_rabbitmq test -w "$dir" || die "the rabbitmq user cannot write $dir (is a parent directory private? chmod 755 it)"
  say "starting $node on 127.0.0.1:$port (data in $dir)"
  as_rabbitmq env \
    RABBITMQ_NODENAME="$node" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT="$dist" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/data" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS:-}" \
    setsid sh -c 'cd "$1" && exec "$2"' sh "$dir" "$BIN/rabbitmq-server" >"$dir/log/stdout" 2>&1 </dev/null &
  local server=$! i
  for i in $(seq 1 60); do
    if ! kill -0 "$server" 2>/dev/null; then
      say "$node exited while starting; its log:"
      tail -n 30 "$dir/log/stdout" >&2 || true
      rm -rf "$dir"
      exit 1
    fi
    if answers "$port" && ctl "$dir" await_startup --timeout 5 >/dev/null 2>&1; then
      say "$node answers on 127.0.0.1:$port"
      url_of "$dir"
      return 0
    fi
    sleep 1
  done
  say "$node did not answer within 60 s; its log:"
  tail -n 30 "$dir/log/stdout" >&2 || true
  stop "$dir" || true
  exit 1
}

stop() {
  local dir="$1"
  [ -f "$dir/nodename" ] || die "$dir holds no node"
  local node
  node=$(node_of "$dir")
  if ! ctl "$dir" stop "$dir/pid" >/dev/null 2>&1; then
    # The node is gone or wedged: end whatever still runs from its directory.
    if [ -f "$dir/pid" ]; then kill -9 "$(cat "$dir/pid")" 2>/dev/null || true; fi
  fi
  say "stopped $node"
  rm -rf "$dir"
}

cmd="${1:-}"
[ $# -ge 2 ] || { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
shift
case "$cmd" in
  start) start "$@" ;;
  management-url) management_url_of "$1" ;;
  stop) stop "$1" ;;
  ctl) dir="$1"; shift; ctl "$dir" "$@" ;;
  url) url_of "$1" ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
