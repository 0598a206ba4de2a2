#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests that stop or restart the database, so they never
# disturb one they did not start. Runs the installed PostgreSQL's binaries as the `postgres`
# user (when run as root) with its own data directory, port and socket directory under DIR.
#
#   scripts/pg-node.sh start DIR [--port N]   init DIR (if new) and start; prints the URL
#   scripts/pg-node.sh url DIR                print the URL of the server in DIR
#   scripts/pg-node.sh restart DIR [--down S] fast shutdown, stay down S seconds (default 0), start
#   scripts/pg-node.sh stop DIR               stop it (DIR stays; remove it yourself)
#
# DIR's parent must be readable by the postgres user (mktemp -d, then chmod 755).
set -euo pipefail

say() { echo "pg-node: $*" >&2; }
usage() { sed -n '2,11p' "$0" >&2; exit 2; }

bindir() {
  local d
  if command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; return; fi
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return; }
  done
  say "no PostgreSQL server binaries (pg_ctl) found: install postgresql"
  exit 1
}

# Runs a command as the postgres user when root (PostgreSQL refuses to run as root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || usage
shift 2
bin=$(bindir)

pg_start() {
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start >/dev/null
}

case "$cmd" in
  start)
    port=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --port) port="$2"; shift 2 ;;
        *) usage ;;
      esac
    done
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
      port="${port:-$(free_port)}"
      mkdir -p "$dir/run"
      [ "$(id -u)" = 0 ] && chown postgres: "$dir/run"
      cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/run'
fsync = off
max_connections = 50
shared_buffers = 32MB
CONF
      echo "$port" >"$dir/port"
    fi
    pg_start
    echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
    ;;
  url)
    echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
    ;;
  restart)
    down=0
    while [ $# -gt 0 ]; do
      case "$1" in
        --down) down="$2"; shift 2 ;;
        *) usage ;;
      esac
    done
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    sleep "$down"
    pg_start
    ;;
  stop)
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 60 stop >/dev/null || true
    ;;
  *) usage ;;
esac
