//! `warren status`: for each work queue of the topology, ready, unacked and consumers, the depth
//! of each retry tier and of its DLQ. Ready and consumers come from AMQP (exact, now); unacked
//! only from the management API (a few seconds behind), and shows as unknown without it.

mod management;

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tabled::Tabled;

pub use management::{Management, ManagementError};

use crate::amqp::{self, Connection};
use crate::cli::{GlobalArgs, TopologyArgs};
use crate::dlq::Time;
use crate::error::{Error, Result};
use crate::output::{self, OutputFormat};
use crate::topology::{Topology, delay_label};

/// `warren status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// RabbitMQ management API, for unacked counts (plugin rabbitmq_management). Its user and
    /// password are the AMQP URL's unless this URL has its own; neither is printed.
    #[arg(
        long,
        env = "RABBITMQ_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// Redraw every INTERVAL (default 2s) until Ctrl-C.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s",
          value_parser = humantime::parse_duration)]
    pub watch: Option<Duration>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
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
    pub dlq: Depth,
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
    pub ingress_dlq: Depth,
    /// Events no queue bound, kept by the events exchange's alternate exchange.
    pub unrouted: Depth,
}

/// Reads every figure. Management failures are returned beside the status, not as an error.
pub async fn collect(
    conn: &Connection,
    topology: &Topology,
    management: Option<&Management>,
) -> Result<(Status, Option<ManagementError>)> {
    let mut problem = None;
    let mut queues = Vec::new();
    for q in &topology.queues {
        let (ready, consumers) = match depth(conn, &q.name).await? {
            Some((r, c)) => (Some(r), Some(c)),
            None => (None, None),
        };
        let unacked = match (management, &problem) {
            (Some(m), None) => match m.unacked(&q.name).await {
                Ok(n) => n,
                Err(e) => {
                    problem = Some(e);
                    None
                }
            },
            _ => None,
        };
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
            dlq: ready_of(conn, q.dlq()).await?,
        });
    }
    let status = Status {
        at: Time::now(),
        management: management.is_some() && problem.is_none(),
        queues,
        ingress_dlq: ready_of(conn, topology.ingress_dlq()).await?,
        unrouted: ready_of(conn, topology.unrouted_queue()).await?,
    };
    Ok((status, problem))
}

async fn depth(conn: &Connection, queue: &str) -> Result<Option<(u32, u32)>> {
    Ok(amqp::inspect_queue(conn, queue).await?)
}

async fn ready_of(conn: &Connection, queue: String) -> Result<Depth> {
    let ready = depth(conn, &queue).await?.map(|(r, _)| r);
    Ok(Depth { queue, ready })
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

fn figure<T: ToString>(v: Option<T>, absent: &str) -> String {
    v.map(|n| n.to_string())
        .unwrap_or_else(|| absent.to_string())
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
            dlq: figure(q.dlq.ready, "missing"),
        })
        .collect();
    rows.push(Row {
        queue: format!("{} (bridge)", s.ingress_dlq.queue),
        ready: "-".into(),
        unacked: "-".into(),
        consumers: "-".into(),
        retry: "-".into(),
        dlq: figure(s.ingress_dlq.ready, "missing"),
    });
    rows.push(Row {
        queue: format!("{} (no binding)", s.unrouted.queue),
        ready: "-".into(),
        unacked: "-".into(),
        consumers: "-".into(),
        retry: "-".into(),
        dlq: figure(s.unrouted.ready, "missing"),
    });
    output::table(rows)
}

/// Runs `warren status`, once or with `--watch`.
pub async fn run(global: &GlobalArgs, args: StatusArgs) -> Result<u8> {
    let url = global.url()?;
    let topology = args.topology.load()?;
    let management =
        Management::new(&args.management_url, &url).map_err(|e| Error::Usage(e.to_string()))?;
    let mut conn = Some(amqp::connect(&url, "status", "admin").await?);
    let shutdown = args.watch.map(|_| crate::shutdown::on_signals());
    let mut warned = false;
    loop {
        // Under --watch a broker restart is survived: report it, reconnect at the next tick.
        let collected = match &conn {
            Some(c) => collect(c, &topology, Some(&management)).await,
            None => match amqp::connect(&url, "status", "admin").await {
                Ok(c) => collect(conn.insert(c), &topology, Some(&management)).await,
                Err(e) => Err(e.into()),
            },
        };
        match collected {
            Ok((status, problem)) => {
                match &problem {
                    Some(p) if !warned => {
                        eprintln!(
                            "warning: {p}; unacked shown as '?'. Ready and consumers are exact (AMQP)."
                        );
                        warned = true;
                    }
                    None => warned = false,
                    _ => {}
                }
                show(&status, args.output, args.watch)?;
            }
            Err(e) if args.watch.is_some() => {
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
        let (Some(every), Some(stop)) = (args.watch, shutdown.as_ref()) else {
            break;
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if let Some(c) = conn.take() {
        amqp::close(&c).await;
    }
    Ok(0)
}

fn show(status: &Status, format: OutputFormat, watch: Option<Duration>) -> Result<()> {
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
            crate::dlq::written(output::print_text(&text))
        }
        OutputFormat::Json => crate::dlq::written(output::print_json(status)),
        OutputFormat::Ndjson => crate::dlq::written(output::print_ndjson([status])),
    }
}
