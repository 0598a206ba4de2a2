//! `warren topology apply` refuses to change a queue's lane count: keys would move to other
//! lanes while messages still wait in the old ones. It says which queue, both counts and how to
//! migrate, exits 1 (a topology mismatch is a failure, `cli::outcome`), and declares nothing.

use assert_cmd::Command;

use crate::support::{self, TestTopology};

fn topology(lanes: u16) -> String {
    format!(
        r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
max_attempts = 3
retry_delays = ["1s"]
expires = "10m"

[[queues]]
name = "orders"
bind = ["trade.*"]
lanes = {lanes}
lane_key = "payload.pair"
"#
    )
}

fn apply(path: &std::path::Path, prefix: &str) -> std::process::Output {
    Command::cargo_bin("warren")
        .unwrap()
        .env("AMQP_URL", support::amqp_url())
        .env("RUST_LOG", "warn")
        .args(["topology", "apply", "-f"])
        .arg(path)
        .args(["--prefix", prefix])
        .output()
        .unwrap()
}

#[tokio::test]
async fn apply_refuses_a_changed_lane_count_names_both_counts_and_declares_nothing() {
    let t = TestTopology::new("lanes-apply", &topology(4));
    let first = apply(&t.path, &t.prefix);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let conn = support::connect().await;
    let orders = t.queue("orders");
    let exists = |name: String| {
        let conn = &conn;
        async move {
            warren::amqp::inspect_queue(conn, &name)
                .await
                .expect("broker answers")
                .is_some()
        }
    };
    for lane in 0..4 {
        assert!(exists(format!("{orders}.lane.{lane}")).await);
    }

    for (lanes, absent) in [(8u16, Some(4u16)), (2, None)] {
        let path = t.dir().join(format!("lanes-{lanes}.toml"));
        std::fs::write(&path, topology(lanes)).unwrap();
        let out = apply(&path, &t.prefix);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "4 -> {lanes} lanes:\n{stderr}");
        for needle in [
            format!("queue '{orders}'"),
            "has 4 lanes on the broker".to_string(),
            format!("asks for {lanes}"),
            format!("rabbitmqctl delete_queue {orders}.lane.<i>"),
            "warren topology delete".to_string(),
            "then apply again".to_string(),
        ] {
            assert!(
                stderr.contains(&needle),
                "4 -> {lanes} lanes: stderr lacks {needle:?}:\n{stderr}"
            );
        }
        if let Some(lane) = absent {
            for lane in lane..lanes {
                assert!(
                    !exists(format!("{orders}.lane.{lane}")).await,
                    "a refused apply declared lane {lane}"
                );
            }
        }
        // The lanes that were there are still there.
        for lane in 0..4 {
            assert!(exists(format!("{orders}.lane.{lane}")).await);
        }
    }
    t.cleanup(&conn).await;
}
