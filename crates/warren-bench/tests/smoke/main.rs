//! Smoke tests of the benchmark against the real broker: `warren-bench` itself in tiny runs
//! (the lanes scenario with `warren worker` processes among them), and the bridge benchmark on
//! demand. No timing is asserted.

mod bench_cli;
mod bridge_bench;
mod lanes_bench;
#[path = "../support/mod.rs"]
mod support;
