#!/usr/bin/env bash
# Validates docker-compose.yml for the default set of services and every profile, with
# `docker compose config` (Compose v2) or, where only the standalone tool exists, `docker-compose config`.
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
elif [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null 2>&1; then
  echo "compose: installing docker-compose with apt-get" >&2
  apt-get install -y docker-compose >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y docker-compose >/dev/null; }
  compose=(docker-compose)
else
  echo "compose: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi
profiles=$(grep -oE '^\s+profiles: \[[^]]*\]' docker-compose.yml | grep -oE '"[^"]+"|[a-z][a-z0-9_-]*' | grep -v '^profiles$' | tr -d '"' | sort -u || true)
"${compose[@]}" config >/dev/null
echo "compose: default services: valid"
for p in $profiles; do
  "${compose[@]}" --profile "$p" config >/dev/null
  echo "compose: profile $p: valid"
done
