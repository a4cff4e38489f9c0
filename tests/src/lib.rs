//! Harness for the end-to-end tests: a private folder with a watched and an unwatched copy
//! of the workload program, an agent started in-process, and waiting for events.
//!
//! The tests need root and a kernel that loads the probes; without root they print why they
//! skip. They share kernel state, so run them with `--test-threads=1` (`cargo xtask test`
//! does).

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::{channel, Receiver},
    time::{Duration, Instant},
};

use clinicwatch_agent::{Agent, Config, Event};

pub mod delivery;

/// `true` when running as root; otherwise prints why the test is skipped.
pub fn require_root(test: &str) -> bool {
    clinicwatch_testkit::require_root(test, "to load eBPF programs")
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

    /// The agent's state folder (baselines, findings log, key) for this test.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// A config watching `app`, with the given extra TOML appended.
    pub fn config(&self, extra: &str) -> Config {
        let text = format!(
            "[agent]\nsnapshot_interval_secs = 0\nstate_dir = \"{}\"\n[[app]]\nname = \"pm-client\"\nexe = \"{}\"\n{extra}",
            self.state_dir().display(),
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

/// The agent's events as a test sees them: everything received is kept, so a check that
/// something did not happen also covers the events an earlier wait went past.
pub struct Events {
    rx: Receiver<Event>,
    seen: RefCell<Vec<Event>>,
}

impl Events {
    fn recv(&self, timeout: Duration) -> Option<Event> {
        let ev = self.rx.recv_timeout(timeout).ok()?;
        self.seen.borrow_mut().push(ev.clone());
        Some(ev)
    }

    /// Every event received so far.
    pub fn seen(&self) -> Vec<Event> {
        self.seen.borrow().clone()
    }
}

/// Set (by `cargo xtask vm-test`) where the kernel allows every best hook: each agent the
/// tests start must then have the first option of every capability, not a fallback.
pub const EXPECT_BEST_HOOKS: &str = "CLINICWATCH_EXPECT_BEST_HOOKS";

/// Starts the agent in-process.
pub fn start_agent(cfg: &Config) -> (Agent, Events) {
    let (tx, rx) = channel();
    let agent = Agent::start(cfg, false, Some(tx))
        .unwrap_or_else(|e| panic!("agent failed to start: {e:#}"));
    if std::env::var_os(EXPECT_BEST_HOOKS).is_some() {
        for c in &agent.capabilities {
            let disabled = cfg
                .agent
                .disabled_hooks
                .iter()
                .any(|d| c.passed_over.iter().any(|t| &t.hook == d));
            assert!(
                c.hook.is_some() && (c.passed_over.is_empty() || disabled),
                "{EXPECT_BEST_HOOKS} is set but `{}` is served by {:?}; passed over: {:?}",
                c.capability,
                c.hook,
                c.passed_over
            );
        }
    }
    (
        agent,
        Events {
            rx,
            seen: RefCell::new(Vec::new()),
        },
    )
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

pub use clinicwatch_testkit::wait_until;

/// Waits up to `timeout` for an event that `matches`; panics with what was seen otherwise.
pub fn expect_event(
    events: &Events,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv(left) {
            Some(ev) if matches(&ev) => return ev,
            Some(_) => {}
            None => break,
        }
    }
    let seen = events.seen();
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

/// Like [`expect_event`], but an event already received (while waiting for another) counts.
pub fn find_event(
    events: &Events,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> Event {
    if let Some(ev) = events.seen().into_iter().find(|e| matches(e)) {
        return ev;
    }
    expect_event(events, timeout, what, matches)
}

/// Receives for `wait` more, then returns every event seen since the agent started, for
/// asserting that something did not happen.
pub fn collect(events: &Events, wait: Duration) -> Vec<Event> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if events.recv(left).is_none() {
            break;
        }
    }
    events.seen()
}

pub const WAIT: Duration = Duration::from_secs(10);
pub const MIB: usize = 1024 * 1024;

/// What reaches `tracing` under the probes' log target (`clinicwatch::kernel`), as text
/// lines, from the moment of the first call on: a global subscriber for this test binary.
pub fn kernel_log_lines() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LINES: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = lines.clone();
            let writer = move || Capture(sink.clone());
            let target = clinicwatch_agent::kernel::klog::TARGET;
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                    "{target}=trace"
                )))
                .with_ansi(false)
                .with_writer(writer)
                .try_init()
                .expect("the test binary's tracing subscriber is set once, here");
            lines
        })
        .clone()
}

struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
