//! A laned queue in `warren status`: each lane's depth and active worker (from the management
//! API's consumer list: a warren worker's consumer tag names its host and pid), and whether
//! the workers share the lanes evenly.

use serde::Serialize;
use tabled::Tabled;

use super::Rates;
use super::{Oldest, QueueStatus, Unacked, depth, dlq_of, figure};
use crate::amqp::Connection;
use crate::error::Result;
use crate::output;

/// One lane of a laned queue.
#[derive(Debug, Clone, Serialize)]
pub struct LaneStatus {
    /// The lane's number.
    pub lane: u16,
    /// The lane's queue.
    pub queue: String,
    /// Ready messages; `None` if the queue is missing.
    pub ready: Option<u32>,
    /// Delivered, not yet acked; `None` when the management API gave no figure.
    pub unacked: Option<u64>,
    /// The worker active on it (`host:pid`), from the management API; `None` when unknown or
    /// nobody.
    pub owner: Option<String>,
}

/// A laned queue: each lane's depth and owner; the queue's figures are the lanes' sums, its
/// consumers the lanes' (active and waiting).
pub(super) async fn laned(
    conn: &Connection,
    mgmt: &mut Unacked<'_>,
    q: &crate::topology::QueueSpec,
    count: u16,
) -> Result<QueueStatus> {
    let mut lanes = Vec::new();
    let (mut ready, mut consumers, mut unacked) = (Some(0u32), Some(0u32), Some(0u64));
    let mut rates = Rates::default();
    let mut owners: std::collections::BTreeMap<String, u32> = Default::default();
    for lane in 0..count {
        let queue = crate::topology::lanes::lane_queue(&q.name, lane);
        let found = depth(conn, &queue).await?;
        let figures = match found {
            Some(_) => mgmt.figures(&queue).await,
            None => None,
        };
        let lane_unacked = figures.as_ref().and_then(|f| f.unacked);
        rates.add(figures.as_ref());
        ready = ready.zip(found.map(|(r, _)| r)).map(|(a, b)| a + b);
        consumers = consumers.zip(found.map(|(_, c)| c)).map(|(a, b)| a + b);
        unacked = unacked.zip(lane_unacked).map(|(a, b)| a + b);
        let owner = figures
            .and_then(|f| f.active)
            .map(|tag| worker_of(&tag, &queue).to_string());
        if let Some(o) = &owner {
            *owners.entry(o.clone()).or_default() += 1;
        }
        lanes.push(LaneStatus {
            lane,
            queue,
            ready: found.map(|(r, _)| r),
            unacked: lane_unacked,
            owner,
        });
    }
    let mut owners: Vec<(String, u32)> = owners.into_iter().collect();
    owners.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(QueueStatus {
        name: q.name.clone(),
        ready,
        unacked,
        consumers,
        retry: Vec::new(),
        dlq: dlq_of(conn, mgmt, q.dlq()).await?,
        rates,
        lanes,
        owners,
        replicas: None,
        // Lanes are quorum queues.
        oldest: Oldest::of(true, ready, None),
    })
}

/// A warren worker's consumer tag `warren-<host:pid>-<queue>` → `host:pid`; another
/// consumer's tag as it is.
fn worker_of<'t>(tag: &'t str, queue: &str) -> &'t str {
    tag.strip_prefix("warren-")
        .and_then(|rest| rest.strip_suffix(queue))
        .and_then(|rest| rest.strip_suffix('-'))
        .unwrap_or(tag)
}

/// The lanes table of `q` and its balance line.
pub(super) fn render(q: &QueueStatus) -> String {
    let mut text = output::table(q.lanes.iter().map(|l| LaneRow {
        lane: l.lane,
        ready: figure(l.ready, "missing"),
        unacked: figure(l.unacked, "?"),
        worker: l.owner.clone().unwrap_or_else(|| "-".into()),
    }));
    text.push('\n');
    text.push_str(&balance(q));
    text
}

#[derive(Tabled)]
struct LaneRow {
    lane: u16,
    ready: String,
    unacked: String,
    #[tabled(rename = "active worker")]
    worker: String,
}

/// `3 workers own 8 lanes: host:1 3, host:2 3, host:3 2 (balanced)`.
fn balance(q: &QueueStatus) -> String {
    if q.owners.is_empty() {
        return "No worker owns a lane (or the management API is unavailable).".into();
    }
    let lanes = q.lanes.len() as u32;
    let workers = q.owners.len() as u32;
    let (fair_low, fair_high) = (lanes / workers, lanes.div_ceil(workers));
    let owned: u32 = q.owners.iter().map(|(_, n)| n).sum();
    let balanced = owned == lanes
        && q.owners
            .iter()
            .all(|(_, n)| (fair_low..=fair_high).contains(n));
    format!(
        "{workers} worker(s) own {owned} of {lanes} lanes: {} ({})",
        q.owners
            .iter()
            .map(|(w, n)| format!("{w} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        if balanced {
            "balanced"
        } else {
            "not balanced yet"
        }
    )
}
