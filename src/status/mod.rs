//! `warren status`: for each work queue of the topology, ready, unacked and consumers, the depth
//! of each retry tier and of its DLQ. Ready and consumers come from AMQP (exact, now); unacked
//! only from the management API (a few seconds behind), and shows as unknown without it. A
//! DLQ's depth counts the messages a reader (`dlq list`, `replay`) holds unacked, so it does
//! not drop to zero while one runs; it never adds a fresh ready count to a stale unacked one.

mod lanes;
mod management;
mod replicas;

use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;
use tabled::Tabled;
use tokio_util::sync::CancellationToken;

pub use lanes::LaneStatus;
pub use management::{Management, ManagementError, QueueFigures, Replicas};

use crate::amqp::{self, AmqpUrl, Connection};
use crate::archive::{self, ArchiveInfo};
use crate::dlq::Time;
use crate::error::Result;
use crate::output::{self, Output, OutputFormat};
use crate::topology::{QueueType, Topology, delay_label};

/// What `warren status` reads and how it shows it.
pub struct StatusSettings {
    /// The broker.
    pub url: AmqpUrl,
    /// The queues to show.
    pub topology: Topology,
    /// The management API, for unacked counts.
    pub management: Management,
    /// Redraw at this interval until the shutdown token is cancelled; `None` shows once.
    pub watch: Option<Duration>,
    /// How to print.
    pub output: OutputFormat,
}

/// A queue's depth, or `None` when it does not exist.
#[derive(Debug, Clone, Serialize)]
pub struct Depth {
    /// The queue.
    pub queue: String,
    /// Ready messages; `None` if the queue is missing.
    pub ready: Option<u32>,
}

/// One work queue with its tiers and DLQ.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    /// The work queue.
    pub name: String,
    /// Ready messages; `None` if the queue is missing.
    pub ready: Option<u32>,
    /// Delivered, not yet acked; `None` when the management API gave no figure.
    pub unacked: Option<u64>,
    /// Consumers; `None` if the queue is missing.
    pub consumers: Option<u32>,
    /// Each retry tier, shortest delay first.
    pub retry: Vec<Tier>,
    /// The DLQ.
    pub dlq: DlqDepth,
    /// Publish and ack rates from the management API (summed over lanes).
    pub rates: Rates,
    /// A laned queue's lanes (the queue's own figures are their sums); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lanes: Vec<LaneStatus>,
    /// A laned queue: lanes per worker that owns one, busiest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<(String, u32)>,
    /// A quorum queue's leader and members, from the management API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
    /// The oldest ready message's time, or why it is unknown.
    pub oldest: Oldest,
}

/// When a queue's oldest ready message (its head) was published, or why that is unknown. The
/// management API reports the head's `timestamp` property for classic queues only; nothing
/// reports it for quorum queues, and reading it over AMQP would mean taking the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Oldest {
    /// The head message's `timestamp` (warren's bridge sets the event's time).
    At(Time),
    /// No message is ready.
    Empty,
    /// A quorum queue: RabbitMQ reports no head timestamp for it.
    Quorum,
    /// The management API gave no figures (not configured, unreachable or refusing).
    NoManagement,
    /// The head message has no `timestamp` property, or the API's sample predates it.
    NoTimestamp,
    /// The queue does not exist.
    Missing,
}

impl Oldest {
    /// From a queue's type, its ready count (AMQP, now) and the management API's figures.
    pub(crate) fn of(quorum: bool, ready: Option<u32>, figures: Option<&QueueFigures>) -> Self {
        match (ready, figures) {
            (None, _) => Self::Missing,
            (Some(0), _) => Self::Empty,
            _ if quorum => Self::Quorum,
            (_, None) => Self::NoManagement,
            (_, Some(f)) => f
                .head_timestamp
                .and_then(Time::from_secs)
                .map_or(Self::NoTimestamp, Self::At),
        }
    }

    /// The head's time, when known.
    pub fn time(self) -> Option<Time> {
        match self {
            Self::At(t) => Some(t),
            _ => None,
        }
    }

    /// Why the age is not shown, in words; `None` when it is.
    pub fn why(self) -> Option<&'static str> {
        Some(match self {
            Self::At(_) => return None,
            Self::Empty => "no message is ready",
            Self::Quorum => {
                "unknown for a quorum queue: RabbitMQ reports the head message's timestamp for \
                 classic queues only, and reading it would mean taking the message"
            }
            Self::NoManagement => {
                "needs the management API (--management-url), which reports the head message's \
                 timestamp"
            }
            Self::NoTimestamp => {
                "the head message carries no timestamp property (or the management API's sample \
                 is older than it)"
            }
            Self::Missing => "the queue does not exist",
        })
    }
}

/// Messages per second in and out of a queue, from the management API; `None` without it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    /// Published to the queue per second.
    pub publish: Option<f64>,
    /// Acked from the queue per second.
    pub ack: Option<f64>,
}

impl Rates {
    /// Adds one queue's figures (a lane's to its queue's).
    pub(crate) fn add(&mut self, figures: Option<&QueueFigures>) {
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        if let Some(f) = figures {
            self.publish = sum(self.publish, f.publish_rate);
            self.ack = sum(self.ack, f.ack_rate);
        }
    }
}

/// A DLQ's depth: ready messages plus those held unacked by a reader (`dlq list`, `replay`,
/// `show`, or any other consumer), which are still dead letters.
#[derive(Debug, Clone, Serialize)]
pub struct DlqDepth {
    /// The DLQ.
    pub queue: String,
    /// Ready messages; `None` if the queue is missing.
    pub ready: Option<u32>,
    /// Held unacked; `None` when the management API gave no figure. A sample a few seconds
    /// old (the broker's statistics interval).
    pub unacked: Option<u64>,
    /// The dead letters: the management API's ready + unacked of one sample, or the exact
    /// `ready` when that is more (a sample older than the newest dead letters), or `ready`
    /// alone without the API. Never a fresh ready count plus a stale unacked one (a reader that
    /// just let go of its messages would count them twice). `None` if the queue is missing.
    pub messages: Option<u64>,
    /// The `timestamp` of the oldest dead letter (the head), from the management API, or why
    /// it is unknown.
    pub oldest: Oldest,
}

/// One retry tier.
#[derive(Debug, Clone, Serialize)]
pub struct Tier {
    /// The delay label, e.g. `10s`.
    pub delay: String,
    /// The tier queue and its depth.
    #[serde(flatten)]
    pub depth: Depth,
}

/// The whole picture at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// When it was taken.
    pub at: Time,
    /// True when unacked figures came from the management API.
    pub management: bool,
    /// Work queues, in topology order.
    pub queues: Vec<QueueStatus>,
    /// The bridge's DLQ for frames it could not parse.
    pub ingress_dlq: DlqDepth,
    /// Events no queue bound, kept by the events exchange's alternate exchange.
    pub unrouted: DlqDepth,
    /// The event archive (`[archive]`): its ends, size and retention; `warren status` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveInfo>,
}

/// The management API, until its first failure (then every unacked figure is unknown and the
/// failure is reported once).
pub(crate) struct Unacked<'a> {
    api: Option<&'a Management>,
    problem: Option<ManagementError>,
}

impl Unacked<'_> {
    pub(crate) async fn figures(&mut self, queue: &str) -> Option<QueueFigures> {
        let api = self.api.filter(|_| self.problem.is_none())?;
        match api.figures(queue).await {
            Ok(f) => f,
            Err(e) => {
                self.problem = Some(e);
                None
            }
        }
    }
}

/// Reads every figure. Management failures are returned beside the status, not as an error.
pub async fn collect(
    conn: &Connection,
    topology: &Topology,
    management: Option<&Management>,
) -> Result<(Status, Option<ManagementError>)> {
    let mut mgmt = Unacked {
        api: management,
        problem: None,
    };
    let mut queues = Vec::new();
    for q in &topology.queues {
        if let Some(lanes) = &q.lanes {
            queues.push(lanes::laned(conn, &mut mgmt, q, lanes.count).await?);
            continue;
        }
        let (ready, consumers) = match depth(conn, &q.name).await? {
            Some((r, c)) => (Some(r), Some(c)),
            None => (None, None),
        };
        let figures = match ready {
            Some(_) => mgmt.figures(&q.name).await,
            None => None,
        };
        let unacked = figures.as_ref().and_then(|f| f.unacked);
        let oldest = Oldest::of(q.queue_type == QueueType::Quorum, ready, figures.as_ref());
        let mut rates = Rates::default();
        rates.add(figures.as_ref());
        let mut retry = Vec::new();
        for &d in &q.retry_delays {
            let name = q.retry_queue(d);
            retry.push(Tier {
                delay: delay_label(d),
                depth: ready_of(conn, name).await?,
            });
        }
        queues.push(QueueStatus {
            name: q.name.clone(),
            ready,
            unacked,
            consumers,
            retry,
            dlq: dlq_of(conn, &mut mgmt, q.dlq()).await?,
            rates,
            lanes: Vec::new(),
            owners: Vec::new(),
            replicas: figures.and_then(|f| f.replicas),
            oldest,
        });
    }
    let ingress_dlq = dlq_of(conn, &mut mgmt, topology.ingress_dlq()).await?;
    let unrouted = dlq_of(conn, &mut mgmt, topology.unrouted_queue()).await?;
    let status = Status {
        at: Time::now(),
        management: management.is_some() && mgmt.problem.is_none(),
        queues,
        ingress_dlq,
        unrouted,
        archive: None,
    };
    Ok((status, mgmt.problem))
}

/// [`collect`], and the archive's ends and size when the topology has one (a probe of the
/// stream's two ends: `warren status` shows it, the console's frequent refresh does not).
pub async fn collect_with_archive(
    conn: &Connection,
    topology: &Topology,
    management: Option<&Management>,
) -> Result<(Status, Option<ManagementError>)> {
    let (mut status, problem) = collect(conn, topology, management).await?;
    if let Some(a) = &topology.archive {
        let size = match (management, &problem) {
            (None, _) => Err("no management API given".to_string()),
            (Some(_), Some(p)) => Err(p.to_string()),
            (Some(m), None) => m.figures(&a.name).await.map_err(|e| e.to_string()),
        };
        status.archive = archive::status(conn, topology, size).await?;
    }
    Ok((status, problem))
}

pub(crate) async fn depth(conn: &Connection, queue: &str) -> Result<Option<(u32, u32)>> {
    Ok(amqp::inspect_queue(conn, queue).await?)
}

async fn ready_of(conn: &Connection, queue: String) -> Result<Depth> {
    let ready = depth(conn, &queue).await?.map(|(r, _)| r);
    Ok(Depth { queue, ready })
}

pub(crate) async fn dlq_of(
    conn: &Connection,
    mgmt: &mut Unacked<'_>,
    queue: String,
) -> Result<DlqDepth> {
    let ready = depth(conn, &queue).await?.map(|(r, _)| r);
    let figures = match ready {
        Some(_) => mgmt.figures(&queue).await,
        None => None,
    };
    let sampled = figures.as_ref().and_then(|f| f.messages);
    Ok(DlqDepth {
        messages: ready.map(|r| u64::from(r).max(sampled.unwrap_or(0))),
        queue,
        ready,
        unacked: figures.as_ref().and_then(|f| f.unacked),
        // DLQs are classic queues.
        oldest: Oldest::of(false, ready, figures.as_ref()),
    })
}

#[derive(Tabled)]
struct Row {
    queue: String,
    ready: String,
    unacked: String,
    consumers: String,
    #[tabled(rename = "retry tiers")]
    retry: String,
    dlq: String,
}

pub(crate) fn figure<T: ToString>(v: Option<T>, absent: &str) -> String {
    v.map(|n| n.to_string())
        .unwrap_or_else(|| absent.to_string())
}

/// A DLQ's cell: its messages, and how many of them a reader holds, e.g. `17 (5 unacked)`.
fn dlq_cell(d: &DlqDepth) -> String {
    match (d.messages, d.unacked) {
        (Some(n), Some(held)) if held > 0 => format!("{n} ({held} unacked)"),
        (n, _) => figure(n, "missing"),
    }
}

/// The status table.
pub fn render(s: &Status) -> String {
    let mut rows: Vec<Row> = s
        .queues
        .iter()
        .map(|q| Row {
            queue: q.name.clone(),
            ready: figure(q.ready, "missing"),
            unacked: if q.ready.is_none() {
                "-".into()
            } else {
                figure(q.unacked, "?")
            },
            consumers: figure(q.consumers, "-"),
            retry: q
                .retry
                .iter()
                .map(|t| format!("{}: {}", t.delay, figure(t.depth.ready, "missing")))
                .collect::<Vec<_>>()
                .join(", "),
            dlq: dlq_cell(&q.dlq),
        })
        .collect();
    rows.push(Row {
        queue: format!("{} (bridge)", s.ingress_dlq.queue),
        ready: "-".into(),
        unacked: "-".into(),
        consumers: "-".into(),
        retry: "-".into(),
        dlq: dlq_cell(&s.ingress_dlq),
    });
    rows.push(Row {
        queue: format!("{} (no binding)", s.unrouted.queue),
        ready: "-".into(),
        unacked: "-".into(),
        consumers: "-".into(),
        retry: "-".into(),
        dlq: dlq_cell(&s.unrouted),
    });
    let mut text = output::table(rows);
    if let Some(table) = replicas::render(&s.queues) {
        text.push_str("\n\nQuorum replicas:\n");
        text.push_str(&table);
    }
    for q in s.queues.iter().filter(|q| !q.lanes.is_empty()) {
        text.push_str(&format!("\n\nLanes of {}:\n", q.name));
        text.push_str(&lanes::render(q));
    }
    if let Some(a) = &s.archive {
        text.push_str("\n\nArchive ");
        text.push_str(&a.summary());
    }
    text
}

/// Shows the status once, or with `watch` every interval until `shutdown` is cancelled.
pub async fn run(settings: StatusSettings, shutdown: CancellationToken) -> Result<()> {
    let StatusSettings {
        url,
        topology,
        management,
        watch,
        output,
    } = settings;
    let mut conn = Some(amqp::connect(&url, "status", "admin").await?);
    let mut warned = false;
    loop {
        // Under --watch a broker restart is survived: report it, reconnect at the next tick.
        let collected = match &conn {
            Some(c) => collect_with_archive(c, &topology, Some(&management)).await,
            None => match amqp::connect(&url, "status", "admin").await {
                Ok(c) => collect_with_archive(conn.insert(c), &topology, Some(&management)).await,
                Err(e) => Err(e.into()),
            },
        };
        match collected {
            Ok((status, problem)) => {
                match &problem {
                    Some(p) if !warned => {
                        eprintln!(
                            "warning: {p}; unacked shown as '?', and quorum leaders and members \
                             left out (they come from the management API only). Ready and \
                             consumers are exact (AMQP)."
                        );
                        warned = true;
                    }
                    None => warned = false,
                    _ => {}
                }
                show(&status, output, watch)?;
            }
            Err(e) if watch.is_some() => {
                eprintln!("error: {e}; retrying");
                if let Some(c) = conn.take() {
                    amqp::close(&c).await;
                }
            }
            Err(e) => {
                if let Some(c) = conn.take() {
                    amqp::close(&c).await;
                }
                return Err(e);
            }
        }
        let Some(every) = watch else {
            break;
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if let Some(c) = conn.take() {
        amqp::close(&c).await;
    }
    Ok(())
}

fn show(status: &Status, format: OutputFormat, watch: Option<Duration>) -> Result<()> {
    let mut out = Output::stdout();
    match format {
        OutputFormat::Table => {
            let mut text = render(status);
            if let Some(every) = watch {
                if std::io::stdout().is_terminal() {
                    // Clear the screen and home the cursor before each redraw.
                    text.insert_str(0, "\x1b[2J\x1b[H");
                }
                text.push_str(&format!(
                    "\n{} — every {}, Ctrl-C to stop",
                    status.at,
                    humantime::format_duration(every)
                ));
            }
            out.text(&text)
        }
        OutputFormat::Json => out.json(status),
        OutputFormat::Ndjson => out.ndjson([status]),
    }
}
