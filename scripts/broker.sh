#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers, then prints the AMQP URL to use on stdout.
# Order: $AMQP_URL when it is set (an error if it does not answer: never a silent fallback); a
# broker already on 127.0.0.1:5672; `docker compose up -d rabbitmq` when a Docker engine runs; a
# local rabbitmq-server (installed with apt-get when CI=true and it is missing). If none works,
# says exactly what to install and exits 1.
# A broker this script did not start is used as it is: nothing is enabled or changed on it. On
# a local rabbitmq-server it started itself, it enables rabbitmq_management (for warren status).
# Progress goes to stderr, so `url=$(scripts/broker.sh)` works.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "broker: $*" >&2; }
default_url="amqp://guest:guest@127.0.0.1:5672/%2f"
url="${AMQP_URL:-$default_url}"

# host:port of an amqp:// URL, without printing the password.
hostport() {
  local rest="${1#*://}"
  rest="${rest##*@}"
  rest="${rest%%/*}"
  rest="${rest%%\?*}"
  case "$rest" in *:*) echo "$rest" ;; *) echo "$rest:5672" ;; esac
}

answers() {
  local hp host port
  hp=$(hostport "$1")
  host="${hp%:*}"
  port="${hp##*:}"
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

wait_for() {
  local i
  for i in $(seq 1 "${2:-60}"); do
    answers "$1" && return 0
    sleep 1
  done
  return 1
}

# Only for a broker this script started: warren status reads unacked counts from the
# management API.
enable_management() {
  command -v rabbitmq-plugins >/dev/null 2>&1 || return 0
  if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
    say "enabling rabbitmq_management on the broker this script started (for warren status)"
    rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 ||
      say "could not enable rabbitmq_management; warren status will show ready counts only"
  fi
}

if [ -n "${AMQP_URL:-}" ]; then
  if answers "$AMQP_URL"; then
    say "using the broker at $(hostport "$AMQP_URL") (AMQP_URL)"
    echo "$AMQP_URL"
    exit 0
  fi
  say "AMQP_URL is set, but nothing answers at $(hostport "$AMQP_URL"): start that broker, or unset AMQP_URL to use (or start) a local one"
  exit 1
fi

if answers "$url"; then
  say "using the broker at $(hostport "$url")"
  echo "$url"
  exit 0
fi

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  if docker compose version >/dev/null 2>&1; then
    say "starting RabbitMQ with docker compose (waiting for its health check)"
    # --wait blocks until the container's health check passes (Compose 2.1+).
    docker compose up -d --wait rabbitmq >&2 || docker compose up -d rabbitmq >&2
  elif command -v docker-compose >/dev/null 2>&1; then
    say "starting RabbitMQ with docker-compose"
    docker-compose up -d rabbitmq >&2
  else
    say "Docker runs but Compose is missing: install the Compose plugin (https://docs.docker.com/compose/install/)"
    exit 1
  fi
  wait_for "$url" 90 || { say "the rabbitmq container did not answer on 127.0.0.1:5672 within 90 s; see: docker compose logs rabbitmq"; exit 1; }
  echo "$url"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null 2>&1; then
    say "installing rabbitmq-server with apt-get"
    apt-get install -y rabbitmq-server >&2 || { apt-get update >&2 && apt-get install -y rabbitmq-server >&2; }
  fi
fi

if command -v rabbitmq-server >/dev/null 2>&1; then
  say "starting the local rabbitmq-server"
  rabbitmq-server -detached >&2 2>/dev/null || true
  timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
  if wait_for "$url" 60; then
    enable_management
    echo "$url"
    exit 0
  fi
  say "rabbitmq-server started but 127.0.0.1:5672 does not answer; see /var/log/rabbitmq/"
  exit 1
fi

cat >&2 <<'MSG'
broker: no RabbitMQ broker is reachable and none can be started here. Do one of:
  - install Docker (https://docs.docker.com/engine/install/) and run this again (it will run `docker compose up -d rabbitmq`);
  - install RabbitMQ locally: `sudo apt-get install -y rabbitmq-server` (Debian/Ubuntu) or `brew install rabbitmq` (macOS);
  - or point AMQP_URL at a broker you have: `export AMQP_URL=amqp://user:password@host:5672/%2f`.
MSG
exit 1
