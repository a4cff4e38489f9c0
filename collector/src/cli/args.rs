//! The command line: clap's definitions of the subcommands and their options (the doc
//! comments are the help text).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::dir::PACKAGED_DIR;

#[derive(Parser)]
#[command(name = "clinicwatch-collector", version)]
pub(crate) struct Cli {
    /// Folder of the CA, the server certificate, the enrollment key, `collector.toml` and
    /// (by default) the SQLite database.
    #[arg(long, default_value = PACKAGED_DIR)]
    pub(super) dir: PathBuf,
    #[command(subcommand)]
    pub(super) cmd: Cmd,
}

#[derive(Subcommand)]
pub(super) enum Cmd {
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
pub(super) struct StoreArgs {
    /// Configuration (default: DIR/collector.toml if it exists).
    #[arg(long, global = true)]
    pub(super) config: Option<PathBuf>,
    /// Overrides `store.url`.
    #[arg(long, global = true)]
    pub(super) db: Option<String>,
}

#[derive(Subcommand)]
pub(super) enum IncidentsCmd {
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
pub(super) enum TokensCmd {
    /// Every token: id, clinic, host it is bound to, uses left, expiry, revoked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token by its id (as `list` and `enroll-token` show it).
    Revoke { id: String },
}

#[derive(Subcommand)]
pub(super) enum IndicatorsCmd {
    /// By distinct clinics over the last `--hours`.
    Top {
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand)]
pub(super) enum CaCmd {
    /// Make the CA, the server certificate (for these DNS names or IPs) and the enrollment key.
    Init {
        #[arg(long, default_value = "localhost")]
        name: Vec<String>,
        /// Days the CA and the server certificate are valid (1 to 7300).
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
}
