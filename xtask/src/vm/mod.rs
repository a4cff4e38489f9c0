//! `cargo xtask vm-test`: the kernel test suite inside VMs running other kernels.
//!
//! QEMU and Debian's kernels come from Debian's packages into a private cache ([`fetch`]);
//! the test binaries (glibc, with their libraries) and `cw-vminit` as `/init` go into an
//! initramfs ([`initramfs`]); each kernel boots under TCG ([`boot`]), runs
//! `clinicwatch-agent check` then the kernel tests, and powers off. A kernel passes when the
//! agent chose the best hook for every capability there and every test passed.

mod boot;
mod fetch;
mod initramfs;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context as _};

use crate::util::{root, target_dir};

/// The kernels `vm-test` boots without `--kernel`: Debian 12's own and its newer series.
pub const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12"];
/// Seconds one VM may run before it counts as hung (a whole run takes about 50 s).
pub const DEFAULT_TIMEOUT_SECS: u64 = 900;

/// Set for the kernel tests in the VMs: every agent they start must have the best hook for
/// every capability (the tests' harness asserts it), so the assertions run on LSM and fentry.
const EXPECT_BEST_HOOKS: &str = "CLINICWATCH_EXPECT_BEST_HOOKS";

pub struct Options {
    pub kernels: Vec<String>,
    pub timeout: Duration,
    /// Extra arguments for the kernel test binary (a name filter, say).
    pub test_args: Vec<String>,
    /// Extra kernel command line.
    pub append: String,
    /// Accept tests that skip inside the VM.
    pub allow_skips: bool,
}

/// The kernel test binary that cargo built, from `cargo test --no-run`'s JSON messages.
fn kernel_test_binary() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "test",
            "-p",
            "clinicwatch-tests",
            "--test",
            "kernel",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("failed to run cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the kernel tests failed: {}", out.status);
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_kernel_test = msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "kernel"
            && msg["profile"]["test"] == true;
        if let (true, Some(exe)) = (is_kernel_test, msg["executable"].as_str()) {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo built no `kernel` test binary")
}

/// Host programs the kernel tests run (the btrfs test), copied with their libraries.
const HOST_TOOLS: &[&str] = &["/bin/sh", "mkfs.btrfs", "btrfs", "mount", "umount"];
/// Shared libraries the kernel tests load themselves.
const TLS_LIBRARIES: &[&str] = &["/usr/lib/x86_64-linux-gnu/libssl.so.3"];

fn which(tool: &str) -> Option<PathBuf> {
    if tool.starts_with('/') {
        return Some(PathBuf::from(tool));
    }
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// The initramfs common to every kernel: `/init`, the plan, the test binaries, the agent
/// and the host tools the tests run. The tests run with `--nocapture` so that their
/// `SKIPPED` lines reach the console.
fn pack(test_args: &[String]) -> anyhow::Result<initramfs::Archive> {
    let tests = kernel_test_binary()?;
    let debug = target_dir().join("debug");
    let agent = debug.join("clinicwatch-agent");
    let workload = debug.join("cw-workload");
    let init = debug.join("cw-vminit");
    let dir = target_dir().join("vm");
    let scratch = dir.join("stripped");
    std::fs::create_dir_all(&scratch)?;

    let mut a = initramfs::Archive::default();
    for exe in [&tests, &agent, &workload] {
        a.executable(exe, &scratch)?;
    }
    a.executable(&init, &scratch)?;
    a.copy(&scratch.join("cw-vminit"), "/init")?;
    for tool in HOST_TOOLS {
        match which(tool) {
            Some(path) => {
                a.copy(&path, &path)?;
                a.libraries(&path)?;
            }
            None => eprintln!("vm-test: `{tool}` is not installed; tests that need it skip"),
        }
    }
    // OpenSSL's libssl for the TLS uprobe test (loaded by the workload at run time).
    for lib in TLS_LIBRARIES {
        let p = std::path::Path::new(lib);
        if p.exists() {
            a.copy(p, p)?;
            a.libraries(p)?;
        } else {
            eprintln!("vm-test: `{lib}` is not installed; the TLS uprobe test skips");
        }
    }
    a.char_dev("/dev/console", 5, 1);
    for d in ["/proc", "/sys", "/tmp", "/root", "/etc", "/run"] {
        a.dir(d);
    }
    let plan = format!(
        "check {agent} check\ntests {expect}=1 {tests} --test-threads=1 --nocapture {args}\n",
        agent = agent.display(),
        expect = EXPECT_BEST_HOOKS,
        tests = tests.display(),
        args = test_args.join(" ")
    );
    a.file("/cw-vm/plan", plan.into_bytes(), 0o644);
    Ok(a)
}

/// Writes the initramfs for one kernel: the common part plus its modules.
fn initrd_for(common: &initramfs::Archive, kernel: &fetch::Kernel) -> anyhow::Result<PathBuf> {
    let mut a = common.clone();
    for m in &kernel.modules {
        let name = m.file_name().context("module without a name")?;
        a.copy(m, std::path::Path::new("/cw-vm/modules").join(name))?;
    }
    let cpio = target_dir()
        .join("vm")
        .join(format!("initramfs-{}.cpio", kernel.release));
    let size = a.write(&cpio)?;
    eprintln!(
        "vm-test: initramfs {} ({:.1} MiB, {} modules)",
        cpio.display(),
        size as f64 / (1 << 20) as f64,
        kernel.modules.len()
    );
    Ok(cpio)
}

pub fn vm_test(opts: &Options) -> anyhow::Result<()> {
    let specs: Vec<String> = if opts.kernels.is_empty() {
        DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect()
    } else {
        opts.kernels.clone()
    };
    let qemu = fetch::qemu()?;
    let kernels = specs
        .iter()
        .map(|s| fetch::kernel(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let common = pack(&opts.test_args)?;

    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for k in &kernels {
        let initrd = initrd_for(&common, k)?;
        println!("vm-test: booting {} (TCG)", k.release);
        let v = boot::boot(
            &qemu,
            k,
            &initrd,
            &opts.append,
            opts.timeout,
            &format!("[{}] ", k.release),
        )?;
        println!("vm-test: {} hooks:", k.release);
        for (cap, hook) in &v.hooks {
            println!("    {cap:<12} {hook}");
        }
        let mut failure = v.failure_allowing(opts.allow_skips);
        if failure.is_none() && v.release != k.release {
            failure = Some(format!("booted `{}`, expected `{}`", v.release, k.release));
        }
        let line = match failure {
            None => format!(
                "vm-test {}: PASS: {} tests passed ({} skipped), best hook for all {} capabilities, {:.0} s",
                k.release,
                v.passed,
                v.skipped,
                v.hooks.len(),
                v.secs
            ),
            Some(why) => {
                println!("vm-test: {} console tail:", k.release);
                let from = v.console.len().saturating_sub(40);
                for l in &v.console[from..] {
                    println!("    {l}");
                }
                for n in &v.hook_notes {
                    println!("    hook: {n}");
                }
                failures.push(k.release.clone());
                format!("vm-test {}: FAIL: {why} ({:.0} s)", k.release, v.secs)
            }
        };
        println!("{line}");
        summary.push(line);
    }
    println!("vm-test summary:");
    for l in &summary {
        println!("  {l}");
    }
    if !failures.is_empty() {
        bail!("vm-test failed on {}", failures.join(", "));
    }
    println!("vm-test: {} kernels, all passed", kernels.len());
    Ok(())
}
