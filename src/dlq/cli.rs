//! `warren dlq …`: flags, confirmation prompts, and output. The work is in the sibling modules.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{DlqRef, Filter, Kind, ReplayOptions, Report, render};
use crate::amqp;
use crate::cli::{GlobalArgs, TopologyArgs};
use crate::error::{Error, Result};
use crate::output::{self, OutputFormat};

/// Which DLQs a command reads.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// A work queue of the topology (its DLQ is read) or a DLQ's name. Repeat for several.
    #[arg(short = 'q', long = "queue", value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Every DLQ of the topology, including the bridge's `<events exchange>.dlq`. The default
    /// for list, show, stats and export; replay and purge need -q or --all.
    #[arg(long, conflicts_with = "queues")]
    pub all: bool,
}

/// The common filters.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only this event type, or a topic pattern such as `wallet.*` or `escrow.#`. Repeat for several.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only this kind (see the README's kind table). Repeat for several.
    #[arg(long = "kind", value_enum, value_name = "KIND")]
    pub kinds: Vec<Kind>,
    /// Only dead letters whose id, type, agent, error or body contains TEXT (ignoring case).
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// Only dead letters whose last failure is within this long ago: 90s, 30m, 1h, 2d.
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Act on at most N matching dead letters (the first N in queue order).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            types: self.types.clone(),
            kinds: self.kinds.clone(),
            grep: self.grep.as_ref().map(|g| g.to_lowercase()),
            since: None,
            limit: self.limit,
        }
        .since_ago(self.since)
    }
}

/// `warren dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters with why they failed. Non-destructive: order and counts are unchanged.
    List {
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        filter: FilterArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print one dead letter: properties, headers, x-death and the pretty-printed body.
    Show {
        /// The event id (message_id), or #N for the message at position N of one DLQ (-q).
        /// JSON output is an array: an id can be in a DLQ more than once.
        id: String,
        #[command(flatten)]
        selection: Selection,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Count dead letters by origin queue, kind, event type and error fingerprint.
    Stats {
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        filter: FilterArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Send dead letters back to the queue they failed in, attempts reset. Safe to kill.
    Replay {
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
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Delete dead letters. Asks on a terminal; refuses without -y otherwise.
    Purge {
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
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Write dead letters as NDJSON (explanation, properties, headers, body). Non-destructive.
    Export {
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        filter: FilterArgs,
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Runs a `dlq` command; returns the exit code.
pub async fn run(global: &GlobalArgs, cmd: DlqCommand) -> Result<u8> {
    let url = global.url()?;
    match cmd {
        DlqCommand::List {
            selection,
            filter,
            output,
        } => {
            let dlqs = selection.resolve(false)?;
            let conn = super::connect(&url, "list").await?;
            let listing = super::list(&conn, &dlqs, &filter.filter()).await;
            amqp::close(&conn).await;
            let listing = listing?;
            match output {
                OutputFormat::Table => {
                    print(&render::list(&listing.items))?;
                    let total: u32 = listing.scans.iter().map(|s| s.total).sum();
                    eprintln!(
                        "{} dead letters shown of {total} in {}.",
                        listing.items.len(),
                        dlq_count(dlqs.len())
                    );
                }
                OutputFormat::Json => written(output::print_json(&listing))?,
                OutputFormat::Ndjson => written(output::print_ndjson(&listing.items))?,
            }
            Ok(listing.exit_code())
        }
        DlqCommand::Show {
            id,
            selection,
            output,
        } => {
            let dlqs = selection.resolve(false)?;
            if id.starts_with('#') && dlqs.len() != 1 {
                return Err(Error::Usage(format!(
                    "show {id}: a position needs exactly one DLQ (-q QUEUE)"
                )));
            }
            let conn = super::connect(&url, "show").await?;
            let found = super::find(&conn, &dlqs, &id).await;
            amqp::close(&conn).await;
            let (found, scans) = found?;
            // A DLQ read incomplete may hide the id (or more copies of it): exit 3, as list does.
            let code = super::read::exit_code(&scans);
            if found.is_empty() {
                return Err(not_found(&id, &dlqs, &scans));
            }
            match output {
                OutputFormat::Table => {
                    let texts: Vec<String> = found.iter().map(render::detail).collect();
                    print(&texts.join("\n\n"))?;
                    if found.len() > 1 {
                        eprintln!(
                            "{} copies of '{id}' found (a worker or a replay killed between a dead letter and its ack leaves a copy; replaying both repeats one idempotency key).",
                            found.len()
                        );
                    }
                }
                OutputFormat::Json => written(output::print_json(&found))?,
                OutputFormat::Ndjson => written(output::print_ndjson(&found))?,
            }
            Ok(code)
        }
        DlqCommand::Stats {
            selection,
            filter,
            output,
        } => {
            let dlqs = selection.resolve(false)?;
            let conn = super::connect(&url, "stats").await?;
            let stats = super::stats(&conn, &dlqs, &filter.filter()).await;
            amqp::close(&conn).await;
            let stats = stats?;
            let code = super::read::exit_code(&stats.scans);
            match output {
                OutputFormat::Table => print(&render::stats(&stats))?,
                OutputFormat::Json => written(output::print_json(&stats))?,
                OutputFormat::Ndjson => written(output::print_ndjson(&stats.groups))?,
            }
            Ok(code)
        }
        DlqCommand::Replay {
            selection,
            filter,
            dry_run,
            rate,
            window,
            yes,
            output,
        } => {
            let topology = selection.topology.load()?;
            let dlqs = selection.resolve(true)?;
            let filter = filter.filter();
            if !(yes || dry_run) {
                ask(&url, "Replay", &dlqs, &filter).await?;
            }
            let opts = ReplayOptions {
                filter,
                dry_run,
                rate,
                window: window.into(),
                progress: std::io::stderr().is_terminal(),
            };
            let shutdown = crate::shutdown::on_signals();
            let report = super::replay(&url, &topology, &dlqs, &opts, &shutdown).await?;
            finish(&report, output)
        }
        DlqCommand::Purge {
            selection,
            filter,
            dry_run,
            yes,
            output,
        } => {
            let dlqs = selection.resolve(true)?;
            let filter = filter.filter();
            if !(yes || dry_run) {
                ask(&url, "Purge", &dlqs, &filter).await?;
            }
            let shutdown = crate::shutdown::on_signals();
            let conn = super::connect(&url, "purge").await?;
            let report = super::purge(&conn, &dlqs, &filter, dry_run, &shutdown).await;
            amqp::close(&conn).await;
            finish(&report?, output)
        }
        DlqCommand::Export {
            selection,
            filter,
            out,
        } => {
            let dlqs = selection.resolve(false)?;
            let conn = super::connect(&url, "export").await?;
            let result = match &out {
                Some(path) => {
                    let file = std::fs::File::create(path).map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                    super::export(
                        &conn,
                        &dlqs,
                        &filter.filter(),
                        &mut std::io::BufWriter::new(file),
                    )
                    .await
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    super::export(&conn, &dlqs, &filter.filter(), &mut w).await
                }
            };
            amqp::close(&conn).await;
            let (scans, count) = result?;
            eprintln!(
                "Exported {count} dead letters from {}.",
                dlq_count(scans.len())
            );
            Ok(super::read::exit_code(&scans))
        }
    }
}

impl Selection {
    /// The DLQs to read; `explicit` commands (replay, purge) refuse to default to all.
    fn resolve(&self, explicit: bool) -> Result<Vec<DlqRef>> {
        if explicit && !self.all && self.queues.is_empty() {
            return Err(Error::Usage(
                "choose the DLQs: -q QUEUE (repeatable) or --all".into(),
            ));
        }
        let topology = self.topology.load()?;
        Ok(super::resolve(&topology, &self.queues)?)
    }
}

/// `show`'s error for an id it did not find: exit 1, or 3 when some DLQ could not be read
/// whole (the id may be among the messages another consumer holds).
fn not_found(id: &str, dlqs: &[DlqRef], scans: &[super::Scan]) -> Error {
    let names: Vec<&str> = dlqs.iter().map(|d| d.name.as_str()).collect();
    let msg = format!("no dead letter '{id}' in {}", names.join(", "));
    let partial: Vec<&str> = scans
        .iter()
        .filter(|s| s.incomplete)
        .map(|s| s.dlq.as_str())
        .collect();
    if partial.is_empty() {
        Error::Other(msg)
    } else {
        Error::Partial(format!(
            "{msg} (DLQ read incomplete): another consumer holds messages of {}; run it again",
            partial.join(", ")
        ))
    }
}

/// Prints the report and returns its exit code.
fn finish(report: &Report, output: OutputFormat) -> Result<u8> {
    match output {
        OutputFormat::Table => print(&render::report(report))?,
        OutputFormat::Json => written(output::print_json(report))?,
        OutputFormat::Ndjson => written(output::print_ndjson(&report.items))?,
    }
    eprintln!("{}", report.summary());
    Ok(report.exit_code())
}

/// Asks on the terminal; refuses when stdin is not one.
async fn ask(url: &amqp::AmqpUrl, verb: &str, dlqs: &[DlqRef], filter: &Filter) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "{} changes the DLQs and stdin is not a terminal: pass -y to confirm, or --dry-run to look first",
            verb.to_lowercase()
        )));
    }
    let conn = super::connect(url, "confirm").await?;
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
        Err(Error::Other("not confirmed; nothing was changed".into()))
    }
}

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

fn dlq_count(n: usize) -> String {
    if n == 1 {
        "1 DLQ".into()
    } else {
        format!("{n} DLQs")
    }
}

fn print(text: &str) -> Result<()> {
    written(output::print_text(text))
}

/// A closed stdout (`| head`) ends the output quietly; other write errors are reported.
pub(crate) fn written(result: std::io::Result<()>) -> Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(Error::Io {
            path: "<stdout>".into(),
            source,
        }),
        Ok(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{DlqRef, not_found, parse_rate};
    use crate::dlq::Scan;

    #[test]
    fn an_id_not_found_in_an_incomplete_read_exits_3_and_says_so() {
        let dlqs = ["a.dlq", "b.dlq"].map(|n| DlqRef {
            name: n.into(),
            origin: None,
            unrouted: false,
        });
        let scan = |dlq: &str, incomplete| Scan {
            dlq: dlq.into(),
            total: 10,
            read: if incomplete { 7 } else { 10 },
            incomplete,
        };
        let whole = not_found("01X", &dlqs, &[scan("a.dlq", false), scan("b.dlq", false)]);
        assert_eq!(whole.exit_code(), 1);
        assert_eq!(whole.to_string(), "no dead letter '01X' in a.dlq, b.dlq");
        let partial = not_found("01X", &dlqs, &[scan("a.dlq", false), scan("b.dlq", true)]);
        assert_eq!(partial.exit_code(), 3);
        let text = partial.to_string();
        assert!(
            text.starts_with("no dead letter '01X' in a.dlq, b.dlq (DLQ read incomplete)")
                && text.contains("messages of b.dlq;"),
            "{text}"
        );
    }

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
