//! Where the queues are on the cluster: `warren topology apply` names each quorum queue's
//! leader (or says it is unknown, and why), `warren status` its leader and members on all three
//! nodes, and `quorum_initial_group_size` places a new queue's members on that many nodes.

use assert_cmd::Command;

use crate::support::cluster::Cluster;
use crate::support::{self, TestTopology};
use warren::topology::Arg;

/// Runs the binary with `AMQP_URL` set, off the runtime's threads.
async fn warren(url: String, args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::cargo_bin("warren")
            .unwrap()
            .env("AMQP_URL", url)
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn management(cluster: &Cluster, node: usize) -> String {
    format!("http://127.0.0.1:{}", cluster.nodes[node].port + 20000)
}

/// `args` then the topology's `-f … --prefix …`.
fn with(args: &[&str], t: &TestTopology) -> Vec<String> {
    args.iter().map(|s| s.to_string()).chain(t.args()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_cluster_status_names_leader_and_members() {
    let cluster = Cluster::start();
    let t = TestTopology::fast("cluster-status");
    let work = t.queue("work");
    // Node 3 first: the list is tried in order, and any node's management API answers.
    let url = cluster.url_list(&[2, 0, 1]);
    let args = with(
        &[
            "topology",
            "apply",
            "-o",
            "json",
            "--management-url",
            &management(&cluster, 1),
        ],
        &t,
    );
    let applied = support::json_report(&warren(url.clone(), args).await, "topology apply");
    let leader = super::leader_of(&cluster, 0, &work);
    let items = applied["items"].as_array().unwrap();
    let item = |name: &str| {
        items
            .iter()
            .find(|i| i["kind"] == "queue" && i["name"] == name)
            .unwrap_or_else(|| panic!("queue '{name}' in {applied}"))
    };
    assert_eq!(
        item(&work)["leader"],
        cluster.nodes[leader].name().as_str(),
        "{applied}"
    );
    let plan = t.topology.plan();
    for q in &plan.queues {
        let quorum = q.arguments.get("x-queue-type") == Some(&Arg::Str("quorum".into()));
        assert_eq!(
            item(&q.name)["leader"].is_string(),
            quorum,
            "quorum queues, and only they, name a leader: {}",
            item(&q.name)
        );
    }
    assert!(applied.get("leaders_unknown").is_none(), "{applied}");

    // Without a management API, apply still succeeds and says the leaders are unknown.
    let dead = format!("http://127.0.0.1:{}", cluster.nodes[0].port + 1);
    let args = with(&["topology", "apply", "--management-url", &dead], &t);
    let out = warren(url.clone(), args).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.contains(&format!(" {work} ")))
        .unwrap();
    assert!(row.contains("unknown"), "{text}");
    assert!(
        text.contains("leader: unknown (management API not reachable: "),
        "{text}"
    );

    let args = with(
        &[
            "status",
            "-o",
            "json",
            "--management-url",
            &management(&cluster, 1),
        ],
        &t,
    );
    let report = support::json_report(&warren(url, args).await, "warren status");
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
    let conn = support::connect().await;
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_cluster_quorum_initial_group_size_places_members() {
    let cluster = Cluster::start();
    let toml = support::FAST_TOPOLOGY
        .replace(
            "expires = \"10m\"",
            "expires = \"10m\"\nquorum_initial_group_size = 2",
        )
        .replace(
            "bind = [\"shared.event\"]",
            "bind = [\"shared.event\"]\nquorum_initial_group_size = 1",
        );
    let t = TestTopology::new("cluster-group-size", &toml);
    let url = cluster.url_list(&[0, 1, 2]);
    let args = with(
        &[
            "topology",
            "apply",
            "-o",
            "json",
            "--management-url",
            &management(&cluster, 0),
        ],
        &t,
    );
    support::json_report(&warren(url.clone(), args).await, "topology apply");
    let listing = cluster
        .ctl(
            0,
            &["list_queues", "-q", "--no-table-headers", "name", "members"],
        )
        .expect("list_queues");
    let members = |queue: &str| {
        let line = listing
            .lines()
            .find(|l| l.split('\t').next() == Some(queue))
            .unwrap_or_else(|| panic!("'{queue}' not listed:\n{listing}"));
        line.matches("@").count()
    };
    let (work, other) = (t.queue("work"), t.queue("other"));
    assert_eq!(members(&work), 2, "{listing}");
    assert_eq!(members(&format!("{work}.retry.300ms")), 2, "{listing}");
    assert_eq!(members(&other), 1, "{listing}");
    assert_eq!(members(&format!("{other}.retry.600ms")), 1, "{listing}");

    // A different size for queues that exist: apply refuses, names the queue and the argument,
    // and says how to change the members in place.
    let changed = t.dir().join("changed.toml");
    let toml = toml.replace(
        "quorum_initial_group_size = 1",
        "quorum_initial_group_size = 3",
    );
    std::fs::write(&changed, toml).unwrap();
    let args = [
        "topology",
        "apply",
        "-f",
        &changed.display().to_string(),
        "--prefix",
        &t.prefix,
    ]
    .map(String::from)
    .to_vec();
    let out = warren(url, args).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("queue '{other}'"))
            && err.contains(
                "'x-quorum-initial-group-size' is 3 in the topology file but 1 on the broker"
            )
            && err.contains("rabbitmq-queues add_member"),
        "{err}"
    );
    let conn = support::connect().await;
    t.cleanup(&conn).await;
}
