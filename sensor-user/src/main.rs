//! `clinicwatch-agent`: runs the agent until Ctrl-C or SIGTERM.
//! `clinicwatch-agent check`: loads and attaches every probe, prints which hook serves each
//! capability on this kernel, detaches and exits.
//! `clinicwatch-agent baseline show|import`, `findings --since`, `replay FILE`: offline.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use clinicwatch_agent::{agent::default_config_path, report, Agent, Config};
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
    /// Get this host's client certificate from the collector with the clinic's enrollment
    /// token (`clinicwatch-collector enroll-token --clinic ID`). Uses `[export]`: collector,
    /// host, ca_file (the collector's CA, copied beforehand); writes key_file and cert_file.
    Enroll {
        /// The token, or `-` to read it from stdin (keeps it out of the process list).
        #[arg(long)]
        token: String,
        /// Enroll again even if `export.key_file` exists.
        #[arg(long)]
        force: bool,
    },
    /// What the agent has learned is normal, per application.
    Baseline {
        #[command(subcommand)]
        cmd: BaselineCmd,
    },
    /// Findings from the findings log (`agent.state_dir/findings.jsonl`).
    Findings {
        /// `30m`, `24h`, `7d`, `2026-11-29`, `2026-11-29T08:00` (UTC) or unix seconds.
        #[arg(long, default_value = "24h")]
        since: String,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replay a recorded event file (JSON lines, `-` for stdin) through fresh detectors and
    /// print their findings; touches no state and needs no root. For tuning rules.
    Replay {
        file: PathBuf,
        /// Print the window summaries too.
        #[arg(long)]
        summaries: bool,
        /// Override `intel.learning_days` for this replay.
        #[arg(long)]
        learning_days: Option<f64>,
    },
}

#[derive(Subcommand)]
enum BaselineCmd {
    /// Print each application's baseline (or one: `--app NAME`).
    Show {
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start an application's baseline from one shipped by the collector.
    Import { file: PathBuf },
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
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| default_config_path().to_path_buf());
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    match cli.cmd {
        Some(Cmd::Check) => return check(cli.config),
        Some(Cmd::Enroll { token, force }) => {
            let cfg = Config::from_file(&path)?;
            if cfg.export.collector.is_empty() {
                anyhow::bail!("`export.collector` is not set in `{}`", path.display());
            }
            let token = if token == "-" {
                let mut t = String::new();
                std::io::stdin()
                    .read_line(&mut t)
                    .context("cannot read the token from stdin")?;
                t
            } else {
                token
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let not_after = rt.block_on(clinicwatch_agent::enroll::enroll(
                &cfg.export,
                &token,
                force,
            ))?;
            println!(
                "enrolled {}/{}: certificate in {} until {}",
                cfg.export.clinic,
                cfg.export.host,
                cfg.export.cert_file.display(),
                report::utc(not_after)
            );
            return Ok(());
        }
        Some(Cmd::Baseline { cmd }) => {
            let cfg = Config::from_file(&path)?;
            return match cmd {
                BaselineCmd::Show { app, json } => {
                    report::show_baselines(&cfg, app.as_deref(), json, now())
                }
                BaselineCmd::Import { file } => report::import_baseline(&cfg, &file),
            };
        }
        Some(Cmd::Findings { since, json }) => {
            let cfg = Config::from_file(&path)?;
            let since = report::parse_since(&since, now())?;
            let log = cfg.agent.state_dir.join("findings.jsonl");
            // The rotated generation first: oldest to newest.
            let (mut found, mut bad) =
                report::read_findings(&log.with_extension("jsonl.1"), since)?;
            let (newer, bad_newer) = report::read_findings(&log, since)?;
            found.extend(newer);
            bad += bad_newer;
            for f in &found {
                if json {
                    println!("{}", serde_json::to_string(f)?);
                } else {
                    println!("{}", report::finding_line(f));
                }
            }
            if bad > 0 {
                eprintln!("{bad} malformed line(s) in `{}` skipped", log.display());
            }
            eprintln!("{} finding(s) since {}", found.len(), report::utc(since));
            return Ok(());
        }
        Some(Cmd::Replay {
            file,
            summaries,
            learning_days,
        }) => {
            let mut cfg = Config::from_file(&path)?;
            if let Some(d) = learning_days {
                cfg.intel.learning_days = d;
                cfg.validate()?;
            }
            let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("cannot open `{}`", file.display()))?,
                ))
            };
            let r = report::replay(&cfg, input, std::io::stdout().lock(), summaries)?;
            eprintln!(
                "replayed {} events ({} malformed lines skipped): {} windows, {} findings",
                r.events,
                r.malformed,
                r.windows,
                r.findings.len()
            );
            return Ok(());
        }
        None => {}
    }
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
