//! The reliability harness: the whole fleet (sim upstream, sim api, bridge, 3 http workers) as
//! real processes on the real broker under a unique prefix, with a TCP proxy between the
//! workers and the broker, fault helpers, an RSS sampler, quiescence and the I1–I6 reconcile.
//!
//! Every member runs with a dedicated broker user whose password, and an agent key, are canaries:
//! [`Fleet::finish`] greps every log and output file for them.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::Connection;

use super::downstream::{DeadLetter, LedgerView, dead_letters, http_client};
use super::proxy::{Mode, Proxy};
use super::{TestTopology, now_ms};

/// One work queue bound to every event type, so each emitted event is one delivery (and one
/// effect); enough attempts that only a rejection (422) dead-letters.
pub const FLEET_TOPOLOGY: &str = r##"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
prefetch = 50
max_attempts = 12
retry_delays = ["200ms", "1s", "2s"]
delivery_limit = 50
expires = "10m"

[[queues]]
name = "work"
bind = ["#"]
"##;

/// Workers in the fleet.
pub const WORKERS: usize = 3;

/// Fault seconds for scenarios 1–6: 25, or `RELIABILITY_SECS`.
pub fn fault_secs() -> u64 {
    std::env::var("RELIABILITY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

/// Runs `rabbitmqctl`; Err carries stderr.
pub fn ctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Puts the broker back the way every other test expects it: running, configured watermark.
pub fn restore_broker() {
    let _ = ctl(&["start_app"]);
    let _ = ctl(&["await_startup"]);
    if let Err(e) = ctl(&["eval", super::RESTORE_WATERMARK]) {
        eprintln!("could not restore the memory watermark: {e}");
    }
}

/// Restores the broker when dropped, on success and on panic alike.
pub struct BrokerGuard;

impl BrokerGuard {
    /// Restores first, in case an earlier run crashed mid-fault.
    pub fn new() -> Self {
        restore_broker();
        Self
    }
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        restore_broker();
    }
}

/// A dedicated broker user with a recognizable password, and a recognizable agent key. The
/// user is deleted when dropped.
pub struct Canary {
    pub user: String,
    pub password: String,
    pub agent_key: String,
}

impl Canary {
    pub fn create() -> Self {
        let suffix = ulid::Ulid::generate().to_string().to_lowercase();
        let c = Self {
            user: format!("warren_canary_{suffix}"),
            password: format!("canary-pw-{suffix}-Zq7"),
            agent_key: format!("pf_live_canarykey_{suffix}"),
        };
        ctl(&["add_user", &c.user, &c.password]).expect("add canary user");
        ctl(&["set_permissions", "-p", "/", &c.user, ".*", ".*", ".*"])
            .expect("canary permissions");
        c
    }

    /// An AMQP URL with the canary credentials.
    pub fn url(&self, host_port: &str, heartbeat: u16) -> String {
        format!(
            "amqp://{}:{}@{host_port}/%2f?heartbeat={heartbeat}",
            self.user, self.password
        )
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = ctl(&["delete_user", &self.user]);
    }
}

/// How a fleet member is started (again).
#[derive(Clone)]
struct Spec {
    role: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

/// A running member; SIGKILLed when dropped.
pub struct Member {
    spec: Spec,
    dir: PathBuf,
    pub generation: usize,
    child: Child,
}

impl Member {
    fn spawn(spec: Spec, dir: &Path, generation: usize) -> Self {
        let stem = dir.join(format!("{}-{generation}", spec.role));
        let out = std::fs::File::create(stem.with_extension("out")).expect("out file");
        let err = std::fs::File::create(stem.with_extension("log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.args(&spec.args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &spec.envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn warren");
        Self {
            spec,
            dir: dir.to_path_buf(),
            generation,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, then start the same command again (new log files).
    pub fn restart(&mut self) {
        self.kill9();
        *self = Self::spawn(self.spec.clone(), &self.dir, self.generation + 1);
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}-{}.out", self.spec.role, self.generation))
    }

    /// The current generation's stderr.
    pub fn log_text(&self) -> String {
        let p = self
            .dir
            .join(format!("{}-{}.log", self.spec.role, self.generation));
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Waits for the `listening on ADDR` line a sim prints first.
    fn listening_addr(&self) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            let text = std::fs::read_to_string(self.stdout_path()).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("listening on ")) {
                return line["listening on ".len()..].trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} printed no address; log:\n{}",
            self.spec.role,
            self.log_text()
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Peak VmRSS per role (`worker`, `bridge`, `upstream`, `api`) in KiB, sampled every 200 ms.
#[derive(Clone, Default)]
pub struct RssSampler {
    pids: Arc<Mutex<BTreeMap<String, u32>>>,
    peaks: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start() -> Self {
        let s = Self::default();
        let me = s.clone();
        std::thread::spawn(move || {
            while !me.stop.load(Ordering::Relaxed) {
                me.sample();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        s
    }

    fn sample(&self) {
        let pids = self.pids.lock().unwrap().clone();
        for (name, pid) in pids {
            let Some(kb) = rss_kb(pid) else { continue };
            let role = name.split('#').next().unwrap_or(&name).to_string();
            let mut peaks = self.peaks.lock().unwrap();
            let e = peaks.entry(role).or_default();
            *e = (*e).max(kb);
        }
    }

    fn track(&self, name: &str, pid: u32) {
        self.pids.lock().unwrap().insert(name.to_string(), pid);
    }

    /// Peak RSS per role so far, in KiB.
    pub fn peaks(&self) -> BTreeMap<String, u64> {
        self.sample();
        self.peaks.lock().unwrap().clone()
    }
}

impl RssSampler {
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What to run.
pub struct FleetOptions {
    /// Scenario name (prefix, log directory, report line).
    pub name: &'static str,
    /// Events the upstream emits, at `rate` per second.
    pub events: u64,
    pub rate: u32,
    /// Extra `warren sim api` flags (fault rates).
    pub api_flags: Vec<String>,
}

/// A fault window: its name, when it ended, and how many events had been emitted by then.
#[derive(Debug, Clone)]
pub struct FaultMark {
    pub name: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub emitted_at_end: usize,
}

/// The running fleet.
pub struct Fleet {
    pub t: TestTopology,
    pub name: &'static str,
    pub events: u64,
    pub canary: Canary,
    pub proxy: Proxy,
    pub api: Member,
    pub api_base: String,
    pub upstream: Member,
    pub bridge: Member,
    pub workers: Vec<Member>,
    pub rss: RssSampler,
    pub faults: Vec<FaultMark>,
    pub started: Instant,
    http: reqwest::Client,
    conn: Option<Connection>,
}

impl Fleet {
    /// Declares the topology and starts every member; the upstream starts emitting when the
    /// bridge subscribes, which is last.
    pub async fn start(opts: FleetOptions) -> Self {
        let t = TestTopology::new(&format!("rel-{}", opts.name), FLEET_TOPOLOGY);
        let conn = super::connect().await;
        t.apply(&conn).await;
        let canary = Canary::create();
        let dir = t.dir().to_path_buf();
        let broker = super::url().host_port();
        let proxy = Proxy::start(broker.parse().expect("broker host:port is an address")).await;
        let rss = RssSampler::start();

        let mut api_args: Vec<String> = ["sim", "api", "--listen", "127.0.0.1:0", "--seed", "11"]
            .map(String::from)
            .into();
        api_args.extend(opts.api_flags.iter().cloned());
        let api = Member::spawn(
            Spec {
                role: "api".into(),
                args: api_args,
                envs: vec![],
            },
            &dir,
            0,
        );
        let api_base = format!("http://{}", api.listening_addr());
        rss.track("api", api.pid());

        let ledger = dir.join("upstream.ledger");
        let upstream = Member::spawn(
            Spec {
                role: "upstream".into(),
                args: vec![
                    "sim".into(),
                    "upstream".into(),
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                    "--ledger".into(),
                    ledger.display().to_string(),
                    "--events".into(),
                    opts.events.to_string(),
                    "--rate".into(),
                    opts.rate.to_string(),
                    "--seed".into(),
                    "3".into(),
                ],
                envs: vec![("PF_AGENT_KEY".into(), canary.agent_key.clone())],
            },
            &dir,
            0,
        );
        let ws = format!("ws://{}/api/stream", upstream.listening_addr());
        rss.track("upstream", upstream.pid());

        let worker_url = canary.url(&proxy.addr.to_string(), 2);
        let worker_spec = Spec {
            role: "worker".into(),
            args: super::downstream::http_worker_args(
                &t,
                "work",
                &format!("{api_base}/events"),
                &["--concurrency", "8", "--request-timeout", "1s"],
            ),
            envs: vec![("AMQP_URL".into(), worker_url)],
        };
        let workers: Vec<Member> = (0..WORKERS)
            .map(|i| {
                let mut spec = worker_spec.clone();
                spec.role = format!("worker{i}");
                let m = Member::spawn(spec, &dir, 0);
                rss.track(&format!("worker#{i}"), m.pid());
                m
            })
            .collect();

        let cursor = dir.join("bridge.cursor");
        let bridge_args = super::bridge::bridge_args(
            &t,
            &ws,
            &[
                "--cursor-file",
                &cursor.display().to_string(),
                "--confirm-window",
                "64",
                "--cursor-flush-interval",
                "200ms",
                "--idle-timeout",
                "5s",
                "--ping-interval",
                "1s",
            ],
        );
        let bridge = Member::spawn(
            Spec {
                role: "bridge".into(),
                args: bridge_args,
                envs: vec![
                    ("AMQP_URL".into(), canary.url(&broker, 5)),
                    ("PF_AGENT_KEY".into(), canary.agent_key.clone()),
                    ("PF_AGENT_ID".into(), "pf_agent_reliability".into()),
                ],
            },
            &dir,
            0,
        );
        rss.track("bridge", bridge.pid());

        Self {
            t,
            name: opts.name,
            events: opts.events,
            canary,
            proxy,
            api,
            api_base,
            upstream,
            bridge,
            workers,
            rss,
            faults: vec![],
            started: Instant::now(),
            http: http_client(Duration::from_secs(10)),
            conn: Some(conn),
        }
    }

    /// SIGKILL worker `i` and start it again.
    pub fn restart_worker(&mut self, i: usize) {
        self.workers[i].restart();
        self.rss
            .track(&format!("worker#{i}"), self.workers[i].pid());
    }

    /// SIGKILL the bridge and start it again (it resumes from its cursor file).
    pub fn restart_bridge(&mut self) {
        self.bridge.restart();
        self.rss.track("bridge", self.bridge.pid());
    }

    /// Sets the proxy between the workers and the broker.
    pub fn proxy(&self, mode: Mode) {
        self.proxy.set(mode);
    }

    /// Events the upstream has emitted so far (lines in its ledger).
    pub fn emitted(&self) -> usize {
        self.upstream_ledger().ids.len()
    }

    /// The upstream's ground truth.
    pub fn upstream_ledger(&self) -> super::bridge::Ledger {
        super::bridge::Ledger::read(&self.t.dir().join("upstream.ledger"))
    }

    /// Records a fault window that ends now; recovery is measured from here.
    pub fn mark(&mut self, name: &str, start_ms: u64) {
        self.faults.push(FaultMark {
            name: name.to_string(),
            start_ms,
            end_ms: now_ms(),
            emitted_at_end: self.emitted(),
        });
    }

    /// `GET /ledger` of the sim api.
    pub async fn ledger(&self) -> LedgerView {
        self.http
            .get(format!("{}/ledger", self.api_base))
            .send()
            .await
            .expect("sim api reachable")
            .json()
            .await
            .expect("ledger json")
    }

    /// `GET /stats` effects.
    pub async fn effects(&self) -> u64 {
        let v: serde_json::Value = self
            .http
            .get(format!("{}/stats", self.api_base))
            .send()
            .await
            .expect("sim api reachable")
            .json()
            .await
            .expect("stats json");
        v["effects"].as_u64().unwrap_or(0)
    }

    /// The test's own broker connection (guest), reopened after broker faults closed it.
    pub async fn conn(&mut self) -> &Connection {
        let alive = self.conn.as_ref().is_some_and(|c| c.status().connected());
        if !alive {
            let start = Instant::now();
            loop {
                match warren::amqp::connect(&super::url(), "test", "reliability").await {
                    Ok(c) => {
                        self.conn = Some(c);
                        break;
                    }
                    Err(e) if start.elapsed() < Duration::from_secs(60) => {
                        eprintln!("reconnecting the test connection: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => panic!("broker not back within 60 s: {e}"),
                }
            }
        }
        self.conn.as_ref().expect("connected")
    }

    /// Ready messages in a queue, or None if the broker could not answer.
    async fn depth(&mut self, queue: &str) -> Option<u64> {
        let conn = self.conn().await;
        warren::amqp::inspect_queue(conn, queue)
            .await
            .ok()
            .flatten()
            .map(|(ready, _)| ready as u64)
    }

    /// Work left: ready in the work queue and its tiers, plus unacked.
    async fn outstanding(&mut self) -> Option<u64> {
        let spec = self.t.topology.queue("work").expect("work").clone();
        let mut n = self.depth(&spec.name).await?;
        for d in &spec.retry_delays {
            n += self.depth(&spec.retry_queue(*d)).await?;
        }
        Some(n + super::unacked(&spec.name))
    }

    /// Waits until the upstream has emitted everything, each event has an effect or a dead
    /// letter, no work is left anywhere and the sim api ledger stopped changing.
    pub async fn quiesce(&mut self, timeout: Duration) {
        let start = Instant::now();
        let dlq = self.t.topology.queue("work").expect("work").dlq();
        let ingress = self.t.topology.ingress_dlq();
        let mut stable = 0;
        let mut last = (u64::MAX, u64::MAX);
        while start.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if (self.emitted() as u64) < self.events {
                continue;
            }
            let effects = self.effects().await;
            let dead =
                self.depth(&dlq).await.unwrap_or(0) + self.depth(&ingress).await.unwrap_or(0);
            let left = self.outstanding().await.unwrap_or(u64::MAX);
            let now = (effects, dead);
            if left == 0 && now == last && effects + dead >= self.events {
                stable += 1;
                if stable >= 3 {
                    return;
                }
            } else {
                stable = 0;
            }
            last = now;
        }
        let (emitted, effects, left) = (
            self.emitted(),
            self.effects().await,
            self.outstanding().await,
        );
        panic!(
            "{}: not quiescent after {timeout:?}: emitted {emitted}/{}, effects {effects}, outstanding {left:?}",
            self.name, self.events,
        );
    }

    /// Reconciles, prints the scenario line, checks the canaries, stops everything and deletes
    /// the topology. Returns the report for scenario-specific checks.
    pub async fn finish(mut self, rss_limit_kb: &[(&str, u64)]) -> Report {
        let ledger = self.ledger().await;
        let up = self.upstream_ledger();
        let dlq = self.t.topology.queue("work").expect("work").dlq();
        let ingress = self.t.topology.ingress_dlq();
        self.conn().await;
        let conn = self.conn.take().expect("connected");
        let mut dead = dead_letters(&conn, &dlq).await;
        dead.extend(dead_letters(&conn, &ingress).await);
        let report = Report::build(
            self.name,
            &up.ids,
            &ledger,
            &dead,
            &self.faults,
            self.rss.peaks(),
        );
        eprintln!("{report}");

        // Stop every process before grepping, so nothing writes after.
        for w in &mut self.workers {
            w.kill9();
        }
        self.bridge.kill9();
        self.upstream.kill9();
        self.api.kill9();
        let leaks = canary_hits(
            self.t.dir(),
            &[&self.canary.password, &self.canary.agent_key],
        );

        self.t.cleanup(&conn).await;
        let prefix = self.t.prefix.clone();
        let left: Vec<String> = ctl(&["list_queues", "-q", "--no-table-headers", "name"])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        let _ = conn.close(200, "done".into()).await;

        report.assert_invariants();
        assert!(
            leaks.is_empty(),
            "{}: canary secrets found in: {leaks:?}",
            self.name
        );
        assert!(
            left.is_empty(),
            "{}: queues left behind: {left:?}",
            self.name
        );
        for (role, limit) in rss_limit_kb {
            let peak = report.rss_kb.get(*role).copied().unwrap_or(0);
            assert!(peak > 0, "{}: no RSS sample for {role}", self.name);
            assert!(
                peak <= *limit,
                "I5: {}: {role} peaked at {peak} KiB, over {limit} KiB",
                self.name
            );
        }
        report
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.rss.stop();
    }
}

/// Files under `dir` containing any of `needles`, with the needle's index.
pub fn canary_hits(dir: &Path, needles: &[&str]) -> Vec<(String, usize)> {
    let mut hits = vec![];
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        scanned += 1;
        let text = String::from_utf8_lossy(&bytes);
        for (i, n) in needles.iter().enumerate() {
            if text.contains(n) {
                hits.push((entry.file_name().to_string_lossy().into_owned(), i));
            }
        }
    }
    assert!(scanned >= 8, "only {scanned} files scanned for canaries");
    hits
}

/// The reconcile of one scenario.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub emitted: usize,
    pub effects: u64,
    pub dead: usize,
    /// POSTs beyond the first per committed key: retries and redeliveries the key absorbed.
    pub repeats_absorbed: u64,
    /// I1 violations: (eventId, effects, dead letters).
    pub unaccounted: Vec<(String, u32, usize)>,
    /// I2 violations: keys or events with more than one effect.
    pub doubled: Vec<String>,
    /// I3 violations: effects for events never emitted (or without an event id).
    pub phantom: Vec<String>,
    /// I4 violations: dead letters without a kind or an error.
    pub unexplained: Vec<DeadLetter>,
    pub rss_kb: BTreeMap<String, u64>,
    /// (fault, recovery ms): from the fault's end to the first effect of an event emitted after it.
    pub recovery_ms: Vec<(String, Option<u64>)>,
    /// The longest time between two consecutive effects.
    pub longest_gap_ms: u64,
    /// (emission index of the event, commit time ms) of every effect, by commit time.
    pub commits: Vec<(usize, u64)>,
}

impl Report {
    fn build(
        name: &str,
        emitted: &[String],
        ledger: &LedgerView,
        dead: &[DeadLetter],
        faults: &[FaultMark],
        rss_kb: BTreeMap<String, u64>,
    ) -> Self {
        let emitted_set: BTreeSet<&str> = emitted.iter().map(String::as_str).collect();
        let index: BTreeMap<&str, usize> = emitted
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut doubled = vec![];
        let mut phantom = vec![];
        let mut repeats = 0;
        for k in ledger.keys.iter().filter(|k| k.effects > 0) {
            if k.effects > 1 {
                doubled.push(format!("key {} has {} effects", k.key, k.effects));
            }
            repeats += u64::from(k.posts.saturating_sub(1));
            match &k.event_id {
                Some(id) if emitted_set.contains(id.as_str()) => {}
                other => phantom.push(format!("key {} for event {other:?}", k.key)),
            }
        }
        let effects = ledger.effects_by_event();
        for (id, n) in &effects {
            if *n > 1 {
                doubled.push(format!("event {id} has {n} effects"));
            }
        }
        let mut parked: BTreeMap<&str, usize> = BTreeMap::new();
        let mut unexplained = vec![];
        for d in dead {
            if d.kind.is_empty() || d.kind == "x-death" || d.reason.is_empty() {
                unexplained.push(d.clone());
            }
            *parked.entry(d.event_id.as_str()).or_default() += 1;
        }
        let mut unaccounted = vec![];
        for id in emitted {
            let e = effects.get(id).copied().unwrap_or(0);
            let p = parked.get(id.as_str()).copied().unwrap_or(0);
            if !matches!((e, p), (1, 0) | (0, 1..)) {
                unaccounted.push((id.clone(), e, p));
            }
        }
        // Commit times by the emission index of their event.
        let mut commits: Vec<(usize, u64)> = ledger
            .keys
            .iter()
            .filter_map(|k| {
                let at = k.stored.as_ref()?.committed_at_ms;
                Some((*index.get(k.event_id.as_deref()?)?, at))
            })
            .collect();
        commits.sort_by_key(|c| c.1);
        let longest_gap_ms = commits
            .windows(2)
            .map(|w| w[1].1 - w[0].1)
            .max()
            .unwrap_or(0);
        let recovery_ms = faults
            .iter()
            .map(|f| {
                let first = commits
                    .iter()
                    .filter(|(i, at)| *i >= f.emitted_at_end && *at >= f.end_ms)
                    .map(|(_, at)| at - f.end_ms)
                    .min();
                (f.name.clone(), first)
            })
            .collect();
        Self {
            name: name.to_string(),
            emitted: emitted.len(),
            effects: ledger.effects,
            dead: dead.len(),
            repeats_absorbed: repeats,
            unaccounted,
            doubled,
            phantom,
            unexplained,
            rss_kb,
            recovery_ms,
            longest_gap_ms,
            commits,
        }
    }

    /// The measured recovery times of faults whose name starts with `prefix`.
    pub fn recoveries(&self, prefix: &str) -> Vec<u64> {
        self.recovery_ms
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .filter_map(|(_, r)| *r)
            .collect()
    }

    /// I1–I4.
    pub fn assert_invariants(&self) {
        assert!(self.emitted > 0, "{}: nothing emitted", self.name);
        assert!(
            self.unaccounted.is_empty(),
            "I1: {}: {} events without exactly one effect or a dead letter (id, effects, dead): {:?}",
            self.name,
            self.unaccounted.len(),
            &self.unaccounted[..self.unaccounted.len().min(20)]
        );
        assert!(
            self.doubled.is_empty(),
            "I2: {}: {:?}",
            self.name,
            self.doubled
        );
        assert!(
            self.phantom.is_empty(),
            "I3: {}: {:?}",
            self.name,
            self.phantom
        );
        assert!(
            self.unexplained.is_empty(),
            "I4: {}: dead letters without kind/error: {:?}",
            self.name,
            self.unexplained
        );
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rss: Vec<String> = self
            .rss_kb
            .iter()
            .map(|(r, kb)| format!("{r}={:.1}MB", *kb as f64 / 1024.0))
            .collect();
        let mut by_fault: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut none = 0;
        for (n, r) in &self.recovery_ms {
            let family = n.split('#').next().unwrap_or(n).to_string();
            match r {
                Some(ms) => by_fault.entry(family).or_default().push(*ms),
                None => none += 1,
            }
        }
        let rec: Vec<String> = by_fault
            .iter_mut()
            .map(|(n, v)| {
                v.sort_unstable();
                format!(
                    "{n}: n={} median={}ms max={}ms",
                    v.len(),
                    v[v.len() / 2],
                    v[v.len() - 1]
                )
            })
            .collect();
        write!(
            f,
            "RELIABILITY {}: events={} effects={} dead={} repeats_absorbed={} \
             I1_violations={} I2={} I3={} I4={} longest_effect_gap={}ms max_rss[{}] recovery[{}]{}",
            self.name,
            self.emitted,
            self.effects,
            self.dead,
            self.repeats_absorbed,
            self.unaccounted.len(),
            self.doubled.len(),
            self.phantom.len(),
            self.unexplained.len(),
            self.longest_gap_ms,
            rss.join(" "),
            rec.join("; "),
            if none > 0 {
                format!(" ({none} faults had no later events)")
            } else {
                String::new()
            }
        )
    }
}
