//! `warren demo`: the whole pipeline on one broker, under a unique prefix — the sim upstream, the
//! bridge and the sim API in this process, N `warren worker` child processes — with live
//! progress and a final reconciliation of what was emitted against what was done.
//!
//! # Layout
//! - [`report`]: the pure reconciliation (emitted, processed, dead-lettered, lost, latency).
//! - [`fleet`]: the worker child processes.
//! - [`progress`]: the progress line on stderr.
//! - `drive`: the run itself, sampled until the pipeline settles, then the reconciliation's inputs.
//! - `sims`: the simulated upstream and API: their settings, listeners and answers.
//! - `ledger`: the upstream's ledger file, read as it grows.
//! - `db`: with `--sink postgres`, the run's schema and the reconciliation's SQL.

mod db;
mod drive;
pub mod fleet;
mod ledger;
pub mod progress;
pub mod report;
mod sims;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use report::{DemoReport, reconcile};

use self::db::DemoDb;
use self::drive::{Downstream, drive};
use self::fleet::Fleet;
use self::sims::{api_settings, bind, local};
use crate::amqp::{self, AmqpError, AmqpUrl, Connection};
use crate::error::{Error, Result};
use crate::topology::{self, Topology};

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
    /// Where the workers put each event.
    pub sink: DemoSink,
}

/// Where the demo's workers put each event.
#[derive(Clone)]
pub enum DemoSink {
    /// POST it to the simulated API (the `http` handler).
    Http,
    /// Write it into PostgreSQL (the `postgres` handler), in a schema of the run's own.
    Postgres {
        /// The connection string (never printed).
        database_url: String,
    },
}

impl DemoSink {
    /// `http` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            DemoSink::Http => "http",
            DemoSink::Postgres { .. } => "postgres",
        }
    }
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
            .field("sink", &self.sink.name())
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

/// Runs the demo to the end and returns its reconciliation; when `shutdown` is cancelled first,
/// stops, cleans up and returns the reconciliation so far, marked `interrupted`.
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

    let db = match &settings.sink {
        DemoSink::Http => None,
        DemoSink::Postgres { database_url } => match DemoDb::create(database_url, &prefix).await {
            Ok(db) => {
                tracing::info!(database = %db.shown(), schema = %db.schema(), "Demo schema created.");
                Some(db)
            }
            Err(e) => {
                let _ = topology::delete(&conn, &plan).await;
                amqp::close(&conn).await;
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        },
    };

    let result = pipeline(
        &settings,
        &conn,
        &topology,
        &topology_file,
        &dir,
        db.as_ref(),
        shutdown,
    )
    .await;

    if settings.keep {
        let first_dead = result
            .as_ref()
            .ok()
            .and_then(|r| r.first_dead_id.as_deref());
        eprintln!("{}", keep_hints(&prefix, &topology_file, &dir, first_dead));
        if let Some(db) = &db {
            eprintln!("{}", keep_db_hints(db));
        }
    } else {
        if let Some(db) = &db {
            match db.drop_schema().await {
                Ok(()) => tracing::info!(schema = %db.schema(), "Demo schema dropped."),
                Err(error) => {
                    tracing::warn!(schema = %db.schema(), %error, "Could not drop the demo schema.")
                }
            }
        }
        match topology::delete(&conn, &plan).await {
            Ok(n) => tracing::info!(prefix = %prefix, deleted = n, "Demo topology deleted."),
            Err(error) => {
                tracing::warn!(prefix = %prefix, %error, "Could not delete the demo topology; its queues expire in {LEFTOVER_EXPIRES}.")
            }
        }
        if result
            .as_ref()
            .is_ok_and(|r| r.interrupted || r.exit_code() == 0)
        {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("warren demo: logs kept in {}", dir.display());
        }
    }
    amqp::close(&conn).await;
    result
}

/// What `--keep` prints: each command runs as written once `warren` is on PATH (the quick
/// start installs it); the last line removes everything the run left.
fn keep_hints(prefix: &str, file: &Path, dir: &Path, first_dead: Option<&str>) -> String {
    let f = file.display();
    let at = format!("-f {f} --prefix {prefix}");
    let show = match first_dead {
        Some(id) => format!("  warren dlq show {at} {id}\n"),
        None => String::new(),
    };
    format!(
        "warren demo: kept prefix {prefix} and {dir}. Inspect with:\n  \
         warren status {at}\n  \
         warren dlq list {at}\n  \
         warren dlq stats {at}\n\
         {show}  \
         warren dlq replay {at} --all --dry-run\n  \
         warren dlq replay {at} --all -y\n\
         Remove with:\n  \
         warren topology delete -y {at} && rm -r {dir}",
        dir = dir.display(),
    )
}

/// What `--keep` prints for the run's schema.
fn keep_db_hints(db: &DemoDb) -> String {
    let s = db.schema();
    format!(
        "warren demo: kept schema {s} in {}. Inspect with:\n  \
         WARREN_DB_SCHEMA={s} warren db status\n  \
         psql \"$DATABASE_URL\" -c 'SELECT type, count(*) FROM {s}.events GROUP BY type'\n\
         Remove with:\n  \
         psql \"$DATABASE_URL\" -c 'DROP SCHEMA {s} CASCADE'",
        db.shown()
    )
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
    db: Option<&DemoDb>,
    shutdown: CancellationToken,
) -> Result<DemoReport> {
    // The demo's own parts stop when the run is over, not at the signal: after Ctrl-C the sim
    // API still answers the partial report's reads.
    let stop = CancellationToken::new();
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
    ];
    let downstream = match db {
        None => {
            args.extend([
                "--handler".into(),
                "http".into(),
                "--url".into(),
                format!("http://{api_addr}/events"),
            ]);
            Downstream::Api(format!("http://{api_addr}"))
        }
        Some(db) => {
            args.extend([
                "--handler".into(),
                "postgres".into(),
                "--db-schema".into(),
                db.schema().to_string(),
            ]);
            Downstream::Db(db)
        }
    };
    for q in &topology.queues {
        args.extend(["-q".to_string(), q.name.clone()]);
    }
    let mut fleet = Fleet::new(
        settings.exe.clone(),
        args,
        settings.amqp_url_raw.clone(),
        dir,
    );
    if let Some(db) = db {
        fleet = fleet.env(crate::postgres::DATABASE_URL_ENV, db.url());
    }
    let outcome = async {
        for _ in 0..settings.workers {
            fleet.spawn().await?;
        }
        fleet.wait_ready().await?;
        tracing::info!(workers = fleet.len(), "Workers consuming.");
        drive(
            settings,
            conn,
            topology,
            &downstream,
            dir,
            &mut fleet,
            &shutdown,
        )
        .await
    }
    .await;
    fleet.stop().await;
    stop.cancel();
    let _ = api.await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
