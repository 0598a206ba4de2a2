//! Smoke tests of the benchmark's scripts against the real broker: `compare` (needs python3)
//! and `instructions` (needs python3 and valgrind). They are ignored by the main test run;
//! `crates/warren-bench/check.sh` installs what they need and runs them.

mod compare;
mod instructions;
#[path = "../support/mod.rs"]
mod support;
