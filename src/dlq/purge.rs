//! `dlq purge`: remove the matching dead letters (ack them); the rest stay, in order.

use tokio_util::sync::CancellationToken;

use super::{DlqRef, Filter, Item, Outcome, Report, Walk};
use crate::amqp::{self, Connection};
use crate::error::Error;

/// Purges the matching dead letters of `dlqs`, or with `dry_run` only reports them.
pub async fn purge(
    conn: &Connection,
    dlqs: &[DlqRef],
    filter: &Filter,
    dry_run: bool,
    shutdown: &CancellationToken,
) -> Result<Report, Error> {
    let mut report = Report::new("purge", dry_run);
    for dlq in dlqs {
        if report.aborted.is_some() {
            break;
        }
        // A DLQ that cannot be read ends the purge; what was done so far is reported.
        let mut walk = match Walk::open(conn, dlq).await {
            Ok(walk) => walk,
            Err(e) if report.scans.is_empty() => return Err(e),
            Err(e) => {
                report.aborted = Some(e.to_string());
                break;
            }
        };
        while !filter.full(report.items.len()) {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    report.aborted = Some("interrupted by a signal".into());
                    break;
                }
                next = walk.next_match(filter) => next,
            };
            let (delivery, letter) = match next {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => {
                    report.aborted = Some(format!("reading {}: {e}", dlq.name));
                    break;
                }
            };
            let mut item = Item {
                dlq: letter.dlq,
                position: letter.position,
                id: letter.id,
                event_type: letter.event_type,
                origin: letter.origin,
                outcome: Outcome::WouldPurge,
                error: None,
            };
            if !dry_run {
                match amqp::ack(&delivery).await {
                    Ok(true) => item.outcome = Outcome::Purged,
                    Ok(false) | Err(_) => {
                        item.outcome = Outcome::Failed;
                        item.error = Some("the ack could not be sent; the message stays".into());
                        report.aborted = Some(format!("the channel reading {} closed", dlq.name));
                    }
                }
            }
            report.items.push(item);
            if report.aborted.is_some() {
                break;
            }
        }
        match walk.finish().await {
            Ok(scan) => report.scans.push(scan),
            Err(e) => {
                report.aborted.get_or_insert(e.to_string());
            }
        }
    }
    Ok(report)
}
