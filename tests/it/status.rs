//! `warren status` against the real broker and its management API: figures per queue, the
//! fallback when the API is unreachable or refuses us, missing queues, and `--watch`.

use crate::support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::dlq::{DLQ_TOPOLOGY, Dead, publish_dead, publish_to_queue, warren_t};
use crate::support::{TestTopology, amqp_url, connect};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

fn status_json(t: &TestTopology, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec!["status", "-o", "json"];
    let management;
    if let Some(node) = support::node::current()
        && !extra.contains(&"--management-url")
    {
        management = node.management_url.clone();
        args.extend(["--management-url", management.as_str()]);
    }
    args.extend(extra);
    let (code, out, err) = warren_t(t, &args);
    assert_eq!(code, 0, "{err}");
    (
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
        err,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_ready_unacked_consumers_tiers_and_dlq_depth() {
    // Unacked counts come from the management plugin, which the suite's own node runs.
    let _node = support::node::use_throwaway_node();
    let t = TestTopology::new("status", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    publish_to_queue(&conn, &work, "test.s", 5).await;
    publish_dead(
        &conn,
        &t,
        &(0..3)
            .map(|_| Dead::new("test.s", "permanent", "x", &work))
            .collect::<Vec<_>>(),
    )
    .await;
    // Hold two deliveries unacked.
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            work.as_str().into(),
            "holder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    consumer.next().await.unwrap().unwrap();
    consumer.next().await.unwrap().unwrap();
    // And two dead letters, as `dlq list` or `replay` holds them while it reads: still there.
    let dlq_ch = conn.create_channel().await.unwrap();
    dlq_ch
        .basic_qos(2, BasicQosOptions::default())
        .await
        .unwrap();
    let mut reader = dlq_ch
        .basic_consume(
            t.topology.queue("work").unwrap().dlq().as_str().into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    reader.next().await.unwrap().unwrap();
    reader.next().await.unwrap().unwrap();

    // Management statistics lag a few seconds behind.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (s, err) = status_json(&t, &[]);
        assert!(
            !err.contains("warning"),
            "the management API is reachable here: {err}"
        );
        if s["queues"][0]["unacked"] == 2 && s["queues"][0]["dlq"]["unacked"] == 2 {
            break s;
        }
        assert!(Instant::now() < deadline, "unacked never reached 2: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let q = &status["queues"][0];
    assert_eq!(q["name"], work.as_str());
    assert_eq!(q["ready"], 3);
    assert_eq!(q["consumers"], 1);
    assert_eq!(q["dlq"]["ready"], 1);
    assert_eq!(
        q["dlq"]["messages"], 3,
        "the DLQ's depth counts what a reader holds"
    );
    let tiers: Vec<(&str, u64)> = q["retry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["delay"].as_str().unwrap(), t["ready"].as_u64().unwrap()))
        .collect();
    assert_eq!(tiers, vec![("300ms", 0), ("600ms", 0)]);
    assert_eq!(status["queues"][1]["name"], t.queue("live").as_str());
    assert_eq!(status["ingress_dlq"]["ready"], 0);
    assert_eq!(status["ingress_dlq"]["messages"], 0);
    assert_eq!(status["management"], true);

    let management = support::node::current().map(|n| n.management_url.clone());
    let (code, table, err) = warren_t(
        &t,
        &["status", "--management-url", management.as_deref().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let row = table
        .lines()
        .find(|l| l.contains(&format!("│ {work} ")))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split('│').map(str::trim).collect();
    assert_eq!(
        cells[2..7],
        ["3", "2", "1", "300ms: 0, 600ms: 0", "3 (2 unacked)"],
        "{table}"
    );
    assert!(table.contains("(bridge)"), "{table}");
    drop(consumer);
    drop(reader);
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_management_api_unacked_is_unknown_and_said_so() {
    // A reachable management API for the wrong-credentials case: the suite's own node's.
    let _node = support::node::use_throwaway_node();
    let t = TestTopology::new("status-nomgmt", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let (s, err) = status_json(&t, &["--management-url", "http://127.0.0.1:1"]);
    assert!(err.contains("warning") && err.contains("unacked"), "{err}");
    assert_eq!(s["management"], false);
    assert_eq!(s["queues"][0]["unacked"], serde_json::Value::Null);
    assert_eq!(s["queues"][0]["ready"], 0, "AMQP figures are still there");
    assert_eq!(s["queues"][0]["dlq"]["unacked"], serde_json::Value::Null);
    assert_eq!(
        s["queues"][0]["dlq"]["messages"], 0,
        "the DLQ's depth is its ready count"
    );

    // Wrong credentials: refused, said so, and the password is never printed.
    let management = support::node::current().unwrap().management_url.clone();
    let wrong = management.replace("http://", "http://nobody:s3cr3t-canary@");
    let (s, err) = status_json(&t, &["--management-url", &wrong]);
    assert!(err.contains("401") && err.contains("nobody"), "{err}");
    assert!(!err.contains("s3cr3t-canary"), "{err}");
    assert_eq!(s["management"], false);
    let (code, table, _) = warren_t(&t, &["status", "--management-url", "http://127.0.0.1:1"]);
    assert_eq!(code, 0);
    assert!(
        table.contains(" ? "),
        "unknown unacked shows as '?': {table}"
    );
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_not_declared_show_as_missing() {
    let t = TestTopology::new("status-missing", DLQ_TOPOLOGY);
    let (code, table, err) = warren_t(&t, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("missing"), "{table}");
    let (s, _) = status_json(&t, &[]);
    assert_eq!(s["queues"][0]["ready"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_survives_a_dropped_connection_and_stops_on_ctrl_c() {
    let t = TestTopology::new("status-watch", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let mut args = vec!["status".to_string(), "--watch".into(), "200ms".into()];
    args.extend(t.args());
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(&args)
        .env("AMQP_URL", amqp_url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes as it writes: a frame every 200 ms fills a pipe within seconds (a slow
    // rabbitmqctl below is enough), and a blocked writer would never see the Ctrl-C.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The broker drops the connection: --watch reports it and reconnects.
    if support::close_connections_of(child.id()) == 0 {
        let _ = child.kill();
        panic!("status --watch had no connection to drop");
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let out = stdout.join().unwrap();
    let err = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends --watch cleanly: {err}");
    let frames = out.matches("retry tiers").count();
    assert!(
        frames >= 8,
        "redrawn every 200ms, also after the connection drop: {frames} frames\n{out}"
    );
    assert!(out.contains("Ctrl-C to stop"));
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_a_reader_just_let_go_of_is_not_counted_twice() {
    let _node = support::node::use_throwaway_node();
    let t = TestTopology::new("status-let-go", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dead: Vec<Dead> = (0..300)
        .map(|_| Dead::new("test.s", "permanent", "x", &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;
    // A reader (as `dlq list` is) holds 100 of the 300 until the management API has seen it.
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut reader = ch
        .basic_consume(
            t.topology.queue("work").unwrap().dlq().as_str().into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..100 {
        reader.next().await.unwrap().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, _) = status_json(&t, &[]);
        if s["queues"][0]["dlq"]["unacked"] == 100 {
            assert_eq!(s["queues"][0]["dlq"]["messages"], 300, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "unacked never reached 100: {s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The reader lets go: all 300 are ready at once, while the management API's sample still
    // says 100 unacked for a few seconds.
    ch.close(200, "done".into()).await.unwrap();
    drop(reader);
    let (s, _) = status_json(&t, &[]);
    let dlq = &s["queues"][0]["dlq"];
    assert_eq!(dlq["ready"], 300, "{s}");
    assert_eq!(
        dlq["messages"], 300,
        "a fresh ready count plus a stale unacked one: {dlq}"
    );
    t.cleanup(&conn).await;
}
