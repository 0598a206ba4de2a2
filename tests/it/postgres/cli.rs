//! `warren db apply|status` and a worker's checks, as the binary.

use std::process::{Command, Stdio};

use crate::support::pg::{CANARY, TestDb, database_url};

fn warren(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run warren");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_apply_is_idempotent_and_status_counts_rows() {
    let db = TestDb::unapplied(&database_url(), "cli_apply");
    let url = db.url.clone();
    let args = |verb: &'static str| -> Vec<String> {
        let mut v: Vec<String> = vec!["db".into(), verb.into()];
        v.extend(db.args());
        v
    };
    let run = |v: Vec<String>| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        warren(&refs)
    };

    let (code, out, err) = run(args("status"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("version 0") && out.contains("warren db apply"),
        "{out}"
    );

    let (code, out, err) = run(args("apply"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("migrated from version 0 to 1"), "{out}");
    let (code, out, err) = run(args("apply"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to do"), "{out}");

    let mut json = args("status");
    json.extend(["-o".into(), "json".into()]);
    let (code, out, err) = run(json);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["version"], 1);
    assert_eq!(v["tables"].as_array().unwrap().len(), 6);
    assert!(
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["rows"] == 0),
        "{v}"
    );
    for text in [&out, &err] {
        assert!(!text.contains(CANARY), "password shown: {text}");
    }
    assert!(url.contains(CANARY), "the test's URL carries the canary");
}

#[test]
fn db_commands_say_what_is_wrong_with_the_exit_code_it_means() {
    // No database at all: a usage error naming the variable.
    let (code, _, err) = warren(&["db", "status"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    // A schema name that is not a plain identifier.
    let url = database_url();
    let (code, _, err) = warren(&["db", "apply", "--database-url", &url, "--db-schema", "a;b"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--db-schema 'a;b'"), "{err}");
    // A URL that cannot be parsed.
    let (code, _, err) = warren(&["db", "status", "--database-url", "postgres://u:x@h:port/d"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    // Nothing answers: a failure naming the server, never the password.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("postgres://postgres:{CANARY}@127.0.0.1:{port}/postgres");
    let (code, out, err) = warren(&["db", "apply", "--database-url", &down]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("postgres@127.0.0.1:{port}/postgres")),
        "{err}"
    );
    assert!(!err.contains(CANARY) && !out.contains(CANARY), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_a_schema_that_was_not_applied() {
    let db = TestDb::unapplied(&database_url(), "cli_unapplied");
    let t = crate::support::TestTopology::new("pg-unapplied", super::BOOKS_TOPOLOGY);
    let mut args = vec!["worker", "--handler", "postgres", "-q", "books"];
    let rest: Vec<String> = t.args().into_iter().chain(db.args()).collect();
    args.extend(rest.iter().map(String::as_str));
    let (code, _, err) = warren(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("version 0") && err.contains("warren db apply"),
        "{err}"
    );
    assert!(!err.contains(CANARY), "{err}");
}
