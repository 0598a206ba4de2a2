//! The `lanes` scenario: does adding worker processes drain a laned queue faster?
//!
//! One throwaway topology (unique `bench-…` prefix, `x-expires`) holds one laned quorum queue
//! (`lanes = N`, `lane_key = "payload.pair"`). Each run fills it with the events of `pairs`
//! pairs, published with confirms and the lane headers [`Topology::lane_headers`] gives them
//! (as the bridge does), starts the simulated downstream API in this process with a fixed
//! latency per request, then W `warren worker --handler http` processes. The pairs are chosen
//! so that every lane holds the same number of them: the queue drains in the time of its
//! busiest lane, so an uneven split would measure the hash, not the workers.
//!
//! Timing starts when the fleet has converged, that is, when every worker's `/metrics` says
//! it owns its share of the lanes (⌊N/W⌋ or ⌈N/W⌉, N in all), and ends when the downstream
//! has effected every event. Events effected before (a worker that claimed its lanes first)
//! are left out of the rate; the time to converge is reported on its own. Every run checks
//! that each event was effected exactly once (the sim's idempotency ledger), that no lane and
//! no dead-letter queue holds anything afterwards, and stops its workers with SIGTERM (then
//! SIGKILL).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::{EVENT_TYPE, RUN_LIMIT, Side, SideResult, stats};
use warren::amqp::{self, AmqpUrl, ConfirmWindow, Message, Publisher};
use warren::bridge::route;
use warren::envelope::Envelope;
use warren::error::Error;
use warren::topology::lanes::{lane_of, lane_queue};
use warren::topology::{self, Topology};
use warren_sim::api::{self, ApiSettings};

/// Lanes of the bench queue, unless `--lanes` says otherwise.
pub const LANES: u16 = 16;
/// Pairs the events are spread over.
pub const PAIRS: u16 = 64;
/// Events per run.
pub const EVENTS: u64 = 8_000;
/// The downstream's processing time per request.
pub const LATENCY: Duration = Duration::from_millis(5);
/// Worker counts, unless `--workers` says otherwise; 1 is always run, as the reference.
pub const WORKERS: [u16; 4] = [1, 2, 4, 8];
/// Prefetch of each lane's consumer (the default topology gives `pf.trading`'s lanes 10).
pub const LANE_PREFETCH: u16 = 10;
/// The laned queue, before the prefix.
const QUEUE: &str = "work";
/// How long the drain may go without a single new effect before the run fails.
const STALL: Duration = Duration::from_secs(60);
/// How long the fleet may take to converge before the run fails.
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);
/// `--drain-timeout` of the workers: the queue is empty when they are stopped.
const DRAIN_TIMEOUT: &str = "5s";

/// How the bench puts each event on its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LaneRouting {
    /// As the bridge does: to the events exchange, whose lanes exchange splits events by
    /// their lane header.
    Exchange,
    /// Straight to the lane queue the event's lane header names (the default exchange), the
    /// same header set: measures the workers whatever the broker's routing does.
    Direct,
}

/// How the lanes scenario runs, beside the worker counts of its [`crate::Scenario::Lanes`]
/// entries.
#[derive(Debug, Clone)]
pub struct LanesSettings {
    /// The `warren` binary the workers run.
    pub warren_exe: PathBuf,
    /// Events per run.
    pub events: u64,
    /// Pairs the events are spread over (the lane key's values).
    pub pairs: u16,
    /// The downstream's processing time per request.
    pub latency: Duration,
    /// `--concurrency` of each worker; `None`: the worker's default.
    pub concurrency: Option<u32>,
    /// How the events reach their lanes.
    pub routing: LaneRouting,
}

impl LanesSettings {
    /// The `warren worker` flags every worker runs with, as the report states them.
    pub fn worker_args(&self) -> String {
        let concurrency = match self.concurrency {
            Some(n) => format!("--concurrency {n}"),
            None => "--concurrency default (16)".into(),
        };
        format!(
            "--handler http --url <sim>/events {concurrency} --drain-timeout {DRAIN_TIMEOUT}; \
             lane prefetch {LANE_PREFETCH}"
        )
    }

    /// The most a laned queue can drain with every lane busy all the time: one message at a
    /// time per lane, each at least the downstream's latency.
    pub fn ceiling(&self, lanes: u16) -> f64 {
        f64::from(lanes) / self.latency.as_secs_f64().max(1e-6)
    }
}

/// What one lanes run measured beside the common figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaneRun {
    /// Worker processes.
    pub workers: u16,
    /// Seconds from starting the workers until each owned its share of the lanes.
    pub convergence_secs: f64,
    /// Events effected before the timing started (by the workers that claimed lanes first).
    pub effected_before_timing: u64,
    /// False when every event was effected before the fleet was seen converged: the run was
    /// then timed from its first effect.
    pub timed_from_convergence: bool,
    /// POSTs the downstream answered from its idempotency store: duplicates, none expected.
    pub replays: u64,
    /// Busy share of the machine's CPUs over the timed window (every core, every process:
    /// broker, workers, the simulated API), percent.
    pub machine_busy_pct: f64,
}

/// The lanes topology of a bench, declared once for all its runs.
pub struct LaneBench {
    /// The topology's prefix.
    pub prefix: String,
    file: PathBuf,
    topology: Topology,
    url: AmqpUrl,
    conn: amqp::Connection,
    lanes: u16,
    pairs: Vec<String>,
}

/// The bench topology: one laned quorum queue bound to everything.
fn topology_toml(lanes: u16) -> String {
    format!(
        "[exchanges]\nevents = \"ev\"\ndead_letter = \"ev.dlx\"\n\n[defaults]\nqueue_type = \"quorum\"\n\
         prefetch = {LANE_PREFETCH}\nmax_attempts = 3\nretry_delays = [\"100ms\"]\nexpires = \"10m\"\n\n\
         [[queues]]\nname = \"{QUEUE}\"\nbind = [\"#\"]\nlanes = {lanes}\nlane_key = \"payload.pair\"\n"
    )
}

/// `pairs` pair names spread evenly over `lanes`: lane `l` gets ⌊pairs/lanes⌋ or one more.
pub fn balanced_pairs(pairs: u16, lanes: u16) -> Vec<String> {
    let lanes = lanes.max(1);
    let mut per_lane = vec![0u16; usize::from(lanes)];
    // The first `pairs mod lanes` lanes take one more.
    let quota = |l: usize| pairs / lanes + u16::from(l < usize::from(pairs % lanes));
    let mut out = Vec::with_capacity(usize::from(pairs));
    let mut n = 0u64;
    while out.len() < usize::from(pairs) {
        let name = format!("PAIR{n}-USDC");
        n += 1;
        let lane = usize::from(lane_of(&name, lanes));
        if per_lane[lane] < quota(lane) {
            per_lane[lane] += 1;
            out.push(name);
        }
    }
    out
}

impl LaneBench {
    /// Declares the topology.
    pub async fn open(url: &AmqpUrl, lanes: u16, pairs: u16) -> Result<Self, Error> {
        let prefix = format!(
            "bench-{}.",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        let file = std::env::temp_dir().join(format!("warren-{prefix}toml"));
        std::fs::write(&file, topology_toml(lanes)).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        let opened = async {
            let topology = Topology::load(&file, &prefix)?;
            // `apply` probes for lanes that must not exist, and after such a probe's channel
            // error a later channel of the same connection can fail with that error: so it
            // gets a connection of its own.
            let setup = amqp::connect(url, "bench", "lanes-apply").await?;
            let applied = topology::apply(&setup, &topology.plan()).await;
            if applied.is_err() {
                let _ = topology::delete(&setup, &topology.plan()).await;
            }
            amqp::close(&setup).await;
            applied?;
            let conn = amqp::connect(url, "bench", "lanes").await?;
            Ok((topology, conn))
        }
        .await;
        match opened {
            Ok((topology, conn)) => Ok(Self {
                prefix,
                file,
                topology,
                url: url.clone(),
                conn,
                lanes,
                pairs: balanced_pairs(pairs, lanes),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                Err(e)
            }
        }
    }

    /// Deletes the topology and checks that nothing of it is left; returns what is.
    pub async fn close(self) -> Vec<String> {
        let plan = self.topology.plan();
        let deleted = topology::delete(&self.conn, &plan).await;
        amqp::close(&self.conn).await;
        if let Err(error) = deleted {
            tracing::warn!(prefix = %self.prefix, %error, "Deleting the lanes topology failed; trying again.");
            if let Ok(conn) = amqp::connect(&self.url, "bench", "lanes-delete").await {
                let _ = topology::delete(&conn, &plan).await;
                amqp::close(&conn).await;
            }
        }
        // Each probe of a deleted name ends its channel with an error: a connection each.
        let mut left = Vec::new();
        for q in &plan.queues {
            if !matches!(self.probe(Some(&q.name), None).await, Ok(false)) {
                left.push(format!("queue '{}'", q.name));
            }
        }
        for e in &plan.exchanges {
            if !matches!(self.probe(None, Some(&e.name)).await, Ok(false)) {
                left.push(format!("exchange '{}'", e.name));
            }
        }
        let _ = std::fs::remove_file(&self.file);
        if !left.is_empty() {
            tracing::warn!(prefix = %self.prefix, left = ?left, "The lanes topology was not entirely deleted.");
        }
        left
    }

    /// Whether a queue or an exchange exists, asked on a connection of its own.
    async fn probe(&self, queue: Option<&str>, exchange: Option<&str>) -> Result<bool, Error> {
        let conn = amqp::connect(&self.url, "bench", "lanes-check").await?;
        let found = match (queue, exchange) {
            (Some(q), _) => amqp::inspect_queue(&conn, q).await.map(|q| q.is_some()),
            (None, Some(e)) => amqp::exchange_exists(&conn, e).await,
            (None, None) => Ok(false),
        };
        amqp::close(&conn).await;
        Ok(found?)
    }

    fn lane_names(&self) -> impl Iterator<Item = String> + '_ {
        let queue = &self.topology.queues[0].name;
        (0..self.lanes).map(move |l| lane_queue(queue, l))
    }

    /// Messages ready in every lane together, and in the dead-letter queue.
    async fn depths(&self) -> Result<(u64, u64), Error> {
        let mut lanes = 0;
        for name in self.lane_names() {
            lanes += u64::from(
                amqp::inspect_queue(&self.conn, &name)
                    .await?
                    .map_or(0, |d| d.0),
            );
        }
        let dlq = self.topology.queues[0].dlq();
        let dead = amqp::inspect_queue(&self.conn, &dlq)
            .await?
            .map_or(0, |d| u64::from(d.0));
        Ok((lanes, dead))
    }

    /// Empties the lanes and the dead-letter queue (of a failed run before).
    async fn purge(&self) -> Result<(), Error> {
        let channel = amqp::channel(&self.conn).await?;
        let names: Vec<String> = self
            .lane_names()
            .chain([self.topology.queues[0].dlq()])
            .collect();
        for name in names {
            channel
                .queue_purge(name.as_str().into(), Default::default())
                .await
                .map_err(|e| Error::Other(format!("bench: purge {name}: {e}")))?;
        }
        amqp::close_channel(&channel).await;
        Ok(())
    }

    /// Publishes `events` events, pair `i mod pairs` for event `i`, with their lane headers
    /// and confirms; waits until the lanes hold them all, and fails if they hold more (an
    /// event on several lanes).
    async fn fill(&self, events: u64, routing: LaneRouting) -> Result<(), Error> {
        let t = &self.topology;
        let publisher = Publisher::open(&self.conn).await?;
        let mut window = ConfirmWindow::new(1024);
        for i in 0..events {
            if window.is_full()
                && let Some(((), r)) = window.next().await
            {
                r?;
            }
            let pair = &self.pairs[(i % self.pairs.len() as u64) as usize];
            let body = format!(
                r#"{{"eventId":"{}","type":"{EVENT_TYPE}","agentId":"bench","ts":{},"payload":{{"pair":"{pair}","seq":{i}}}}}"#,
                ulid::Ulid::generate(),
                (stats::now_us() / 1000).max(1)
            );
            let event = Envelope::parse(body.as_bytes())
                .map_err(|e| Error::Other(format!("bench: a lanes event: {e}")))?;
            let headers = t.lane_headers(&event);
            let lane = match headers.as_slice() {
                [(_, lane)] => lane.parse::<u16>().ok(),
                _ => None,
            }
            .ok_or_else(|| {
                Error::Other(format!(
                    "bench: event {i} got lane headers {headers:?}, not one lane"
                ))
            })?;
            let (exchange, routing_key) = match routing {
                LaneRouting::Exchange => (t.events_exchange.clone(), EVENT_TYPE.to_string()),
                LaneRouting::Direct => (String::new(), lane_queue(&t.queues[0].name, lane)),
            };
            let props = route::event_properties(&event, None, &route::new_traceparent(), headers);
            let confirm = publisher
                .send(Message {
                    exchange: &exchange,
                    routing_key: &routing_key,
                    body: body.as_bytes(),
                    properties: props,
                    mandatory: true,
                })
                .await?;
            window.push((), confirm);
        }
        while let Some(((), r)) = window.next().await {
            r?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ready, _) = self.depths().await?;
            if ready == events {
                return Ok(());
            }
            if ready > events {
                return Err(Error::Other(format!(
                    "bench: {events} events published, {ready} messages in the lanes: events \
                     reach several lanes ({:.1} each), so the lanes exchange does not split \
                     them by their lane header (RabbitMQ leaves binding arguments that begin \
                     with `x-` out of an `x-match: all` match, and the lane header is \
                     `x-warren-lane.<queue>`); `--lane-routing direct` puts each event on the \
                     lane its header names, to measure the workers alone",
                    ready as f64 / events as f64
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "bench: the lanes hold {ready} of {events} confirmed events"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One run: fill, start the downstream and `workers` worker processes, time the drain.
    pub async fn run(
        &self,
        amqp_url: &str,
        settings: &LanesSettings,
        workers: u16,
        stop: &CancellationToken,
    ) -> Result<SideResult, Error> {
        self.purge().await?;
        self.fill(settings.events, settings.routing).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Other(format!("bench: bind the simulated API: {e}")))?;
        let sim_addr = listener
            .local_addr()
            .map_err(|e| Error::Other(format!("bench: the simulated API's address: {e}")))?;
        let sim_stop = CancellationToken::new();
        // Stops the sim however this run ends.
        let _sim_guard = sim_stop.clone().drop_guard();
        let sim = tokio::spawn(api::run(
            listener,
            ApiSettings {
                latency: settings.latency,
                ..ApiSettings::default()
            },
            sim_stop.clone(),
        ));
        let mut fleet = Fleet::start(self, amqp_url, settings, workers, sim_addr)?;
        let measured = tokio::select! {
            r = self.measure(settings, workers, sim_addr, &mut fleet) => r,
            _ = stop.cancelled() => Err(Error::Other("bench: interrupted".into())),
        };
        fleet.stop().await;
        let checked = match measured {
            Ok(m) => self.check(settings, sim_addr, &fleet, m).await,
            Err(e) => Err(fleet.explain(e)),
        };
        fleet.remove_logs();
        sim_stop.cancel();
        let _ = sim.await;
        checked
    }

    async fn measure(
        &self,
        settings: &LanesSettings,
        workers: u16,
        sim: SocketAddr,
        fleet: &mut Fleet,
    ) -> Result<Measured, Error> {
        let target = settings.events;
        // ⌊N/W⌋ or ⌈N/W⌉ lanes each: N mod W of them own one more.
        let (n, w) = (usize::from(self.lanes), usize::from(workers));
        let mut expected: Vec<usize> = (0..w).map(|i| n / w + usize::from(i < n % w)).collect();
        expected.sort_unstable();
        let mut converged: Option<(Instant, u64, CpuTimes)> = None;
        let mut first: Option<(Instant, u64, CpuTimes)> = None;
        let mut progress = (Instant::now(), 0u64);
        loop {
            fleet.check_alive()?;
            if converged.is_none() {
                if fleet.owned().await.as_deref() == Some(expected.as_slice()) {
                    let s = sim_stats(sim).await?;
                    converged = Some((Instant::now(), s.effects, CpuTimes::read()));
                } else if fleet.started.elapsed() > CONVERGE_LIMIT {
                    return Err(Error::Other(format!(
                        "bench: {workers} workers did not share the {} lanes in {}s (owned: {:?})",
                        self.lanes,
                        CONVERGE_LIMIT.as_secs(),
                        fleet.owned().await
                    )));
                }
            }
            let s = sim_stats(sim).await?;
            let now = Instant::now();
            if first.is_none() && s.effects > 0 {
                first = Some((now, s.effects, CpuTimes::read()));
            }
            if s.effects >= target {
                let timed_from_convergence = converged.is_some();
                let (t0, e0, cpu0) = converged.or(first).unwrap_or((now, 0, CpuTimes::read()));
                let convergence = converged.map_or(now, |c| c.0);
                let cpu = fleet.cpu_and_hwm();
                return Ok(Measured {
                    secs: now.duration_since(t0).as_secs_f64().max(1e-3),
                    counted: target.saturating_sub(e0),
                    effected_before_timing: e0,
                    timed_from_convergence,
                    convergence_secs: convergence.duration_since(fleet.started).as_secs_f64(),
                    machine_busy_pct: cpu0.busy_pct_until(&CpuTimes::read()),
                    worker_cpu_secs: cpu.0,
                    peak_rss_kib: cpu.1,
                });
            }
            if s.effects > progress.1 {
                progress = (now, s.effects);
            } else if now.duration_since(progress.0) > STALL {
                return Err(Error::Other(format!(
                    "bench: {} of {target} events effected, none for {}s",
                    s.effects,
                    STALL.as_secs()
                )));
            }
            if fleet.started.elapsed() > RUN_LIMIT {
                return Err(Error::Other(format!(
                    "bench: {} of {target} events effected in {}s",
                    s.effects,
                    RUN_LIMIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Exactly once, nothing left: the figures, or why not.
    async fn check(
        &self,
        settings: &LanesSettings,
        sim: SocketAddr,
        fleet: &Fleet,
        m: Measured,
    ) -> Result<SideResult, Error> {
        let events = settings.events;
        let s = sim_stats(sim).await?;
        if s.effects != events || s.keys != events as usize {
            return Err(fleet.explain(Error::Other(format!(
                "bench: {events} events, {} effects over {} keys: not exactly once",
                s.effects, s.keys
            ))));
        }
        let (ready, dead) = self.depths().await?;
        if ready + dead > 0 {
            return Err(fleet.explain(Error::Other(format!(
                "bench: after the drain, {ready} messages in the lanes and {dead} dead-lettered"
            ))));
        }
        Ok(SideResult {
            side: Side::Warren,
            messages: events,
            secs: m.secs,
            msgs_per_sec: m.counted as f64 / m.secs,
            latency: None,
            cpu_us_per_msg: m.worker_cpu_secs * 1e6 / events.max(1) as f64,
            peak_rss_kib: m.peak_rss_kib,
            settle_ms: None,
            publish_msgs_per_sec: None,
            peak_in_flight: None,
            prefix: self.prefix.clone(),
            lanes: Some(LaneRun {
                workers: fleet.children.len() as u16,
                convergence_secs: m.convergence_secs,
                effected_before_timing: m.effected_before_timing,
                timed_from_convergence: m.timed_from_convergence,
                replays: s.replays,
                machine_busy_pct: m.machine_busy_pct,
            }),
        })
    }
}

struct Measured {
    secs: f64,
    counted: u64,
    effected_before_timing: u64,
    timed_from_convergence: bool,
    convergence_secs: f64,
    machine_busy_pct: f64,
    worker_cpu_secs: f64,
    peak_rss_kib: u64,
}

/// The worker processes of one run.
struct Fleet {
    children: Vec<tokio::process::Child>,
    pids: Vec<u32>,
    metrics: Vec<SocketAddr>,
    logs: Vec<PathBuf>,
    started: Instant,
}

impl Fleet {
    fn start(
        bench: &LaneBench,
        amqp_url: &str,
        settings: &LanesSettings,
        workers: u16,
        sim: SocketAddr,
    ) -> Result<Self, Error> {
        // Ports for the workers' /metrics: bound together, so they differ, then let go.
        let held: Vec<std::net::TcpListener> = (0..workers)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Other(format!("bench: a port for a worker's metrics: {e}")))?;
        let metrics: Vec<SocketAddr> = held
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Other(format!("bench: a port for a worker's metrics: {e}")))?;
        drop(held);
        let mut fleet = Fleet {
            children: Vec::new(),
            pids: Vec::new(),
            metrics,
            logs: Vec::new(),
            started: Instant::now(),
        };
        for (i, addr) in fleet.metrics.clone().iter().enumerate() {
            let log = std::env::temp_dir().join(format!("warren-{}worker-{i}.log", bench.prefix));
            let stderr = std::fs::File::create(&log).map_err(|source| Error::Io {
                path: log.clone(),
                source,
            })?;
            fleet.logs.push(log);
            let mut command = tokio::process::Command::new(&settings.warren_exe);
            command
                .arg("worker")
                .arg("-f")
                .arg(&bench.file)
                .args(["--prefix", &bench.prefix, "-q", QUEUE, "--handler", "http"])
                .args(["--url", &format!("http://{sim}/events")])
                .args(["--metrics-listen", &addr.to_string()])
                .args(["--drain-timeout", DRAIN_TIMEOUT]);
            if let Some(n) = settings.concurrency {
                command.args(["--concurrency", &n.to_string()]);
            }
            let child = command
                .env("AMQP_URL", amqp_url)
                .env("RUST_LOG", "warn")
                .env_remove("WARREN_HTTP_TOKEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    Error::Other(format!(
                        "bench: start {}: {e}",
                        settings.warren_exe.display()
                    ))
                })?;
            fleet.pids.push(child.id().unwrap_or(0));
            fleet.children.push(child);
        }
        Ok(fleet)
    }

    fn check_alive(&mut self) -> Result<(), Error> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Other(format!(
                    "bench: worker {i} exited early ({status})"
                )));
            }
        }
        Ok(())
    }

    /// Lanes each worker owns by its `/metrics`, sorted; `None` while one does not answer.
    async fn owned(&self) -> Option<Vec<usize>> {
        let mut counts = Vec::with_capacity(self.metrics.len());
        for addr in &self.metrics {
            let text = http_get(*addr, "/metrics").await.ok()?;
            counts.push(owned_lanes(&text));
        }
        counts.sort_unstable();
        Some(counts)
    }

    /// CPU seconds of every worker together, and the largest worker's peak RSS (KiB).
    fn cpu_and_hwm(&self) -> (f64, u64) {
        let cpu = self
            .pids
            .iter()
            .map(|p| crate::bridge::proc_cpu_secs(*p).unwrap_or(0.0))
            .sum();
        let hwm = self
            .pids
            .iter()
            .map(|p| stats::proc_status_kib(&p.to_string(), "VmHWM:").unwrap_or(0))
            .max()
            .unwrap_or(0);
        (cpu, hwm)
    }

    /// SIGTERM to every worker, then SIGKILL to those still running after 15 s.
    async fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for child in &self.children {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// `error` with the last lines the workers logged.
    fn explain(&self, error: Error) -> Error {
        let mut tail = String::new();
        for (i, log) in self.logs.iter().enumerate() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(5)..] {
                tail.push_str(&format!("\n  worker {i}: {line}"));
            }
        }
        if tail.is_empty() {
            error
        } else {
            Error::Other(format!("{error}{tail}"))
        }
    }

    fn remove_logs(&self) {
        for log in &self.logs {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// The lanes a worker's `/metrics` text says it owns.
fn owned_lanes(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("warren_worker_lane_owned{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .filter(|v| *v > 0.5)
        .count()
}

/// The simulated API's `/stats`.
#[derive(Debug, Deserialize)]
struct SimStats {
    effects: u64,
    keys: usize,
    #[serde(default)]
    replays: u64,
}

async fn sim_stats(addr: SocketAddr) -> Result<SimStats, Error> {
    let body = http_get(addr, "/stats").await?;
    serde_json::from_str(&body)
        .map_err(|e| Error::Other(format!("bench: the simulated API's /stats: {e}: {body}")))
}

/// A plain HTTP/1.1 GET on a local address; the body of a 200.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, Error> {
    let fail = |e: std::io::Error| Error::Other(format!("bench: GET http://{addr}{path}: {e}"));
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(fail)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(fail)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(fail)?;
        Ok::<_, Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| Error::Other(format!("bench: GET http://{addr}{path}: timed out")))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Other(format!("bench: GET http://{addr}{path}: no response")))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(Error::Other(format!(
            "bench: GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    Ok(if chunked {
        dechunk(body)
    } else {
        body.to_string()
    })
}

/// The body of a chunked transfer encoding.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// The machine's CPU counters from `/proc/stat`: (busy, total) clock ticks over every core.
#[derive(Debug, Clone, Copy)]
struct CpuTimes(u64, u64);

impl CpuTimes {
    fn read() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = text
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        // idle and iowait
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        CpuTimes(total.saturating_sub(idle), total)
    }

    fn busy_pct_until(&self, later: &CpuTimes) -> f64 {
        let total = later.1.saturating_sub(self.1);
        if total == 0 {
            return 0.0;
        }
        later.0.saturating_sub(self.0) as f64 * 100.0 / total as f64
    }
}

/// The `warren` binary: `explicit`, or the one beside this program.
pub fn find_warren(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| Error::Other(format!("bench: cannot find its own binary: {e}")))?
            .with_file_name("warren"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Usage(format!(
            "the lanes scenario runs `warren worker` processes, and {} is not a file: build it \
             (cargo build --release --workspace) or give --warren PATH",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_spread_evenly_over_the_lanes() {
        for (pairs, lanes) in [(64, 16), (10, 4), (3, 8)] {
            let names = balanced_pairs(pairs, lanes);
            assert_eq!(names.len(), usize::from(pairs));
            let mut per = vec![0u16; usize::from(lanes)];
            for n in &names {
                per[usize::from(lane_of(n, lanes))] += 1;
            }
            let (lo, hi) = (per.iter().min().unwrap(), per.iter().max().unwrap());
            assert!(hi - lo <= 1, "{pairs} pairs over {lanes} lanes: {per:?}");
        }
    }

    #[test]
    fn owned_lanes_counts_the_gauges_at_one() {
        let text = "# HELP warren_worker_lane_owned 1 for each lane\n\
                    warren_worker_lane_owned{queue=\"p.work.lane.0\"} 1\n\
                    warren_worker_lane_owned{queue=\"p.work.lane.1\"} 0\n\
                    warren_worker_lane_owned{queue=\"p.work.lane.2\"} 1\n\
                    warren_worker_lane_handovers_total{queue=\"p.work.lane.2\"} 3\n";
        assert_eq!(owned_lanes(text), 2);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn the_topology_is_a_laned_quorum_queue() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, topology_toml(16)).unwrap();
        let t = Topology::load(&file, "p.").unwrap();
        let lanes = t.queues[0].lanes.as_ref().expect("laned");
        assert_eq!(lanes.count, 16);
        assert_eq!(lanes.key.to_string(), "payload.pair");
    }
}
