//! Node faults under a running fleet: the leader killed and restarted, another node stopped,
//! the bridge's node killed, a node cut off.

use std::time::Duration;

use super::{RATE, leader_of, options};
use crate::support::cluster::Cluster;
use crate::support::fleet::{Fleet, Report};
use crate::support::now_ms;
use crate::support::proxy::Mode;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking step")
}

fn log_has(fleet: &Fleet, role: &str, needle: &str) -> bool {
    std::fs::read_dir(fleet.t.dir())
        .expect("fleet dir")
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(role) && n.ends_with(".log")
        })
        .any(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains(needle)
        })
}

fn assert_recovered(report: &Report, fault: &str) {
    assert!(
        !report.recoveries(fault).is_empty(),
        "{}: no effect after the fault '{fault}': {:?}",
        report.name,
        report.recovery_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_cluster_leader_kill9_then_another_node_stopped() {
    let cluster = std::sync::Arc::new(Cluster::start());
    let mut fleet =
        Fleet::start(options("cluster-leader", &cluster, u64::from(RATE) * 45, 1)).await;
    let work = fleet.t.queue("work");
    let leader = leader_of(&cluster, 0, &work);
    let other = (leader + 1) % 3;
    eprintln!("cluster: the work queue's leader is node {}", leader + 1);
    tokio::time::sleep(Duration::from_secs(4)).await;

    let at = now_ms();
    let c = cluster.clone();
    blocking(move || c.kill9(leader)).await;
    fleet.mark("leader-kill9", at);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at = now_ms();
    let c = cluster.clone();
    blocking(move || c.restart(leader)).await;
    fleet.mark("leader-restart", at);
    tokio::time::sleep(Duration::from_secs(4)).await;

    let at = now_ms();
    let c = cluster.clone();
    blocking(move || c.stop_app(other)).await;
    fleet.mark("node-stop", at);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at = now_ms();
    let c = cluster.clone();
    blocking(move || c.start_app(other)).await;
    fleet.mark("node-start", at);

    let new_leader = leader_of(&cluster, other, &work);
    eprintln!(
        "cluster: the work queue's leader is now node {}",
        new_leader + 1
    );
    fleet.quiesce(Duration::from_secs(120)).await;
    let report = fleet.finish(&[]).await;
    assert_recovered(&report, "leader-kill9");
    assert_recovered(&report, "node-stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_cluster_bridge_node_kill9() {
    let cluster = std::sync::Arc::new(Cluster::start());
    // The bridge starts on node 2; the test's own connection (and the queue's leader) on 1.
    let mut fleet =
        Fleet::start(options("cluster-bridge", &cluster, u64::from(RATE) * 25, 1)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at = now_ms();
    let c = cluster.clone();
    blocking(move || c.kill9(1)).await;
    fleet.mark("bridge-node-kill9", at);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = cluster.clone();
    blocking(move || c.restart(1)).await;
    fleet.quiesce(Duration::from_secs(120)).await;
    assert!(
        log_has(&fleet, "bridge", "Connected to another broker node"),
        "the bridge did not move to another node"
    );
    // Every emitted event has its effect: the cursor never passed an unconfirmed one.
    let report = fleet.finish(&[]).await;
    assert_recovered(&report, "bridge-node-kill9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_cluster_node_cut_off_through_the_proxy() {
    let cluster = Cluster::start();
    let mut fleet = Fleet::start(options(
        "cluster-partition",
        &cluster,
        u64::from(RATE) * 25,
        1,
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The workers' first node stops answering them: bytes vanish, connections stay open.
    // Recovery is measured from the cut: the workers must move while it lasts.
    let at = now_ms();
    fleet.proxy(Mode::BlackHole);
    fleet.mark("blackhole-node1", at);
    tokio::time::sleep(Duration::from_secs(10)).await;
    fleet.proxy(Mode::Pass);
    fleet.quiesce(Duration::from_secs(120)).await;
    assert!(
        log_has(&fleet, "worker", "Connected to another broker node"),
        "no worker moved to another node"
    );
    let report = fleet.finish(&[]).await;
    assert_recovered(&report, "blackhole-node1");
    drop(cluster);
}
