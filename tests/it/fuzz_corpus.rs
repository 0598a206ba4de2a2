//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the same harnesses the
//! `cargo fuzz` targets run, on the stable toolchain: every saved input, including each past
//! finding, must pass without a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

#[path = "../../fuzz/harness.rs"]
mod harness;

#[test]
fn every_fuzz_corpus_input_passes_its_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = vec![];
    for (name, run) in harness::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: no corpus", dir.display());
        for path in inputs {
            let data = std::fs::read(&path).expect("corpus file");
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "harness panics on: {failures:#?}");
}
