//! The non-destructive commands: `list`, `show`, `export`. Each reads the DLQs' snapshots and
//! puts every message back where it was.

use std::io::Write;

use serde::Serialize;

use super::detail::{Detail, detail};
use super::{DeadLetter, DlqRef, Filter, Scan, Walk};
use crate::amqp::Connection;
use crate::error::Error;

/// What `list` found.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// Every DLQ read.
    pub scans: Vec<Scan>,
    /// The matching dead letters, DLQ by DLQ, in queue order.
    pub items: Vec<DeadLetter>,
}

impl Listing {
    /// 0, or 3 when some DLQ could not be read whole.
    pub fn exit_code(&self) -> u8 {
        if self.scans.iter().any(|s| s.incomplete) {
            crate::error::EXIT_PARTIAL
        } else {
            0
        }
    }
}

/// Explains the dead letters of `dlqs` that pass `filter`, up to its limit.
pub async fn list(conn: &Connection, dlqs: &[DlqRef], filter: &Filter) -> Result<Listing, Error> {
    let mut listing = Listing {
        scans: vec![],
        items: vec![],
    };
    for dlq in dlqs {
        let mut walk = Walk::open(conn, dlq).await?;
        let read = async {
            while !filter.full(listing.items.len()) {
                match walk.next_match(filter).await? {
                    Some((_, letter)) => listing.items.push(letter),
                    None => break,
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        let scan = walk.finish().await;
        read?;
        listing.scans.push(scan?);
    }
    Ok(listing)
}

/// Every dead letter whose id is `id` (`message_id` or envelope `eventId`), or, for an id of
/// the form `#N`, the one at position N; with the DLQs read.
pub async fn find(
    conn: &Connection,
    dlqs: &[DlqRef],
    id: &str,
) -> Result<(Vec<Detail>, Vec<Scan>), Error> {
    let position: Option<u32> = id.strip_prefix('#').and_then(|n| n.parse().ok());
    let mut found = vec![];
    let mut scans = vec![];
    let all = Filter::default();
    for dlq in dlqs {
        let mut walk = Walk::open(conn, dlq).await?;
        let read = async {
            while let Some((delivery, letter)) = walk.next_match(&all).await? {
                let hit = match position {
                    Some(p) => letter.position == p,
                    None => letter.id.as_deref() == Some(id),
                };
                if hit {
                    found.push(detail(&delivery, letter));
                    if position.is_some() {
                        break;
                    }
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        let scan = walk.finish().await;
        read?;
        scans.push(scan?);
    }
    Ok((found, scans))
}

/// Writes every matching dead letter as one JSON line (explanation, properties, headers,
/// body) to `out`; returns the DLQs read and the number written.
pub async fn export(
    conn: &Connection,
    dlqs: &[DlqRef],
    filter: &Filter,
    out: &mut dyn Write,
) -> Result<(Vec<Scan>, usize), Error> {
    let mut written = 0;
    let mut scans = vec![];
    for dlq in dlqs {
        let mut walk = Walk::open(conn, dlq).await?;
        let read = async {
            while !filter.full(written) {
                let Some((delivery, letter)) = walk.next_match(filter).await? else {
                    break;
                };
                let line = serde_json::to_string(&detail(&delivery, letter))
                    .map_err(|e| Error::Other(format!("export: {e}")))?;
                match writeln!(out, "{line}") {
                    Ok(()) => {}
                    // The reader went away (`| head`): stop, putting everything back.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(false),
                    Err(source) => {
                        return Err(Error::Io {
                            path: "<export output>".into(),
                            source,
                        });
                    }
                }
                written += 1;
            }
            Ok::<_, Error>(true)
        }
        .await;
        let scan = walk.finish().await;
        let go_on = read?;
        scans.push(scan?);
        if !go_on {
            return Ok((scans, written));
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
            path: "<export output>".into(),
            source: e,
        }),
        _ => Ok((scans, written)),
    }
}
