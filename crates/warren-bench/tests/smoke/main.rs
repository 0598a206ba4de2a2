//! Smoke tests of the benchmark against the real broker: `warren-bench` itself in tiny runs,
//! and the bridge benchmark on demand. No timing is asserted.

mod bench_cli;
mod bridge_bench;
mod support;
