//! `clinicwatch-agent`: runs the agent until Ctrl-C or SIGTERM.
//! `clinicwatch-agent check`: loads and attaches every probe, prints which hook serves each
//! capability on this kernel, detaches and exits.
//! `clinicwatch-agent baseline show|import`, `findings --since`, `replay FILE`: offline.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use clinicwatch_agent::{agent::default_config_path, cli::report, Agent, Config};
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
    /// Enroll this host in one step: fetch (or read) the collector's CA, make the key and
    /// CSR, get the certificate with the clinic's token (`clinicwatch-collector
    /// enroll-token --clinic ID` prints it with the CA's SHA-256), and write the `[export]`
    /// section of the config file. Then start the service.
    Enroll(EnrollArgs),
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

/// Exit status of a start that cannot succeed by retrying (a bad config, a missing
/// capability): EX_CONFIG, which the unit's `RestartPreventExitStatus=` does not restart.
const EXIT_CONFIG: u8 = 78;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            let permanent = e.chain().any(|c| {
                c.is::<clinicwatch_agent::config::ConfigError>()
                    || c.is::<clinicwatch_agent::kernel::privileges::PrivilegeError>()
            });
            std::process::ExitCode::from(if permanent { EXIT_CONFIG } else { 1 })
        }
    }
}

fn run() -> anyhow::Result<()> {
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
    match cli.cmd {
        Some(Cmd::Check) => check(cli.config),
        Some(Cmd::Enroll(args)) => enroll(&path, args),
        Some(Cmd::Baseline { cmd }) => baseline(&path, cmd),
        Some(Cmd::Findings { since, json }) => findings(&path, &since, json),
        Some(Cmd::Replay {
            file,
            summaries,
            learning_days,
        }) => replay(&path, &file, summaries, learning_days),
        None => serve(&path, cli.output, cli.snapshot_interval),
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `baseline show|import`.
fn baseline(path: &Path, cmd: BaselineCmd) -> anyhow::Result<()> {
    let cfg = Config::from_file(path)?;
    match cmd {
        BaselineCmd::Show { app, json } => {
            report::show_baselines(&cfg, app.as_deref(), json, now())
        }
        BaselineCmd::Import { file } => report::import_baseline(&cfg, &file),
    }
}

/// `findings --since`: the findings log, rotated generation first (oldest to newest).
fn findings(path: &Path, since: &str, json: bool) -> anyhow::Result<()> {
    let cfg = Config::from_file(path)?;
    let since = report::parse_since(since, now())?;
    let log = cfg.agent.state_dir.join("findings.jsonl");
    let (mut found, mut bad) = report::read_findings(&log.with_extension("jsonl.1"), since)?;
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
    Ok(())
}

/// `replay FILE`: recorded events through windows and rules again.
fn replay(
    path: &Path,
    file: &Path,
    summaries: bool,
    learning_days: Option<f64>,
) -> anyhow::Result<()> {
    let mut cfg = Config::from_file(path)?;
    if let Some(d) = learning_days {
        cfg.intel.learning_days = d;
        cfg.validate()?;
    }
    let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file)
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
    Ok(())
}

/// No subcommand: run the agent until Ctrl-C or SIGTERM.
fn serve(path: &Path, output: Option<String>, snapshot: Option<u64>) -> anyhow::Result<()> {
    let mut cfg = Config::from_file(path)?;
    if let Some(o) = output {
        cfg.agent.output = o;
    }
    if let Some(s) = snapshot {
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

#[derive(clap::Args)]
struct EnrollArgs {
    /// The collector, `https://HOST:PORT` (default: `export.collector` of the config).
    #[arg(long)]
    collector: Option<String>,
    /// The token, or `-` to read it from stdin (keeps it out of the process list).
    #[arg(long)]
    token: String,
    /// The collector's CA certificate's SHA-256 (hex): the CA is fetched from the
    /// collector and checked against it.
    #[arg(long, conflicts_with = "ca_file")]
    ca_sha256: Option<String>,
    /// The collector's CA certificate (PEM) instead of fetching it (default:
    /// `export.ca_file` of the config).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// This host's id (default: the host name).
    #[arg(long)]
    host: Option<String>,
    /// Enroll again even if `export.key_file` exists.
    #[arg(long)]
    force: bool,
}

fn enroll(path: &std::path::Path, a: EnrollArgs) -> anyhow::Result<()> {
    use clinicwatch_agent::delivery::bootstrap::{self, CaSource};
    let cfg = Config::from_file(path)?;
    let collector = a.collector.unwrap_or_else(|| cfg.export.collector.clone());
    if collector.is_empty() {
        anyhow::bail!(
            "no collector: pass `--collector https://HOST:7443` (or set `export.collector` in `{}`)",
            path.display()
        );
    }
    let ca = match (a.ca_sha256, a.ca_file) {
        (Some(pin), _) => CaSource::Pin(pin),
        (None, Some(file)) => CaSource::File(file),
        (None, None) if !cfg.export.ca_file.as_os_str().is_empty() => {
            CaSource::File(cfg.export.ca_file.clone())
        }
        (None, None) => anyhow::bail!(
            "the collector's CA: pass `--ca-sha256 HASH` (printed by `clinicwatch-collector enroll-token`) or `--ca-file ca.pem`"
        ),
    };
    let token = if a.token == "-" {
        let mut t = String::new();
        std::io::stdin()
            .read_line(&mut t)
            .context("cannot read the token from stdin")?;
        t
    } else {
        a.token
    };
    let host = a
        .host
        .or_else(|| (!cfg.export.host.is_empty()).then(|| cfg.export.host.clone()))
        .unwrap_or_else(bootstrap::default_host);
    let req = bootstrap::Request {
        config: path.to_path_buf(),
        collector,
        token,
        ca,
        host,
        force: a.force,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(bootstrap::enroll(&req))?;
    let e = &done.export;
    println!(
        "enrolled {}/{} with {}: certificate {} until {}\n[export] written to {}\nnext: systemctl enable --now clinicwatch-agent   (or restart it if it runs)",
        e.clinic,
        e.host,
        e.collector,
        e.cert_file.display(),
        report::utc(done.not_after),
        path.display()
    );
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
    let agent = Agent::probe(&cfg).context("cannot start the agent")?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", kernel.trim());
    print!(
        "{}",
        clinicwatch_agent::kernel::capabilities::render_reports(&agent.capabilities)
    );
    agent.stop();
    Ok(())
}
