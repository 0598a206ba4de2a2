//! The `warren-bench` binary: parse, set up logging, run the benchmark, map the result to an
//! exit code.

use std::process::ExitCode;

use clap::Parser;
use warren::cli::Outcome;
use warren::telemetry::{self, LogFormat};
use warren_bench::cli::{self, BenchArgs};

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    telemetry::init(LogFormat::Text);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(Outcome::of_error(&e).code())
        }
    }
}
