//! `clinicwatch-collector`: `ca init`, `issue` (a host's client certificate), `serve`.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use clinicwatch_collector::{ingest::IngestService, pki, store::SqliteStore};
use clinicwatch_proto::v1::ingest_server::IngestServer;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

#[derive(Parser)]
#[command(name = "clinicwatch-collector", version)]
struct Cli {
    /// Folder of the CA and server certificates.
    #[arg(long, default_value = "/var/lib/clinicwatch-collector")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make the CA and the server certificate (for these DNS names or IPs).
    CaInit {
        #[arg(long, default_value = "localhost")]
        name: Vec<String>,
    },
    /// Issue a host's client certificate into OUT (cert.pem, key.pem, ca.pem).
    Issue {
        #[arg(long)]
        clinic: String,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 90)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve the Ingest stream with mutual TLS.
    Serve {
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: std::net::SocketAddr,
        /// SQLite database (default: DIR/collector.db).
        #[arg(long)]
        db: Option<PathBuf>,
    },
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

fn write(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let dir = cli.dir;
    match cli.cmd {
        Cmd::CaInit { name } => {
            std::fs::create_dir_all(&dir)?;
            if dir.join("ca.pem").exists() {
                anyhow::bail!("`{}` already has a CA", dir.display());
            }
            let ca = pki::new_ca("clinicwatch CA")?;
            let server = pki::server_cert(&ca, &name)?;
            write(&dir.join("ca.pem"), &ca.cert)?;
            write(&dir.join("ca.key"), &ca.key)?;
            write(&dir.join("server.pem"), &server.cert)?;
            write(&dir.join("server.key"), &server.key)?;
            println!("CA and server certificate in {}", dir.display());
        }
        Cmd::Issue {
            clinic,
            host,
            days,
            out,
        } => {
            let ca = pki::Pem {
                cert: read(&dir.join("ca.pem"))?,
                key: read(&dir.join("ca.key"))?,
            };
            let c = pki::client_cert(&ca, &clinic, &host, days)?;
            std::fs::create_dir_all(&out)?;
            write(&out.join("cert.pem"), &c.cert)?;
            write(&out.join("key.pem"), &c.key)?;
            write(&out.join("ca.pem"), &ca.cert)?;
            println!("certificate for {clinic}/{host} in {}", out.display());
        }
        Cmd::Serve { listen, db } => {
            let db = db.unwrap_or_else(|| dir.join("collector.db"));
            let store = SqliteStore::open(&db)?;
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(
                    read(&dir.join("server.pem"))?,
                    read(&dir.join("server.key"))?,
                ))
                .client_ca_root(Certificate::from_pem(read(&dir.join("ca.pem"))?));
            tracing::info!(%listen, db = %db.display(), "serving");
            Server::builder()
                .tls_config(tls)?
                .add_service(
                    IngestServer::new(IngestService {
                        store: Arc::new(Mutex::new(store)),
                    })
                    .max_decoding_message_size(clinicwatch_proto::MAX_FRAME_BYTES),
                )
                .serve(listen)
                .await?;
        }
    }
    Ok(())
}
