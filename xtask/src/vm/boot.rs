//! Boots one kernel with the test initramfs under QEMU (TCG), streams its console, and turns
//! what `cw-vminit` printed into a verdict. A panic, a hang (no verdict before the deadline)
//! or a missing verdict is a failure.

use std::{
    io::BufRead,
    path::Path,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::fetch::{Kernel, Qemu};

/// What one boot showed.
#[derive(Debug, Default)]
pub struct Verdict {
    pub release: String,
    pub lsm: String,
    pub console: Vec<String>,
    /// `cw-vm: step NAME rc=N`, in order.
    pub steps: Vec<(String, i32)>,
    /// `clinicwatch-agent check` rows: capability, hook (`-` when none).
    pub hooks: Vec<(String, String)>,
    /// The indented lines under the rows: hooks passed over and why.
    pub hook_notes: Vec<String>,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub result: Option<bool>,
    pub panicked: bool,
    pub timed_out: bool,
    pub secs: f64,
}

impl Verdict {
    /// Parses the console lines of one boot.
    pub fn parse(console: Vec<String>) -> Verdict {
        let mut v = Verdict::default();
        let mut step: Option<String> = None;
        for line in &console {
            if line.contains("Kernel panic") {
                v.panicked = true;
            }
            if let Some(rest) = line.strip_prefix("cw-vm: ") {
                if let Some(k) = rest.strip_prefix("kernel ") {
                    let (release, lsm) = k.split_once(" lsm ").unwrap_or((k, ""));
                    v.release = release.to_string();
                    v.lsm = lsm.to_string();
                } else if let Some(s) = rest.strip_prefix("step ") {
                    let mut words = s.split_whitespace();
                    let name = words.next().unwrap_or("").to_string();
                    match words.next() {
                        Some("begin") => step = Some(name),
                        Some(rc) => {
                            let rc = rc
                                .strip_prefix("rc=")
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(-1);
                            v.steps.push((name, rc));
                            step = None;
                        }
                        None => {}
                    }
                } else if let Some(r) = rest.strip_prefix("result ") {
                    v.result = Some(r.trim() == "pass");
                }
                continue;
            }
            match step.as_deref() {
                Some("check") => {
                    if line.starts_with("    ") {
                        v.hook_notes.push(line.trim_start().to_string());
                    } else {
                        let words: Vec<&str> = line.split_whitespace().collect();
                        if words.len() == 3 && words[0] != "capability" && words[0] != "kernel" {
                            v.hooks.push((words[0].to_string(), words[1].to_string()));
                        }
                    }
                }
                Some("tests") => {
                    if line.contains("SKIPPED") {
                        v.skipped += 1;
                    }
                    if let Some(rest) = line.strip_prefix("test result: ") {
                        for part in rest.split([';', '.']) {
                            let mut w = part.split_whitespace();
                            if let (Some(n), Some(what)) =
                                (w.next().and_then(|n| n.parse::<u64>().ok()), w.next())
                            {
                                match what {
                                    "passed" => v.passed += n,
                                    "failed" => v.failed += n,
                                    "ignored" => v.skipped += n,
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        v.console = console;
        v
    }

    fn step_rc(&self, name: &str) -> Option<i32> {
        self.steps
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, rc)| *rc)
    }

    /// Why this boot failed, or `None` when every check held: the VM reached its verdict,
    /// the agent loaded with the best hook for every capability (none passed over), and
    /// every test passed.
    /// A skipped test is a failure unless `allow_skips`.
    pub fn failure_allowing(&self, allow_skips: bool) -> Option<String> {
        if self.panicked {
            return Some("kernel panic".into());
        }
        if self.timed_out {
            return Some(format!("hung: no verdict within {:.0} s", self.secs));
        }
        let Some(result) = self.result else {
            return Some("the VM stopped without a verdict".into());
        };
        match self.step_rc("check") {
            Some(0) => {}
            Some(rc) => return Some(format!("`clinicwatch-agent check` failed (exit {rc})")),
            None => return Some("`clinicwatch-agent check` did not run".into()),
        }
        if self.hooks.is_empty() {
            return Some("`clinicwatch-agent check` printed no hook table".into());
        }
        if let Some((cap, _)) = self.hooks.iter().find(|(_, h)| h == "-") {
            return Some(format!("no hook serves `{cap}`"));
        }
        if self.hook_notes.iter().any(|n| n.starts_with("passed over")) {
            return Some("a richer hook was passed over (see the table)".into());
        }
        match self.step_rc("tests") {
            Some(0) if self.failed == 0 && self.passed > 0 => {}
            Some(0) => return Some("the kernel tests reported no passing test".into()),
            Some(rc) => {
                return Some(format!(
                    "kernel tests failed (exit {rc}, {} failed)",
                    self.failed
                ))
            }
            None => return Some("the kernel tests did not run".into()),
        }
        if self.skipped > 0 && !allow_skips {
            return Some(format!(
                "{} test(s) skipped inside the VM (see the SKIPPED lines; --allow-skips accepts it)",
                self.skipped
            ));
        }
        (!result).then(|| "the VM's init reported failure".into())
    }
}

/// Boots `kernel` with `initrd`; prints the console as it comes (each line prefixed with
/// `prefix`) and returns the verdict. QEMU is killed at the deadline.
pub fn boot(
    qemu: &Qemu,
    kernel: &Kernel,
    initrd: &Path,
    append: &str,
    timeout: Duration,
    prefix: &str,
) -> anyhow::Result<Verdict> {
    let started = Instant::now();
    let mut child = qemu
        .command()
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet {append}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("failed to start QEMU")?;
    let stdout = child.stdout.take().context("QEMU stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match lines.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let deadline = started + timeout;
    let mut console = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                println!("{prefix}{line}");
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    let mut v = Verdict::parse(console);
    v.timed_out = timed_out && v.result.is_none();
    v.secs = started.elapsed().as_secs_f64();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    const GOOD: &str = "\
cw-vm: kernel 6.1.0-56-cloud-amd64 lsm lockdown,capability,bpf
cw-vm: step check begin
kernel 6.1.0-56-cloud-amd64
capability   hook                                     scope
process      tp_btf:sched_process_{exec,fork,exit}    targeted
file_open    lsm:file_open                            targeted
cw-vm: step check rc=0 secs=2.0
cw-vm: step tests begin
SKIPPED: mkfs.btrfs is not installed
test result: ok. 14 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 30.00s
cw-vm: step tests rc=0 secs=31.0
cw-vm: result pass";

    #[test]
    fn a_clean_run_passes_and_lists_its_hooks() {
        let v = Verdict::parse(lines(GOOD));
        assert_eq!(v.failure_allowing(true), None);
        assert!(
            v.failure_allowing(false)
                .unwrap()
                .contains("1 test(s) skipped"),
            "a skip fails by default"
        );
        assert_eq!(v.release, "6.1.0-56-cloud-amd64");
        assert_eq!(
            v.hooks,
            vec![
                (
                    "process".into(),
                    "tp_btf:sched_process_{exec,fork,exit}".into()
                ),
                ("file_open".into(), "lsm:file_open".into())
            ]
        );
        assert_eq!((v.passed, v.failed, v.skipped), (14, 0, 1));
    }

    #[test]
    fn a_passed_over_hook_a_failed_test_a_panic_and_silence_all_fail() {
        let fallback = GOOD.replace(
            "file_open    lsm:file_open                            targeted",
            "file_open    tracepoint:syscalls:sys_exit_open*  every_syscall\n    passed over lsm:file_open: load failed: Permission denied; verifier log tail:\n      R1 invalid mem access",
        );
        let v = Verdict::parse(lines(&fallback));
        assert!(v.failure_allowing(false).unwrap().contains("passed over"));
        assert_eq!(v.hook_notes[1], "R1 invalid mem access");

        let failed = GOOD
            .replace("14 passed; 0 failed", "13 passed; 1 failed")
            .replace("tests rc=0", "tests rc=101")
            .replace("result pass", "result fail");
        assert!(Verdict::parse(lines(&failed))
            .failure_allowing(false)
            .unwrap()
            .contains("1 failed"));

        let panic = format!("{GOOD}\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!");
        assert_eq!(
            Verdict::parse(lines(&panic))
                .failure_allowing(false)
                .unwrap(),
            "kernel panic"
        );

        let cut: String = GOOD.lines().take(5).collect::<Vec<_>>().join("\n");
        assert_eq!(
            Verdict::parse(lines(&cut)).failure_allowing(false).unwrap(),
            "the VM stopped without a verdict"
        );
    }
}
