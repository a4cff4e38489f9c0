//! Harness for the end-to-end tests: a private folder with a watched and an unwatched copy
//! of the workload program, an agent started in-process, and waiting for events.
//!
//! The tests need root and a kernel that loads the probes; without root they print why they
//! skip. They share kernel state, so run them with `--test-threads=1` (`cargo xtask test`
//! does).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::{channel, Receiver},
    time::{Duration, Instant},
};

use clinicwatch_agent::{Agent, Config, Event};

/// `true` when running as root; otherwise prints why the test is skipped.
pub fn require_root(test: &str) -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED {test}: needs root to load eBPF programs");
    }
    root
}

pub struct Fixture {
    pub dir: PathBuf,
    /// The watched copy of the workload.
    pub app: PathBuf,
    /// An identical copy (different inode): not watched.
    pub other: PathBuf,
}

impl Fixture {
    /// A fresh folder under the system temp dir, named for the test.
    pub fn new(workload: &str, name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("clinicwatch-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let app = dir.join("pm-client");
        let other = dir.join("other-client");
        std::fs::copy(workload, &app).expect("copy workload");
        std::fs::copy(workload, &other).expect("copy workload");
        Fixture { dir, app, other }
    }

    /// A file of `len` bytes of a repeating pattern.
    pub fn data_file(&self, name: &str, len: usize) -> PathBuf {
        let p = self.dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create data dir");
        }
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, data).expect("write data file");
        p
    }

    /// A config watching `app`, with the given extra TOML appended.
    pub fn config(&self, extra: &str) -> Config {
        let text = format!(
            "[agent]\nsnapshot_interval_secs = 0\n[[app]]\nname = \"pm-client\"\nexe = \"{}\"\n{extra}",
            self.app.display()
        );
        Config::from_toml(&text).expect("valid test config")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the agent in-process; events arrive on the receiver.
pub fn start_agent(cfg: &Config) -> (Agent, Receiver<Event>) {
    let (tx, rx) = channel();
    let agent = Agent::start(cfg, false, Some(tx))
        .unwrap_or_else(|e| panic!("agent failed to start: {e:#}"));
    (agent, rx)
}

/// Runs a program to completion; returns its pid and stdout. Panics if it fails.
pub fn run(program: &Path, args: &[&str]) -> (u32, String) {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for workload");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        out.status
    );
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits up to `timeout` for an event that `matches`; panics with what was seen otherwise.
pub fn expect_event(
    rx: &Receiver<Event>,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(ev) if matches(&ev) => return ev,
            Ok(ev) => seen.push(ev),
            Err(_) => break,
        }
    }
    let tail: Vec<String> = seen
        .iter()
        .rev()
        .take(15)
        .map(|e| format!("{e:?}"))
        .collect();
    panic!(
        "no {what} within {timeout:?}; last events seen (newest first):\n{}",
        tail.join("\n")
    );
}

/// Collects every event for `wait`, for asserting that something did not happen.
pub fn collect(rx: &Receiver<Event>, wait: Duration) -> Vec<Event> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(ev) => out.push(ev),
            Err(_) => break,
        }
    }
    out
}

pub const WAIT: Duration = Duration::from_secs(10);
pub const MIB: usize = 1024 * 1024;
