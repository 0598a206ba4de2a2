//! `--scenario cluster`: the same workload on a three-node cluster and on a single node, in the
//! same run. The bench starts both as throwaway nodes of the installed RabbitMQ
//! (`scripts/rabbit-cluster.sh`, `scripts/rabbit-node.sh`: own names, ports and data under a
//! temp dir, one scheduler per node), never touching any other broker, and stops them after.
//!
//! Each run is the saturation scenario on quorum queues, warren's side: `Publisher` with its
//! confirm window publishes `--messages` events while `worker::run` with the counted `log`
//! handler consumes them, at most 1000 in flight, in a child process on a fresh topology.
//! Rounds alternate which broker goes first; the ratio is the median of per-round ratios.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::stats::median_of;
use crate::{BenchOptions, QueueType, SATURATION_IN_FLIGHT, Scenario, Side, SideResult};
use warren::amqp::AmqpUrl;
use warren::error::{Error, Result};

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Events per run.
    pub events: u64,
    /// Body size, bytes.
    pub size: usize,
    /// Rounds; each runs both brokers.
    pub rounds: usize,
    /// This program, for the child runs.
    pub exe: PathBuf,
    /// Cancelled on Ctrl-C: the run stops and the nodes are stopped and removed.
    pub stop: CancellationToken,
}

/// One round's rates, events per second from the first handled to the last.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClusterRound {
    /// On the three-node cluster.
    pub cluster: f64,
    /// On the single node.
    pub single: f64,
    /// The cluster's publish → handler p99, µs.
    pub cluster_p99_us: Option<u64>,
    /// The single node's publish → handler p99, µs.
    pub single_p99_us: Option<u64>,
}

/// The scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// Events per run.
    pub events: u64,
    /// Body size, bytes.
    pub size: usize,
    /// The saturation bound on events published and not yet handled.
    pub max_in_flight: u64,
    /// Every round, in order.
    pub rounds: Vec<ClusterRound>,
    /// Median of the cluster's rates.
    pub cluster_median: f64,
    /// Median of the single node's rates.
    pub single_median: f64,
    /// Median of the per-round ratios cluster ÷ single.
    pub ratio_median: f64,
    /// Smallest per-round ratio.
    pub ratio_min: f64,
    /// Largest per-round ratio.
    pub ratio_max: f64,
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("bench cluster: {e}"))
}

/// The repository's `scripts/`: under the working directory, else beside this crate's source.
fn scripts_dir() -> Result<PathBuf> {
    let here = PathBuf::from("scripts");
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts");
    [here, built]
        .into_iter()
        .find(|d| d.join("rabbit-cluster.sh").is_file() && d.join("rabbit-node.sh").is_file())
        .ok_or_else(|| {
            Error::Usage(
                "--scenario cluster starts throwaway nodes with scripts/rabbit-cluster.sh and \
                 scripts/rabbit-node.sh: run it from the repository root"
                    .into(),
            )
        })
}

/// Runs a node script and returns its stdout (the URL it prints); its progress goes to our
/// stderr.
async fn script(dir: &Path, name: &str, args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = tokio::process::Command::new(dir.join(name))
        .args(args)
        // One scheduler per node, as rabbit-cluster.sh gives each of its nodes.
        .env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "+S 1:1 +SDcpu 1:1 +SDio 2",
        )
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(|e| other(format!("{name}: {e}")))?;
    if !out.status.success() {
        return Err(other(format!("{name} {:?} failed ({})", args, out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Throwaway brokers under one temp dir: the cluster in `cluster/`, the single node in `single/`.
struct Nodes {
    scripts: PathBuf,
    root: PathBuf,
}

impl Nodes {
    async fn start(scripts: PathBuf) -> Result<(Self, String, String)> {
        let id = ulid::Ulid::generate().to_string().to_lowercase();
        let root = std::env::temp_dir().join(format!("warren-bench-cluster-{id}"));
        std::fs::create_dir_all(&root).map_err(other)?;
        // The nodes run as the rabbitmq user, which must reach their directories.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).map_err(other)?;
        let nodes = Self { scripts, root };
        let cluster_dir = nodes.root.join("cluster");
        let single_dir = nodes.root.join("single");
        let started = async {
            let cluster = script(
                &nodes.scripts,
                "rabbit-cluster.sh",
                &["start".as_ref(), cluster_dir.as_os_str()],
            )
            .await?;
            let single = script(
                &nodes.scripts,
                "rabbit-node.sh",
                &["start".as_ref(), single_dir.as_os_str()],
            )
            .await?;
            Ok::<_, Error>((cluster, single))
        }
        .await;
        match started {
            Ok((cluster, single)) => Ok((nodes, cluster, single)),
            Err(e) => {
                nodes.stop().await;
                Err(e)
            }
        }
    }

    /// Stops every node that runs and removes the directory.
    async fn stop(&self) {
        let cluster = self.root.join("cluster");
        let single = self.root.join("single");
        if cluster.is_dir() {
            let _ = script(
                &self.scripts,
                "rabbit-cluster.sh",
                &["stop".as_ref(), cluster.as_os_str()],
            )
            .await;
        }
        if single.join("nodename").is_file() {
            let _ = script(
                &self.scripts,
                "rabbit-node.sh",
                &["stop".as_ref(), single.as_os_str()],
            )
            .await;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Starts the brokers, runs the rounds, stops the brokers.
pub async fn run(settings: &ClusterSettings) -> Result<ClusterReport> {
    let scripts = scripts_dir()?;
    eprintln!("cluster: starting a three-node cluster and a single node (about a minute)");
    let (nodes, cluster_url, single_url) = tokio::select! {
        r = Nodes::start(scripts) => r?,
        _ = settings.stop.cancelled() => return Err(other("interrupted")),
    };
    let rounds = tokio::select! {
        r = rounds(settings, &cluster_url, &single_url) => r,
        _ = settings.stop.cancelled() => Err(other("interrupted")),
    };
    nodes.stop().await;
    let rounds = rounds?;
    let ratios = || rounds.iter().map(|r| r.cluster / r.single);
    Ok(ClusterReport {
        events: settings.events,
        size: settings.size,
        max_in_flight: SATURATION_IN_FLIGHT,
        cluster_median: median_of(rounds.iter().map(|r| r.cluster)),
        single_median: median_of(rounds.iter().map(|r| r.single)),
        ratio_median: median_of(ratios()),
        ratio_min: ratios().fold(f64::INFINITY, f64::min),
        ratio_max: ratios().fold(0.0, f64::max),
        rounds,
    })
}

fn options(settings: &ClusterSettings, amqp_url: &str) -> Result<BenchOptions> {
    let url: AmqpUrl = amqp_url.parse().map_err(other)?;
    Ok(BenchOptions {
        url,
        amqp_url: amqp_url.to_string(),
        exe: settings.exe.clone(),
        scenarios: vec![scenario()],
        queue_types: vec![QueueType::Quorum],
        messages: settings.events,
        size: settings.size,
        sides: vec![Side::Warren],
        rounds: 1,
        max_in_flight: SATURATION_IN_FLIGHT,
        peer: PathBuf::new(),
        stop: settings.stop.clone(),
        lanes: None,
    })
}

fn scenario() -> Scenario {
    Scenario::Saturation {
        max_in_flight: SATURATION_IN_FLIGHT,
    }
}

async fn rounds(
    settings: &ClusterSettings,
    cluster_url: &str,
    single_url: &str,
) -> Result<Vec<ClusterRound>> {
    let on_cluster = options(settings, cluster_url)?;
    let on_single = options(settings, single_url)?;
    let mut out = Vec::new();
    for round in 0..settings.rounds.max(1) {
        let cluster_first = round % 2 == 0;
        let order = if cluster_first {
            [&on_cluster, &on_single]
        } else {
            [&on_single, &on_cluster]
        };
        let mut results: Vec<SideResult> = Vec::with_capacity(2);
        for opts in order {
            let run =
                || crate::parent::one_run(opts, scenario(), QueueType::Quorum, Side::Warren, None);
            let r = match run().await {
                // As elsewhere: one failed run costs that run, not the report.
                Err(error) if !settings.stop.is_cancelled() => {
                    tracing::warn!(%error, "Run failed; running it again.");
                    run().await?
                }
                r => r?,
            };
            results.push(r);
        }
        if !cluster_first {
            results.reverse();
        }
        let (c, s) = (&results[0], &results[1]);
        let round = ClusterRound {
            cluster: c.msgs_per_sec,
            single: s.msgs_per_sec,
            cluster_p99_us: c.latency.map(|l| l.p99_us),
            single_p99_us: s.latency.map(|l| l.p99_us),
        };
        eprintln!(
            "cluster round {}: cluster {:.0}/s, single {:.0}/s, ratio {:.3}",
            out.len() + 1,
            round.cluster,
            round.single,
            round.cluster / round.single
        );
        out.push(round);
    }
    Ok(out)
}

/// The report as a table row and a note.
pub fn render(r: &ClusterReport) -> String {
    #[derive(tabled::Tabled)]
    struct Row {
        scenario: String,
        #[tabled(rename = "cluster ev/s")]
        cluster: String,
        #[tabled(rename = "single ev/s")]
        single: String,
        #[tabled(rename = "cluster ÷ single (min–max)")]
        ratio: String,
        #[tabled(rename = "p99 ms cluster / single")]
        p99: String,
    }
    let p99 = |v: Vec<Option<u64>>| {
        let v: Vec<f64> = v
            .into_iter()
            .flatten()
            .map(|us| us as f64 / 1000.0)
            .collect();
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", median_of(v.into_iter()))
        }
    };
    let row = Row {
        scenario: format!(
            "cluster: saturation in-flight≤{}, quorum ({} events, {} rounds)",
            r.max_in_flight,
            r.events,
            r.rounds.len()
        ),
        cluster: format!("{:.0}", r.cluster_median),
        single: format!("{:.0}", r.single_median),
        ratio: format!(
            "{:.2} ({:.2}–{:.2})",
            r.ratio_median, r.ratio_min, r.ratio_max
        ),
        p99: format!(
            "{} / {}",
            p99(r.rounds.iter().map(|x| x.cluster_p99_us).collect()),
            p99(r.rounds.iter().map(|x| x.single_p99_us).collect())
        ),
    };
    format!(
        "{}\nThree throwaway nodes clustered, and one alone, on this host (one scheduler each); \
         clients connect to node 1, which leads the queue. Rates from the first handled event \
         to the last; figures are medians, the ratio the median of per-round ratios.\n",
        warren::output::table([row])
    )
}
