#!/usr/bin/env bash
# Runs warren's whole test suite against a real RabbitMQ (set up by scripts/broker.sh).
# Extra arguments go to `cargo nextest run` (e.g. `scripts/test.sh worker::` runs the tests of tests/it/worker.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
AMQP_URL="$(scripts/broker.sh)"
export AMQP_URL
# nextest runs the broker-disturbing tests alone (see .config/nextest.toml). A fresh CI runner
# installs it; a developer machine is told how.
if ! cargo nextest --version >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "test: installing cargo-nextest" >&2
    cargo install cargo-nextest --locked
  else
    echo "test: cargo-nextest is required (it runs broker-disturbing tests alone): cargo install cargo-nextest --locked" >&2
    exit 1
  fi
fi
# bench/instructions' smoke test counts instructions under valgrind.
if ! valgrind --version >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing valgrind" >&2
    apt-get install -y valgrind >&2 || { apt-get update >&2 && apt-get install -y valgrind >&2; } ||
      echo "test: valgrind could not be installed; bench/instructions' test will fail" >&2
  else
    echo "test: valgrind is missing: apt-get install -y valgrind (or WARREN_NO_VALGRIND=1 to skip bench/instructions' test)" >&2
  fi
fi
profile=default
[ "${CI:-}" = "true" ] && profile=ci
exec cargo nextest run --profile "$profile" --no-fail-fast "$@"
