#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this host, for tests and for trying warren on a cluster: three
# throwaway nodes (scripts/rabbit-node.sh: own node names, ports and data directories under DIR),
# the second and third joined to the first. Light enough for a 2-core machine: one scheduler and
# a small memory share per node.
#
#   scripts/rabbit-cluster.sh start DIR [--management]
#       start and cluster three nodes in DIR/n1..n3, print the AMQP_URL list (one URL per node,
#       comma-separated). --management enables the management plugin on every node.
#   scripts/rabbit-cluster.sh stop DIR        stop every node and remove DIR
#   scripts/rabbit-cluster.sh url DIR         print the AMQP_URL list again
#   scripts/rabbit-cluster.sh ctl DIR N ARGS… rabbitmqctl against node N (1-3)
#
# Progress goes to stderr, so `AMQP_URL=$(scripts/rabbit-cluster.sh start "$dir")` works.
set -euo pipefail

say() { echo "rabbit-cluster: $*" >&2; }
die() { say "$*"; exit 1; }
here="$(cd "$(dirname "$0")" && pwd)"
node_sh="$here/rabbit-node.sh"
NODES="1 2 3"

url_list() {
  local dir="$1" n urls=()
  for n in $NODES; do urls+=("$("$node_sh" url "$dir/n$n")"); done
  (IFS=,; echo "${urls[*]}")
}

start() {
  local dir="$1"
  shift
  local flags=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --management) flags+=(--management); shift ;;
      *) die "start: unknown argument $1" ;;
    esac
  done
  mkdir -p "$dir"
  chmod 755 "$dir"
  # One scheduler and a small share of memory per node: three nodes share two cores.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 +SDcpu 1:1 +SDio 2"
  local n
  for n in $NODES; do
    if ! "$node_sh" start "$dir/n$n" "${flags[@]}" >/dev/null; then
      stop "$dir" || true
      die "node $n did not start"
    fi
  done
  local first
  first=$(cat "$dir/n1/nodename")
  for n in 2 3; do
    say "joining $(cat "$dir/n$n/nodename") to $first"
    if ! { "$node_sh" ctl "$dir/n$n" stop_app >/dev/null &&
      "$node_sh" ctl "$dir/n$n" join_cluster "$first" >/dev/null &&
      "$node_sh" ctl "$dir/n$n" start_app >/dev/null &&
      "$node_sh" ctl "$dir/n$n" await_startup >/dev/null; }; then
      stop "$dir" || true
      die "node $n could not join the cluster"
    fi
  done
  "$node_sh" ctl "$dir/n1" cluster_status --formatter json >"$dir/cluster_status.json" 2>/dev/null || true
  say "three nodes clustered"
  url_list "$dir"
}

stop() {
  local dir="$1" n
  [ -d "$dir" ] || die "$dir holds no cluster"
  for n in 3 2 1; do
    if [ -f "$dir/n$n/nodename" ]; then "$node_sh" stop "$dir/n$n" || true; fi
  done
  rm -rf "$dir"
}

cmd="${1:-}"
[ $# -ge 2 ] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
shift
case "$cmd" in
  start) start "$@" ;;
  stop) stop "$1" ;;
  url) url_list "$1" ;;
  ctl) dir="$1"; n="$2"; shift 2; "$node_sh" ctl "$dir/n$n" "$@" ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
