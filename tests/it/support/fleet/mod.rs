//! The reliability harness: the whole fleet (sim upstream, sim api, bridge, 3 http workers) as
//! real processes on the real broker under a unique prefix, with a TCP proxy between the
//! workers and the broker, fault helpers, an RSS sampler, quiescence and the I1–I6 reconcile.
//!
//! Every member runs with a dedicated broker user whose password, and an agent key, are canaries:
//! [`Fleet::finish`] greps every log and output file for them.
#![allow(dead_code)]

mod broker;
mod member;
mod observe;
mod report;

use std::time::{Duration, Instant};

use lapin::Connection;

use super::downstream::http_client;
use super::proxy::{Mode, Proxy};
use super::{TestTopology, now_ms};
use member::Spec;

pub use broker::{BrokerGuard, Canary, ctl};
pub use member::{Member, RssSampler};
pub use report::{Report, canary_hits};

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

/// What to run.
pub struct FleetOptions {
    /// Scenario name (prefix, log directory, report line).
    pub name: &'static str,
    /// Events the upstream emits, at `rate` per second.
    pub events: u64,
    pub rate: u32,
    /// Extra `warren sim api` flags (fault rates).
    pub api_flags: Vec<String>,
    /// Extra `warren sim upstream` flags (its faults).
    pub upstream_flags: Vec<String>,
    /// Extra `warren bridge` flags.
    pub bridge_flags: Vec<String>,
    /// A cluster's nodes (`host:port`), or empty for the test's one broker. Workers get every
    /// node, each through a proxy of its own ([`Fleet::proxy`] for the first,
    /// [`Fleet::node_proxies`] for the others); the bridge gets every node directly, starting at
    /// `bridge_first`.
    pub nodes: Vec<String>,
    pub bridge_first: usize,
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
    /// The proxies to a cluster's second and later nodes.
    pub node_proxies: Vec<Proxy>,
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
        let nodes = if opts.nodes.is_empty() {
            vec![super::url().host_port()]
        } else {
            opts.nodes.clone()
        };
        let addr = |n: &String| n.parse().expect("broker host:port is an address");
        let proxy = Proxy::start(addr(&nodes[0])).await;
        let mut node_proxies = vec![];
        for n in &nodes[1..] {
            node_proxies.push(Proxy::start(addr(n)).await);
        }
        // A node cut off is left after 2 s without an answer.
        let list = |addrs: Vec<String>, heartbeat: u16| {
            let urls: Vec<String> = addrs.iter().map(|a| canary.url(a, heartbeat)).collect();
            match urls.len() {
                1 => urls[0].clone(),
                _ => urls
                    .iter()
                    .map(|u| format!("{u}&connection_timeout=2000"))
                    .collect::<Vec<_>>()
                    .join(","),
            }
        };
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
                ]
                .into_iter()
                .chain(opts.upstream_flags.iter().cloned())
                .collect(),
                envs: vec![("PF_AGENT_KEY".into(), canary.agent_key.clone())],
            },
            &dir,
            0,
        );
        let ws = format!("ws://{}/api/stream", upstream.listening_addr());
        rss.track("upstream", upstream.pid());

        let worker_url = list(
            std::iter::once(&proxy)
                .chain(&node_proxies)
                .map(|p| p.addr.to_string())
                .collect(),
            2,
        );
        let bridge_url = list(
            (0..nodes.len())
                .map(|i| nodes[(opts.bridge_first + i) % nodes.len()].clone())
                .collect(),
            5,
        );
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
        let mut bridge_args = super::bridge::bridge_args(
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
        bridge_args.extend(opts.bridge_flags.iter().cloned());
        let bridge = Member::spawn(
            Spec {
                role: "bridge".into(),
                args: bridge_args,
                envs: vec![
                    ("AMQP_URL".into(), bridge_url),
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
            node_proxies,
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
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.rss.stop();
    }
}
