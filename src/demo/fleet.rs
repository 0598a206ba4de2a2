//! The demo's workers: real `warren worker` child processes, each serving `/metrics` on a port
//! it picks, found in its JSON log. Killed with SIGKILL and restarted to show recovery.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// How long a worker may take to connect, declare and serve `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker may drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One worker process.
struct Worker {
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
    /// Retries counted by this process at its last scrape (kept after it dies).
    retries: u64,
    /// Acks per lane queue counted by this process at its last scrape (kept after it dies).
    lane_acks: BTreeMap<String, u64>,
    /// Events the postgres handler found in its inbox, at its last scrape (kept after it dies).
    db_duplicates: u64,
}

/// N workers started from the same arguments.
pub struct Fleet {
    exe: PathBuf,
    args: Vec<String>,
    amqp_url: String,
    /// More environment for every worker (the database URL: never on the command line).
    env: Vec<(String, String)>,
    dir: PathBuf,
    http: reqwest::Client,
    workers: Vec<Worker>,
    /// Retries counted by processes that are gone.
    retries_of_dead: u64,
    /// Lane acks counted by processes that are gone.
    lane_acks_of_dead: BTreeMap<String, u64>,
    /// Inbox duplicates counted by processes that are gone.
    db_duplicates_of_dead: u64,
    started: usize,
}

/// What a scrape of the fleet found.
#[derive(Debug, Clone, Default)]
pub struct FleetSample {
    /// Handlers running now, all workers.
    pub in_flight: u64,
    /// Deliveries sent to a retry tier so far, all workers ever started.
    pub retries: u64,
    /// Workers answering `/readyz` with 200.
    pub ready: usize,
    /// Deliveries acked per lane queue, all workers ever started.
    pub lane_acks: BTreeMap<String, u64>,
    /// Events the postgres handler skipped as already committed, all workers ever started.
    pub db_duplicates: u64,
}

impl Fleet {
    /// A fleet running `exe worker <args>` with `AMQP_URL` in the environment (never on the
    /// command line, where `ps` would show the password); logs go to `dir`.
    pub fn new(exe: PathBuf, args: Vec<String>, amqp_url: String, dir: &Path) -> Self {
        Self {
            exe,
            args,
            amqp_url,
            env: vec![],
            dir: dir.to_path_buf(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            workers: vec![],
            retries_of_dead: 0,
            lane_acks_of_dead: BTreeMap::new(),
            db_duplicates_of_dead: 0,
            started: 0,
        }
    }

    /// Sets `key=value` in every worker's environment, for values that must not show in `ps`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts one more worker and waits until it serves `/metrics`.
    pub async fn spawn(&mut self) -> Result<()> {
        self.started += 1;
        let log = self.dir.join(format!("worker-{}.log", self.started));
        let mut child = Command::new(&self.exe)
            .arg("worker")
            .args(&self.args)
            .args(["--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
            .env("AMQP_URL", &self.amqp_url)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Other(format!("cannot start {}: {e}", self.exe.display())))?;
        let stderr = child.stderr.take();
        let (tx, rx) = oneshot::channel();
        let file = tokio::fs::File::create(&log)
            .await
            .map_err(|source| Error::Io {
                path: log.clone(),
                source,
            })?;
        tokio::spawn(copy_log(stderr, file, tx));
        let found = tokio::time::timeout(START_TIMEOUT, rx).await;
        let metrics = match found {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.start_kill();
                return Err(Error::Other(format!(
                    "worker {} did not start; its log: {}",
                    self.started,
                    log.display()
                )));
            }
        };
        self.workers.push(Worker {
            child,
            metrics,
            log,
            retries: 0,
            lane_acks: BTreeMap::new(),
            db_duplicates: 0,
        });
        Ok(())
    }

    /// Waits until every worker answers `/readyz` with 200 (connected and consuming).
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if self.sample().await.ready == self.workers.len() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = self
                    .workers
                    .iter()
                    .map(|w| w.log.display().to_string())
                    .collect();
                return Err(Error::Other(format!(
                    "the workers were not consuming within {}s; their logs: {}",
                    START_TIMEOUT.as_secs(),
                    logs.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Workers running now.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// True when no worker runs.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Scrapes every worker's `/metrics` and `/readyz`.
    pub async fn sample(&mut self) -> FleetSample {
        let mut s = FleetSample {
            retries: self.retries_of_dead,
            lane_acks: self.lane_acks_of_dead.clone(),
            db_duplicates: self.db_duplicates_of_dead,
            ..FleetSample::default()
        };
        for w in &mut self.workers {
            let base = format!("http://{}", w.metrics);
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await {
                s.ready += usize::from(r.status().is_success());
            }
            if let Ok(r) = self.http.get(format!("{base}/metrics")).send().await
                && let Ok(text) = r.text().await
            {
                let (in_flight, retries) = parse_metrics(&text);
                s.in_flight += in_flight;
                w.retries = retries;
                w.lane_acks = lane_acks(&text);
                w.db_duplicates = counter(&text, "warren_db_events_duplicate_total");
            }
            s.retries += w.retries;
            s.db_duplicates += w.db_duplicates;
            for (lane, n) in &w.lane_acks {
                *s.lane_acks.entry(lane.clone()).or_default() += n;
            }
        }
        s
    }

    /// SIGKILLs the first worker (the trading queue's single active consumer, as it started
    /// first) and starts a new one in its place.
    pub async fn kill_and_replace(&mut self) -> Result<()> {
        if self.workers.is_empty() {
            return Ok(());
        }
        let mut victim = self.workers.remove(0);
        let pid = victim.child.id();
        let _ = victim.child.start_kill();
        let _ = victim.child.wait().await;
        self.retries_of_dead += victim.retries;
        self.db_duplicates_of_dead += victim.db_duplicates;
        for (lane, n) in victim.lane_acks {
            *self.lane_acks_of_dead.entry(lane).or_default() += n;
        }
        tracing::info!(pid, log = %victim.log.display(), "Killed a worker with SIGKILL; starting a new one.");
        self.spawn().await
    }

    /// SIGTERM to every worker, then waits for them to drain (SIGKILL after a deadline).
    pub async fn stop(&mut self) {
        for w in &self.workers {
            if let Some(pid) = w.child.id().and_then(|p| i32::try_from(p).ok()) {
                // An error means the child is already gone; the wait below reaps it either way.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for w in &mut self.workers {
            if tokio::time::timeout(STOP_TIMEOUT, w.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(log = %w.log.display(), "A worker did not stop after SIGTERM; killing it.");
                let _ = w.child.start_kill();
                let _ = w.child.wait().await;
            }
        }
        self.workers.clear();
    }
}

/// Copies a worker's stderr to its log file; sends the `/metrics` address when it is logged.
async fn copy_log(
    stderr: Option<tokio::process::ChildStderr>,
    mut file: tokio::fs::File,
    tx: oneshot::Sender<SocketAddr>,
) {
    let Some(stderr) = stderr else { return };
    let mut tx = Some(tx);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.is_some()
            && let Some(addr) = metrics_addr(&line)
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(addr);
        }
        let _ = file.write_all(line.as_bytes()).await;
        let _ = file.write_all(b"\n").await;
    }
    let _ = file.flush().await;
}

/// The address in the worker's "Serving /metrics" JSON log line.
fn metrics_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let message = v.get("message")?.as_str()?;
    if !message.starts_with("Serving /metrics") {
        return None;
    }
    v.get("addr")?.as_str()?.parse().ok()
}

/// Acked deliveries per lane queue (`<queue>.lane.<i>`) from a worker's OpenMetrics text.
fn lane_acks(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| {
            l.starts_with("warren_worker_deliveries_total{") && l.contains("outcome=\"ack\"")
        })
        .filter_map(|l| {
            let queue = l.split("queue=\"").nth(1)?.split('"').next()?;
            queue.contains(".lane.").then(|| {
                let n = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
                Some((queue.to_string(), n))
            })?
        })
        .collect()
}

/// An unlabelled counter's value from a worker's OpenMetrics text; 0 when absent.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `(in_flight, retries)` from a worker's OpenMetrics text.
fn parse_metrics(text: &str) -> (u64, u64) {
    let value = |line: &str| {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let mut in_flight = 0;
    let mut retries = 0;
    for line in text.lines() {
        if line.starts_with("warren_worker_in_flight ") {
            in_flight = value(line);
        } else if line.starts_with("warren_worker_deliveries_total{")
            && line.contains("outcome=\"retry\"")
        {
            retries += value(line);
        }
    }
    (in_flight, retries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_metrics_address_in_a_json_log_line() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"Serving /metrics, /healthz and /readyz.","addr":"127.0.0.1:4567","target":"warren::metrics"}"#;
        assert_eq!(metrics_addr(line), Some("127.0.0.1:4567".parse().unwrap()));
        assert_eq!(metrics_addr(r#"{"message":"Consumer started."}"#), None);
        assert_eq!(metrics_addr("not json"), None);
    }

    #[test]
    fn reads_in_flight_and_retries() {
        let text = "# HELP x\nwarren_worker_in_flight 3\n\
            warren_worker_deliveries_total{queue=\"a\",outcome=\"retry\"} 2\n\
            warren_worker_deliveries_total{queue=\"b\",outcome=\"retry\"} 5\n\
            warren_worker_deliveries_total{queue=\"b\",outcome=\"ack\"} 50\n";
        assert_eq!(parse_metrics(text), (3, 7));
        let db = "warren_db_events_duplicate_total 4\nwarren_db_events_duplicate_created 1.7e9\n";
        assert_eq!(counter(db, "warren_db_events_duplicate_total"), 4);
        assert_eq!(counter(db, "warren_db_events_inserted_total"), 0);
        let lanes = "warren_worker_deliveries_total{queue=\"d.pf.trading.lane.3\",outcome=\"ack\"} 12\n\
                     warren_worker_deliveries_total{queue=\"d.pf.trading.lane.3\",outcome=\"dead\"} 2\n\
                     warren_worker_deliveries_total{queue=\"d.pf.jobs\",outcome=\"ack\"} 40\n";
        assert_eq!(
            lane_acks(lanes),
            BTreeMap::from([("d.pf.trading.lane.3".to_string(), 12)])
        );
    }
}
