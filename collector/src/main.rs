//! `clinicwatch-collector`: `ca init`, `enroll-token`, `unenroll`, `issue` (a host
//! certificate by hand), `serve`.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use clinicwatch_collector::{api::enroll, auth::pki, config::Config, server, store};

#[derive(Parser)]
#[command(name = "clinicwatch-collector", version)]
struct Cli {
    /// Folder of the CA, the server certificate, the enrollment key, `collector.toml` and
    /// (by default) the SQLite database.
    #[arg(long, default_value = PACKAGED_DIR)]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The certificate authority.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Print an enrollment token for a clinic's agents (`clinicwatch-agent enroll --token`);
    /// the database keeps its uses left, so it needs the store.
    EnrollToken {
        #[arg(long)]
        clinic: String,
        /// Days the token can be used (1 to 30).
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// How many hosts it may enroll (1 to 1000).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// The only host id it may enroll (default: any).
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Enrollment tokens: list them, or revoke one.
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Issue a host's client certificate by hand into OUT (cert.pem, key.pem, ca.pem);
    /// enrollment does this without moving keys.
    Issue {
        /// The clinic (with `--host`).
        #[arg(long, required_unless_present = "soc")]
        clinic: Option<String>,
        #[arg(long, required_unless_present = "soc")]
        host: Option<String>,
        /// An analyst's certificate for the SOC service instead (with `--name`).
        #[arg(long, requires = "name", conflicts_with_all = ["clinic", "host"])]
        soc: bool,
        /// The analyst's name (with `--soc`).
        #[arg(long)]
        name: Option<String>,
        /// Days the certificate is valid: 1 to 825 for a host, 1 to 90 for an analyst.
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Refuse every certificate of a host until it enrolls again with a token (a stolen key,
    /// a decommissioned or reinstalled machine), open streams included; an analyst's with
    /// `--clinic clinicwatch-soc --host NAME`.
    Unenroll {
        #[arg(long)]
        clinic: String,
        #[arg(long)]
        host: String,
        /// Configuration (default: DIR/collector.toml if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `store.url`.
        #[arg(long)]
        db: Option<String>,
    },
    /// Incidents (campaigns across clinics) from correlation.
    Incidents {
        #[command(subcommand)]
        cmd: IncidentsCmd,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Hosts: clinic, host, last seen, agent, kernel, spool depth.
    Hosts {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Indicators (destinations, child executables) seen by the most clinics.
    Indicators {
        #[command(subcommand)]
        cmd: IndicatorsCmd,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Serve Ingest (mutual TLS), Enroll and gRPC health; metrics over HTTP.
    Serve {
        /// Configuration (default: DIR/collector.toml if it exists, else the defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `server.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Overrides `store.url` (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: Option<String>,
    },
}

/// Which store the offline commands read.
#[derive(clap::Args)]
struct StoreArgs {
    /// Configuration (default: DIR/collector.toml if it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Overrides `store.url`.
    #[arg(long, global = true)]
    db: Option<String>,
}

#[derive(Subcommand)]
enum IncidentsCmd {
    /// Newest first.
    List {
        /// new, acknowledged, closed or all.
        #[arg(long, default_value = "all")]
        state: String,
        #[arg(long)]
        json: bool,
    },
    /// One incident with its clinics, hosts and evidence.
    Show { id: i64 },
    /// Mark as acknowledged (it keeps being updated).
    Ack { id: i64 },
    /// Close: the next sighting opens a new incident.
    Close { id: i64 },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Every token: id, clinic, host it is bound to, uses left, expiry, revoked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token by its id (as `list` and `enroll-token` show it).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum IndicatorsCmd {
    /// By distinct clinics over the last `--hours`.
    Top {
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Make the CA, the server certificate (for these DNS names or IPs) and the enrollment key.
    Init {
        #[arg(long, default_value = "localhost")]
        name: Vec<String>,
        /// Days the CA and the server certificate are valid (1 to 7300).
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

/// Writes a file that only its owner can read (keys).
fn write_secret(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write `{}`", path.display()))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

fn ca(dir: &Path) -> anyhow::Result<pki::Pem> {
    Ok(pki::Pem {
        cert: read(&dir.join("ca.pem"))?,
        key: read(&dir.join("ca.key"))?,
    })
}

fn token_key(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let p = dir.join("enroll.key");
    let key = std::fs::read(&p)
        .with_context(|| format!("cannot read `{}` (made by `ca init`)", p.display()))?;
    if key.len() < 32 {
        anyhow::bail!("`{}` is shorter than 32 bytes", p.display());
    }
    Ok(key)
}

async fn open_store(dir: &Path, sa: StoreArgs) -> anyhow::Result<Box<dyn store::Store>> {
    let cfg = load_config(dir, sa.config.as_deref(), sa.db)?;
    let url = cfg.store.url;
    Ok(tokio::task::spawn_blocking(move || store::open(&url)).await??)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of unix seconds.
fn utc(t: f64) -> String {
    const SHOWN: &[time::format_description::FormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(t.max(0.0) as i64)
        .ok()
        .and_then(|d| d.format(SHOWN).ok())
        .unwrap_or_else(|| format!("{t}"))
}

async fn enroll_token(
    dir: &Path,
    clinic: String,
    days: u32,
    uses: u32,
    host: Option<String>,
    sa: StoreArgs,
) -> anyhow::Result<()> {
    if !enroll::valid_id(&clinic) {
        anyhow::bail!("clinic id `{clinic}` must be 1 to 64 letters, digits, `.`, `_` or `-`");
    }
    if clinic == clinicwatch_collector::auth::identity::SOC_ORG {
        anyhow::bail!("`{clinic}` is reserved for analysts' certificates (`issue --soc`)");
    }
    if days == 0 || days > 30 {
        anyhow::bail!("--days must be between 1 and 30");
    }
    if uses == 0 || uses > 1000 {
        anyhow::bail!("--uses must be between 1 and 1000");
    }
    if let Some(h) = host.as_deref().filter(|h| !enroll::valid_id(h)) {
        anyhow::bail!("host id `{h}` must be 1 to 64 letters, digits, `.`, `_` or `-`");
    }
    let key = token_key(dir)?;
    let now = clinicwatch_collector::calls::now();
    let exp = now as u64 + days as u64 * 86_400;
    let st = open_store(dir, sa).await?;
    let (c, h) = (clinic.clone(), host.clone().unwrap_or_default());
    let (token, row) = tokio::task::spawn_blocking(move || {
        enroll::issue_token(st.as_ref(), &key, &c, &h, uses, exp)
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let id = row.id;
    println!("{token}");
    // The token alone on stdout (for scripts); how to use it on stderr.
    let pin = pki::cert_sha256(&read(&dir.join("ca.pem"))?)?;
    let bound = host.map_or(String::new(), |h| format!(", host `{h}` only"));
    eprintln!(
        "token {id} for clinic `{clinic}`: {uses} use(s), valid {days} day(s){bound}; revoke it with `tokens revoke {id}`. On each of the clinic's workstations, after installing the agent:\n  clinicwatch-agent enroll --collector https://COLLECTOR:7443 --token TOKEN --ca-sha256 {pin}"
    );
    Ok(())
}

fn tokens(st: &dyn store::Store, cmd: TokensCmd) -> anyhow::Result<()> {
    match cmd {
        TokensCmd::List { json } => {
            for t in st.tokens()? {
                if json {
                    println!("{}", serde_json::to_string(&t)?);
                } else {
                    let host = if t.host.is_empty() {
                        "any host"
                    } else {
                        &t.host
                    };
                    println!(
                        "{}  {:<20} {:<16} {:>4} use(s) left  expires {}{}",
                        t.id,
                        t.clinic,
                        host,
                        t.uses_left,
                        utc(t.expires),
                        if t.revoked { "  revoked" } else { "" }
                    );
                }
            }
        }
        TokensCmd::Revoke { id } => {
            if !st.revoke_token(&id)? {
                anyhow::bail!("no token `{}`", id.escape_debug());
            }
            println!("token {id} revoked");
        }
    }
    Ok(())
}

fn incidents(st: &dyn store::Store, cmd: IncidentsCmd) -> anyhow::Result<()> {
    let now = clinicwatch_collector::calls::now();
    match cmd {
        IncidentsCmd::List { state, json } => {
            let filter = match state.as_str() {
                "all" => None,
                "new" | "acknowledged" | "closed" => Some(state.as_str()),
                other => anyhow::bail!("--state `{other}`: new, acknowledged, closed or all"),
            };
            for i in st.incidents(filter)? {
                if json {
                    println!("{}", serde_json::to_string(&i)?);
                } else {
                    println!(
                        "#{:<5} {:<12} {:<8} {:<36} {:>4} clinics  {} .. {}  {}",
                        i.id,
                        i.state,
                        i.severity,
                        i.rule,
                        i.clinics.len(),
                        utc(i.first_seen),
                        utc(i.last_seen),
                        i.key
                    );
                }
            }
        }
        IncidentsCmd::Show { id } => {
            let i = st
                .incident(id)?
                .ok_or_else(|| anyhow::anyhow!("no incident #{id}"))?;
            println!("incident #{} [{}] {} {}", i.id, i.state, i.severity, i.rule);
            println!("  {}", i.title);
            println!("  group: {}", i.key);
            println!(
                "  seen: {} .. {} (event time)",
                utc(i.first_seen),
                utc(i.last_seen)
            );
            println!("  opened {}, updated {}", utc(i.created), utc(i.updated));
            println!("  clinics ({}): {}", i.clinics.len(), i.clinics.join(", "));
            println!("  hosts ({}): {}", i.hosts.len(), i.hosts.join(", "));
            for (k, v) in &i.evidence {
                println!("  {k}: {v}");
            }
        }
        IncidentsCmd::Ack { id } | IncidentsCmd::Close { id } => {
            let state = if matches!(cmd, IncidentsCmd::Ack { .. }) {
                "acknowledged"
            } else {
                "closed"
            };
            if !st.set_incident_state(id, state, now)? {
                anyhow::bail!("no incident #{id}");
            }
            println!("incident #{id}: {state}");
        }
    }
    Ok(())
}

/// Raises the soft open-file limit to fit `limits.max_connections` (and the files and
/// sockets the collector itself needs), up to the hard limit.
fn raise_open_files(connections: usize) {
    let want = connections as u64 + 1024;
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 || l.rlim_cur >= want {
            return;
        }
        let cur = want.min(l.rlim_max);
        l.rlim_cur = cur;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 || cur < want {
            tracing::warn!(
                open_files = cur,
                wanted = want,
                "the open-file limit is below limits.max_connections + 1024; raise LimitNOFILE"
            );
        }
    }
}

/// The Debian package's layout: its state folder (the default `--dir`) and its config.
const PACKAGED_DIR: &str = "/var/lib/clinicwatch-collector";
const PACKAGED_CONFIG: &str = "/etc/clinicwatch-collector/collector.toml";

/// The configuration: `--config FILE`, else DIR/collector.toml if it exists, else (in the
/// package's folder only) the package's config; `--db` overrides the store, which defaults
/// to DIR/collector.db.
fn load_config(dir: &Path, config: Option<&Path>, db: Option<String>) -> anyhow::Result<Config> {
    let packaged = Path::new(PACKAGED_CONFIG);
    let mut cfg = match config {
        Some(p) => Config::load(p, false)?,
        None if dir == Path::new(PACKAGED_DIR)
            && !dir.join("collector.toml").exists()
            && packaged.exists() =>
        {
            Config::load(packaged, false)?
        }
        None => Config::load(&dir.join("collector.toml"), true)?,
    };
    if let Some(db) = db {
        cfg.store.url = db;
    }
    if cfg.store.url.is_empty() {
        cfg.store.url = dir.join("collector.db").display().to_string();
    }
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // The journal (or a log file) gets plain text; colour only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let dir = cli.dir;
    match cli.cmd {
        Cmd::Ca {
            cmd: CaCmd::Init { name, days },
        } => {
            if days == 0 || days > 7300 {
                anyhow::bail!("--days must be between 1 and 7300");
            }
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot make `{}`", dir.display()))?;
            if dir.join("ca.pem").exists() {
                anyhow::bail!("`{}` already has a CA", dir.display());
            }
            let ca = pki::new_ca_for("clinicwatch CA", days)?;
            let server = pki::server_cert_for(&ca, &name, days)?;
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            write_secret(&dir.join("ca.key"), ca.key.as_bytes())?;
            write_secret(&dir.join("server.key"), server.key.as_bytes())?;
            write_secret(&dir.join("enroll.key"), &key)?;
            write(&dir.join("ca.pem"), &ca.cert)?;
            write(&dir.join("server.pem"), &server.cert)?;
            println!(
                "CA, server certificate ({}) and enrollment key in {}\nCA SHA-256 (agents enroll with it): {}\nNext: `enroll-token --clinic ID` for each clinic.",
                name.join(", "),
                dir.display(),
                pki::cert_sha256(&ca.cert)?
            );
        }
        Cmd::EnrollToken {
            clinic,
            days,
            uses,
            host,
            store: sa,
        } => enroll_token(&dir, clinic, days, uses, host, sa).await?,
        Cmd::Tokens { cmd, store: sa } => {
            let st = open_store(&dir, sa).await?;
            tokio::task::spawn_blocking(move || tokens(st.as_ref(), cmd)).await??;
        }
        Cmd::Issue {
            clinic,
            host,
            soc,
            name,
            days,
            out,
            store: sa,
        } => {
            let max = if soc { 90 } else { 825 };
            if !(1..=max).contains(&days) {
                anyhow::bail!("--days must be between 1 and {max}");
            }
            let (clinic, host) = if soc {
                (
                    clinicwatch_collector::auth::identity::SOC_ORG.to_string(),
                    name.unwrap_or_default(),
                )
            } else {
                let clinic = clinic.unwrap_or_default();
                if clinic == clinicwatch_collector::auth::identity::SOC_ORG {
                    anyhow::bail!("`{clinic}` is reserved for analysts' certificates (`--soc`)");
                }
                (clinic, host.unwrap_or_default())
            };
            for id in [&clinic, &host] {
                if !enroll::valid_id(id) {
                    anyhow::bail!("`{id}` must be 1 to 64 letters, digits, `.`, `_` or `-`");
                }
            }
            let ca = ca(&dir)?;
            let c = pki::client_cert(&ca, &clinic, &host, days)?;
            // Its key becomes the holder's: an earlier certificate of the same name is
            // refused from now on, and `unenroll` can revoke this one.
            let key = pki::key_fingerprint(&pki::pem_to_der(&c.cert)?)?;
            let st = open_store(&dir, sa).await?;
            let hk = store::HostKey {
                clinic: clinic.clone(),
                host: host.clone(),
            };
            tokio::task::spawn_blocking(move || {
                st.set_enrollment(
                    &hk,
                    &store::Enrollment {
                        key_sha256: key,
                        revoked: false,
                        updated: clinicwatch_collector::calls::now(),
                        pending_key_sha256: String::new(),
                    },
                )
            })
            .await??;
            std::fs::create_dir_all(&out)?;
            write(&out.join("cert.pem"), &c.cert)?;
            write_secret(&out.join("key.pem"), c.key.as_bytes())?;
            write(&out.join("ca.pem"), &ca.cert)?;
            println!("certificate for {clinic}/{host} in {}", out.display());
        }
        Cmd::Unenroll {
            clinic,
            host,
            config,
            db,
        } => {
            let cfg = load_config(&dir, config.as_deref(), db)?;
            let url = cfg.store.url.clone();
            let key = store::HostKey {
                clinic: clinic.clone(),
                host: host.clone(),
            };
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let st = store::open(&url)?;
                let known = st.enrollment(&key)?.is_some() || st.hosts()?.iter().any(|h| {
                    h.clinic == key.clinic && h.host == key.host
                });
                if !known {
                    anyhow::bail!(
                        "no host {}/{} is known here (never enrolled, issued or connected): nothing was changed",
                        key.clinic,
                        key.host
                    );
                }
                st.set_enrollment(
                    &key,
                    &store::Enrollment {
                        key_sha256: String::new(),
                        revoked: true,
                        updated: clinicwatch_collector::calls::now(),
                        pending_key_sha256: String::new(),
                    },
                )?;
                Ok(())
            })
            .await??;
            println!("{clinic}/{host} unenrolled: its certificates are refused until it enrolls again with a token");
        }
        Cmd::Incidents { cmd, store: sa } => {
            let st = open_store(&dir, sa).await?;
            tokio::task::spawn_blocking(move || incidents(st.as_ref(), cmd)).await??;
        }
        Cmd::Hosts { json, store: sa } => {
            let st = open_store(&dir, sa).await?;
            let hosts = tokio::task::spawn_blocking(move || st.hosts()).await??;
            let now = clinicwatch_collector::calls::now();
            for h in hosts {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"clinic": h.clinic, "host": h.host, "hostname": h.hostname,
                            "agent_version": h.agent_version, "kernel": h.kernel, "last_seen": h.last_seen,
                            "spooled": h.spooled, "dropped": h.dropped})
                    );
                } else {
                    println!(
                        "{:<20} {:<16} last seen {} ({:.0} s ago)  agent {}  kernel {}  spooled {}  dropped {}",
                        h.clinic,
                        h.host,
                        utc(h.last_seen),
                        (now - h.last_seen).max(0.0),
                        h.agent_version,
                        h.kernel,
                        h.spooled,
                        h.dropped
                    );
                }
            }
        }
        Cmd::Indicators {
            cmd: IndicatorsCmd::Top { hours, limit },
            store: sa,
        } => {
            let st = open_store(&dir, sa).await?;
            let since = clinicwatch_collector::calls::now() - hours * 3600.0;
            let top =
                tokio::task::spawn_blocking(move || st.top_indicators(since, limit)).await??;
            for i in top {
                println!(
                    "{:>6} clinics  {:<10} {:<40} {} .. {}",
                    i.clinics,
                    i.kind,
                    i.value,
                    utc(i.first_seen),
                    utc(i.last_seen)
                );
            }
        }
        Cmd::Serve { config, listen, db } => {
            let mut cfg = load_config(&dir, config.as_deref(), db)?;
            raise_open_files(cfg.limits.max_connections);
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            let url = cfg.store.url.clone();
            let (st, background) = tokio::task::spawn_blocking(move || {
                Ok::<_, store::StoreError>((store::open(&url)?, store::open_background(&url)?))
            })
            .await??;
            let st: clinicwatch_collector::calls::SharedStore = Arc::from(st);
            let mut c =
                server::Collector::new(cfg.clone(), st.clone(), server::tls_from_dir(&dir)?);
            c.background = background.map(Arc::from);
            c.enroll = Some(enroll::EnrollService {
                ca: ca(&dir)?,
                token_key: token_key(&dir)?,
                cert_days: cfg.enroll.cert_days,
                store: st,
                metrics: c.metrics.clone(),
            });
            if !cfg.server.metrics_listen.is_empty() {
                let l = tokio::net::TcpListener::bind(&cfg.server.metrics_listen)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen on `{}` for metrics",
                            cfg.server.metrics_listen
                        )
                    })?;
                tokio::spawn(clinicwatch_collector::http::serve(
                    l,
                    c.metrics.clone(),
                    Some(c.background.clone().unwrap_or_else(|| c.store.clone())),
                    cfg.server.web_hosts.clone(),
                ));
            }
            let listener = tokio::net::TcpListener::bind(cfg.server.listen)
                .await
                .with_context(|| format!("cannot listen on `{}`", cfg.server.listen))?;
            tracing::info!(listen = %cfg.server.listen, metrics = %cfg.server.metrics_listen, store = %store::shown(&cfg.store.url), "serving");
            c.run(listener, async {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(_) => return std::future::pending().await,
                    };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("stopping");
            })
            .await?;
        }
    }
    Ok(())
}
