//! `cw-bench` (run by `cargo xtask bench`): sensor overhead as ratios, attached over detached,
//! measured side by side in one run, in alternating windows.
//!
//! Each scenario runs a timed loop of `cw-workload` (a watched copy or an unwatched copy) in
//! windows of `--window` seconds, with the agent attached in one window and detached in the
//! next (the order alternates), for `--pairs` pairs. The ratio of each pair is
//! attached ops/s over detached ops/s; the table gives the median, min and max.

mod burst;
mod scale;
mod scenarios;
mod servers;
mod tls;

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Parser;

#[derive(Parser, Clone)]
#[command(name = "cw-bench")]
pub struct Args {
    /// Attached/detached pairs per scenario (at least 4).
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Seconds per window.
    #[arg(long, default_value_t = 1.5)]
    pub window: f64,
    /// Only this scenario: pread16, getpid, open-close, unwatched-connect, unwatched-pread,
    /// connect-accept, echo, macro, burst, scale or tls.
    #[arg(long)]
    pub only: Option<String>,
    /// The workload binary (default: beside this one).
    #[arg(long)]
    pub workload: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.pairs < 4 {
        bail!("--pairs must be at least 4");
    }
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cw-bench loads eBPF programs: run it as root");
    }
    let workload = match &args.workload {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("cw-workload"),
    };
    let bench = scenarios::Bench::new(&workload, args.clone())
        .context("cannot prepare the benchmark folder")?;
    let rows = bench.run_all()?;
    let burst = if args.only.as_deref().is_none_or(|o| o == "burst") {
        eprintln!("bench: 3 burst");
        burst::run(&bench)?
    } else {
        Vec::new()
    };
    let scale = if args.only.as_deref().is_none_or(|o| o == "scale") {
        eprintln!("bench: 6 scale");
        scale::run(&bench)?
    } else {
        Vec::new()
    };
    let tls = if args.only.as_deref().is_none_or(|o| o == "tls") {
        eprintln!("bench: tls");
        tls::run(&bench, args.pairs, 2.0)?
    } else {
        Vec::new()
    };
    println!();
    println!("{}", scenarios::table(&rows));
    for line in burst {
        println!("- {line} (`cargo xtask bench -- --only burst`)");
    }
    for line in scale {
        println!("- {line} (`cargo xtask bench -- --only scale`)");
    }
    for line in tls {
        println!("- {line} (`cargo xtask bench -- --only tls`)");
    }
    Ok(())
}
