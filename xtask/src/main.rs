//! `cargo xtask`: the project's commands.
//!
//! - `setup`: installs what a fresh machine lacks to build the eBPF programs (idempotent).
//! - `build`: builds the agent with its embedded eBPF object, and the test workload.
//! - `demo`: builds in release, then tells the story on this machine (root): a collector, this
//!   host's agent enrolled with it, a simulated fleet, an infostealer, a fleet incident.
//! - `test`: setup, build, then every test of the workspace, kernel tests included (root),
//!   then the kernel tests again inside VMs booting Debian's 6.1 and 6.12 (`vm-test`).
//! - `bench`: builds in release, then runs `cw-bench` (overhead ratios, burst, scale);
//!   `bench ingest` runs `cw-ingest-bench` (the collector's ingest cost), `bench fleet` its
//!   fleet simulation (5,000 clinics, a normal day, a campaign).
//! - `vm-test`: the kernel tests inside VMs booting Debian's 6.1 and 6.12 kernels (root).
//! - `run -- ARGS`: builds and runs `clinicwatch-agent ARGS`.
//! - `package`: builds in release, then the Debian packages of the agent and the collector
//!   in `target/debian/` (`--no-build`: from the release binaries already built).
//! - `fuzz`: installs cargo-fuzz if missing, then runs each fuzz target of `fuzz/` for a few
//!   seconds (nightly, libFuzzer) from the corpus in `fuzz/corpus/`.

mod apt;
#[cfg(test)]
mod cycles;
mod demo;
mod fuzz;
mod package;
mod setup;
#[cfg(test)]
mod sizes;
mod skips;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install rust-src and bpf-linker (linked against the toolchain's LLVM) if missing.
    Setup,
    /// Build the agent (with its eBPF object) and the test workload.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// The whole pipeline on this machine (root, release builds): a collector, this host's
    /// agent enrolled with it, 30 simulated clinics, then an infostealer here and in a dozen
    /// clinics, and the fleet incident it opens. Runs until Ctrl-C.
    Demo {
        /// Exit (0) once the incident is seen and printed, for CI.
        #[arg(long)]
        until_incident: bool,
        /// Seconds from the start (after the build) within which the incident must open.
        #[arg(long, default_value_t = 90)]
        timeout: u64,
    },
    /// Run every test: unit tests, the eBPF object test, the kernel tests (root) on this
    /// kernel, then the kernel tests in VMs on Debian's 6.1 and 6.12 kernels.
    Test {
        /// Skip the VMs (this kernel only).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments for the test binaries (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks. Without a suite: the sensor's overhead ratios attached/detached, burst,
    /// scale (root; about 12 minutes). `ingest`: the collector's events per CPU-second,
    /// batched against one per frame, TLS on and off, and 5,000 agents reconnecting at once
    /// (about 15 s; no root needed).
    Bench {
        /// `ingest` for the collector's ingest benchmark, `fleet` for the simulated fleet of
        /// 5,000 clinics (a normal day, then a campaign); none for the sensor's.
        suite: Option<String>,
        /// Arguments for the benchmark binary, e.g. `-- --only pread16 --pairs 6`, or for
        /// ingest `-- --reconnect 10000`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot other kernels under QEMU (TCG) and run the kernel tests inside each (root).
    VmTest {
        /// Kernels to boot: `6.1`, `6.12`, a release (`6.1.0-56-cloud-amd64`) or a
        /// linux-image package; repeat for several. Default: 6.1 and 6.12.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Seconds one VM may run before it counts as hung.
        #[arg(long, default_value_t = vm::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
        /// Extra kernel command line, e.g. `lsm=lockdown,capability` to see the fallbacks
        /// chosen (and the run fail) on a kernel without BPF-LSM.
        #[arg(long, default_value = "")]
        append: String,
        /// Accept tests that skip inside the VM (by default a skip fails the kernel).
        #[arg(long)]
        allow_skips: bool,
        /// Extra arguments for the kernel test binary (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the fuzz targets (cargo-fuzz on the nightly toolchain, installed if missing), all
    /// or some, each for a few seconds; fails on a crash and says where its input is.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECS)]
        secs: u64,
        /// Build in release with AddressSanitizer (slower to build, faster to run) instead
        /// of the quick debug build: for long runs.
        #[arg(long)]
        release: bool,
        /// A target to run (`ring_buffer`, `dns`, `tls_plaintext`, `btf`, `frames`); repeat
        /// for several. Default: every target.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Extra libFuzzer arguments (after `--`), e.g. `-- -jobs=2`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build and run `clinicwatch-agent` with these arguments.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build in release, then the Debian packages of the agent and the collector
    /// (target/debian/*.deb).
    Package {
        /// Package the release binaries already in target/release (no setup, no build).
        #[arg(long)]
        no_build: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release } => build(release),
        Cmd::Demo {
            until_incident,
            timeout,
        } => demo(until_incident, timeout),
        Cmd::Test { host_only, args } => test(host_only, &args),
        Cmd::Bench { suite, args } => bench(suite.as_deref(), args),
        Cmd::VmTest {
            kernels,
            timeout,
            append,
            allow_skips,
            args,
        } => vm_test(vm::Options {
            kernels,
            timeout: std::time::Duration::from_secs(timeout),
            test_args: args,
            append,
            allow_skips,
        }),
        Cmd::Package { no_build } => package::package(!no_build),
        Cmd::Fuzz {
            secs,
            release,
            targets,
            args,
        } => fuzz::fuzz(&fuzz::Options {
            secs,
            release,
            targets,
            args,
        }),
        Cmd::Run { args } => run(&args),
    }
}

fn build(release: bool) -> anyhow::Result<()> {
    setup::setup()?;
    util::build(release)
}

fn demo(until_incident: bool, timeout_secs: u64) -> anyhow::Result<()> {
    setup::setup()?;
    util::build(true)?;
    demo::demo(&demo::Options {
        until_incident,
        timeout: std::time::Duration::from_secs(timeout_secs),
    })
}

/// The workspace's tests on this kernel, then (unless `host_only`) in the default VMs.
fn test(host_only: bool, args: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    util::build(false)?;
    util::test(args)?;
    if host_only {
        return Ok(());
    }
    vm::vm_test(&vm::Options {
        kernels: Vec::new(),
        timeout: std::time::Duration::from_secs(vm::DEFAULT_TIMEOUT_SECS),
        test_args: Vec::new(),
        append: String::new(),
        allow_skips: false,
    })
}

/// The benchmark binary of `suite` (checked before building), run in release.
fn bench(suite: Option<&str>, mut args: Vec<String>) -> anyhow::Result<()> {
    let bin = match suite {
        None => "cw-bench",
        Some("ingest") | Some("fleet") => "cw-ingest-bench",
        Some(other) => {
            anyhow::bail!("unknown benchmark suite `{other}` (known: ingest, fleet)")
        }
    };
    if suite == Some("fleet") {
        args.insert(0, "fleet".into());
    }
    setup::setup()?;
    util::build(true)?;
    util::run(std::process::Command::new(util::target_dir().join("release").join(bin)).args(&args))
}

fn vm_test(options: vm::Options) -> anyhow::Result<()> {
    setup::setup()?;
    util::build(false)?;
    vm::vm_test(&options)
}

/// Builds, then `cargo run`s the agent with `args`.
fn run(args: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    util::build(false)?;
    util::cargo(
        &[
            "run",
            "--quiet",
            "-p",
            "clinicwatch-agent",
            "--bin",
            "clinicwatch-agent",
            "--",
        ],
        args,
    )
}
