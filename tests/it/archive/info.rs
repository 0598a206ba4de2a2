//! `warren archive info` and the archive's line in `warren status`: the ends (offset and event
//! time), the message count, the size from the management API (unknown, and said so, without
//! it) and the retention, human and `-o json`.

use std::time::Duration;

use super::{TOPOLOGY, archived, publish_all, series, warren_archive};
use crate::support::dlq::warren_t;
use crate::support::{self, TestTopology, now_ms};

fn stream(t: &TestTopology) -> String {
    t.topology.archive.as_ref().unwrap().name.clone()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    support::json_report(out, "warren archive info -o json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_shows_the_ends_count_size_and_retention() {
    // The size comes from the management plugin, which the suite's own node runs.
    let _node = support::node::use_throwaway_node();
    let management = support::node::current().unwrap().management_url.clone();
    let (t, conn) = archived("archive-info").await;
    let start = now_ms() - 100_000;
    let events = series(start, 25);
    publish_all(&conn, &t, &events).await;

    let with_api = [
        "info",
        "-o",
        "json",
        "--management-url",
        management.as_str(),
    ];
    // The management API's figures lag the stream by its statistics interval (5 s).
    let mut info = json(&warren_archive(&t, &with_api));
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while info["bytes"].is_null() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        info = json(&warren_archive(&t, &with_api));
    }
    assert_eq!(info["stream"], stream(&t).as_str());
    assert_eq!(info["first"]["offset"], 0);
    assert_eq!(info["first"]["ts"], start);
    assert_eq!(info["last"]["offset"], 24);
    assert_eq!(info["last"]["ts"], start + 24_000);
    assert_eq!(info["messages"], 25);
    assert_eq!(info["max_age_secs"], 3600);
    assert_eq!(info["max_bytes"], 100_000_000);
    assert_eq!(info["segment_bytes"], 1_000_000);
    // RabbitMQ 3.10 reports no byte count for a stream (3.13 and later do): either a figure
    // that holds the bodies, or 'unknown' with the reason.
    let size = match info["bytes"].as_u64() {
        Some(bytes) => {
            let bodies: u64 = events.iter().map(|e| e.2.len() as u64).sum();
            assert!(
                bytes >= bodies,
                "{bytes} bytes for {bodies} of bodies: {info}"
            );
            assert_eq!(info["bytes_source"], "the management API");
            format!("│ size          │ {bytes} bytes (the management API)")
        }
        None => {
            let why = info["bytes_source"].as_str().unwrap();
            assert!(
                why.starts_with("unknown (the management API gives no byte count for this stream"),
                "{info}"
            );
            format!("│ size          │ bytes {why}")
        }
    };

    // The management API unreachable: the size is unknown and says why; the rest is exact.
    let info = json(&warren_archive(
        &t,
        &[
            "info",
            "-o",
            "json",
            "--management-url",
            "http://127.0.0.1:1",
        ],
    ));
    assert!(info["bytes"].is_null(), "{info}");
    let why = info["bytes_source"].as_str().unwrap();
    assert!(
        why.starts_with("unknown (management API at http://127.0.0.1:1/"),
        "{why}"
    );
    assert_eq!(info["messages"], 25);

    // Human.
    let out = warren_archive(&t, &["info", "--management-url", management.as_str()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "│ messages ".to_string(),
        size,
        "│ first ".to_string(),
        "offset 24, ".to_string(),
        "│ max age       │ 3600s".to_string(),
    ] {
        assert!(table.contains(&needle), "'{needle}' in:\n{table}");
    }
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn status_shows_the_archive_its_ends_and_retention() {
    // Not applied: the archive is reported missing, and status still exits 0.
    let missing = TestTopology::new("archive-status-missing", TOPOLOGY);
    let (code, out, err) = warren_t(&missing, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["archive"]["stream"], stream(&missing).as_str());
    let problem = s["archive"]["problem"]
        .as_str()
        .unwrap_or_else(|| panic!("{s}"));
    assert!(problem.contains("not found on the broker"), "{problem}");

    let (t, conn) = archived("archive-status").await;
    let (code, out, err) = warren_t(&t, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["archive"]["messages"], 0, "{s}");
    assert!(s["archive"]["first"].is_null(), "{s}");
    let (_, table, _) = warren_t(&t, &["status"]);
    let name = stream(&t);
    assert!(
        table.contains(&format!(
            "Archive {name}: empty; max age 1h, max 100000000 bytes"
        )),
        "{table}"
    );

    let start = now_ms() - 100_000;
    publish_all(&conn, &t, &series(start, 7)).await;
    let (code, out, err) = warren_t(&t, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &s["archive"];
    assert_eq!(a["stream"], name.as_str());
    assert_eq!(a["messages"], 7, "{s}");
    assert_eq!(
        (&a["first"]["offset"], &a["last"]["offset"]),
        (&0.into(), &6.into())
    );
    assert_eq!(a["last"]["ts"], start + 6000);
    assert_eq!(a["max_age_secs"], 3600);
    assert!(
        a["retention"].as_str().unwrap().contains("1000000 bytes"),
        "{a}"
    );
    assert!(a.get("problem").is_none(), "{a}");
    let (_, table, _) = warren_t(&t, &["status"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("Archive "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.starts_with(&format!(
            "Archive {name}: 7 messages, offsets 0–6 ({} to {}); ",
            super::rfc3339(start),
            super::rfc3339(start + 6000)
        )),
        "{line}"
    );
    assert!(
        line.ends_with("; max age 1h, max 100000000 bytes"),
        "{line}"
    );
    t.cleanup(&conn).await;
}
