//! Retention: with a 1 s max age and tiny segments, old segments are deleted once newer ones
//! start, and `archive info` shows the first offset move past them.

use std::time::Duration;

use crate::support::{self, TestTopology, now_ms};

use super::{TOPOLOGY, publish_all, series};

#[tokio::test]
async fn a_short_max_age_with_small_segments_drops_old_segments() {
    let toml = TOPOLOGY
        .replace("max_age = \"1h\"", "max_age = \"1s\"")
        .replace("max_bytes = 100_000_000", "max_bytes = 1_000_000")
        .replace("segment_bytes = 1_000_000", "segment_bytes = 2_000");
    let t = TestTopology::new("archive-retention", &toml);
    let conn = support::connect().await;
    t.apply(&conn).await;
    publish_all(&conn, &t, &series(now_ms(), 30)).await;
    let url = support::url();
    let info = warren::archive::info(&url, &t.topology, None)
        .await
        .unwrap();
    assert_eq!(info.first.map(|f| f.offset), Some(0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // New segments start as events arrive; the old ones are then past their age.
    support::eventually(
        Duration::from_secs(20),
        "the first offset to move",
        || async {
            publish_all(&conn, &t, &series(now_ms(), 10)).await;
            let info = warren::archive::info(&url, &t.topology, None)
                .await
                .unwrap();
            info.first.is_some_and(|f| f.offset >= 30)
        },
    )
    .await;
    t.cleanup(&conn).await;
}
