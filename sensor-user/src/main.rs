//! `clinicwatch-agent`: runs the agent until Ctrl-C or SIGTERM.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use clinicwatch_agent::{agent::default_config_path, Agent, Config};
use tracing_subscriber::EnvFilter;

/// eBPF sensor for practice-management applications.
#[derive(Parser)]
#[command(name = "clinicwatch-agent", version)]
struct Cli {
    /// Config file (TOML).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Write events here instead of the config's `agent.output` (`-` for stdout).
    #[arg(short, long)]
    output: Option<String>,
    /// Seconds between counter snapshots (overrides the config).
    #[arg(long)]
    snapshot_interval: Option<u64>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let path = cli
        .config
        .unwrap_or_else(|| default_config_path().to_path_buf());
    let mut cfg = Config::from_file(&path)?;
    if let Some(o) = cli.output {
        cfg.agent.output = o;
    }
    if let Some(s) = cli.snapshot_interval {
        cfg.agent.snapshot_interval_secs = s;
    }
    cfg.validate()?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let agent = Agent::start(&cfg, true, None).context("cannot start the agent")?;
    tracing::info!(config = %path.display(), "running; Ctrl-C to stop");
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
    tracing::info!("stopped; every probe detached");
    Ok(())
}
