//! The non-destructive commands: `list`, `show`, `stats`, `export`. Each reads the DLQs'
//! snapshots through [`scan`] and puts every message back where it was.

use std::io::Write;
use std::ops::ControlFlow;

use serde::Serialize;

use super::detail::{Detail, detail};
use super::stats::{Stats, StatsBuilder};
use super::{DeadLetter, DlqRef, Filter, Scan, Walk};
use crate::amqp::{Connection, Delivery};
use crate::error::{EXIT_PARTIAL, Error};

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
        exit_code(&self.scans)
    }
}

/// 0, or 3 when some DLQ could not be read whole.
pub fn exit_code(scans: &[Scan]) -> u8 {
    if scans.iter().any(|s| s.incomplete) {
        EXIT_PARTIAL
    } else {
        0
    }
}

/// Reads the snapshot of each DLQ and calls `visit` with every message passing `filter`, up to
/// its limit, until `visit` breaks. Every message is put back in place, also on error.
pub async fn scan<F>(
    conn: &Connection,
    dlqs: &[DlqRef],
    filter: &Filter,
    mut visit: F,
) -> Result<Vec<Scan>, Error>
where
    F: FnMut(&Delivery, DeadLetter) -> Result<ControlFlow<()>, Error>,
{
    let mut scans = vec![];
    let mut matched = 0;
    for dlq in dlqs {
        let mut walk = Walk::open(conn, dlq).await?;
        let read = async {
            while !filter.full(matched) {
                let Some((delivery, letter)) = walk.next_match(filter).await? else {
                    return Ok(ControlFlow::Continue(()));
                };
                matched += 1;
                if visit(&delivery, letter)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok::<_, Error>(ControlFlow::Continue(()))
        }
        .await;
        let scan = walk.finish().await;
        let flow = read?;
        scans.push(scan?);
        if flow.is_break() {
            break;
        }
    }
    Ok(scans)
}

/// Explains the dead letters of `dlqs` that pass `filter`, up to its limit.
pub async fn list(conn: &Connection, dlqs: &[DlqRef], filter: &Filter) -> Result<Listing, Error> {
    let mut items = vec![];
    let scans = scan(conn, dlqs, filter, |_, letter| {
        items.push(letter);
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    Ok(Listing { scans, items })
}

/// Counts the dead letters of `dlqs` that pass `filter`, without keeping them.
pub async fn stats(conn: &Connection, dlqs: &[DlqRef], filter: &Filter) -> Result<Stats, Error> {
    let mut builder = StatsBuilder::default();
    let scans = scan(conn, dlqs, filter, |_, letter| {
        builder.add(&letter);
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    Ok(builder.finish(scans))
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
    let scans = scan(conn, dlqs, &Filter::default(), |delivery, letter| {
        let hit = match position {
            Some(p) => letter.position == p,
            None => letter.id.as_deref() == Some(id),
        };
        if hit {
            found.push(detail(delivery, letter));
            if position.is_some() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    Ok((found, scans))
}

/// Writes every matching dead letter as one JSON line (explanation, properties, headers,
/// body) to `out`; returns the DLQs read and the number written. A closed pipe (`| head`) stops
/// the export quietly.
pub async fn export(
    conn: &Connection,
    dlqs: &[DlqRef],
    filter: &Filter,
    out: &mut dyn Write,
) -> Result<(Vec<Scan>, usize), Error> {
    let io = |source| Error::Io {
        path: "<export output>".into(),
        source,
    };
    let mut written = 0;
    let scans = scan(conn, dlqs, filter, |delivery, letter| {
        let line = serde_json::to_string(&detail(delivery, letter))
            .map_err(|e| Error::Other(format!("export: {e}")))?;
        match writeln!(out, "{line}") {
            Ok(()) => {
                written += 1;
                Ok(ControlFlow::Continue(()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ControlFlow::Break(())),
            Err(e) => Err(io(e)),
        }
    })
    .await?;
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(io(e)),
        _ => Ok((scans, written)),
    }
}
