//! Test 6: the `dlq` commands' table and JSON output, run through the binary: list, show
//! (warren and broker dead letters, binary bodies), export, and errors that name the thing.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::dlq::{
    DLQ_TOPOLOGY, Dead, exceed_delivery_limit, publish_dead, publish_to_queue, warren, warren_json,
    warren_t, with_topology,
};
use crate::support::{TestTopology, connect, queue_len};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_and_export_print_tables_and_json() {
    let t = TestTopology::new("dlq-cli", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let work_dlq = t.topology.queue("work").unwrap().dlq();
    let long_error = format!(
        "HTTP 422 from https://api.example/orders: {}",
        "x".repeat(200)
    );
    let dead = vec![
        Dead::new("test.a", "permanent", &long_error, &work),
        Dead::new("test.b", "exhausted", "timeout (after 3 attempts)", &work),
    ];
    publish_dead(&conn, &t, &dead).await;
    // An invalid frame from the bridge: raw bytes, no origin queue, in the ingress DLQ.
    let mut frame = Dead::new(
        "test.a",
        "invalid",
        "not JSON: expected value at line 1",
        &work,
    );
    frame.body = b"\xff\xfe not an envelope".to_vec();
    frame.route = t.topology.events_exchange.clone();
    frame.origin = String::new();
    publish_dead(&conn, &t, std::slice::from_ref(&frame)).await;
    let crashed = publish_to_queue(&conn, &work, "test.crash", 1)
        .await
        .remove(0);
    exceed_delivery_limit(&work).await;
    support::eventually(
        std::time::Duration::from_secs(30),
        "the crash lands in the DLQ",
        || async { queue_len(&conn, &work_dlq).await == 3 },
    )
    .await;

    // list: a table with one row per dead letter and the error cut short.
    let (code, table, err) = warren_t(&t, &["dlq", "list"]);
    assert_eq!(code, 0, "{err}");
    let header: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap()
        .split('│')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "dlq",
            "#",
            "id",
            "type",
            "agent",
            "kind",
            "attempts",
            "first failed",
            "last failed",
            "origin",
            "error",
        ],
        "{table}"
    );
    assert!(table.contains(&dead[0].id) && table.contains(&crashed) && table.contains(&frame.id));
    assert!(
        table.contains("delivery_limit")
            && table.contains("exhausted")
            && table.contains("invalid")
    );
    assert!(
        table.contains('…') && !table.contains(&"x".repeat(100)),
        "long errors are truncated"
    );
    assert!(err.contains("4 dead letters shown of 4"), "{err}");

    // list -o ndjson: one object per line.
    let (code, nd, _) = warren_t(&t, &["dlq", "list", "-q", "work", "-o", "ndjson"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0]["error"],
        long_error.as_str(),
        "JSON keeps the whole error"
    );

    // Filters: --grep looks at the error text, --since at the last failure, --type at types.
    let grep = warren_json(&t, &["dlq", "list", "--grep", "TIMEOUT"]);
    assert_eq!(grep["items"].as_array().unwrap().len(), 1);
    let recent = warren_json(&t, &["dlq", "list", "--since", "1h", "--type", "test.*"]);
    assert_eq!(recent["items"].as_array().unwrap().len(), 4);
    let crash = warren_json(
        &t,
        &[
            "dlq",
            "list",
            "--type",
            "test.crash",
            "--kind",
            "delivery_limit",
        ],
    );
    assert_eq!(crash["items"][0]["id"], crashed.as_str());

    // show: a warren dead letter, with pretty body and headers.
    let (code, shown, err) = warren_t(&t, &["dlq", "show", &dead[1].id]);
    assert_eq!(code, 0, "{err}");
    eprintln!("{shown}");
    assert!(
        shown.contains(&format!("dead letter {} in {work_dlq}", dead[1].id)),
        "{shown}"
    );
    assert!(shown.contains("x-warren-error-kind") && shown.contains("timeout (after 3 attempts)"));
    assert!(shown.contains("traceparent") && shown.contains("message_id"));
    assert!(
        shown.contains("\n  \"eventId\": "),
        "the body is pretty-printed: {shown}"
    );

    // show: the broker's dead letter, with x-death as a table.
    let (code, shown, _) = warren_t(&t, &["dlq", "show", &crashed]);
    assert_eq!(code, 0);
    eprintln!("{shown}");
    assert!(
        shown.contains("x-death (most recent first)") && shown.contains("delivery_limit"),
        "{shown}"
    );

    // show -o json: the binary frame's body is base64; position lookup works too.
    let v = warren_json(&t, &["dlq", "show", &frame.id]);
    assert_eq!(v[0]["kind"], "invalid");
    assert_eq!(v[0]["origin"], serde_json::Value::Null);
    assert_eq!(v[0]["body"]["encoding"], "base64");
    assert_eq!(v[0]["headers"]["x-warren-error-kind"], "invalid");
    let v = warren_json(&t, &["dlq", "show", "#2", "-q", "work"]);
    assert_eq!(v[0]["id"], dead[1].id.as_str());

    // export: NDJSON with headers and body, non-destructive.
    let out = t.dir().join("export.ndjson");
    let out_arg = out.display().to_string();
    let (code, stdout, err) = warren_t(
        &t,
        &[
            "dlq",
            "export",
            "--kind",
            "permanent",
            "--kind",
            "exhausted",
            "--out",
            &out_arg,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(stdout.is_empty());
    let exported: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), 2);
    assert_eq!(exported[0]["body"]["encoding"], "json");
    assert_eq!(exported[0]["body"]["value"]["eventId"], dead[0].id.as_str());
    assert_eq!(
        exported[0]["headers"]["x-warren-origin-queue"],
        work.as_str()
    );
    assert_eq!(exported[1]["properties"]["message_id"], dead[1].id.as_str());
    assert_eq!(
        queue_len(&conn, &work_dlq).await,
        3,
        "export is non-destructive"
    );

    // Errors name the thing.
    let (code, _, err) = warren_t(&t, &["dlq", "show", "01NOPE"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no dead letter '01NOPE'") && err.contains(&work_dlq),
        "{err}"
    );
    let (code, _, err) = warren_t(&t, &["dlq", "list", "-q", "nosuch"]);
    assert_ne!(code, 0);
    assert!(err.contains("'nosuch'") && err.contains(&work_dlq), "{err}");
    let (code, _, err) = warren_t(&t, &["dlq", "list", "--kind", "sad"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("delivery_limit"),
        "the valid kinds are listed: {err}"
    );
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dlq_is_named_with_the_fix() {
    let t = TestTopology::new("dlq-cli-missing", DLQ_TOPOLOGY);
    let (code, _, err) = warren_t(&t, &["dlq", "list", "-q", "work"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("does not exist") && err.contains("warren topology apply"),
        "{err}"
    );
}

/// `show` of an id it cannot find, when another consumer took some of the DLQ from under it,
/// does not claim the id is absent: exit 3 and "(DLQ read incomplete)". The DLQ is longer than
/// one consumer chunk (10,000), so its tail is still in the queue while `show` reads the first
/// chunk; a second consumer takes that tail as soon as `show`'s consumer appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_says_when_it_could_not_read_the_dlq_whole() {
    let t = TestTopology::new("dlq-cli-partial", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..10_100)
        .map(|_| Dead::new("test.s", "permanent", "boom", &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;

    let args = with_topology(&t, &["dlq", "show", "01NOPE", "-q", "work"]);
    let show = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        warren(&refs)
    });
    let thief = conn.create_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = thief
            .queue_declare(
                dlq.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the DLQ exists");
        if q.consumer_count() > 0 {
            break;
        }
        assert!(
            !show.is_finished() && Instant::now() < deadline,
            "show's consumer never appeared"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Hold them unacked, as another operator's tool would.
    let mut held = vec![];
    while let Some(m) = thief
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        held.push(m);
    }
    assert!(!held.is_empty(), "nothing was left to take from under show");
    let out = show.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("no dead letter '01NOPE'") && err.contains("(DLQ read incomplete)"),
        "{err}"
    );
    drop(held);
    let _ = thief.close(200, "done".into()).await;
    // The broker requeues a closed channel's messages just after close-ok.
    support::eventually(
        Duration::from_secs(30),
        "everything is back once the other consumer lets go",
        || async { queue_len(&conn, &dlq).await == 10_100 },
    )
    .await;
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_check_status_says_when_a_dead_letters_effect_is_done() {
    let sim = support::downstream::Sim::start(warren_sim::api::ApiSettings::default()).await;
    let t = TestTopology::new("dlq-check-status", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let live = t.queue("live");
    let live_dlq = t.topology.queue("live").unwrap().dlq();
    // Two ticks the broker expires (200 ms TTL, nobody consuming); the first one's effect is
    // done downstream, as when a worker's call committed and its ack was lost.
    let ids = publish_to_queue(&conn, &live, "live.tick", 2).await;
    let key = |id: &str| warren::envelope::idempotency_key(id, "http", "post");
    let posted = sim
        .http()
        .post(sim.url("/events"))
        .header("idempotency-key", key(&ids[0]))
        .json(&serde_json::json!({"eventId": ids[0]}))
        .send()
        .await
        .expect("sim answers");
    assert_eq!(posted.status(), 200);
    support::eventually(Duration::from_secs(20), "both expired", || async {
        queue_len(&conn, &live_dlq).await == 2
    })
    .await;

    let template = sim.url("/operations/{key}");
    let check = |id: &str| {
        warren_json(
            &t,
            &["dlq", "show", id, "-q", "live", "--check-status", &template],
        )
    };
    let done = check(&ids[0]);
    assert_eq!(done[0]["kind"], "expired", "{done}");
    assert_eq!(done[0]["effect"]["status"], "done", "{done}");
    assert_eq!(done[0]["effect"]["key"], key(&ids[0]).as_str());
    let not_done = check(&ids[1]);
    assert_eq!(not_done[0]["effect"]["status"], "not_done", "{not_done}");
    assert_eq!(not_done[0]["effect"]["detail"], "not found", "{not_done}");
    let (code, table, err) = warren_t(
        &t,
        &[
            "dlq",
            "show",
            &ids[0],
            "-q",
            "live",
            "--check-status",
            &template,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("done downstream"), "{table}");
    // Without the flag nothing is asked, and nothing is said.
    let plain = warren_json(&t, &["dlq", "show", &ids[0], "-q", "live"]);
    assert!(plain[0].get("effect").is_none(), "{plain}");
    assert_eq!(sim.requests(Some(&key(&ids[0]))).await.len(), 1 + 2);
    // A template without {key} is a usage error, named.
    let (code, _, err) = warren_t(
        &t,
        &[
            "dlq",
            "show",
            &ids[0],
            "--check-status",
            "http://127.0.0.1:1/ops",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--check-status") && err.contains("{key}"),
        "{err}"
    );
    // The DLQ is as it was.
    assert_eq!(queue_len(&conn, &live_dlq).await, 2);
    t.cleanup(&conn).await;
}
