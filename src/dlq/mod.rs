//! Dead-letter operations: list, show, stats, export (non-destructive), replay and purge.
//!
//! Every command reads a DLQ the same way: count the messages present at the start, take that
//! many unacked, act on the matching ones, and put the rest back in their places (see
//! [`crate::amqp::Snapshot`]). Messages arriving meanwhile are not part of the command, so a
//! replayed message that fails again cannot loop. Bulk commands return a [`Report`].

mod detail;
mod effect;
mod explain;
mod filter;
mod fingerprint;
mod purge;
mod read;
pub mod render;
mod replay;
mod report;
mod stats;

use std::time::Duration;

pub use detail::{Body, Detail, detail};
pub use effect::{EffectCheck, check_effects};
pub use explain::{DeadLetter, Kind, Time, explain, last_death};
pub use filter::Filter;
pub use fingerprint::fingerprint;
pub use purge::purge;
pub use read::{Listing, export, find, list, read_whole, scan, stats};
pub use replay::{ReplayOptions, replay, replay_properties};
pub use report::{Item, Outcome, Report, Scan};
pub use stats::{Group, Stats, StatsBuilder};

use crate::amqp::{self, AmqpError, Connection, Delivery, Snapshot};
use crate::error::Error;
use crate::topology::{Topology, TopologyError};

/// How long a read waits for the next message before deciding another consumer holds the
/// rest.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The smallest first chunk of a read with a limit.
const FIRST_CHUNK: u32 = 64;

/// One DLQ and the work queue it collects from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqRef {
    /// The DLQ's name.
    pub name: String,
    /// The work queue whose failures land here; `None` for the bridge's invalid frames and
    /// for unrouted events.
    pub origin: Option<String>,
    /// True for `<events>.unrouted`: events no queue bound, replayed through the events
    /// exchange with their routing key.
    pub unrouted: bool,
}

/// The DLQs named by `-q` (a work queue from the topology, or a DLQ's name), or every DLQ of
/// the topology when `queues` is empty.
pub fn resolve(topology: &Topology, queues: &[String]) -> Result<Vec<DlqRef>, TopologyError> {
    let all: Vec<DlqRef> = topology
        .dlqs()
        .into_iter()
        .map(|(origin, name)| {
            let unrouted = name == topology.unrouted_queue();
            DlqRef {
                origin: (name != topology.ingress_dlq() && !unrouted).then_some(origin),
                unrouted,
                name,
            }
        })
        .collect();
    if queues.is_empty() {
        return Ok(all);
    }
    let mut out: Vec<DlqRef> = Vec::new();
    for q in queues {
        let prefixed = format!("{}{q}", topology.prefix);
        let found = all
            .iter()
            .find(|d| {
                [q, &prefixed].iter().any(|n| {
                    d.name == **n
                        || d.origin.as_deref() == Some(n.as_str())
                        || (d.origin.is_none() && **n == topology.events_exchange)
                })
            })
            .ok_or_else(|| TopologyError::UnknownQueue {
                name: q.clone(),
                path: topology.source.display().to_string(),
                known: all
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
                    + " (or their work queues)",
            })?;
        if !out.contains(found) {
            out.push(found.clone());
        }
    }
    Ok(out)
}

/// A read of one DLQ: the messages present at the start, explained one by one.
pub(crate) struct Walk {
    dlq: DlqRef,
    snapshot: Snapshot,
    position: u32,
}

impl Walk {
    /// Starts reading `dlq`.
    pub(crate) async fn open(conn: &Connection, dlq: &DlqRef) -> Result<Self, Error> {
        Self::open_limited(conn, dlq, None).await
    }

    /// Starts reading `dlq` for at most `limit` matches: the broker sends the messages in
    /// chunks growing from the limit (at least [`FIRST_CHUNK`]), so a page of a long DLQ does
    /// not wait for the whole queue to arrive.
    pub(crate) async fn open_limited(
        conn: &Connection,
        dlq: &DlqRef,
        limit: Option<usize>,
    ) -> Result<Self, Error> {
        let snapshot = match limit {
            Some(l) => {
                let first = u32::try_from(l).unwrap_or(u32::MAX).max(FIRST_CHUNK);
                Snapshot::open_growing(conn, &dlq.name, IDLE_TIMEOUT, first).await?
            }
            None => Snapshot::open(conn, &dlq.name, IDLE_TIMEOUT).await?,
        };
        let snapshot = snapshot.ok_or_else(|| Error::DlqMissing {
            dlq: dlq.name.clone(),
        })?;
        if snapshot.other_consumers() > 0 {
            tracing::warn!(
                dlq = %dlq.name,
                consumers = snapshot.other_consumers(),
                "The DLQ has other consumers; messages they hold are not seen."
            );
        }
        Ok(Self {
            dlq: dlq.clone(),
            snapshot,
            position: 0,
        })
    }

    /// The next message of the snapshot that passes `filter` (the limit is the caller's),
    /// with its explanation. Messages skipped stay unacked until [`Walk::finish`].
    pub(crate) async fn next_match(
        &mut self,
        filter: &Filter,
    ) -> Result<Option<(Delivery, DeadLetter)>, AmqpError> {
        while let Some(delivery) = self.snapshot.next().await? {
            self.position += 1;
            let mut letter = explain(
                &self.dlq.name,
                self.position,
                &delivery.properties,
                &delivery.data,
                self.dlq.origin.as_deref(),
            );
            if self.dlq.unrouted {
                letter.kind = explain::Kind::Unroutable;
                letter.error = format!(
                    "no queue binds routing key '{}' on exchange '{}'",
                    delivery.routing_key, delivery.exchange
                );
            }
            if filter.matches(&letter, &delivery.data) {
                return Ok(Some((delivery, letter)));
            }
        }
        Ok(None)
    }

    /// Removes `delivery` from the DLQ, returning once the broker has processed the removal;
    /// `Ok(false)` if the ack could not be sent (the channel is gone).
    pub(crate) async fn remove(&self, delivery: &Delivery) -> Result<bool, AmqpError> {
        self.snapshot.ack_processed(delivery).await
    }

    /// False once the channel reading the DLQ is gone (acks can no longer be sent).
    pub(crate) fn can_remove(&self) -> bool {
        self.snapshot.is_open()
    }

    /// The DLQ being read.
    pub(crate) fn dlq(&self) -> &DlqRef {
        &self.dlq
    }

    /// Messages present when the read began.
    pub(crate) fn total(&self) -> u32 {
        self.snapshot.total()
    }

    /// Puts back every message not acked, in place, and says how the read went.
    pub(crate) async fn finish(self) -> Result<Scan, AmqpError> {
        let scan = Scan {
            dlq: self.dlq.name.clone(),
            total: self.snapshot.total(),
            read: self.snapshot.taken(),
            incomplete: self.snapshot.incomplete(),
        };
        if scan.incomplete {
            tracing::warn!(
                dlq = %scan.dlq,
                read = scan.read,
                total = scan.total,
                "Could not read every message: another consumer holds some. Run the command again."
            );
        }
        self.snapshot.release().await?;
        Ok(scan)
    }
}

/// Opens the connection DLQ commands read with.
pub(crate) async fn connect(url: &amqp::AmqpUrl, role: &str) -> Result<Connection, Error> {
    Ok(amqp::connect(url, "dlq", role).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let text = std::fs::read_to_string(crate::topology::DEFAULT_TOPOLOGY_FILE).unwrap();
        Topology::parse(&text, std::path::Path::new("warren.toml"), "x.").unwrap()
    }

    #[test]
    fn queues_resolve_by_work_queue_dlq_or_exchange_name() {
        let t = topology();
        let names = |qs: &[&str]| -> Vec<String> {
            let qs: Vec<String> = qs.iter().map(|s| s.to_string()).collect();
            resolve(&t, &qs)
                .unwrap()
                .into_iter()
                .map(|d| d.name)
                .collect()
        };
        assert_eq!(names(&["pf.payments"]), ["x.pf.payments.dlq"]);
        assert_eq!(names(&["x.pf.payments"]), ["x.pf.payments.dlq"]);
        assert_eq!(
            names(&["pf.payments.dlq", "x.pf.payments"]),
            ["x.pf.payments.dlq"]
        );
        assert_eq!(names(&["pf.events"]), ["x.pf.events.dlq"]);
        let all = resolve(&t, &[]).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].origin.as_deref(), Some("x.pf.trading"));
        assert_eq!(all[3].origin, None, "the bridge's DLQ has no origin queue");
        assert_eq!(all[4].name, "x.pf.events.unrouted");
        assert!(all[4].unrouted && all[4].origin.is_none());
        assert_eq!(names(&["pf.events.unrouted"]), ["x.pf.events.unrouted"]);
        let err = resolve(&t, &["nope".into()]).unwrap_err().to_string();
        assert!(
            err.contains("'nope'") && err.contains("x.pf.jobs.dlq"),
            "{err}"
        );
    }
}
