//! `cw-ingest-bench` (run by `cargo xtask bench ingest`): the collector's ingest cost,
//! measured in one run, side by side:
//!
//! - **events per CPU-second** of the collector process (user + system time from
//!   `getrusage(RUSAGE_CHILDREN)` after it exits, less an idle run's), for batched streaming
//!   against one event per frame (each acked before the next), with TLS on and off;
//! - **5,000 agents reconnecting at once**: each with its own client certificate opens a TLS
//!   connection and a stream, says Hello and sends one batch; the time until every one is
//!   acked, the per-agent latency (p50, p99) and the collector's CPU.
//!
//! The collector is this binary (`serve`) in a child process with the real server
//! (`clinicwatch_collector::server::Collector`) and SQLite on disk with `synchronous =
//! FULL`, or the PostgreSQL database `--db` names (then events per wall-second count too:
//! the database's own CPU is not the collector's); the load comes from this process. TLS off (plaintext HTTP/2, identity from request
//! metadata) exists only here, to price TLS.

mod demo_fleet;
mod fleet;
mod load;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cw-ingest-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Agents streaming at once in the throughput runs.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Records per agent in the batched runs.
    #[arg(long, default_value_t = 25_000)]
    records: u64,
    /// Records per agent in the one-per-frame runs.
    #[arg(long, default_value_t = 1_500)]
    single_records: u64,
    /// Records per batch in the batched runs.
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Agents reconnecting at once.
    #[arg(long, default_value_t = 5_000)]
    reconnect: usize,
    /// Rounds of the throughput scenarios (each figure is the median).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Store into this PostgreSQL database (`postgres://…`, TLS as in collector.toml's
    /// `store.path`) instead of a fresh SQLite file per scenario. It is reused from run to
    /// run: each agent numbers on from what the collector says it stored. For the
    /// throughput and reconnect runs only: `fleet` refuses it (it needs a fresh database).
    #[arg(long)]
    db: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// A simulated fleet: a normal day, then a campaign (see fleet.rs).
    Fleet {
        #[arg(long, default_value_t = 5_000)]
        clinics: usize,
        #[arg(long, default_value_t = 3)]
        agents_per_clinic: usize,
        /// Clinics the campaign hits.
        #[arg(long, default_value_t = 300)]
        campaign: usize,
        #[arg(long, default_value_t = 2.0)]
        campaign_hours: f64,
        /// Simulated time runs this many times faster than the wall clock in the campaign.
        #[arg(long, default_value_t = 60.0)]
        accel: f64,
        /// Agents delivering at once.
        #[arg(long, default_value_t = 300)]
        concurrency: usize,
    },
    /// A few dozen clinics streaming to a running collector until stdin closes; a line
    /// `campaign` makes some of them report an infostealer (see demo_fleet.rs).
    DemoFleet {
        /// The collector's agent port on localhost.
        #[arg(long)]
        port: u16,
        /// The collector's folder (`ca.pem`, `ca.key`: each clinic gets its certificate).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The infostealer's destination, `IP:PORT/PROTOCOL`.
        #[arg(long)]
        destination: String,
        #[arg(long, default_value_t = 30)]
        clinics: usize,
        /// Clinics the infostealer reaches.
        #[arg(long, default_value_t = 12)]
        campaign: usize,
        /// Seconds between a clinic's window summaries.
        #[arg(long, default_value_t = 5.0)]
        every: f64,
    },
    /// The collector under test (started by the bench itself).
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        tls: bool,
        /// The store (a PostgreSQL URL); `DIR/collector.db` when not given.
        #[arg(long)]
        db: Option<String>,
    },
}

/// Raises the open-file limit to the hard limit (5,000 sockets on each side).
pub fn raise_nofile() {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_nofile();
    match cli.cmd {
        Some(Cmd::Serve { dir, tls, db }) => serve::serve(&dir, tls, db),
        Some(Cmd::DemoFleet {
            port,
            ca_dir,
            destination,
            clinics,
            campaign,
            every,
        }) => demo_fleet::run(demo_fleet::DemoFleetOptions {
            port,
            ca_dir,
            destination,
            clinics: clinics.max(1),
            campaign: campaign.min(clinics),
            every: std::time::Duration::from_secs_f64(every.max(0.5)),
        }),
        Some(Cmd::Fleet { .. }) if cli.db.is_some() => {
            anyhow::bail!(
                "--db is for the throughput runs; `fleet` stores into a fresh SQLite file"
            )
        }
        Some(Cmd::Fleet {
            clinics,
            agents_per_clinic,
            campaign,
            campaign_hours,
            accel,
            concurrency,
        }) => fleet::run(&fleet::FleetOptions {
            clinics: clinics.max(1),
            agents_per_clinic: agents_per_clinic.max(1),
            campaign: campaign.clamp(5, clinics.max(5)),
            campaign_hours,
            accel: accel.max(1.0),
            concurrency: concurrency.max(1),
        }),
        None => {
            let opts = load::Options {
                agents: cli.agents,
                records: cli.records,
                single_records: cli.single_records,
                batch: cli.batch,
                reconnect: cli.reconnect,
                rounds: cli.rounds.max(1),
                db: cli.db,
            };
            load::run(&opts)
        }
    }
}
