//! Bad input to `warren archive`: each error names the flag (or the file) and exits 2.

use super::{TOPOLOGY, archived, publish_all, rfc3339, series, warren_archive};
use crate::support::{TestTopology, now_ms};

fn usage_error(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit 2 expected; stderr: {err}");
    assert!(err.contains(needle), "stderr should name '{needle}': {err}");
    assert!(out.stdout.is_empty(), "no data on stdout");
}

#[tokio::test]
async fn bad_windows_types_and_missing_archives_are_usage_errors_naming_the_flag() {
    // Not applied yet: the archive is missing on the broker.
    let t = TestTopology::new("archive-missing", TOPOLOGY);
    usage_error(
        &warren_archive(&t, &["read", "--from", "first"]),
        "topology apply",
    );
    usage_error(&warren_archive(&t, &["info"]), "not found on the broker");
    // A topology file without [archive].
    let bare = TestTopology::new("archive-none", TOPOLOGY.split("[archive]").next().unwrap());
    usage_error(&warren_archive(&bare, &["info"]), "no [archive] section");

    let (t, conn) = archived("archive-bad-input").await;
    // An empty stream.
    usage_error(
        &warren_archive(&t, &["read", "--from", "first"]),
        "holds no events",
    );
    let start = now_ms() - 60_000;
    publish_all(&conn, &t, &series(start, 5)).await;
    usage_error(
        &warren_archive(
            &t,
            &[
                "read",
                "--from",
                &rfc3339(start + 3000),
                "--to",
                &rfc3339(start),
            ],
        ),
        "--to",
    );
    usage_error(
        &warren_archive(&t, &["read", "--from", "4", "--to", "2"]),
        "--to 2 is before --from 4",
    );
    usage_error(
        &warren_archive(&t, &["read", "--from", "yesterday"]),
        "--from 'yesterday'",
    );
    usage_error(
        &warren_archive(&t, &["read", "--from", "first", "--type", "Ticks"]),
        "--type 'Ticks'",
    );
    // A window with no events in it.
    usage_error(
        &warren_archive(
            &t,
            &[
                "read",
                "--from",
                &rfc3339(start - 50_000),
                "--to",
                &rfc3339(start - 40_000),
            ],
        ),
        "no events in this window",
    );
    usage_error(
        &warren_archive(&t, &["read", "--from", "first", "--type", "test.b"]),
        "no events in this window",
    );
    usage_error(&warren_archive(&t, &["read", "--from", "99"]), "--from 99");
    usage_error(
        &warren_archive(&t, &["replay", "--from", "first", "--into", "nosuch"]),
        "nosuch",
    );
    t.cleanup(&conn).await;
}
