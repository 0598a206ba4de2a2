//! The non-destructive commands: `list`, `show`, `stats`, `export`. Each reads the DLQs'
//! snapshots through [`scan`] and puts every message back where it was.

use std::ops::ControlFlow;

use serde::Serialize;

use super::detail::{Detail, detail};
use super::stats::{Stats, StatsBuilder};
use super::{DeadLetter, DlqRef, Filter, Scan, Walk};
use crate::amqp::{Connection, Delivery};
use crate::error::Error;

/// What `list` found.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// Every DLQ read.
    pub scans: Vec<Scan>,
    /// The matching dead letters, DLQ by DLQ, in queue order.
    pub items: Vec<DeadLetter>,
}

/// True when every DLQ was read whole: no other consumer held any of its messages, so the
/// answer is complete.
pub fn read_whole(scans: &[Scan]) -> bool {
    !scans.iter().any(|s| s.incomplete)
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
        let left = filter.limit.map(|l| l.saturating_sub(matched));
        let mut walk = Walk::open_limited(conn, dlq, left).await?;
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

/// Hands every matching dead letter, in full (explanation, properties, headers, body), to
/// `emit`, until it breaks (its reader went away); returns the DLQs read and the number emitted.
pub async fn export<F>(
    conn: &Connection,
    dlqs: &[DlqRef],
    filter: &Filter,
    mut emit: F,
) -> Result<(Vec<Scan>, usize), Error>
where
    F: FnMut(&Detail) -> Result<ControlFlow<()>, Error>,
{
    let mut emitted = 0;
    let scans = scan(conn, dlqs, filter, |delivery, letter| {
        let flow = emit(&detail(delivery, letter))?;
        if flow.is_continue() {
            emitted += 1;
        }
        Ok(flow)
    })
    .await?;
    Ok((scans, emitted))
}
