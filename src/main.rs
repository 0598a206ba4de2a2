//! The `warren` binary: parse, set up logging, run the library, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use warren::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    warren::telemetry::init(cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
