#!/usr/bin/env bash
# Prints the path of chromedriver for the console's browser tests (Debian's chromium and
# chromium-driver). Installs both with apt-get when CI=true and they are missing; elsewhere
# says what to install and exits 1.
set -euo pipefail
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium: installing chromium and chromium-driver with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y chromium chromium-driver >&2 || { apt-get update >&2 && apt-get install -y chromium chromium-driver >&2; }
  else
    echo "chromium: the console's browser tests need chromium and chromedriver (Debian: apt-get install -y chromium chromium-driver)" >&2
    exit 1
  fi
fi
command -v chromedriver
