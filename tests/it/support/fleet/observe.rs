//! What the running fleet has done: the sim api's ledger and effects, queue depths, waiting
//! for quiescence, and the final reconcile, canary check and teardown.

use std::time::{Duration, Instant};

use lapin::Connection;

use super::{Fleet, Report, canary_hits, ctl};
use crate::support::downstream::{LedgerView, dead_letters};

impl Fleet {
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
                match warren::amqp::connect(&crate::support::url(), "test", "reliability").await {
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
        Some(n + crate::support::unacked(&spec.name))
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
        let mut report = Report::build(
            self.name,
            &up.ids,
            &ledger,
            &dead,
            &self.faults,
            self.rss.peaks(),
        );
        report.read_detections(self.t.dir(), &self.faults);
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
