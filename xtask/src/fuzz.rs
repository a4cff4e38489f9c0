//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer, nightly), each
//! for a few seconds, from the corpus kept in the repository.
//!
//! Installs cargo-fuzz when it is missing, builds every target once, then runs them side by
//! side, one per core. The build is cargo-fuzz's debug mode by default (debug assertions and
//! overflow checks, no sanitizer: a cold build in a third of the CPU time, inputs about half
//! as fast), or with `--release` its release mode with AddressSanitizer (and debug
//! assertions), for long runs. New inputs go to a scratch
//! corpus in `target/fuzz/corpus/<target>/` (kept between runs; the repository's corpus is
//! only read), each target's output to `target/fuzz/<target>.log`. A crash, a timeout or a
//! leak fails the run, with the input's path and how to replay it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::util::{root, run, target_dir};

/// The toolchain cargo-fuzz builds with (sanitizers and `-Z` flags need a nightly).
const NIGHTLY: &str = "nightly";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Seconds each target runs by default: a smoke run (CI), not a campaign.
pub const DEFAULT_SECS: u64 = 20;
/// Seconds one input may take before libFuzzer reports a timeout (inputs take microseconds).
const INPUT_TIMEOUT_SECS: u64 = 10;

pub struct Options {
    pub secs: u64,
    /// Release build with AddressSanitizer instead of the quick debug build.
    pub release: bool,
    /// Targets to run (all of `fuzz/fuzz_targets/` when empty).
    pub targets: Vec<String>,
    /// Extra libFuzzer arguments, e.g. `-jobs=4` or `-only_ascii=1`.
    pub args: Vec<String>,
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// Every target: the files of `fuzz/fuzz_targets/`.
fn all_targets() -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    v.sort();
    Ok(v)
}

fn cargo_fuzz_ok() -> bool {
    Command::new("cargo")
        .args([&format!("+{NIGHTLY}"), "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let nightly = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        // A fresh machine has only the pinned stable toolchain.
        eprintln!("fuzz: installing the `{NIGHTLY}` toolchain (rustup, minimal profile)");
        run(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
            .with_context(|| {
                format!("cargo-fuzz needs a `{NIGHTLY}` toolchain and rustup could not install it")
            })?;
    }
    if cargo_fuzz_ok() {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 40 s)");
    run(Command::new("cargo")
        .arg(format!("+{}", crate::setup::TOOLCHAIN))
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .current_dir(std::env::temp_dir()))?;
    if !cargo_fuzz_ok() {
        bail!("cargo-fuzz was installed but `cargo +{NIGHTLY} fuzz --version` does not work");
    }
    Ok(())
}

/// `cargo +nightly fuzz SUBCOMMAND` with the build options (the same for `build` and `run`,
/// or `run` would build again).
fn cargo_fuzz(subcommand: &str, release: bool) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args([&format!("+{NIGHTLY}"), "fuzz", subcommand])
        // Debug assertions and overflow checks in both modes: an overflow is a finding.
        .arg("--debug-assertions")
        // The targets parse bytes; they never load the eBPF object.
        .env("CLINICWATCH_SKIP_EBPF", "1");
    if !release {
        cmd.args(["--dev", "--sanitizer", "none"]);
    }
    cmd
}

/// What libFuzzer's last lines say about a run.
#[derive(Default)]
struct Stats {
    runs: u64,
    per_sec: u64,
    cov: u64,
    features: u64,
    corpus: String,
    /// The input written on a crash, a timeout or a leak.
    input: Option<String>,
}

fn parse_log(log: &str) -> Stats {
    let mut s = Stats::default();
    let field = |line: &str, key: &str| -> Option<String> {
        let mut w = line.split_whitespace();
        w.find(|x| *x == key)?;
        w.next().map(str::to_string)
    };
    for line in log.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.runs = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            s.per_sec = v.trim().parse().unwrap_or(0);
        } else if line.contains(" cov: ") && line.starts_with('#') {
            s.cov = field(line, "cov:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(s.cov);
            s.features = field(line, "ft:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(s.features);
            s.corpus = field(line, "corp:").unwrap_or_default();
        } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
            s.input = Some(rest.trim().to_string());
        }
    }
    s
}

struct Running {
    target: String,
    log: PathBuf,
    child: std::process::Child,
}

fn start(target: &str, o: &Options) -> anyhow::Result<Running> {
    let scratch = target_dir().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&scratch)?;
    let log = target_dir().join("fuzz").join(format!("{target}.log"));
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = cargo_fuzz("run", o.release);
    // libFuzzer writes what it finds to the first corpus directory and only reads the others.
    cmd.arg(target)
        .arg(&scratch)
        .arg(fuzz_dir().join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={}", o.secs))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1");
    let dict = fuzz_dir().join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.args(&o.args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = cmd
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    Ok(Running {
        target: target.to_string(),
        log,
        child,
    })
}

/// Waits for `r`; prints its result. Returns whether it passed.
fn finish(mut r: Running, release: bool) -> anyhow::Result<bool> {
    let status = r.child.wait()?;
    let log = std::fs::read_to_string(&r.log).unwrap_or_default();
    let s = parse_log(&log);
    if status.success() {
        println!(
            "fuzz: `{}` ok: {} runs ({}/s), cov {} ft {}, corpus {}",
            r.target, s.runs, s.per_sec, s.cov, s.features, s.corpus
        );
        return Ok(true);
    }
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    for line in tail.iter().rev() {
        eprintln!("  {line}");
    }
    match s.input {
        Some(input) => {
            let flags = if release { "-a" } else { "-a --dev -s none" };
            let input = Path::new(&input);
            let input = input.strip_prefix(root()).unwrap_or(input).display();
            eprintln!(
                "fuzz: `{t}` FAILED ({status}): the input is {input}\n  \
                 replay: CLINICWATCH_SKIP_EBPF=1 cargo +{NIGHTLY} fuzz run {flags} {t} {input}\n  \
                 minimise: CLINICWATCH_SKIP_EBPF=1 cargo +{NIGHTLY} fuzz tmin {flags} {t} {input}\n  \
                 once fixed, keep it as fuzz/corpus/{t}/crash-<what> (docs/development.md)",
                t = r.target
            );
        }
        None => eprintln!(
            "fuzz: `{}` FAILED ({status}) without an input; see {}",
            r.target,
            r.log.display()
        ),
    }
    Ok(false)
}

pub fn fuzz(o: &Options) -> anyhow::Result<()> {
    let known = all_targets()?;
    let targets = if o.targets.is_empty() {
        known.clone()
    } else {
        o.targets.clone()
    };
    if let Some(t) = targets.iter().find(|t| !known.contains(t)) {
        bail!("unknown fuzz target `{t}` (known: {})", known.join(", "));
    }
    let started = Instant::now();
    ensure_cargo_fuzz()?;
    // One build of every target: they share every dependency.
    run(cargo_fuzz("build", o.release).args(if targets.len() == 1 {
        vec![targets[0].as_str()]
    } else {
        Vec::new()
    }))
    .context("building the fuzz targets")?;
    let built = started.elapsed();
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut queue = targets.iter();
    let mut running: Vec<Running> = Vec::new();
    let mut failed = Vec::new();
    loop {
        while running.len() < slots {
            let Some(t) = queue.next() else { break };
            running.push(start(t, o)?);
        }
        if running.is_empty() {
            break;
        }
        // Targets run for the same time: the first started ends first.
        let r = running.remove(0);
        let target = r.target.clone();
        if !finish(r, o.release)? {
            failed.push(target);
        }
    }
    println!(
        "fuzz: {} targets, {} s each, in {:.0?} (cargo-fuzz and build {:.0?})",
        targets.len(),
        o.secs,
        round(started.elapsed()),
        round(built)
    );
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
