//! `clinicwatch-agent`: runs the agent until Ctrl-C or SIGTERM.
//! `clinicwatch-agent check`: loads and attaches every probe, prints which hook serves each
//! capability on this kernel, detaches and exits.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
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
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load and attach every probe, print which hook serves each capability on this kernel
    /// (and why better ones were passed over), then detach and exit. Without `--config`
    /// and with no file at the default path, watches only the agent's own executable.
    Check,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `check` prints a table on stdout; its log stays to warnings unless RUST_LOG says more.
    let level = if cli.cmd.is_some() { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(Cmd::Check) = cli.cmd {
        return check(cli.config);
    }
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

fn check(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = match config {
        Some(path) => Config::from_file(&path)?,
        None if default_config_path().exists() => Config::from_file(default_config_path())?,
        None => {
            let me = std::env::current_exe().context("cannot find the agent's executable")?;
            let text = format!(
                "[[app]]\nname = \"clinicwatch-agent\"\nexe = \"{}\"\n",
                me.display()
            );
            Config::from_toml(&text)?
        }
    };
    let agent = Agent::start(&cfg, false, None).context("cannot start the agent")?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", kernel.trim());
    print!(
        "{}",
        clinicwatch_agent::capabilities::render_reports(&agent.capabilities)
    );
    agent.stop();
    Ok(())
}
