//! Sim → bridge → broker throughput, measured against a raw publisher with the same confirm
//! window in the same run, plus the bridge process's memory under load.
//!
//! The baseline publishes the same envelopes with the same properties straight from memory
//! through lapin alone ([`crate::raw::publish_prepared`]: one confirm channel, the same
//! window of unconfirmed publishes, no warren code on the message path): it is what the
//! broker can take. The bridge run starts `warren bridge` as a child
//! process against an in-process `sim upstream` whose whole stream is already generated and
//! waiting in its replay buffer (so generation is outside the measurement on both sides), and
//! times the queue filling from its first message to its last; confirmed publishes are what
//! makes it fill.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use warren::amqp::{self, AmqpUrl};
use warren::bridge::route;
use warren::envelope::Envelope;
use warren::error::Error;
use warren::topology::{self, Topology};
use warren_sim::catalog::Catalog;
use warren_sim::upstream::{self, UpstreamSettings};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The broker URL, as given to `--amqp-url`.
    pub amqp_url: String,
    /// The `warren` binary that runs the bridge.
    pub warren_exe: PathBuf,
    /// Events per run.
    pub events: u64,
    /// The confirm window of both runs.
    pub confirm_window: usize,
    /// `quorum` or `classic` for the queue the events land in.
    pub queue_type: String,
    /// Interleaved baseline/bridge rounds; the report gives medians.
    pub rounds: usize,
}

impl BenchOptions {
    /// 50 000 events, window 256, a quorum queue, 3 rounds.
    pub fn new(amqp_url: impl Into<String>, warren_exe: impl Into<PathBuf>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            warren_exe: warren_exe.into(),
            events: 50_000,
            confirm_window: 256,
            queue_type: "quorum".into(),
            rounds: 3,
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Events per run.
    pub events: u64,
    /// The confirm window.
    pub confirm_window: usize,
    /// The queue type.
    pub queue_type: String,
    /// Rounds run.
    pub rounds: usize,
    /// Raw publisher: events per second, confirmed (median of the rounds).
    pub baseline_rate: f64,
    /// Sim → bridge → queue: events per second (median of the rounds).
    pub bridge_rate: f64,
    /// `bridge_rate / baseline_rate`.
    pub ratio: f64,
    /// Every round's baseline rate.
    pub baseline_rates: Vec<f64>,
    /// Every round's bridge rate.
    pub bridge_rates: Vec<f64>,
    /// The bridge process's largest resident set seen while it worked, KiB.
    pub bridge_peak_rss_kib: u64,
    /// The kernel's high-water mark of the bridge's resident set, KiB.
    pub bridge_hwm_kib: u64,
    /// CPU time (user + system) the bridge process used per event, µs (median of the rounds).
    pub bridge_cpu_us_per_event: f64,
    /// CPU time the raw publisher used per event, µs (median of the rounds).
    pub baseline_cpu_us_per_event: f64,
}

impl BenchReport {
    /// The summary line: bridge and raw publisher events/s, their ratio, bridge peak RSS.
    pub fn table(&self) -> String {
        let header = format!(
            "{:>16} {:>16} {:>7} {:>15}",
            "bridge ev/s", "raw lapin ev/s", "ratio", "bridge peak RSS"
        );
        let row = format!(
            "{:>16.0} {:>16.0} {:>6.2}x {:>11.1} MiB",
            self.bridge_rate,
            self.baseline_rate,
            self.ratio,
            self.bridge_peak_rss_kib.max(self.bridge_hwm_kib) as f64 / 1024.0
        );
        format!(
            "{header}\n{row}\n({} events, window {}, {} queue, median of {} rounds)",
            self.events, self.confirm_window, self.queue_type, self.rounds
        )
    }
}

/// Runs the baseline, then the bridge, on a throwaway topology; removes it afterwards.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, Error> {
    let url: AmqpUrl = opts
        .amqp_url
        .parse()
        .map_err(|e: amqp::AmqpUrlError| Error::Usage(format!("--amqp-url: {e}")))?;
    let prefix = format!(
        "bench-{}.",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let file = std::env::temp_dir().join(format!("warren-{prefix}toml"));
    let toml = format!(
        "[exchanges]\nevents = \"ev\"\ndead_letter = \"ev.dlx\"\n\n[defaults]\nqueue_type = \"{}\"\n\
         max_attempts = 1\nretry_delays = []\nexpires = \"10m\"\n\n[[queues]]\nname = \"all\"\nbind = [\"#\"]\n",
        opts.queue_type
    );
    std::fs::write(&file, toml).map_err(|source| Error::Io {
        path: file.clone(),
        source,
    })?;
    let result = async {
        let t = Topology::load(&file, &prefix)?;
        let conn = amqp::connect(&url, "bench", "driver").await?;
        let outcome = measure(opts, &url, &t, &file, &conn).await;
        let _ = topology::delete(&conn, &t.plan()).await;
        amqp::close(&conn).await;
        outcome
    }
    .await;
    let _ = std::fs::remove_file(&file);
    result
}

async fn measure(
    opts: &BenchOptions,
    url: &AmqpUrl,
    t: &Topology,
    file: &Path,
    conn: &amqp::Connection,
) -> Result<BenchReport, Error> {
    let queue = t.queues[0].name.clone();
    let (mut baselines, mut bridges) = (vec![], vec![]);
    let (mut peak, mut hwm, mut cpu, mut base_cpu) = (0, 0, vec![], vec![]);
    // Interleaved rounds, each on a fresh queue, so drift on a shared machine hits both sides.
    for _ in 0..opts.rounds.max(1) {
        topology::apply(conn, &t.plan()).await?;
        let before = proc_cpu_secs(std::process::id()).unwrap_or(0.0);
        baselines.push(baseline(opts, url, t).await?);
        let used = proc_cpu_secs(std::process::id()).unwrap_or(0.0) - before;
        base_cpu.push(used * 1e6 / opts.events as f64);
        topology::delete(conn, &t.plan()).await?;
        topology::apply(conn, &t.plan()).await?;
        let (rate, p, h, c) = bridge_run(opts, t, file, conn, &queue).await?;
        bridges.push(rate);
        cpu.push(c);
        peak = peak.max(p);
        hwm = hwm.max(h);
        topology::delete(conn, &t.plan()).await?;
    }
    let (baseline_rate, bridge_rate) = (median(&mut baselines), median(&mut bridges));
    Ok(BenchReport {
        events: opts.events,
        confirm_window: opts.confirm_window,
        queue_type: opts.queue_type.clone(),
        rounds: opts.rounds.max(1),
        baseline_rate,
        bridge_rate,
        ratio: bridge_rate / baseline_rate,
        baseline_rates: baselines,
        bridge_rates: bridges,
        bridge_peak_rss_kib: peak,
        bridge_hwm_kib: hwm,
        bridge_cpu_us_per_event: median(&mut cpu),
        baseline_cpu_us_per_event: median(&mut base_cpu),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Publishes the sim's events from memory with the same window; events per second.
async fn baseline(opts: &BenchOptions, url: &AmqpUrl, t: &Topology) -> Result<f64, Error> {
    let mut catalog = Catalog::new(1, upstream::now_ms(), 0, "pf_agent_bench");
    let messages: Vec<(String, Vec<u8>, amqp::BasicProperties)> = (0..opts.events)
        .map(|_| {
            let e = catalog.next_event();
            let env =
                Envelope::parse(&e.frame).map_err(|e| Error::Other(format!("bench frame: {e}")))?;
            let props = route::event_properties(&env, None, &route::new_traceparent(), Vec::new());
            Ok((env.event_type, e.frame, props))
        })
        .collect::<Result<_, Error>>()?;
    let took =
        crate::raw::publish_prepared(url, &t.events_exchange, &messages, opts.confirm_window)
            .await?;
    Ok(opts.events as f64 / took.as_secs_f64().max(1e-6))
}

/// Runs the sim in-process and the bridge as a child; (events per second, peak RSS, HWM, CPU
/// µs per event).
async fn bridge_run(
    opts: &BenchOptions,
    t: &Topology,
    file: &Path,
    conn: &amqp::Connection,
    queue: &str,
) -> Result<(f64, u64, u64, f64), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Other(format!("bench: bind the sim: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Other(e.to_string()))?;
    let sim_stop = CancellationToken::new();
    let start_ms = upstream::now_ms();
    let sim = tokio::spawn(upstream::run(
        listener,
        UpstreamSettings {
            seed: 1,
            rate: 0,
            events: opts.events,
            start_ms,
            agent_id: "pf_agent_bench".into(),
            agent_key: Some("bench".into()),
            replay_capacity: opts.events as usize,
            pregenerate: true,
            ..UpstreamSettings::default()
        },
        sim_stop.clone(),
    ));
    // The whole stream waits in the replay buffer; a cursor just before it makes the bridge
    // take it at full speed, with generation out of the measurement.
    let cursor = file.with_extension("cursor");
    let before_first = ulid::Ulid::from_parts(start_ms.saturating_sub(1), 0);
    std::fs::write(&cursor, format!("{before_first}\n")).map_err(|source| Error::Io {
        path: cursor.clone(),
        source,
    })?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut child = Command::new(&opts.warren_exe)
        .arg("bridge")
        .args(["--url", &format!("ws://{addr}/api/stream")])
        .arg("-f")
        .arg(file)
        .arg("--cursor-file")
        .arg(&cursor)
        .args([
            "--prefix",
            &t.prefix,
            "--confirm-window",
            &opts.confirm_window.to_string(),
        ])
        .env("AMQP_URL", &opts.amqp_url)
        .env("PF_AGENT_KEY", "bench")
        .env("PF_AGENT_ID", "bench")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Other(format!("bench: start {}: {e}", opts.warren_exe.display())))?;
    let pid = child.id();
    let target = u32::try_from(opts.events).unwrap_or(u32::MAX);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u32)> = None;
    let mut peak = 0;
    let outcome = loop {
        peak = peak.max(proc_status_kib(pid, "VmRSS:").unwrap_or(0));
        let (depth, _) = amqp::inspect_queue(conn, queue).await?.unwrap_or((0, 0));
        if depth > 0 && first.is_none() {
            first = Some((Instant::now(), depth));
        }
        if depth >= target {
            let (t0, d0) = first.unwrap_or((Instant::now(), 0));
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            break Ok(f64::from(depth - d0) / secs);
        }
        if Instant::now() > deadline {
            break Err(Error::Other(format!(
                "bench: the bridge delivered {depth} of {target} events in 10 minutes"
            )));
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(Error::Other(format!(
                "bench: the bridge exited early ({status})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let hwm = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let cpu_us = proc_cpu_secs(pid).unwrap_or(0.0) * 1e6 / opts.events as f64;
    // Everything is measured; the queue is deleted next, so no drain is needed.
    let _ = child.kill();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    sim_stop.cancel();
    let _ = sim.await;
    let _ = std::fs::remove_file(&cursor);
    outcome.map(|rate| (rate, peak, hwm, cpu_us))
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat` (clock ticks of 10 ms).
pub(crate) fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
