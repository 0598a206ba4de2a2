//! `archive read`: a time window, an offset window and filters return exactly their events,
//! in stream order, each once (a second publish of an event is not returned again).

use std::collections::BTreeSet;

use super::{archived, publish_all, rfc3339, series, warren_archive};
use crate::support::now_ms;

fn ids(out: &std::process::Output) -> Vec<(u64, String)> {
    assert!(
        out.status.success(),
        "archive read failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("ndjson line");
            (
                v["offset"].as_u64().expect("offset"),
                v["event"]["eventId"].as_str().expect("eventId").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn read_returns_a_window_exactly_once_each_and_in_order() {
    let (t, conn) = archived("archive-read").await;
    let start = now_ms() - 120_000;
    let events = series(start, 30);
    publish_all(&conn, &t, &events).await;
    // The bridge's overlap: event 12 published a second time, later in the stream.
    publish_all(&conn, &t, &events[12..13]).await;
    let want: Vec<String> = events[10..20].iter().map(|e| e.1.clone()).collect();

    let out = warren_archive(
        &t,
        &[
            "read",
            "--from",
            &rfc3339(start + 10_000),
            "--to",
            &rfc3339(start + 20_000),
        ],
    );
    let got = ids(&out);
    assert_eq!(got.iter().map(|g| g.1.clone()).collect::<Vec<_>>(), want);
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "offsets ascend: {got:?}"
    );

    // By offset, both ends included; filtered by agent.
    let out = warren_archive(&t, &["read", "--from", "4", "--to", "9", "--agent", "a2"]);
    let got: Vec<String> = ids(&out).into_iter().map(|g| g.1).collect();
    let want: Vec<String> = [5, 7, 9].iter().map(|&i| events[i].1.clone()).collect();
    assert_eq!(got, want);

    // Everything from the first offset: 30 distinct events, the duplicate dropped.
    let out = warren_archive(&t, &["read", "--from", "first", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json array");
    let distinct: BTreeSet<&str> = all
        .iter()
        .map(|v| v["event"]["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(all.len(), 30);
    assert_eq!(distinct.len(), 30);
    t.cleanup(&conn).await;
}
