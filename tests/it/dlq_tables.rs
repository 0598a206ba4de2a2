//! `dlq` tables as people see them: closed boxes when empty, rows that fit the terminal.

use std::process::{Command, Stdio};

use crate::support::dlq::{DLQ_TOPOLOGY, Dead, publish_dead, with_topology};
use crate::support::{TestTopology, amqp_url, connect};

/// `warren <args> -f … --prefix …` with `COLUMNS` set (or unset): (code, stdout, stderr).
fn warren_cols(t: &TestTopology, args: &[&str], columns: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args(with_topology(t, args))
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .env_remove("COLUMNS")
        .stdin(Stdio::null());
    if let Some(c) = columns {
        cmd.env("COLUMNS", c);
    }
    let out = cmd.output().expect("run warren");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every box a table opens is closed: as many bottom-left corners as top-left ones.
fn assert_closed(what: &str, table: &str) {
    let tops = table.matches('┌').count();
    assert!(tops > 0, "{what}: no table:\n{table}");
    assert_eq!(
        table.matches('└').count(),
        tops,
        "{what}: a table without its bottom border:\n{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_results_print_closed_tables() {
    let t = TestTopology::new("dlq-empty-table", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    for args in [
        &["dlq", "list", "-q", "work"][..],
        &["dlq", "stats", "-q", "work"],
        &["dlq", "replay", "-q", "work", "-y"],
    ] {
        let (code, out, err) = warren_cols(&t, args, Some("120"));
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_closed(&args.join(" "), &out);
    }
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rows_fit_the_terminal_keeping_the_start_of_the_error() {
    let t = TestTopology::new("dlq-width", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let error = format!(
        "POST http://127.0.0.1:9/events: 503 Service Unavailable {}",
        "x".repeat(300)
    );
    let dead: Vec<Dead> = (0..3)
        .map(|_| Dead::new("test.order", "transient", &error, &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;

    for columns in [140usize, 200, 260] {
        let (code, out, err) = warren_cols(
            &t,
            &["dlq", "list", "-q", "work"],
            Some(&columns.to_string()),
        );
        assert_eq!(code, 0, "{err}");
        let widest = out.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(
            widest <= columns,
            "COLUMNS={columns}: a {widest}-column row:\n{out}"
        );
        assert!(
            widest + 2 >= columns.min(200),
            "COLUMNS={columns}: the error does not use the room there is ({widest}):\n{out}"
        );
        let rows: Vec<&str> = out.lines().filter(|l| l.contains("test.order")).collect();
        assert_eq!(rows.len(), 3, "{out}");
        assert!(
            rows.iter()
                .all(|r| r.contains("POST http://127.0.0.1:9/events: 503")),
            "COLUMNS={columns}: the error's start is cut:\n{out}"
        );
        assert_closed("list", &out);
    }
    t.cleanup(&conn).await;
}
