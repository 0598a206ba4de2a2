//! The demo run: the upstream and the bridge started, progress sampled until the pipeline
//! settles (or time runs out), then the downstream's ledger and the DLQs read for the
//! reconciliation.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_sim::upstream;

use super::db::DemoDb;
use super::fleet::Fleet;
use super::ledger::LedgerTail;
use super::progress::{Progress, Sample};
use super::report::{Dead, DemoReport, Effect, Inputs, reconcile};
use super::sims::{ApiLedger, ApiStats, bind, get_json, local, upstream_settings};
use super::{DemoSettings, SAMPLE_EVERY};
use crate::amqp::{self, Connection};
use crate::error::{Error, Result};
use crate::topology::{self, Topology};

/// Where the workers put their effects, and where the demo counts them.
pub(super) enum Downstream<'a> {
    /// The simulated API at this base URL: its `/stats` and `/ledger`.
    Api(String),
    /// The run's PostgreSQL schema: its inbox and tables.
    Db(&'a DemoDb),
}

/// Runs the upstream and the bridge, shows progress until the pipeline settles, reconciles.
pub(super) async fn drive(
    settings: &DemoSettings,
    conn: &Connection,
    topology: &Topology,
    downstream: &Downstream<'_>,
    dir: &Path,
    fleet: &mut Fleet,
    interrupt: &CancellationToken,
) -> Result<DemoReport> {
    let ledger = dir.join("upstream.ledger");
    let up_listener = bind().await?;
    let up_addr = local(&up_listener)?;
    // Stopped at the end of the run, or on any early return.
    let upstream_stop = CancellationToken::new();
    let _upstream_guard = upstream_stop.clone().drop_guard();
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
    let bridge_stop = CancellationToken::new();
    let _bridge_guard = bridge_stop.clone().drop_guard();
    let bridge_task = tokio::spawn(crate::bridge::run(
        bridge_settings,
        stats.clone(),
        bridge_stop.clone(),
    ));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Other(format!("HTTP client: {e}")))?;
    let unrouted = unrouted_types(topology);
    let mut tail = LedgerTail::new(ledger.clone());
    let mut progress = Progress::new();
    let mut killed = false;
    let mut worker_kills = 0;
    let started = tokio::time::Instant::now();
    let emission =
        Duration::from_secs_f64(settings.events as f64 / f64::from(settings.rate.max(1)));
    let deadline = started + emission + settings.settle_timeout;
    let mut settled_once = false;
    let report = loop {
        tokio::select! {
            _ = interrupt.cancelled() => {}
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        if bridge_task.is_finished() {
            progress.finish();
            return match bridge_task.await {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::Other("the bridge stopped unexpectedly".into())),
            };
        }
        // Published before emitted: an event is in the ledger before the bridge can see it.
        let published = stats.confirmed.load(Ordering::Relaxed);
        let emitted = tail.read()?;
        let processed = match downstream {
            Downstream::Api(api) => {
                let stats: ApiStats = get_json(&http, &format!("{api}/stats")).await?;
                stats.effects
            }
            Downstream::Db(db) => db.processed().await?,
        };
        let depths = depths(conn, topology).await?;
        let workers = fleet.sample().await;
        progress.show(Sample {
            emitted: emitted.len() as u64,
            published,
            processed,
            queued: depths.backlog,
            in_flight: workers.in_flight,
            retrying: depths.retrying,
            dead: depths.dead,
        });
        if settings.faults && !killed && kill_due(processed + depths.dead, settings.events) {
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
            && processed + depths.dead >= routed;
        // Twice in a row, so a delivery between two queues is not missed.
        let settled = quiet && settled_once;
        settled_once = quiet;
        let interrupted = interrupt.is_cancelled();
        let out_of_time = tokio::time::Instant::now() > deadline;
        if settled || out_of_time || interrupted {
            let mut inputs = Inputs {
                emitted: emitted.to_vec(),
                published: stats.confirmed.load(Ordering::Relaxed),
                unrouted_types: unrouted.clone(),
                bridge_duplicates: stats.duplicates.load(Ordering::Relaxed),
                worker_kills,
                lane_acks: workers.lane_acks.clone(),
                ..Inputs::default()
            };
            match downstream {
                Downstream::Api(api) => collect_api(&http, api, &mut inputs).await?,
                Downstream::Db(db) => {
                    inputs.effects = db.effects().await?;
                    inputs.api_replays = workers.db_duplicates;
                    (inputs.type_rows, inputs.phantom) = db.rows_per_type(&inputs.emitted).await?;
                }
            }
            collect_dead(conn, topology, &mut inputs).await?;
            let mut report = reconcile(&topology.prefix, &inputs);
            report.interrupted = interrupted;
            report.sink = settings.sink.name().to_string();
            if report.lost == 0 || out_of_time || interrupted {
                if out_of_time && !interrupted {
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

/// `--faults` kills a worker once 40% of the events are settled (processed or dead-lettered), so
/// a run whose events mostly dead-letter kills one too.
fn kill_due(settled: u64, events: u64) -> bool {
    settled * 10 >= events * 4
}

/// Reads the simulated API's ledger into `inputs`.
async fn collect_api(http: &reqwest::Client, api: &str, inputs: &mut Inputs) -> Result<()> {
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
    Ok(())
}

/// Reads every DLQ into `inputs`.
async fn collect_dead(conn: &Connection, topology: &Topology, inputs: &mut Inputs) -> Result<()> {
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
        if let Some(lanes) = &q.lanes {
            for lane in 0..lanes.count {
                d.backlog += count(topology::lanes::lane_queue(&q.name, lane)).await?;
            }
            continue;
        }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::demo::DEFAULT_TOPOLOGY;

    #[test]
    fn the_kill_is_due_at_40_percent_settled() {
        assert!(!kill_due(39, 100));
        assert!(kill_due(40, 100));
        assert!(kill_due(1, 1));
        assert!(!kill_due(0, 1));
    }

    #[test]
    fn the_default_topology_routes_every_catalog_type() {
        let t = Topology::parse(DEFAULT_TOPOLOGY, Path::new("t.toml"), "x.").unwrap();
        assert!(unrouted_types(&t).is_empty());
    }
}
