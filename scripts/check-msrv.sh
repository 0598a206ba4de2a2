#!/usr/bin/env bash
# Checks that the workspace builds with the Rust version Cargo.toml declares (rust-version):
# installs that toolchain with rustup (minimal profile) if needed, then `cargo +VERSION check`
# of every package with the locked dependencies, in target/msrv so the main build stays warm.
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(sed -n '/^\[workspace.package\]/,/^\[/s/^rust-version *= *"\([0-9.]*\)"/\1/p' Cargo.toml)
[ -n "$msrv" ] || { echo "msrv: no rust-version in [workspace.package] of Cargo.toml" >&2; exit 1; }
if ! command -v rustup >/dev/null 2>&1; then
  echo "msrv: rustup is required to install Rust $msrv (https://rustup.rs)" >&2
  exit 1
fi
if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
  echo "msrv: installing Rust $msrv" >&2
  rustup toolchain install "$msrv" --profile minimal >&2
fi
echo "msrv: cargo +$msrv check --workspace --locked" >&2
cargo "+$msrv" check --workspace --locked --target-dir target/msrv
