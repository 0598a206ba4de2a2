//! Test 5: `dlq stats` collapses errors that differ only in ids and numbers into one row.

use crate::support::dlq::{DLQ_TOPOLOGY, Dead, publish_dead, warren_json, warren_t};
use crate::support::{TestTopology, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_collapse_errors_that_differ_only_in_ids() {
    let t = TestTopology::new("dlq-stats", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let mut dead = vec![];
    for i in 0..50 {
        let order = ulid::Ulid::generate();
        let error = format!(
            "HTTP 422: order {order} rejected for agent pf_agent_{i}: 'qty' below {}.5",
            i + 1
        );
        dead.push(Dead::new("test.order", "permanent", &error, &work));
    }
    for i in 0..20 {
        let error = format!(
            "timeout after {}ms calling /orders/3f2b8c1e-9d4a-4b7e-8f00-{:012x}",
            1000 + i,
            i
        );
        dead.push(Dead::new("test.order", "exhausted", &error, &work));
    }
    for _ in 0..5 {
        dead.push(Dead::new(
            "test.wallet",
            "permanent",
            "insufficient balance",
            &work,
        ));
    }
    publish_dead(&conn, &t, &dead).await;

    let stats = warren_json(&t, &["dlq", "stats", "-q", "work"]);
    assert_eq!(stats["total"], 75);
    let groups = stats["groups"].as_array().unwrap();
    let summary: Vec<(u64, &str, &str)> = groups
        .iter()
        .map(|g| {
            (
                g["count"].as_u64().unwrap(),
                g["kind"].as_str().unwrap(),
                g["fingerprint"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                50,
                "permanent",
                "HTTP 422: order <ulid> rejected for agent pf_agent_<n>: <str> below <n>"
            ),
            (
                20,
                "exhausted",
                "timeout after <n>ms calling /orders/<uuid>"
            ),
            (5, "permanent", "insufficient balance"),
        ]
    );
    assert_eq!(stats["by_type"]["test.order"], 70);
    assert_eq!(stats["by_kind"]["permanent"], 55);
    assert_eq!(stats["by_origin"][&work], 75);

    let (code, table, err) = warren_t(&t, &["dlq", "stats", "-q", "work"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("HTTP 422: order <ulid>"))
        .collect();
    assert_eq!(
        rows.len(),
        1,
        "one row for 50 errors differing only in ids:\n{table}"
    );
    assert!(rows[0].contains(" 50 "), "{}", rows[0]);
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_failures_group_by_status_method_and_path() {
    let t = TestTopology::new("dlq-stats-http", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let mut dead = vec![];
    for (i, (path, status)) in [("events", 503), ("events", 422), ("orders", 503)]
        .iter()
        .enumerate()
    {
        for n in 0..3 {
            let error = format!(
                r#"POST http://127.0.0.1:{}/{path}: {status} {{"error":"e{n}"}}"#,
                40000 + i * 10 + n
            );
            dead.push(Dead::new("test.order", "transient", &error, &work));
        }
    }
    publish_dead(&conn, &t, &dead).await;
    let stats = warren_json(&t, &["dlq", "stats", "-q", "work"]);
    let mut groups: Vec<(u64, String)> = stats["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["count"].as_u64().unwrap(),
                g["fingerprint"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    groups.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        groups,
        vec![
            (
                3,
                "POST http://<n>:<n>/events: 422 {<str>:<str>}".to_string()
            ),
            (
                3,
                "POST http://<n>:<n>/events: 503 {<str>:<str>}".to_string()
            ),
            (
                3,
                "POST http://<n>:<n>/orders: 503 {<str>:<str>}".to_string()
            ),
        ],
        "one group per status and path"
    );
    t.cleanup(&conn).await;
}
