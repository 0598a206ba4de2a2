#!/usr/bin/env bash
# Runs the whole workspace's test suite against a real RabbitMQ (set up by scripts/broker.sh).
# Needs a broker, cargo and cargo-nextest, nothing else; the benchmark's script tests (python3,
# valgrind) run with crates/warren-bench/check.sh.
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
profile=default
[ "${CI:-}" = "true" ] && profile=ci
exec cargo nextest run --workspace --profile "$profile" --no-fail-fast "$@"
