//! `warren topology apply|show|export` through the binary, against the real broker.

use crate::support;

use crate::support::{TestTopology, connect};
use assert_cmd::Command;

fn warren() -> Command {
    let mut cmd = Command::cargo_bin("warren").unwrap();
    cmd.env("AMQP_URL", support::amqp_url())
        .env("RUST_LOG", "warn");
    cmd
}

#[tokio::test]
async fn apply_twice_is_a_no_op_the_second_time() {
    let t = TestTopology::fast("apply-twice");
    let run = || {
        let out = warren()
            .args(["topology", "apply", "-o", "json"])
            .args(t.args())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let status_of = |report: &serde_json::Value, kind: &str| -> Vec<String> {
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == kind)
            .map(|i| i["status"].as_str().unwrap().to_string())
            .collect()
    };
    let first = run();
    let second = run();
    let plan = t.topology.plan();
    assert_eq!(status_of(&first, "queue").len(), plan.queues.len());
    assert!(status_of(&first, "queue").iter().all(|s| s == "created"));
    assert!(status_of(&first, "exchange").iter().all(|s| s == "created"));
    assert!(
        status_of(&second, "queue").iter().all(|s| s == "unchanged"),
        "{second}"
    );
    assert!(
        status_of(&second, "exchange")
            .iter()
            .all(|s| s == "unchanged"),
        "{second}"
    );

    let conn = connect().await;
    for q in &plan.queues {
        assert_eq!(
            support::queue_len(&conn, &q.name).await,
            0,
            "{} exists",
            q.name
        );
    }
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn a_changed_argument_names_queue_argument_values_and_migration() {
    let t = TestTopology::fast("changed-arg");
    let conn = connect().await;
    t.apply(&conn).await;

    let changed = support::FAST_TOPOLOGY.replace("delivery_limit = 4", "delivery_limit = 9");
    let path = t.dir().join("changed.toml");
    std::fs::write(&path, changed).unwrap();
    let out = warren()
        .args(["topology", "apply", "-f"])
        .arg(&path)
        .args(["--prefix", &t.prefix])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let work = t.queue("work");
    assert!(
        all.contains(&format!(
            "queue '{work}': argument 'x-delivery-limit' is 9 in the topology file but 4 on the broker"
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!("rabbitmqctl delete_queue {work}")),
        "{all}"
    );
    assert!(
        !all.contains("PRECONDITION_FAILED"),
        "bare broker error leaked: {all}"
    );
    t.cleanup(&conn).await;
}

#[test]
fn show_prints_every_derived_name_and_json_is_parseable() {
    let t = TestTopology::fast("show");
    let out = warren()
        .args(["topology", "show"])
        .args(t.args())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let work = t.queue("work");
    for name in [
        work.clone(),
        format!("{work}.retry.300ms"),
        format!("{work}.retry.600ms"),
        format!("{work}.dlq"),
        format!("{}ev.dlq", t.prefix),
    ] {
        assert!(text.contains(&name), "missing {name} in:\n{text}");
    }
    assert!(text.contains("x-delivery-limit=4"), "{text}");

    let out = warren()
        .args(["topology", "show", "-o", "json"])
        .args(t.args())
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["exchanges"][0]["kind"], "topic");
    assert!(
        plan["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["role"] == "dead_letter")
    );
}

#[test]
fn export_writes_loadable_definitions() {
    let t = TestTopology::fast("export");
    let file = t.dir().join("definitions.json");
    warren()
        .args(["topology", "export", "--vhost", "trading", "--out"])
        .arg(&file)
        .args(t.args())
        .assert()
        .success();
    let defs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let queues = defs["queues"].as_array().unwrap();
    assert_eq!(queues.len(), t.topology.plan().queues.len());
    assert!(
        queues
            .iter()
            .all(|q| q["vhost"] == "trading" && q["durable"] == true)
    );
    let work = queues
        .iter()
        .find(|q| q["name"] == t.queue("work"))
        .unwrap();
    assert_eq!(work["arguments"]["x-queue-type"], "quorum");
    assert_eq!(work["arguments"]["x-delivery-limit"], 4);
}

#[test]
fn a_bad_file_names_file_queue_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        support::FAST_TOPOLOGY.replace("name = \"other\"", "name = \"other\"\nttl = \"5s\""),
    )
    .unwrap();
    let out = warren()
        .args(["topology", "show", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:20:1: queues[1].ttl: queue 'other': unknown field 'ttl'",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn an_unreachable_broker_is_one_clear_line_without_the_password() {
    let out = warren()
        .env("AMQP_URL", "amqp://bob:s3cr3t-canary@127.0.0.1:1/%2f")
        .args(["topology", "apply"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to RabbitMQ at amqp://bob:***@127.0.0.1:1/"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t-canary"), "{err}");
}

#[test]
fn a_wrong_password_is_warrens_one_line_and_no_lapin_error() {
    // lapin's I/O thread logs its error while the process exits: a race, so try several times.
    for _ in 0..8 {
        let out = warren()
            .env("AMQP_URL", "amqp://guest:wrong-canary@127.0.0.1:5672/%2f")
            .args(["topology", "apply"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line, warren's own:\n{err}");
        assert!(
            lines[0].contains("amqp://guest:***@127.0.0.1:5672"),
            "{err}"
        );
        assert!(lines[0].contains("ACCESS_REFUSED"), "{err}");
        assert!(!err.contains("lapin") && !err.contains("backoff"), "{err}");
        assert!(!err.contains("wrong-canary"), "{err}");
    }
}

#[tokio::test]
async fn the_password_never_reaches_the_logs_even_at_trace_level() {
    let user = format!("warren-canary-{}", std::process::id());
    let password = format!("Canary{}Secret", ulid::Ulid::generate());
    support::rabbitmqctl(&["add_user", &user, &password]);
    support::rabbitmqctl(&["set_permissions", &user, ".*", ".*", ".*"]);
    let t = TestTopology::fast("canary");
    let url = format!("amqp://{user}:{password}@127.0.0.1:5672/%2f");
    let out = warren()
        .env("AMQP_URL", &url)
        .env(
            "RUST_LOG",
            "trace,lapin=trace,lapin::io_loop=trace,amq_protocol=trace",
        )
        .args(["topology", "apply", "-o", "json"])
        .args(t.args())
        .output()
        .unwrap();
    let conn = connect().await;
    t.cleanup(&conn).await;
    support::rabbitmqctl(&["delete_user", &user]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let as_bytes = password
        .bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(!all.contains(&password), "password in the output");
    assert!(!all.contains(&as_bytes), "password bytes in the output");
    assert!(
        !all.contains("lapin::io_loop"),
        "lapin's frame tracing is not capped"
    );
}
