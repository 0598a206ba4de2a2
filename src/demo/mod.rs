//! `warren demo`: the whole pipeline on one broker, under a unique prefix — the sim upstream, the
//! bridge and the sim API in this process, N `warren worker` child processes — with live
//! progress and a final reconciliation of what was emitted against what was done.
//!
//! # Layout
//! - [`report`]: the pure reconciliation (emitted, processed, dead-lettered, lost, latency).
//! - [`fleet`]: the worker child processes.
//! - [`progress`]: the progress line on stderr.

pub mod fleet;
pub mod progress;
pub mod report;

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use report::{DemoReport, reconcile};

use self::fleet::Fleet;
use self::progress::{Progress, Sample};
use self::report::{Dead, Effect, Emitted, Inputs};
use crate::amqp::{self, AmqpError, AmqpUrl, Connection};
use crate::error::{Error, Result};
use crate::topology::{self, Topology};
use warren_sim::api::{ApiSettings, FaultRates};
use warren_sim::upstream::{self, Faults, UpstreamSettings};

/// The topology the demo runs when no file is given: the default one, built in.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../topology/warren.toml");
/// How long an unused demo queue lives on the broker if the demo dies before cleaning up.
const LEFTOVER_EXPIRES: &str = "15m";
/// How often progress is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// How the demo runs.
pub struct DemoSettings {
    /// The broker.
    pub amqp_url: AmqpUrl,
    /// The same URL as given, passed to the workers in their environment.
    pub amqp_url_raw: String,
    /// Topology file text and where it came from (for messages).
    pub topology_text: String,
    /// The topology's source, for messages.
    pub topology_source: PathBuf,
    /// Events the upstream emits.
    pub events: u64,
    /// Events per second.
    pub rate: u32,
    /// Worker processes.
    pub workers: u32,
    /// Seed of the event stream and of the fault dice.
    pub seed: u64,
    /// Switch on the sims' faults and kill a worker midway.
    pub faults: bool,
    /// Leave the queues, the exchanges and the work directory behind.
    pub keep: bool,
    /// How long to wait, after the last event is emitted, for everything to be settled.
    pub settle_timeout: Duration,
    /// The `warren` binary the workers run.
    pub exe: PathBuf,
}

impl std::fmt::Debug for DemoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoSettings")
            .field("amqp_url", &self.amqp_url.redacted())
            .field("events", &self.events)
            .field("rate", &self.rate)
            .field("workers", &self.workers)
            .field("faults", &self.faults)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

/// The one-line answer when no broker answers.
pub fn no_broker(url: &str, reason: &str) -> Error {
    Error::Other(format!(
        "warren demo: no RabbitMQ at {url} ({reason}); start one with scripts/demo.sh, \
         docker compose up -d rabbitmq, or rabbitmq-server -detached"
    ))
}

/// Runs the demo to the end (or until `shutdown`) and returns its reconciliation.
pub async fn run(settings: DemoSettings, shutdown: CancellationToken) -> Result<DemoReport> {
    // reqwest (the demo's own HTTP calls) needs a process-wide TLS provider; a second install is
    // harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let conn = match amqp::connect(&settings.amqp_url, "demo", "admin").await {
        Ok(conn) => conn,
        Err(AmqpError::Connect { url, reason }) => {
            let reason = reason.lines().next().unwrap_or_default().to_string();
            return Err(no_broker(&url, &reason));
        }
        Err(e) => return Err(e.into()),
    };
    let prefix = format!("demo-{:08x}.", rand::random::<u32>());
    let dir = std::env::temp_dir().join(format!("warren-{}", prefix.trim_end_matches('.')));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let topology_file = dir.join("topology.toml");
    let text = demo_topology(&settings.topology_text, settings.keep)
        .map_err(|e| Error::Usage(format!("{}: {e}", settings.topology_source.display())))?;
    std::fs::write(&topology_file, &text).map_err(|source| Error::Io {
        path: topology_file.clone(),
        source,
    })?;
    let topology = Topology::parse(&text, &settings.topology_source, &prefix)?;
    let plan = topology.plan();
    topology::apply(&conn, &plan).await?;
    tracing::info!(prefix = %prefix, dir = %dir.display(), "Demo topology declared.");

    let result = pipeline(&settings, &conn, &topology, &topology_file, &dir, shutdown).await;

    if settings.keep {
        eprintln!(
            "warren demo: kept prefix {prefix} and {dir}. Inspect with:\n  \
             warren status -f {file} --prefix {prefix}\n  \
             warren dlq list -f {file} --prefix {prefix}\n\
             Remove with: warren topology delete -y -f {file} --prefix {prefix}",
            dir = dir.display(),
            file = topology_file.display(),
        );
    } else {
        match topology::delete(&conn, &plan).await {
            Ok(n) => tracing::info!(prefix = %prefix, deleted = n, "Demo topology deleted."),
            Err(error) => {
                tracing::warn!(prefix = %prefix, %error, "Could not delete the demo topology; its queues expire in {LEFTOVER_EXPIRES}.")
            }
        }
        if result.as_ref().is_ok_and(|r| r.exit_code() == 0) {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("warren demo: logs kept in {}", dir.display());
        }
    }
    amqp::close(&conn).await;
    result
}

/// The topology text the demo declares: with `expires` on every queue unless `keep`, so a demo
/// killed before its cleanup leaves nothing behind for long.
fn demo_topology(text: &str, keep: bool) -> std::result::Result<String, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    if !keep {
        let defaults = doc
            .entry("defaults")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = defaults.as_table_mut() {
            t.entry("expires")
                .or_insert_with(|| toml::Value::String(LEFTOVER_EXPIRES.into()));
        }
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

/// Starts everything, waits for the pipeline to settle, reconciles, stops everything.
async fn pipeline(
    settings: &DemoSettings,
    conn: &Connection,
    topology: &Topology,
    topology_file: &Path,
    dir: &Path,
    shutdown: CancellationToken,
) -> Result<DemoReport> {
    let stop = shutdown.child_token();
    let _stop_on_exit = stop.clone().drop_guard();

    // The downstream first, so the workers have somewhere to send.
    let api_listener = bind().await?;
    let api_addr = local(&api_listener)?;
    let api = tokio::spawn(warren_sim::api::run(
        api_listener,
        api_settings(settings),
        stop.clone(),
    ));

    let mut args = vec![
        "-f".to_string(),
        topology_file.display().to_string(),
        "--prefix".into(),
        topology.prefix.clone(),
        "--handler".into(),
        "http".into(),
        "--url".into(),
        format!("http://{api_addr}/events"),
    ];
    for q in &topology.queues {
        args.extend(["-q".to_string(), q.name.clone()]);
    }
    let mut fleet = Fleet::new(
        settings.exe.clone(),
        args,
        settings.amqp_url_raw.clone(),
        dir,
    );
    let outcome = async {
        for _ in 0..settings.workers {
            fleet.spawn().await?;
        }
        fleet.wait_ready().await?;
        tracing::info!(workers = fleet.len(), "Workers consuming.");
        drive(settings, conn, topology, &api_addr, dir, &mut fleet, &stop).await
    }
    .await;
    fleet.stop().await;
    stop.cancel();
    let _ = api.await;
    outcome
}

/// Runs the upstream and the bridge, shows progress until the pipeline settles, reconciles.
async fn drive(
    settings: &DemoSettings,
    conn: &Connection,
    topology: &Topology,
    api_addr: &str,
    dir: &Path,
    fleet: &mut Fleet,
    stop: &CancellationToken,
) -> Result<DemoReport> {
    let ledger = dir.join("upstream.ledger");
    let up_listener = bind().await?;
    let up_addr = local(&up_listener)?;
    let upstream_stop = stop.child_token();
    let upstream_task = tokio::spawn(upstream::run(
        up_listener,
        upstream_settings(settings, ledger.clone()),
        upstream_stop.clone(),
    ));
    let mut bridge_settings =
        crate::bridge::BridgeSettings::new(settings.amqp_url.clone(), topology.clone());
    bridge_settings.upstream = Some(crate::bridge::UpstreamSettings {
        url: format!("ws://{up_addr}/api/stream"),
        topics: crate::bridge::upstream::DEFAULT_TOPICS
            .map(String::from)
            .to_vec(),
        agent_key: "pf_demo_key".into(),
        agent_id: "pf_agent_demo".into(),
    });
    bridge_settings.cursor_file = Some(dir.join("bridge.cursor"));
    bridge_settings.shutdown_timeout = Duration::from_secs(10);
    let stats = Arc::new(crate::bridge::Stats::default());
    let bridge_stop = stop.child_token();
    let bridge_task = tokio::spawn(crate::bridge::run(
        bridge_settings,
        stats.clone(),
        bridge_stop.clone(),
    ));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Other(format!("HTTP client: {e}")))?;
    let api = format!("http://{api_addr}");
    let unrouted = unrouted_types(topology);
    let mut tail = LedgerTail::new(ledger.clone());
    let mut progress = Progress::new(settings.events);
    let mut killed = false;
    let mut worker_kills = 0;
    let started = tokio::time::Instant::now();
    let emission =
        Duration::from_secs_f64(settings.events as f64 / f64::from(settings.rate.max(1)));
    let deadline = started + emission + settings.settle_timeout;
    let mut settled_once = false;
    let report = loop {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        if bridge_task.is_finished() {
            progress.finish();
            return match bridge_task.await {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::Other("the bridge stopped unexpectedly".into())),
            };
        }
        let emitted = tail.read()?;
        let api_stats: ApiStats = get_json(&http, &format!("{api}/stats")).await?;
        let depths = depths(conn, topology).await?;
        let workers = fleet.sample().await;
        progress.show(Sample {
            emitted: emitted.len() as u64,
            published: stats.confirmed.load(Ordering::Relaxed),
            processed: api_stats.effects,
            retrying: depths.retrying,
            retries: workers.retries,
            dead: depths.dead,
        });
        if settings.faults && !killed && api_stats.effects * 10 >= settings.events * 4 {
            killed = true;
            worker_kills += 1;
            fleet.kill_and_replace().await?;
        }
        let all_emitted = emitted.len() as u64 >= settings.events;
        let routed = emitted
            .iter()
            .filter(|e| !unrouted.contains(&e.event_type))
            .count() as u64;
        let confirmed = all_emitted
            && stats.cursor().map(|c| c.to_string()) == emitted.last().map(|e| e.id.clone());
        let quiet = confirmed
            && depths.backlog == 0
            && depths.retrying == 0
            && workers.in_flight == 0
            && api_stats.effects + depths.dead >= routed;
        // Twice in a row, so a delivery between two queues is not missed.
        let settled = quiet && settled_once;
        settled_once = quiet;
        let out_of_time = tokio::time::Instant::now() > deadline || stop.is_cancelled();
        if settled || out_of_time {
            let mut inputs = Inputs {
                emitted: emitted.to_vec(),
                published: stats.confirmed.load(Ordering::Relaxed),
                unrouted_types: unrouted.clone(),
                bridge_duplicates: stats.duplicates.load(Ordering::Relaxed),
                worker_kills,
                ..Inputs::default()
            };
            collect(&http, &api, conn, topology, &mut inputs).await?;
            let report = reconcile(&topology.prefix, &inputs);
            if report.lost == 0 || out_of_time {
                if out_of_time && !stop.is_cancelled() {
                    tracing::warn!(
                        timeout_s = settings.settle_timeout.as_secs(),
                        "The pipeline did not settle in time; reporting what is known."
                    );
                }
                break report;
            }
        }
    };
    progress.finish();
    bridge_stop.cancel();
    if let Ok(Err(error)) = bridge_task.await {
        tracing::warn!(%error, "The bridge stopped with an error.");
    }
    upstream_stop.cancel();
    let _ = upstream_task.await;
    Ok(report)
}

/// Reads the downstream's ledger and every DLQ into `inputs`.
async fn collect(
    http: &reqwest::Client,
    api: &str,
    conn: &Connection,
    topology: &Topology,
    inputs: &mut Inputs,
) -> Result<()> {
    let ledger: ApiLedger = get_json(http, &format!("{api}/ledger")).await?;
    inputs.api_replays = ledger.keys.iter().map(|k| u64::from(k.replays)).sum();
    inputs.effects = ledger
        .keys
        .into_iter()
        .map(|k| Effect {
            event_id: k.event_id,
            effects: k.effects,
            committed_at_ms: k.stored.map(|s| s.committed_at_ms),
        })
        .collect();
    let dlqs = crate::dlq::resolve(topology, &[])?;
    let mut dead = vec![];
    crate::dlq::scan(conn, &dlqs, &crate::dlq::Filter::default(), |_, letter| {
        dead.push(Dead {
            id: letter.id,
            kind: letter.kind.as_str().to_string(),
        });
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .await?;
    inputs.dead = dead;
    Ok(())
}

/// Queue depths that matter for progress and for knowing the run is over.
#[derive(Debug, Default)]
struct Depths {
    /// Ready in the work queues.
    backlog: u64,
    /// Ready in the retry tiers.
    retrying: u64,
    /// In the DLQs.
    dead: u64,
}

async fn depths(conn: &Connection, topology: &Topology) -> Result<Depths> {
    let count = |name: String| async move {
        amqp::inspect_queue(conn, &name)
            .await
            .map(|q| q.map_or(0, |(ready, _)| u64::from(ready)))
    };
    let mut d = Depths::default();
    for q in &topology.queues {
        d.backlog += count(q.name.clone()).await?;
        for delay in &q.retry_delays {
            d.retrying += count(q.retry_queue(*delay)).await?;
        }
    }
    for (_, dlq) in topology.dlqs() {
        d.dead += count(dlq).await?;
    }
    Ok(d)
}

/// Catalog event types that no queue of the topology binds.
fn unrouted_types(topology: &Topology) -> BTreeSet<String> {
    warren_sim::catalog::EVENT_TYPES
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| {
            !topology
                .queues
                .iter()
                .any(|q| q.bind.iter().any(|p| topology::topic_matches(p, t)))
        })
        .map(String::from)
        .collect()
}

fn api_settings(settings: &DemoSettings) -> ApiSettings {
    let mut api = ApiSettings {
        seed: settings.seed,
        ..ApiSettings::default()
    };
    if settings.faults {
        api.rates = FaultRates {
            fail: 0.05,
            throttle: 0.03,
            ambiguous: 0.03,
            conflict: 0.02,
            reject: 0.02,
        };
        api.latency = Duration::from_millis(2);
    }
    api
}

fn upstream_settings(settings: &DemoSettings, ledger: PathBuf) -> UpstreamSettings {
    let faults = if settings.faults {
        Faults {
            drop_every: Some((settings.events / 4).max(50)),
            duplicate_rate: 0.05,
            ..Faults::default()
        }
    } else {
        Faults::default()
    };
    UpstreamSettings {
        seed: settings.seed,
        rate: settings.rate,
        events: settings.events,
        start_ms: upstream::now_ms(),
        agent_id: "pf_agent_demo".into(),
        ledger: Some(ledger),
        faults,
        ..UpstreamSettings::default()
    }
}

async fn bind() -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Other(format!("cannot listen on 127.0.0.1: {e}")))
}

fn local(listener: &TcpListener) -> Result<String> {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .map_err(|e| Error::Other(format!("listener address: {e}")))
}

async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T> {
    let fail = |e: reqwest::Error| Error::Other(format!("GET {url}: {e}"));
    http.get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(fail)?
        .json()
        .await
        .map_err(fail)
}

#[derive(Deserialize)]
struct ApiStats {
    effects: u64,
}

#[derive(Deserialize)]
struct ApiLedger {
    keys: Vec<ApiKey>,
}

#[derive(Deserialize)]
struct ApiKey {
    event_id: Option<String>,
    effects: u32,
    #[serde(default)]
    replays: u32,
    stored: Option<ApiStored>,
}

#[derive(Deserialize)]
struct ApiStored {
    committed_at_ms: u64,
}

/// Reads the upstream's ledger file as it grows: `<eventId> <type>` lines, `#` comments.
struct LedgerTail {
    path: PathBuf,
    offset: u64,
    partial: String,
    events: Vec<Emitted>,
}

impl LedgerTail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
            events: vec![],
        }
    }

    /// Every event so far.
    fn read(&mut self) -> Result<&[Emitted]> {
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(&self.events),
            Err(e) => return Err(io(e)),
        };
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut text = String::new();
        let n = file.read_to_string(&mut text).map_err(io)?;
        self.offset += n as u64;
        self.partial.push_str(&text);
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = self.partial.drain(..complete).collect();
        for line in lines.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split_whitespace();
            if let (Some(id), Some(event_type)) = (parts.next(), parts.next()) {
                let ts_ms = ulid::Ulid::from_string(id).map_or(0, |u| u.timestamp_ms());
                self.events.push(Emitted {
                    id: id.to_string(),
                    event_type: event_type.to_string(),
                    ts_ms,
                });
            }
        }
        Ok(&self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_topology_routes_every_catalog_type() {
        let t = Topology::parse(DEFAULT_TOPOLOGY, Path::new("t.toml"), "x.").unwrap();
        assert!(unrouted_types(&t).is_empty());
    }

    #[test]
    fn queues_expire_unless_kept() {
        let text = demo_topology(DEFAULT_TOPOLOGY, false).unwrap();
        let t = Topology::parse(&text, Path::new("t.toml"), "x.").unwrap();
        assert!(
            t.queues
                .iter()
                .all(|q| q.expires == Some(Duration::from_secs(900)))
        );
        let kept = demo_topology(DEFAULT_TOPOLOGY, true).unwrap();
        let t = Topology::parse(&kept, Path::new("t.toml"), "x.").unwrap();
        assert!(t.queues.iter().all(|q| q.expires.is_none()));
    }

    #[test]
    fn ledger_tail_reads_complete_lines_only() {
        let dir = std::env::temp_dir().join(format!("warren-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger");
        let id = ulid::Ulid::from_parts(1_700_000_000_000, 7).to_string();
        std::fs::write(
            &path,
            format!("{id} job.completed\n# malformed binary\n01AB"),
        )
        .unwrap();
        let mut tail = LedgerTail::new(path.clone());
        let got = tail.read().unwrap().to_vec();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ts_ms, 1_700_000_000_000);
        std::fs::write(
            &path,
            format!("{id} job.completed\n# malformed binary\n01AB job.failed\n"),
        )
        .unwrap();
        assert_eq!(tail.read().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
