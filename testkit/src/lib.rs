//! What the tests of every crate share.
//!
//! - [`skip`]: a test that cannot run here says so, and the reason also goes to the file
//!   `CLINICWATCH_SKIP_LOG` names (one `test<TAB>reason` line each). `cargo xtask test` sets
//!   it and, as root (CI), fails the run for any skip not on its allow-list
//!   (`xtask/src/skips.rs`): a test that needs a kernel feature or a package cannot pass by
//!   not running.
//! - [`TempDir`]: a folder that is removed when the test ends, also when it panics.
//! - [`wait_until`] (panics naming what it waited for) and [`poll_until`] (says whether it
//!   came): polling for a condition with a deadline.
//! - `collector` (feature `collector`): a real collector on a test's listener, with its PKI.

#[cfg(feature = "collector")]
pub mod collector;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable naming the skip log.
pub const SKIP_LOG: &str = "CLINICWATCH_SKIP_LOG";

/// Says that `test` (or a named part of it, `test/part`) did not run, and why.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    let Some(path) = std::env::var_os(SKIP_LOG) else {
        return;
    };
    // One short write per line with O_APPEND: lines of parallel tests do not interleave.
    let line = format!("{test}\t{}\n", why.replace(['\t', '\n'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        // The run must not pass unseen: a skip that cannot be logged fails the test.
        panic!("{test} skipped ({why}) and the skip log `{path:?}` cannot be written: {e}");
    }
}

/// `true` when running as root; otherwise `test` is skipped with `why_root`.
pub fn require_root(test: &str, why_root: &str) -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip(test, &format!("needs root ({why_root})"));
    }
    root
}

/// A temporary folder, removed (with what it holds) when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty folder under the system's temporary folder, named for `what`.
    pub fn new(what: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cw-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot make the test folder {}: {e}", dir.display());
        }
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// A `TempDir` is used where a path is: `dir.join(..)`, `dir.display()`, `&*dir`.
impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `ok` until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, ok: impl FnMut() -> bool) {
    assert!(
        poll_until(timeout, ok),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Polls `done` every 20 ms until it is true (returns `true`) or `timeout` passes
/// (`false`).
pub fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_goes_when_dropped_even_after_a_panic() {
        let kept = std::panic::catch_unwind(|| {
            let d = TempDir::new("testkit");
            std::fs::write(d.join("f"), "x").unwrap();
            let p = d.path().to_path_buf();
            std::panic::panic_any(p)
        })
        .unwrap_err();
        let p = kept.downcast_ref::<PathBuf>().unwrap();
        assert!(!p.exists(), "{} was left behind", p.display());
    }

    #[test]
    fn waiting_gives_up_at_its_deadline() {
        let start = Instant::now();
        assert!(!poll_until(Duration::from_millis(100), || false));
        assert!(start.elapsed() >= Duration::from_millis(100));
        let mut n = 0;
        assert!(poll_until(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
        let timed_out =
            std::panic::catch_unwind(|| wait_until("nothing", Duration::from_millis(50), || false))
                .unwrap_err();
        let msg = timed_out.downcast_ref::<String>().unwrap();
        assert!(msg.contains("waiting for nothing"), "{msg}");
    }
}
