//! Every topology error names `file:line:column`, the key path and the queue, and exits 2 (a
//! configuration error, as the README documents), run through the binary.

use assert_cmd::Command;

use crate::support::FAST_TOPOLOGY;

/// `warren topology show -f <file with text>`: (exit code, stderr).
fn show(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::cargo_bin("warren")
        .unwrap()
        .env("RUST_LOG", "warn")
        .args(["topology", "show", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// FAST_TOPOLOGY with `line` inserted after the line `after`; returns the text and the
/// 1-based number of the inserted line.
fn with_line(after: &str, line: &str) -> (String, usize) {
    let mut lines: Vec<&str> = FAST_TOPOLOGY.lines().collect();
    let at = lines.iter().position(|l| *l == after).expect("anchor") + 1;
    lines.insert(at, line);
    (lines.join("\n") + "\n", at + 1)
}

#[test]
fn each_error_names_file_line_column_key_path_and_exits_2() {
    // (anchor, inserted line, column, key path, words the message must hold)
    let cases: &[(&str, &str, usize, &str, &[&str])] = &[
        (
            "dead_letter = \"ev.dlx\"",
            "unrouted = x",
            12,
            "exchanges.unrouted",
            &["string values must be quoted"],
        ),
        (
            "dead_letter = \"ev.dlx\"",
            "events = \"again\"",
            1,
            "exchanges.events",
            &["duplicate key 'events'"],
        ),
        (
            "name = \"other\"",
            "max_attempts = \"five\"",
            16,
            "queues[1].max_attempts",
            &[
                "queue 'other'",
                "invalid type: string \"five\", expected u32",
            ],
        ),
        (
            "name = \"other\"",
            "max_attempts = -1",
            16,
            "queues[1].max_attempts",
            &["queue 'other'", "invalid value: integer '-1', expected u32"],
        ),
        (
            "name = \"work\"",
            "queue_type = \"stream\"",
            14,
            "queues[0].queue_type",
            &["queue 'work'", "unknown variant 'stream'"],
        ),
        (
            "name = \"other\"",
            "ttl = \"5s\"",
            1,
            "queues[1].ttl",
            &["queue 'other'", "unknown field 'ttl'"],
        ),
        (
            "name = \"other\"",
            "message_ttl = \"soon\"",
            15,
            "queues[1].message_ttl",
            &["queue 'other'", "'soon' is not a duration"],
        ),
        (
            "name = \"work\"",
            "prefetch = 0",
            12,
            "queues[0].prefetch",
            &["queue 'work'", "field 'prefetch': must be at least 1"],
        ),
        (
            "prefetch = 20",
            "max_length = 0",
            14,
            "defaults.max_length",
            &["[defaults]", "must be at least 1"],
        ),
    ];
    for (anchor, line, column, key, words) in cases {
        let (text, n) = with_line(anchor, line);
        let (code, err, path) = show(&text);
        let want = format!("{path}:{n}:{column}: {key}: ");
        assert!(err.contains(&want), "{line}: want '{want}' in:\n{err}");
        for w in *words {
            assert!(err.contains(w), "{line}: want '{w}' in:\n{err}");
        }
        assert_eq!(code, 2, "{line}: a configuration error exits 2:\n{err}");
    }
}

#[test]
fn a_repeated_queue_name_points_at_the_second_queue() {
    let text = FAST_TOPOLOGY.replace("name = \"other\"", "name = \"work\"");
    let (code, err, path) = show(&text);
    let n = text.lines().position(|l| l == "name = \"work\"").unwrap();
    let second = text
        .lines()
        .skip(n + 1)
        .position(|l| l == "name = \"work\"")
        .unwrap()
        + n
        + 2;
    assert!(
        err.contains(&format!("{path}:{second}:8: queues[1].name: ")),
        "{err}"
    );
    assert!(err.contains("'work' is used twice"), "{err}");
    assert_eq!(code, 2);
}

#[test]
fn a_missing_file_exits_2() {
    let out = Command::cargo_bin("warren")
        .unwrap()
        .args([
            "topology",
            "show",
            "-f",
            "/nonexistent/warren-topology.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/warren-topology.toml"), "{err}");
}
