//! Running cargo and other programs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Runs a command to completion; fails with its name and status otherwise.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn cargo(args: &[&str], extra: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(root())
        .args(args)
        .args(extra))
}

/// Builds every binary of the workspace (the agent embeds the eBPF object it builds).
pub fn build(release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build", "--workspace", "--exclude", "sensor-ebpf", "--bins"];
    if release {
        args.push("--release");
    }
    cargo(&args, &[])
}

/// Every test of the workspace. Kernel tests share kernel state: one thread. Ends with one
/// line totalling every test binary's result, so the last line speaks for the whole run.
pub fn test(extra: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // SAFETY: plain syscall.
    let expect = if unsafe { libc::geteuid() } == 0 {
        "1"
    } else {
        "0"
    };
    // Tests report their skips here (`clinicwatch-testkit`); as root, one off the allow-list
    // fails the run.
    let skip_log = target_dir().join("test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    let mut child = Command::new(cargo)
        .current_dir(root())
        .env("CLINICWATCH_SKIP_LOG", &skip_log)
        // As root, setup installed PostgreSQL and Chromium: their tests must run, not skip.
        .env("CLINICWATCH_EXPECT_PG", expect)
        .env("CLINICWATCH_EXPECT_CHROMIUM", expect)
        .args([
            "test",
            "--workspace",
            "--exclude",
            "sensor-ebpf",
            "--",
            "--test-threads=1",
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("failed to start cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (
                    words.next().and_then(|n| n.parse::<u64>().ok()),
                    words.next(),
                ) {
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    let skips = crate::skips::read(&skip_log)?;
    println!(
        "tests: {passed} passed (of which {} skipped at least in part), {failed} failed, {ignored} ignored",
        skips.len()
    );
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    crate::skips::check(&skips, expect == "1")
}
