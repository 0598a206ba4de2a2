//! Test 4: `dlq purge --dry-run` changes nothing; `purge` refuses without `-y` when stdin is
//! not a terminal; with `-y` and a filter it removes exactly the matching messages. On a
//! terminal, purge and replay ask, and only "y" changes anything.

use crate::support::dlq::{
    DLQ_TOPOLOGY, Dead, delivery_ids, ids, publish_dead, warren_json, warren_on_tty, warren_t,
};
use crate::support::{TestTopology, connect, drain, queue_len};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_dry_run_changes_nothing_and_purge_refuses_without_yes_off_a_terminal() {
    let t = TestTopology::new("dlq-purge", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..30)
        .map(|i| {
            Dead::new(
                "test.p",
                if i % 3 == 0 { "exhausted" } else { "permanent" },
                "boom",
                &work,
            )
        })
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let all: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();

    let dry = warren_json(&t, &["dlq", "purge", "-q", "work", "--dry-run"]);
    assert_eq!(ids(&dry), all);
    assert!(
        dry["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["outcome"] == "would_purge")
    );
    assert_eq!(queue_len(&conn, &dlq).await, 30, "--dry-run purges nothing");

    let (code, out, err) = warren_t(&t, &["dlq", "purge", "-q", "work"]);
    assert_ne!(code, 0, "purge without -y off a terminal must refuse");
    assert!(err.contains("-y"), "the refusal says how to confirm: {err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        queue_len(&conn, &dlq).await,
        30,
        "a refused purge purges nothing"
    );

    let (code, _, err) = warren_t(&t, &["dlq", "purge", "-y"]);
    assert_eq!(code, 2, "purge needs -q or --all: {err}");
    assert!(err.contains("--all"), "{err}");

    let purged = warren_json(
        &t,
        &["dlq", "purge", "-q", "work", "--kind", "exhausted", "-y"],
    );
    let exhausted: Vec<String> = dead
        .iter()
        .filter(|d| d.kind == "exhausted")
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(ids(&purged), exhausted);
    assert!(
        purged["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["outcome"] == "purged")
    );
    let rest: Vec<String> = dead
        .iter()
        .filter(|d| d.kind != "exhausted")
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(
        delivery_ids(&drain(&conn, &dlq).await),
        rest,
        "the others stay, in order"
    );
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_with_limit_takes_the_first_matches_only() {
    let t = TestTopology::new("dlq-purge-limit", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..10)
        .map(|_| Dead::new("test.p", "permanent", "boom", &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let purged = warren_json(&t, &["dlq", "purge", "-q", "work", "--limit", "4", "-y"]);
    let all: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids(&purged), all[..4]);
    assert_eq!(delivery_ids(&drain(&conn, &dlq).await), all[4..]);
    t.cleanup(&conn).await;
}

/// On a terminal (stdin a pty) purge and replay show what they would touch and ask; "n" or a
/// bare Enter changes nothing, "y" goes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_purge_and_replay_ask_and_only_yes_changes_anything() {
    let t = TestTopology::new("dlq-purge-tty", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..12)
        .map(|i| {
            Dead::new(
                "test.p",
                if i % 3 == 0 { "exhausted" } else { "permanent" },
                "boom",
                &work,
            )
        })
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let all: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();

    for (args, answer) in [
        (["dlq", "purge", "-q", "work"], "n"),
        (["dlq", "replay", "-q", "work"], "n"),
        (["dlq", "purge", "-q", "work"], ""),
    ] {
        let (code, out, err) = warren_on_tty(&t, &args, answer);
        assert!(
            err.contains("[y/N]") && err.contains(&format!("from {dlq} (12 messages)?")),
            "{args:?} asks, naming the DLQ and its depth: {err}"
        );
        assert_eq!(code, 1, "{args:?} answered {answer:?}: {err}");
        assert!(err.contains("not confirmed; nothing was changed"), "{err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(queue_len(&conn, &dlq).await, 12, "{args:?} {answer:?}");
        assert_eq!(queue_len(&conn, &work).await, 0, "{args:?} {answer:?}");
    }

    let (code, out, err) = warren_on_tty(
        &t,
        &[
            "dlq",
            "purge",
            "-q",
            "work",
            "--kind",
            "exhausted",
            "-o",
            "json",
        ],
        "y",
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("[y/N]"), "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let exhausted: Vec<String> = dead
        .iter()
        .filter(|d| d.kind == "exhausted")
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(ids(&report), exhausted);
    let rest: Vec<String> = all
        .into_iter()
        .filter(|id| !exhausted.contains(id))
        .collect();
    assert_eq!(delivery_ids(&drain(&conn, &dlq).await), rest);
    t.cleanup(&conn).await;
}
