#!/usr/bin/env bash
# Runs the whole workspace's test suite against a real RabbitMQ (set up by scripts/broker.sh).
# Needs a broker, cargo and cargo-nextest, nothing else; the benchmark's script tests and
# their tools run with crates/warren-bench/check.sh.
# Extra arguments go to `cargo nextest run` (e.g. `scripts/test.sh worker::` runs the tests of tests/it/worker/).
set -euo pipefail
cd "$(dirname "$0")/.."
AMQP_URL="$(scripts/broker.sh)"
export AMQP_URL
# The PostgreSQL sink's tests create their own schemas in this database and drop them.
DATABASE_URL="$(scripts/postgres.sh)"
export DATABASE_URL
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
# Tests that stop, block or close a broker (disruptive_*) and those that need the management
# plugin run against a throwaway node this script starts beside it, never against the broker
# above. Without a local rabbitmq-server to start one, those tests are left out, said so.
filter=()
node_root=$(mktemp -d "${TMPDIR:-/tmp}/warren-test-node.XXXXXX")
chmod 755 "$node_root"
cleanup() {
  [ -f "$node_root/node/nodename" ] && scripts/rabbit-node.sh stop "$node_root/node" >/dev/null 2>&1
  [ -d "$node_root/cluster" ] && scripts/rabbit-cluster.sh stop "$node_root/cluster" >/dev/null 2>&1
  rm -rf "$node_root"
}
trap cleanup EXIT
if scripts/rabbit-node.sh start "$node_root/node" --management >/dev/null; then
  export WARREN_TEST_NODE_DIR="$node_root/node"
else
  echo "test: no throwaway RabbitMQ node could be started; the tests that disturb a broker or need its management plugin are left out (install rabbitmq-server to run them)" >&2
  filter=(-E 'not (test(/disruptive_/) or test(/^status::/))')
fi
# The cluster:: tests kill and stop nodes of a three-node cluster; it starts while the tests build.
cluster_pid=""
if [ -z "${filter[*]}" ]; then
  scripts/rabbit-cluster.sh start "$node_root/cluster" --management >/dev/null 2>"$node_root/cluster.log" &
  cluster_pid=$!
fi
profile=default
[ "${CI:-}" = "true" ] && profile=ci
cargo nextest run --workspace --profile "$profile" --no-run
if [ -n "$cluster_pid" ] && wait "$cluster_pid"; then
  export WARREN_TEST_CLUSTER_DIR="$node_root/cluster"
else
  [ -n "$cluster_pid" ] && cat "$node_root/cluster.log" >&2
  echo "test: no three-node cluster could be started; the cluster:: tests are left out" >&2
  if [ -z "${filter[*]}" ]; then filter=(-E 'not test(/^cluster::/)'); else filter=(-E 'not (test(/disruptive_/) or test(/^status::/) or test(/^cluster::/))'); fi
fi
# The console's browser tests drive headless Chromium through chromedriver.
if WARREN_CHROMEDRIVER="$(scripts/chromium.sh)"; then
  export WARREN_CHROMEDRIVER
else
  echo "test: no chromium/chromedriver; the console's browser tests are left out" >&2
  if [ -z "${filter[*]}" ]; then filter=(-E 'not test(/^console::browser::/)'); else filter=(-E "(${filter[1]}) and not test(/^console::browser::/)"); fi
fi
cargo nextest run --workspace --profile "$profile" --no-fail-fast "${filter[@]}" "$@"
