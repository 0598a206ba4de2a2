//! `warren status` on the cluster: each quorum work queue's leader and its members on all
//! three nodes, through the node list and the management API.

use assert_cmd::Command;

use crate::support::cluster::Cluster;
use crate::support::{self, TestTopology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_cluster_status_names_leader_and_members() {
    let cluster = Cluster::start();
    let t = TestTopology::fast("cluster-status");
    let conn = support::connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let leader = super::leader_of(&cluster, 0, &work);
    // Node 3 first: the list is tried in order, and any node's management API answers.
    let (url, args) = (cluster.url_list(&[2, 0, 1]), t.args());
    let management = format!("http://127.0.0.1:{}", cluster.nodes[1].port + 20000);
    let out = tokio::task::spawn_blocking(move || {
        Command::cargo_bin("warren")
            .unwrap()
            .env("AMQP_URL", url)
            .args(["status", "-o", "json", "--management-url", &management])
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = support::json_report(&out, "warren status");
    let q = report["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == work.as_str())
        .expect("the work queue in the report")
        .clone();
    let mut names: Vec<String> = cluster.nodes.iter().map(|n| n.name()).collect();
    names.sort();
    assert_eq!(
        q["replicas"]["leader"],
        cluster.nodes[leader].name().as_str(),
        "{q}"
    );
    assert_eq!(q["replicas"]["members"], serde_json::json!(names), "{q}");
    assert_eq!(q["replicas"]["online"], serde_json::json!(names), "{q}");
    t.cleanup(&conn).await;
}
