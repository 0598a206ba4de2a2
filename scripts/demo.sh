#!/usr/bin/env bash
# Quick start: makes sure a RabbitMQ broker answers (scripts/broker.sh), builds warren in release
# mode if needed, and runs `warren demo` with any arguments given (e.g. `--faults`, `--events 5000`).
# Exits with the demo's code: 0 when no event was lost.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: cargo is required: install Rust from https://rustup.rs (1.85 or later)" >&2
  exit 1
fi
AMQP_URL="$(scripts/broker.sh)"
export AMQP_URL
exec cargo run --quiet --release -- demo "$@"
