//! The whole fleet (sim upstream → bridge → cluster → 3 http workers → sim api) on a real
//! three-node RabbitMQ cluster, with the quorum queues' leader node killed (`kill -9`) and
//! restarted, another node stopped gracefully, the bridge's node killed, and a node cut off
//! through a proxy: each ends with the exactly-once reconcile (0 lost, 0 effects twice, 0
//! phantom) and the recovery time from each fault to the next effect.
//!
//! Every test is `disruptive_cluster_*`: nextest runs them alone (see .config/nextest.toml), as
//! they stop nodes and run five processes each. `scripts/test.sh` starts the cluster once
//! (`WARREN_TEST_CLUSTER_DIR`); without it each test starts one of its own.

mod failover;
mod status;

use crate::support::cluster::Cluster;
use crate::support::fleet::FleetOptions;

/// Events per second from the upstream.
pub const RATE: u32 = 100;

/// The fleet on the cluster's nodes, emitting `events`.
pub fn options(
    name: &'static str,
    cluster: &Cluster,
    events: u64,
    bridge_first: usize,
) -> FleetOptions {
    FleetOptions {
        name,
        events,
        rate: RATE,
        api_flags: vec![],
        upstream_flags: vec![],
        bridge_flags: vec![],
        nodes: cluster.nodes.iter().map(|n| n.addr()).collect(),
        bridge_first,
    }
}

/// The node (index) that leads `queue`, asked of node `via`.
pub fn leader_of(cluster: &Cluster, via: usize, queue: &str) -> usize {
    let listing = cluster
        .ctl(
            via,
            &["list_queues", "-q", "--no-table-headers", "name", "leader"],
        )
        .expect("list_queues");
    let leader = listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .map(|(_, leader)| leader.trim().to_string())
        .unwrap_or_else(|| panic!("queue '{queue}' not listed:\n{listing}"));
    cluster
        .nodes
        .iter()
        .position(|n| n.name() == leader)
        .unwrap_or_else(|| panic!("leader '{leader}' is not a node of the cluster"))
}
