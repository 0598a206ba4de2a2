//! `--scenario postgres`: events per second from a queue into PostgreSQL, warren's `postgres`
//! handler (the worker loop, the batcher, the inbox statement) against a raw loop over lapin
//! and tokio-postgres that runs the same statement on batches of the same size.
//!
//! Each round gives each side a fresh quorum queue holding the same backlog of catalog events
//! and a fresh schema, then times the drain from the first delivery until every event is
//! committed (so neither side's setup counts: connections, the worker's topology check). The
//! sides run one after the other, alternating which goes first; the ratio is the median of
//! per-round ratios.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use crate::stats::median_of;
use warren::amqp::{self, AmqpUrl, ConfirmWindow, Message, Publisher};
use warren::envelope::Envelope;
use warren::error::{Error, Result};
use warren::handlers::postgres::{BatchSettings, PostgresHandler};
use warren::postgres::{DbSettings, Sink, quote_ident, schema, sink::batch_sql};
use warren::topology::Topology;
use warren::worker::{
    self, Context, EffectStatus, Handler, HandlerResult, WorkerMetrics, WorkerSettings,
};

/// The scenario's settings.
#[derive(Debug, Clone)]
pub struct PgBenchSettings {
    /// The broker.
    pub url: AmqpUrl,
    /// The database (never printed).
    pub database_url: String,
    /// Events per run.
    pub events: usize,
    /// Events per transaction, both sides.
    pub batch_size: usize,
    /// Rounds; figures are medians.
    pub rounds: usize,
    /// warren's connections, hence batches written at once (the raw loop writes one at a time).
    pub pool: usize,
}

/// One round's rates.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PgRound {
    /// warren, events per second.
    pub warren: f64,
    /// The raw loop, events per second.
    pub raw: f64,
}

/// The scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct PgReport {
    /// Events per run.
    pub events: usize,
    /// Events per transaction.
    pub batch_size: usize,
    /// warren's connections.
    pub pool: usize,
    /// Every round.
    pub rounds: Vec<PgRound>,
    /// Median of warren's rates.
    pub warren_median: f64,
    /// Median of the raw loop's rates.
    pub raw_median: f64,
    /// Median of the per-round ratios warren ÷ raw.
    pub ratio_median: f64,
}

const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
max_attempts = 5
retry_delays = ["1s"]
expires = "10m"

[[queues]]
name = "books"
bind = ["bench.none"]
"#;

/// Runs the rounds.
pub async fn run(s: &PgBenchSettings) -> Result<PgReport> {
    let frames = catalog(s.events);
    let mut rounds = Vec::new();
    for round in 0..s.rounds.max(1) {
        let (mut warren, mut raw) = (0.0, 0.0);
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_warren in order {
            let rate = run_side(s, &frames, is_warren).await?;
            if is_warren {
                warren = rate;
            } else {
                raw = rate;
            }
        }
        eprintln!(
            "postgres round {}: warren {warren:.0}/s, raw {raw:.0}/s, ratio {:.3}",
            round + 1,
            warren / raw
        );
        rounds.push(PgRound { warren, raw });
    }
    Ok(PgReport {
        events: s.events,
        batch_size: s.batch_size,
        pool: s.pool,
        warren_median: median_of(rounds.iter().map(|r| r.warren)),
        raw_median: median_of(rounds.iter().map(|r| r.raw)),
        ratio_median: median_of(rounds.iter().map(|r| r.warren / r.raw)),
        rounds,
    })
}

fn catalog(n: usize) -> Vec<(String, Vec<u8>)> {
    let mut c = warren_sim::catalog::Catalog::new(7, 1_760_000_000_000, 1000, "pf_agent_bench");
    (0..n)
        .map(|_| {
            let e = c.next_event();
            (e.id.to_string(), e.frame)
        })
        .collect()
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("bench postgres: {e}"))
}

/// One side's drain of a fresh backlog into a fresh schema; events per second.
async fn run_side(
    s: &PgBenchSettings,
    frames: &[(String, Vec<u8>)],
    is_warren: bool,
) -> Result<f64> {
    let id = ulid::Ulid::generate().to_string().to_lowercase();
    let dir = std::env::temp_dir().join(format!("warren-bench-pg-{id}"));
    std::fs::create_dir_all(&dir).map_err(other)?;
    let path = dir.join("topology.toml");
    std::fs::write(&path, TOPOLOGY).map_err(other)?;
    let topology = Topology::load(&path, &format!("bench-pg-{id}."))?;
    let _ = std::fs::remove_dir_all(&dir);
    let conn = amqp::connect(&s.url, "bench", "postgres").await?;
    let plan = topology.plan();
    warren::topology::apply(&conn, &plan).await?;
    let queue = topology.queue("books")?.name.clone();
    publish(&conn, &queue, frames).await?;

    let db = DbSettings::parse(&s.database_url, &format!("bench_{id}"))?;
    let pool = db.pool(1)?;
    schema::apply(&db, &pool).await?;
    let result = if is_warren {
        warren_side(s, &db, &topology, frames.len()).await
    } else {
        raw_side(s, &db, &queue, frames.len()).await
    };
    // Clean up whatever the side did.
    if let Ok(client) = schema::get(&db, &pool).await {
        let _ = client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(db.schema())))
            .await;
    }
    let _ = warren::topology::delete(&conn, &plan).await;
    let _ = conn.close(200, "bench done".into()).await;
    result
}

async fn publish(
    conn: &lapin::Connection,
    queue: &str,
    frames: &[(String, Vec<u8>)],
) -> Result<()> {
    let publisher = Publisher::open(conn).await?;
    let mut window: ConfirmWindow<usize> = ConfirmWindow::new(512);
    for (i, (id, body)) in frames.iter().enumerate() {
        let confirm = publisher
            .send(Message {
                exchange: "",
                routing_key: queue,
                body,
                properties: lapin::BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_delivery_mode(2),
                mandatory: true,
            })
            .await?;
        window.push(i, confirm);
        while window.is_full() {
            if let Some((_, r)) = window.next().await {
                r?;
            }
        }
    }
    while let Some((_, r)) = window.next().await {
        r?;
    }
    Ok(())
}

async fn warren_side(
    s: &PgBenchSettings,
    db: &DbSettings,
    topology: &Topology,
    n: usize,
) -> Result<f64> {
    let pool = db.pool(s.pool)?;
    let sink = Sink::connect(db.clone(), pool, "postgres").await?;
    let handler = PostgresHandler::start(
        sink,
        BatchSettings {
            batch_size: s.batch_size,
            linger: Duration::from_millis(2),
            parallel: s.pool,
        },
    );
    let inserted = handler.metrics().clone();
    let in_flight = u16::try_from(s.batch_size * 2).unwrap_or(u16::MAX);
    let settings = WorkerSettings {
        url: s.url.clone(),
        topology: topology.clone(),
        queues: vec!["books".into()],
        prefetch: Some(in_flight),
        concurrency: usize::from(in_flight),
        drain_timeout: Duration::from_secs(10),
        handler_timeout: Duration::from_secs(60),
    };
    let shutdown = CancellationToken::new();
    let first = Arc::new(OnceLock::new());
    let handler = FirstCall {
        inner: handler,
        at: first.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let worker = tokio::spawn(worker::run(
        settings,
        handler,
        Arc::new(WorkerMetrics::default()),
        shutdown.clone(),
    ));
    while (inserted.inserted.get() as usize) < n {
        if Instant::now() > deadline || worker.is_finished() {
            shutdown.cancel();
            return Err(other(format!(
                "warren committed {} of {n} events",
                inserted.inserted.get()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = *first.get().expect("an event was handled");
    let rate = n as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = worker.await;
    Ok(rate)
}

/// warren's handler, noting when the first event reached it.
struct FirstCall<H> {
    inner: H,
    at: Arc<OnceLock<Instant>>,
}

impl<H: Handler> Handler for FirstCall<H> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn handle(&self, event: &Envelope, ctx: &Context) -> HandlerResult {
        self.at.get_or_init(Instant::now);
        self.inner.handle(event, ctx).await
    }

    async fn effect_status(&self, event: &Envelope) -> EffectStatus {
        self.inner.effect_status(event).await
    }
}

/// What the raw loop reads of each body: the same fields the sink stores.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "eventId")]
    event_id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(rename = "agentId")]
    agent_id: &'a str,
    ts: i64,
    #[serde(borrow)]
    payload: &'a RawValue,
}

async fn raw_side(s: &PgBenchSettings, db: &DbSettings, queue: &str, n: usize) -> Result<f64> {
    let (mut client, connection) = tokio_postgres::connect(&s.database_url, tokio_postgres::NoTls)
        .await
        .map_err(other)?;
    tokio::spawn(connection);
    let statement = client
        .prepare(&batch_sql(&quote_ident(db.schema())))
        .await
        .map_err(other)?;
    let conn = amqp::connect(&s.url, "bench", "raw-postgres").await?;
    let channel = conn.create_channel().await.map_err(other)?;
    let in_flight = u16::try_from(s.batch_size * 2).unwrap_or(u16::MAX);
    channel
        .basic_qos(in_flight, BasicQosOptions::default())
        .await
        .map_err(other)?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "raw-postgres".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(other)?;
    let mut done = 0usize;
    let mut started = None;
    while done < n {
        let Some(first) = consumer.next().await else {
            return Err(other("the raw consumer ended"));
        };
        started.get_or_insert_with(Instant::now);
        let mut batch = vec![first.map_err(other)?];
        let linger = tokio::time::Instant::now() + Duration::from_millis(2);
        while batch.len() < s.batch_size {
            match tokio::time::timeout_at(linger, consumer.next()).await {
                Ok(Some(d)) => batch.push(d.map_err(other)?),
                _ => break,
            }
        }
        let mut events: Vec<RawEvent<'_>> = batch
            .iter()
            .map(|d| serde_json::from_slice(&d.data).map_err(other))
            .collect::<Result<_>>()?;
        events.sort_by(|a, b| a.event_id.cmp(b.event_id));
        let ids: Vec<&str> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
        let agents: Vec<&str> = events.iter().map(|e| e.agent_id).collect();
        let ts: Vec<i64> = events.iter().map(|e| e.ts).collect();
        let payloads: Vec<&str> = events.iter().map(|e| e.payload.get()).collect();
        let handler = "raw";
        let params: [&(dyn ToSql + Sync); 6] = [&ids, &types, &agents, &ts, &payloads, &handler];
        let tx = client.transaction().await.map_err(other)?;
        tx.query_one(&statement, &params).await.map_err(other)?;
        tx.commit().await.map_err(other)?;
        if let Some(last) = batch.last() {
            last.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(other)?;
        }
        done += batch.len();
    }
    let elapsed = started.map_or(Duration::ZERO, |at| at.elapsed());
    let rate = n as f64 / elapsed.as_secs_f64();
    let _ = conn.close(200, "bench done".into()).await;
    Ok(rate)
}
