//! `warren dlq replay|purge`: confirm, change the DLQs, print the report.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;

use super::{FilterArgs, Selection};
use crate::amqp::{self, AmqpUrl};
use crate::cli::{Outcome, OutputArg, signals};
use crate::dlq::{self, DlqRef, Filter, ReplayOptions, Report, render};
use crate::error::{Error, Result};
use crate::output::{Output, OutputFormat};

/// `warren dlq replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    selection: Selection,
    #[command(flatten)]
    filter: FilterArgs,
    /// Show what would be replayed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// At most this many messages per second: 50/s, 600/m, or a bare number (per second).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Republishes awaiting their confirm at once. A kill can duplicate up to this many
    /// messages (idempotency keys absorb duplicates); 1 duplicates at most one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    window: u16,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long)]
    yes: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
}

/// `warren dlq purge`
#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    selection: Selection,
    #[command(flatten)]
    filter: FilterArgs,
    /// Show what would be purged; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long)]
    yes: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
}

pub(super) async fn replay(url: &AmqpUrl, args: ReplayArgs) -> Result<Outcome> {
    let topology = args.selection.topology.load()?;
    let dlqs = args.selection.resolve(true)?;
    let filter = args.filter.filter();
    if !(args.yes || args.dry_run) {
        ask(url, "Replay", &dlqs, &filter).await?;
    }
    let opts = ReplayOptions {
        filter,
        dry_run: args.dry_run,
        rate: args.rate,
        window: args.window.into(),
        progress: std::io::stderr().is_terminal(),
    };
    // Only now: Ctrl-C at the prompt ends the process at once.
    let shutdown = signals::on_signals();
    let report = dlq::replay(url, &topology, &dlqs, &opts, &shutdown).await?;
    finish(&report, args.output.into())
}

pub(super) async fn purge(url: &AmqpUrl, args: PurgeArgs) -> Result<Outcome> {
    let dlqs = args.selection.resolve(true)?;
    let filter = args.filter.filter();
    if !(args.yes || args.dry_run) {
        ask(url, "Purge", &dlqs, &filter).await?;
    }
    let shutdown = signals::on_signals();
    let conn = dlq::connect(url, "purge").await?;
    let report = dlq::purge(&conn, &dlqs, &filter, args.dry_run, &shutdown).await;
    amqp::close(&conn).await;
    finish(&report?, args.output.into())
}

/// Prints the report, its summary on stderr, and says how it went.
fn finish(report: &Report, format: OutputFormat) -> Result<Outcome> {
    let mut out = Output::stdout();
    match format {
        OutputFormat::Table => out.text(&render::report(report))?,
        OutputFormat::Json => out.json(report)?,
        OutputFormat::Ndjson => out.ndjson(&report.items)?,
    }
    eprintln!("{}", report.summary());
    Ok(Outcome::of_report(report))
}

/// Asks on the terminal, showing each DLQ's depth; refuses when stdin is not one.
async fn ask(url: &AmqpUrl, verb: &str, dlqs: &[DlqRef], filter: &Filter) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "{} changes the DLQs and stdin is not a terminal: pass -y to confirm, or --dry-run to look first",
            verb.to_lowercase()
        )));
    }
    let conn = dlq::connect(url, "confirm").await?;
    let mut queues = Vec::new();
    for d in dlqs {
        let depth = match amqp::inspect_queue(&conn, &d.name).await {
            Ok(Some((n, _))) => n.to_string(),
            Ok(None) => "missing".into(),
            Err(e) => return Err(e.into()),
        };
        queues.push(format!("{} ({depth} messages)", d.name));
    }
    amqp::close(&conn).await;
    eprint!(
        "{verb} dead letters matching: {}\n  from {}?\n[y/N] ",
        filter.describe(),
        queues.join(", ")
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|source| Error::Io {
            path: "<stdin>".into(),
            source,
        })?;
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Error::NotConfirmed)
    }
}

/// `--rate`: messages per second.
fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    let (n, per) = match s.split_once('/') {
        Some((n, "s")) => (n, 1.0),
        Some((n, "m")) => (n, 60.0),
        Some((_, unit)) => return Err(format!("unknown unit '/{unit}': use N/s or N/m")),
        None => (s, 1.0),
    };
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a rate like 50/s"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("'{s}': the rate must be above zero"));
    }
    Ok(n / per)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_parse_per_second() {
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert_eq!(parse_rate("7"), Ok(7.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/h").unwrap_err().contains("/h"));
        assert!(parse_rate("fast").is_err());
    }
}
