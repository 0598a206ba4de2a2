//! `warren dlq list|show|stats|export`: read the DLQs, print what was found. Non-destructive.

use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::Args;

use super::{FilterArgs, Selection, dlq_count};
use crate::amqp::{self, AmqpUrl};
use crate::cli::{Outcome, OutputArg};
use crate::dlq::{self, DlqRef, Scan, render};
use crate::error::{Error, Result};
use crate::http::{ClientSettings, HttpClient, StatusUrl, Token};
use crate::output::{Output, OutputFormat};

/// `warren dlq list`
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    selection: Selection,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
}

/// `warren dlq show`
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The event id (message_id), or #N for the message at position N of one DLQ (-q).
    /// JSON output is an array: an id can be in a DLQ more than once.
    id: String,
    #[command(flatten)]
    selection: Selection,
    /// Ask this status endpoint whether the effect is done after all: a URL template with
    /// `{key}`, replaced by the key the `http` handler uses for the event (for example
    /// http://api:8080/operations/{key}; bearer token from WARREN_HTTP_TOKEN).
    #[arg(long, value_name = "URL")]
    check_status: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
}

/// `warren dlq stats`
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    selection: Selection,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
}

/// `warren dlq export`
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    selection: Selection,
    #[command(flatten)]
    filter: FilterArgs,
    /// Write to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(super) async fn list(url: &AmqpUrl, args: ListArgs) -> Result<Outcome> {
    let dlqs = args.selection.resolve(false)?;
    let conn = dlq::connect(url, "list").await?;
    let listing = dlq::list(&conn, &dlqs, &args.filter.filter()).await;
    amqp::close(&conn).await;
    let listing = listing?;
    let mut out = Output::stdout();
    match args.output.into() {
        OutputFormat::Table => {
            out.text(&render::list(
                &listing.items,
                crate::output::terminal_width(),
            ))?;
            let total: u32 = listing.scans.iter().map(|s| s.total).sum();
            eprintln!(
                "{} dead letters shown of {total} in {}.",
                listing.items.len(),
                dlq_count(dlqs.len())
            );
        }
        OutputFormat::Json => out.json(&listing)?,
        OutputFormat::Ndjson => out.ndjson(&listing.items)?,
    }
    Ok(Outcome::of_scans(&listing.scans))
}

pub(super) async fn show(url: &AmqpUrl, args: ShowArgs) -> Result<Outcome> {
    let ShowArgs {
        id,
        selection,
        check_status,
        output,
    } = args;
    let dlqs = selection.resolve(false)?;
    let client = check_status.as_deref().map(status_client).transpose()?;
    if id.starts_with('#') && dlqs.len() != 1 {
        return Err(Error::Usage(format!(
            "show {id}: a position needs exactly one DLQ (-q QUEUE)"
        )));
    }
    let conn = dlq::connect(url, "show").await?;
    let found = dlq::find(&conn, &dlqs, &id).await;
    amqp::close(&conn).await;
    let (mut found, scans) = found?;
    if found.is_empty() {
        return Err(not_found(id, &dlqs, &scans));
    }
    if let Some(client) = &client {
        dlq::check_effects(client, &mut found).await;
    }
    let mut out = Output::stdout();
    match output.into() {
        OutputFormat::Table => {
            let texts: Vec<String> = found.iter().map(render::detail).collect();
            out.text(&texts.join("\n\n"))?;
            if found.len() > 1 {
                eprintln!(
                    "{} copies of '{id}' found (a worker or a replay killed between a dead letter and its ack leaves a copy; replaying both repeats one idempotency key).",
                    found.len()
                );
            }
        }
        OutputFormat::Json => out.json(&found)?,
        OutputFormat::Ndjson => out.ndjson(&found)?,
    }
    // A DLQ read incomplete may hide more copies of the id: partial, as list is.
    Ok(Outcome::of_scans(&scans))
}

/// The client for `--check-status`, with the `http` handler's token.
fn status_client(template: &str) -> Result<HttpClient> {
    let status =
        StatusUrl::parse(template).map_err(|e| Error::Usage(format!("--check-status: {e}")))?;
    let token = Token::from_env(crate::handlers::http::TOKEN_ENV);
    HttpClient::new(ClientSettings::default(), status, token).map_err(Error::Usage)
}

/// `show`'s error for an id it did not find, with the DLQs another consumer held messages of.
fn not_found(id: String, dlqs: &[DlqRef], scans: &[Scan]) -> Error {
    Error::DeadLetterNotFound {
        id,
        dlqs: dlqs.iter().map(|d| d.name.clone()).collect(),
        incomplete: scans
            .iter()
            .filter(|s| s.incomplete)
            .map(|s| s.dlq.clone())
            .collect(),
    }
}

pub(super) async fn stats(url: &AmqpUrl, args: StatsArgs) -> Result<Outcome> {
    let dlqs = args.selection.resolve(false)?;
    let conn = dlq::connect(url, "stats").await?;
    let stats = dlq::stats(&conn, &dlqs, &args.filter.filter()).await;
    amqp::close(&conn).await;
    let stats = stats?;
    let mut out = Output::stdout();
    match args.output.into() {
        OutputFormat::Table => out.text(&render::stats(&stats))?,
        OutputFormat::Json => out.json(&stats)?,
        OutputFormat::Ndjson => out.ndjson(&stats.groups)?,
    }
    Ok(Outcome::of_scans(&stats.scans))
}

pub(super) async fn export(url: &AmqpUrl, args: ExportArgs) -> Result<Outcome> {
    let dlqs = args.selection.resolve(false)?;
    let conn = dlq::connect(url, "export").await?;
    let result = export_to(&conn, &dlqs, &args).await;
    amqp::close(&conn).await;
    let (scans, count) = result?;
    eprintln!(
        "Exported {count} dead letters from {}.",
        dlq_count(scans.len())
    );
    Ok(Outcome::of_scans(&scans))
}

/// Writes the export to `--out` or stdout; returns the DLQs read and the lines written.
async fn export_to(
    conn: &amqp::Connection,
    dlqs: &[DlqRef],
    args: &ExportArgs,
) -> Result<(Vec<Scan>, usize)> {
    let mut out = match &args.out {
        Some(path) => Output::create(path)?,
        None => Output::stdout(),
    };
    let exported = dlq::export(conn, dlqs, &args.filter.filter(), |detail| {
        out.line(detail)?;
        // A reader that went away (`| head`) ends the export quietly.
        Ok(match out.is_closed() {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        })
    })
    .await?;
    out.finish()?;
    Ok(exported)
}

#[cfg(test)]
mod tests {
    use super::{DlqRef, Scan, not_found};
    use crate::cli::exit_code;

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
        let whole = not_found(
            "01X".into(),
            &dlqs,
            &[scan("a.dlq", false), scan("b.dlq", false)],
        );
        assert_eq!(whole.to_string(), "no dead letter '01X' in a.dlq, b.dlq");
        assert_eq!(exit_code(&Err(whole)), 1);
        let partial = not_found(
            "01X".into(),
            &dlqs,
            &[scan("a.dlq", false), scan("b.dlq", true)],
        );
        let text = partial.to_string();
        assert!(
            text.starts_with("no dead letter '01X' in a.dlq, b.dlq (DLQ read incomplete)")
                && text.contains("messages of b.dlq;"),
            "{text}"
        );
        assert_eq!(exit_code(&Err(partial)), 3);
    }
}
