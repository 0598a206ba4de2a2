#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers, then prints the DATABASE_URL to use on stdout.
# Order: $DATABASE_URL when it is set (an error if it does not answer); a server already on
# 127.0.0.1:5432; the machine's installed cluster, started (installed with apt-get when CI=true
# and it is missing). Nothing is changed on a server this script did not start. The tests create
# their own schemas and drop them.
# Progress goes to stderr, so `url=$(scripts/postgres.sh)` works.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "postgres: $*" >&2; }
default_url="postgres://postgres@127.0.0.1:5432/postgres"

answers() {
  local host="$1" port="$2"
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# host and port of a postgres:// URL (default 127.0.0.1:5432), without printing the password.
hostport() {
  local rest="${1#*://}"
  rest="${rest##*@}"
  rest="${rest%%/*}"
  rest="${rest%%\?*}"
  [ -n "$rest" ] || rest="127.0.0.1"
  case "$rest" in *:*) echo "${rest%:*} ${rest##*:}" ;; *) echo "$rest 5432" ;; esac
}

if [ -n "${DATABASE_URL:-}" ]; then
  # shellcheck disable=SC2046
  if answers $(hostport "$DATABASE_URL"); then
    say "using the database at $(hostport "$DATABASE_URL" | tr ' ' :) (DATABASE_URL)"
    echo "$DATABASE_URL"
    exit 0
  fi
  say "DATABASE_URL is set, but nothing answers at $(hostport "$DATABASE_URL" | tr ' ' :): start that server, or unset DATABASE_URL to use (or start) a local one"
  exit 1
fi

if answers 127.0.0.1 5432; then
  say "using the database at 127.0.0.1:5432"
  echo "$default_url"
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null 2>&1; then
    say "installing postgresql with apt-get"
    apt-get install -y postgresql >&2 || { apt-get update >&2 && apt-get install -y postgresql >&2; }
  fi
fi

if command -v pg_ctlcluster >/dev/null 2>&1; then
  # Debian's clusters: start every one that is down.
  while read -r version cluster _; do
    say "starting PostgreSQL cluster $version/$cluster"
    pg_ctlcluster "$version" "$cluster" start >&2 || true
  done < <(pg_lsclusters -h 2>/dev/null | awk '$4 != "online"')
elif command -v service >/dev/null 2>&1; then
  service postgresql start >&2 || true
fi

for _ in $(seq 1 30); do
  if answers 127.0.0.1 5432; then
    echo "$default_url"
    exit 0
  fi
  sleep 1
done

cat >&2 <<'MSG'
postgres: no PostgreSQL server answers on 127.0.0.1:5432 and none can be started here. Do one of:
  - install it locally: `sudo apt-get install -y postgresql` (Debian/Ubuntu) or `brew install postgresql` (macOS);
  - run `docker compose up -d postgres`;
  - or point DATABASE_URL at a server you have: `export DATABASE_URL=postgres://user:password@host:5432/db`.
MSG
exit 1
