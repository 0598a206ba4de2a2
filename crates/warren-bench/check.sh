#!/usr/bin/env bash
# The benchmark's own check: the smoke tests of its scripts, `compare` (python3) and
# `instructions` (python3 and valgrind), against the broker at AMQP_URL (default: the local one).
# In CI (CI=true) it installs what is missing with apt-get.
set -euo pipefail
cd "$(dirname "$0")/../.."
need() {
  local tool="$1" package="$2"
  command -v "$tool" >/dev/null 2>&1 && return 0
  if [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench check: installing $package" >&2
    apt-get install -y "$package" >&2 || { apt-get update >&2 && apt-get install -y "$package" >&2; }
  else
    echo "bench check: $tool is missing: apt-get install -y $package" >&2
    exit 1
  fi
}
need python3 python3
need valgrind valgrind
python3 -c 'import venv, ensurepip' 2>/dev/null || need_venv=1
if [ "${need_venv:-0}" = 1 ]; then
  if [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y python3-venv >&2 || { apt-get update >&2 && apt-get install -y python3-venv >&2; }
  else
    echo "bench check: python3's venv module is missing: apt-get install -y python3-venv" >&2
    exit 1
  fi
fi
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# --workspace, with a filter: the same feature set as the test build, so nothing is rebuilt.
exec cargo nextest run --workspace --run-ignored only --no-fail-fast -E 'binary_id(warren-bench::tools)' "$@"
