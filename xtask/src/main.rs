//! `cargo xtask`: the project's commands.
//!
//! - `setup`: installs what a fresh machine lacks to build the eBPF programs (idempotent).
//! - `build`: builds the agent with its embedded eBPF object, and the test workload.
//! - `demo`: builds, then runs the agent against the demo workload and prints its events.
//! - `test`: setup, build, then every test of the workspace, kernel tests included (root).
//! - `bench`: builds in release, then runs `cw-bench` (overhead ratios, burst, scale).
//! - `run -- ARGS`: builds and runs `clinicwatch-agent ARGS`.

mod demo;
mod setup;
mod util;

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
    /// Run the agent against a demo workload on this machine (root).
    Demo,
    /// Run every test: unit tests, the eBPF object test, and the kernel tests (root).
    Test {
        /// Extra arguments for the test binaries (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks: overhead ratios attached/detached, burst, scale (root; about 12 minutes).
    Bench {
        /// Arguments for cw-bench, e.g. `-- --only pread16 --pairs 6`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build and run `clinicwatch-agent` with these arguments.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release } => {
            setup::setup()?;
            util::build(release)
        }
        Cmd::Demo => {
            setup::setup()?;
            util::build(false)?;
            demo::demo()
        }
        Cmd::Test { args } => {
            setup::setup()?;
            util::build(false)?;
            util::test(&args)
        }
        Cmd::Bench { args } => {
            setup::setup()?;
            util::build(true)?;
            util::run(
                std::process::Command::new(util::target_dir().join("release/cw-bench")).args(&args),
            )
        }
        Cmd::Run { args } => {
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
                &args,
            )
        }
    }
}
