//! Fleet members as real processes (started again with new log files on a restart), and the
//! sampler of their peak RSS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a fleet member is started (again).
#[derive(Clone)]
pub(super) struct Spec {
    pub(super) role: String,
    pub(super) args: Vec<String>,
    pub(super) envs: Vec<(String, String)>,
}

/// A running member; SIGKILLed when dropped.
pub struct Member {
    spec: Spec,
    dir: PathBuf,
    pub generation: usize,
    child: Child,
}

impl Member {
    pub(super) fn spawn(spec: Spec, dir: &Path, generation: usize) -> Self {
        let stem = dir.join(format!("{}-{generation}", spec.role));
        let out = std::fs::File::create(stem.with_extension("out")).expect("out file");
        let err = std::fs::File::create(stem.with_extension("log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.args(&spec.args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &spec.envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn warren");
        Self {
            spec,
            dir: dir.to_path_buf(),
            generation,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, then start the same command again (new log files).
    pub fn restart(&mut self) {
        self.kill9();
        *self = Self::spawn(self.spec.clone(), &self.dir, self.generation + 1);
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}-{}.out", self.spec.role, self.generation))
    }

    /// The current generation's stderr.
    pub fn log_text(&self) -> String {
        let p = self
            .dir
            .join(format!("{}-{}.log", self.spec.role, self.generation));
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Waits for the `listening on ADDR` line a sim prints first.
    pub(super) fn listening_addr(&self) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            let text = std::fs::read_to_string(self.stdout_path()).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("listening on ")) {
                return line["listening on ".len()..].trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} printed no address; log:\n{}",
            self.spec.role,
            self.log_text()
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Peak VmRSS per role (`worker`, `bridge`, `upstream`, `api`) in KiB, sampled every 200 ms.
#[derive(Clone, Default)]
pub struct RssSampler {
    pids: Arc<Mutex<BTreeMap<String, u32>>>,
    peaks: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    pub(super) fn start() -> Self {
        let s = Self::default();
        let me = s.clone();
        std::thread::spawn(move || {
            while !me.stop.load(Ordering::Relaxed) {
                me.sample();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        s
    }

    fn sample(&self) {
        let pids = self.pids.lock().unwrap().clone();
        for (name, pid) in pids {
            let Some(kb) = rss_kb(pid) else { continue };
            let role = name.split('#').next().unwrap_or(&name).to_string();
            let mut peaks = self.peaks.lock().unwrap();
            let e = peaks.entry(role).or_default();
            *e = (*e).max(kb);
        }
    }

    pub(super) fn track(&self, name: &str, pid: u32) {
        self.pids.lock().unwrap().insert(name.to_string(), pid);
    }

    /// Peak RSS per role so far, in KiB.
    pub fn peaks(&self) -> BTreeMap<String, u64> {
        self.sample();
        self.peaks.lock().unwrap().clone()
    }
}

impl RssSampler {
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
