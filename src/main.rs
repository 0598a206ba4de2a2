//! The `warren` binary: parse, set up logging, run the library, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use warren::cli::{self, Cli, Outcome};

fn main() -> ExitCode {
    let cli = Cli::parse();
    warren::telemetry::init(cli.global.log_format.into());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Outcome::Failure.code());
        }
    };
    let result = runtime.block_on(cli::run(cli));
    if let Err(e) = &result {
        eprintln!("error: {e}");
    }
    ExitCode::from(cli::exit_code(&result))
}
