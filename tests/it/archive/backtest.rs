//! `archive backtest`: the trader over an archived window of ticks trades (opens, closes on the
//! reversal), and a second run of the same window prints the identical report.

use serde_json::json;

use super::{archived, event_at, publish_all, rfc3339, warren_archive};
use crate::support::now_ms;

#[tokio::test]
async fn a_backtest_run_twice_on_the_same_window_gives_the_same_report() {
    let (t, conn) = archived("archive-backtest").await;
    let start = now_ms() - 600_000;
    // A rise then a fall on one pair: the momentum trader goes long, then closes and goes short.
    let prices = (0..30)
        .map(|i| 100.0 + i as f64)
        .chain((0..30).map(|i| 129.0 - 2.0 * i as f64));
    let ticks: Vec<_> = prices
        .enumerate()
        .map(|(i, price)| {
            let ts = start + i as u64 * 1000;
            let (id, body) = event_at(
                "market.tick",
                "a1",
                ts,
                json!({"pair": "BTC-USD", "price": price, "timestamp_ms": ts}),
            );
            ("market.tick".to_string(), id, body)
        })
        .collect();
    publish_all(&conn, &t, &ticks).await;
    let window = [
        "backtest",
        "--from",
        &rfc3339(start),
        "--to",
        &rfc3339(start + 60_000),
        "-o",
        "json",
    ];
    let first = warren_archive(&t, &window);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json report");
    assert_eq!(report["events"], 60);
    assert_eq!(report["opened"], 2, "{report:#}");
    assert_eq!(report["closed"], 1, "{report:#}");
    assert_eq!(
        report["open_positions"][0]["direction"], "short",
        "{report:#}"
    );
    let second = warren_archive(&t, &window);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        first.stdout, second.stdout,
        "the same window, the same report"
    );
    t.cleanup(&conn).await;
}
