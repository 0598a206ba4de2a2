#!/usr/bin/env bash
# Quick start: makes sure a RabbitMQ broker answers (scripts/broker.sh), installs warren with
# `cargo install --path . --locked` (into ~/.cargo/bin, so every `warren …` command of the README
# and every hint the demo prints runs as written), and runs `warren demo` with any arguments
# given (e.g. `--faults`, `--events 5000`). Exits with the demo's code: 0 when no event was lost.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: cargo is required: install Rust from https://rustup.rs (1.88 or later)" >&2
  exit 1
fi
AMQP_URL="$(scripts/broker.sh)"
export AMQP_URL
echo "demo: installing warren (cargo install --path . --locked)" >&2
cargo install --quiet --path . --locked
bin="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
if [ "$(command -v warren || true)" != "$bin/warren" ]; then
  echo "demo: warren is installed in $bin, which is not first on your PATH; for the commands below: export PATH=\"$bin:\$PATH\"" >&2
fi
exec "$bin/warren" demo "$@"
