//! The README's least-privilege users, one per role, are enough to run the fleet: an admin that
//! applies the topology and operates the DLQs, a bridge that can only publish events and
//! invalid frames, and a worker that can only consume its queue and republish retries and dead
//! letters. Each role runs as the real binary with its own user; nothing is lost on the way.

use crate::support;

use std::process::Command;
use std::time::Duration;

use crate::support::bridge::{Sim, bridge_env, drain_ids};
use crate::support::{TestTopology, Warren, connect, eventually, queue_len, rabbitmqctl};
use serde_json::json;

/// Events the sim emits.
const EVENTS: usize = 120;

const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
prefetch = 20
max_attempts = 2
retry_delays = ["200ms"]
delivery_limit = 4
expires = "10m"

[[queues]]
name = "work"
bind = ["market.*", "wallet.*", "escrow.*"]
"#;

/// RabbitMQ users created for one test and deleted when it ends.
struct Users(Vec<String>);

impl Users {
    /// Adds `name` with `password` and (configure, write, read) permissions on `/`.
    fn add(&mut self, name: &str, password: &str, perms: [&str; 3]) {
        rabbitmqctl(&["add_user", name, password]);
        self.0.push(name.to_string());
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            name,
            perms[0],
            perms[1],
            perms[2],
        ]);
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for u in &self.0 {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_user", u])
                .output();
        }
    }
}

fn url(user: &str, password: &str) -> String {
    format!("amqp://{user}:{password}@127.0.0.1:5672/%2f")
}

/// Runs `warren <args>` as `user` and returns (exit code, stdout, stderr).
fn warren_as(amqp_url: &str, t: &TestTopology, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .args(t.args())
        .env("AMQP_URL", amqp_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run warren");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_least_privilege_user_per_role_runs_the_fleet() {
    let t = TestTopology::new("perms", TOPOLOGY);
    let p = regex_escape(&t.prefix);
    let tag = t.prefix.trim_end_matches('.').to_string();
    let mut users = Users(vec![]);
    let (admin, bridge, worker) = (
        format!("{tag}-admin"),
        format!("{tag}-bridge"),
        format!("{tag}-worker"),
    );
    // The README's regexes, with the test's prefix in place of `pf.`.
    users.add(
        &admin,
        "admin-pw",
        [
            &format!("^{p}.*"),
            &format!("^(amq\\.default|{p}.*)$"),
            &format!("^{p}.*"),
        ],
    );
    users.add(
        &bridge,
        "bridge-pw",
        ["^$", &format!("^{p}ev(\\.dlx)?$"), "^$"],
    );
    users.add(
        &worker,
        "worker-pw",
        [
            "^$",
            &format!("^(amq\\.default|{p}ev\\.dlx)$"),
            &format!("^{p}work$"),
        ],
    );
    let (admin_url, bridge_url, worker_url) = (
        url(&admin, "admin-pw"),
        url(&bridge, "bridge-pw"),
        url(&worker, "worker-pw"),
    );

    // Roles cannot do each other's jobs.
    let (code, _, err) = warren_as(&bridge_url, &t, &["topology", "apply"]);
    assert_ne!(code, 0, "the bridge user must not declare the topology");
    assert!(
        err.contains("ACCESS_REFUSED") || err.contains("access"),
        "{err}"
    );
    let (code, out, err) = warren_as(&admin_url, &t, &["topology", "apply"]);
    assert_eq!(code, 0, "admin applies the topology: {out}{err}");

    // The bridge publishes the sim's stream (malformed frames included) with its own user.
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &[
            "--events",
            &EVENTS.to_string(),
            "--rate",
            "0",
            "--seed",
            "5",
            "--malformed-rate",
            "0.05",
        ],
    );
    let mut env = bridge_env();
    env.push(("AMQP_URL", &bridge_url));
    let mut args: Vec<String> = vec!["bridge".into(), "--url".into(), sim.url()];
    args.extend(t.args());
    let mut b = Warren::spawn(&args, &t.dir().join("bridge.log"), &env);

    // Events the chaos handler fails: one for good, one until it runs out of attempts.
    let conn = connect().await;
    let failing = [
        support::publish_events(
            &conn,
            &t,
            "escrow.released",
            json!({"chaos": {"action": "permanent"}}),
            1,
        )
        .await,
        support::publish_events(
            &conn,
            &t,
            "escrow.released",
            json!({"chaos": {"action": "transient"}}),
            1,
        )
        .await,
    ]
    .concat();

    // The worker consumes, retries through the tier and dead-letters, with its own user.
    let record = t.dir().join("record");
    let mut args: Vec<String> = vec![
        "worker".into(),
        "-q".into(),
        "work".into(),
        "--handler".into(),
        "chaos".into(),
        "--record".into(),
        record.display().to_string(),
    ];
    args.extend(t.args());
    let mut w = Warren::spawn(
        &args,
        &t.dir().join("worker.log"),
        &[("AMQP_URL", &worker_url)],
    );

    let dlq = t.topology.queue("work").unwrap().dlq();
    let unrouted = t.topology.unrouted_queue();
    let ingress = t.topology.ingress_dlq();
    let handled = || -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect()
    };
    eventually(Duration::from_secs(60), "every event handled", || {
        let emitted = sim.ledger().ids.len();
        let handled = handled().len();
        let (conn, dlq, unrouted) = (&conn, dlq.clone(), unrouted.clone());
        async move {
            let kept = queue_len(conn, &unrouted).await as usize;
            emitted == EVENTS && handled + kept == EVENTS + 2 && queue_len(conn, &dlq).await == 2
        }
    })
    .await;
    assert!(b.running(), "the bridge runs as its own user");
    assert!(w.running(), "the worker runs as its own user");

    // Every emitted event is in exactly one place: handled by the worker or kept as unrouted
    // (job.* is bound by no queue); malformed frames reached the ingress DLQ.
    let ledger = sim.ledger();
    let handled = handled();
    let kept: std::collections::BTreeSet<String> =
        drain_ids(&conn, &unrouted).await.into_iter().collect();
    assert!(!kept.is_empty(), "job.* events are kept as unroutable");
    for id in &failing {
        assert!(handled.contains(id), "{id}: the worker never ran it");
    }
    for id in &ledger.ids {
        assert!(
            handled.contains(id) ^ kept.contains(id),
            "{id} is neither handled nor kept, or both"
        );
    }
    if ledger.malformed.values().sum::<usize>() > 0 {
        assert!(
            queue_len(&conn, &ingress).await > 0,
            "invalid frames dead-lettered"
        );
    }

    // The admin operates the DLQ: list, then replay both letters to the work queue.
    let (code, out, err) = warren_as(&admin_url, &t, &["dlq", "list", "-q", "work", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = listed["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {out}"))
        .iter()
        .filter_map(|l| l["kind"].as_str())
        .collect();
    assert_eq!(kinds.len(), 2, "{out}");
    assert!(
        kinds.contains(&"permanent") && kinds.contains(&"exhausted"),
        "{out}"
    );
    let (code, out, err) = warren_as(&admin_url, &t, &["dlq", "replay", "-q", "work", "-y"]);
    assert_eq!(code, 0, "admin replays: {out}{err}");
    eventually(
        Duration::from_secs(30),
        "replayed letters back in the DLQ",
        || {
            let (conn, dlq) = (&conn, dlq.clone());
            async move { queue_len(conn, &dlq).await == 2 }
        },
    )
    .await;

    // Nothing printed a password.
    for log in [b.log_text(), w.log_text()] {
        for pw in ["admin-pw", "bridge-pw", "worker-pw"] {
            assert!(!log.contains(pw), "a password in a log");
        }
    }
    b.kill9();
    w.kill9();
    t.cleanup(&conn).await;
    drop(users);
}

/// `s` with regex metacharacters escaped, for RabbitMQ permission patterns.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if ".^$*+?()[]{}|\\".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}
