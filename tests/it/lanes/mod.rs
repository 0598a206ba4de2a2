//! Ordered lanes against the real broker and real `warren` processes: order under faults and
//! worker crashes, balance as workers come and go, where keyless events go, `apply` refusing
//! a changed lane count, and keys staying on their lanes across broker and bridge restarts.

mod apply;
mod balance;
mod order;
mod restart;
mod routing;

use std::collections::BTreeMap;

use lapin::Connection;
use warren::amqp::{ConfirmWindow, Message, Publisher};
use warren::bridge::route::{event_properties, new_traceparent};
use warren::envelope::Envelope;
use warren::topology::Topology;
use warren::topology::lanes::lane_queue;

use crate::support::{self, TestTopology, Warren};

/// Publishes envelopes to the events exchange as the bridge would: the bridge's own
/// properties, with the lane header of every laned queue the event goes to, on one confirm
/// channel (so in order), confirms pipelined. Panics unless every publish is confirmed.
pub async fn publish_laned(conn: &Connection, t: &Topology, events: &[(String, Vec<u8>)]) {
    let publisher = Publisher::open(conn).await.expect("publisher");
    let mut window: ConfirmWindow<String> = ConfirmWindow::new(512);
    let check = |(id, result): (String, Result<(), warren::amqp::AmqpError>)| {
        if let Err(e) = result {
            panic!("publish of {id} not confirmed: {e}");
        }
    };
    for (id, body) in events {
        let event = Envelope::parse(body).expect("a valid envelope");
        let properties = event_properties(&event, None, &new_traceparent(), t.lane_headers(&event));
        if window.is_full() {
            check(window.next().await.expect("a confirm"));
        }
        let confirm = publisher
            .send(Message {
                exchange: &t.events_exchange,
                routing_key: &event.event_type,
                body,
                properties,
                mandatory: true,
            })
            .await
            .expect("publish");
        window.push(id.clone(), confirm);
    }
    while let Some(next) = window.next().await {
        check(next);
    }
}

/// The lane queues of laned queue `queue` (full name), 0..lanes.
pub fn lane_queues(queue: &str, lanes: u16) -> Vec<String> {
    (0..lanes).map(|l| lane_queue(queue, l)).collect()
}

/// The active consumers of the lanes of laned queue `queue` (full name), as the broker lists
/// them: lane → the OS pids (from the consumer tags, `warren-<host>:<pid>-<lane queue>`) of
/// its active consumers. Lanes without an active consumer are absent.
pub fn active_lanes(queue: &str) -> BTreeMap<u16, Vec<u32>> {
    let listing = support::rabbitmqctl(&[
        "list_consumers",
        "-q",
        "--no-table-headers",
        "queue_name",
        "consumer_tag",
        "active",
    ]);
    let lane_prefix = format!("{queue}.lane.");
    let mut out: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [name, tag, active] = cols[..] else {
            continue;
        };
        let Some(lane) = name
            .strip_prefix(&lane_prefix)
            .and_then(|l| l.parse::<u16>().ok())
        else {
            continue;
        };
        if active != "true" {
            continue;
        }
        let pid = tag
            .strip_prefix("warren-")
            .and_then(|t| t.strip_suffix(&format!("-{name}")))
            .and_then(|t| t.rsplit_once(':'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("consumer tag {tag:?} of {name} names no pid"));
        out.entry(lane).or_default().push(pid);
    }
    out
}

/// `worker -q <queue> --handler <handler> …` with info logs (the lane handovers are there).
pub fn spawn_worker(t: &TestTopology, queue: &str, handler: &[&str], log: &str) -> Warren {
    let mut args = vec!["worker".to_string()];
    args.extend(t.args());
    args.extend(["-q", queue, "--handler"].map(String::from));
    args.extend(handler.iter().map(|s| s.to_string()));
    Warren::spawn(&args, &t.dir().join(log), &[("RUST_LOG", "info")])
}

/// A "Lane handover." line of a worker's log: lane, from, to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub lane: u16,
    pub from: String,
    pub to: String,
}

/// Every "Lane handover." line in `log`.
pub fn handovers(log: &str) -> Vec<Handover> {
    let field = |line: &str, name: &str| -> Option<String> {
        let rest = line.split(&format!(" {name}=")).nth(1)?;
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.split('"').next()?
        } else {
            rest.split_whitespace().next()?
        };
        Some(value.to_string())
    };
    log.lines()
        .filter(|l| l.contains("Lane handover."))
        .map(|l| Handover {
            lane: field(l, "lane")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("handover line without lane=: {l}")),
            from: field(l, "from").unwrap_or_else(|| panic!("without from=: {l}")),
            to: field(l, "to").unwrap_or_else(|| panic!("without to=: {l}")),
        })
        .collect()
}

/// The roster id of the worker with OS pid `pid` (`<host>:<pid>:<ulid>`), from the
/// "Lane worker joining." line of its log.
pub fn worker_id(log: &str, pid: u32) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("Lane worker joining."))
        .filter_map(|l| l.split(" worker=").nth(1))
        .map(|w| {
            w.trim_start_matches('"')
                .split(['"', ' '])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .find(|w| w.contains(&format!(":{pid}:")))
}

/// Takes (and acks) the messages ready in lane queue `queue` now, in order. A lane is a
/// single-active-consumer quorum queue, which refuses `basic.get`: this consumes instead, so
/// it must run while no worker consumes the lane.
pub async fn drain_lane(conn: &Connection, queue: &str) -> Vec<lapin::message::Delivery> {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};

    let ready = support::queue_len(conn, queue).await as usize;
    if ready == 0 {
        return Vec::new();
    }
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "test-drain".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("consume a lane");
    let mut out = Vec::with_capacity(ready);
    while out.len() < ready {
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{queue}: {} of {ready} messages came", out.len()))
            .expect("the consumer ended")
            .expect("a delivery");
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
        out.push(d);
    }
    let _ = ch.close(200, "ok".into()).await;
    out
}
