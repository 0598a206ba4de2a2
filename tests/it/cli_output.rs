//! A reader that stops early (`warren … | head`) ends the output quietly: exit 0, no error.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::TestTopology;

/// A topology whose `show` and `export` are far larger than a pipe's buffer (64 KiB), so the
/// binary is still writing when the reader goes away.
fn big_topology() -> TestTopology {
    let mut toml = String::from(
        "[exchanges]\nevents = \"ev\"\ndead_letter = \"ev.dlx\"\n\n[defaults]\nretry_delays = [\"1s\", \"10s\"]\n",
    );
    for i in 0..300 {
        toml.push_str(&format!(
            "\n[[queues]]\nname = \"work-{i}\"\nbind = [\"domain{i}.*\", \"shared.event\"]\n"
        ));
    }
    TestTopology::new("cli-output", &toml)
}

/// Runs `warren <args>`, reads its first line, closes the pipe, and returns the exit code and
/// stderr.
fn read_one_line_then_close(args: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty(), "no output at all");
    // The reader is dropped here: the pipe closes with most of the output unread.
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_reader_closing_early_ends_topology_show_quietly() {
    let t = big_topology();
    for format in ["table", "json", "ndjson"] {
        let mut args: Vec<String> = ["topology", "show", "-o", format].map(String::from).into();
        args.extend(t.args());
        let (code, stderr) = read_one_line_then_close(&args);
        assert_eq!(code, Some(0), "-o {format}: {stderr}");
        assert!(!stderr.contains("error"), "-o {format}: {stderr}");
    }
}

#[test]
fn a_reader_closing_early_ends_topology_export_quietly() {
    let t = big_topology();
    let mut args: Vec<String> = ["topology", "export"].map(String::from).into();
    args.extend(t.args());
    let (code, stderr) = read_one_line_then_close(&args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}
