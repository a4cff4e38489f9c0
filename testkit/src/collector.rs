//! A real collector for the tests of every crate (feature `collector`): its PKI (a CA, the
//! server's certificate for `localhost`, an enrollment key), and the server itself on a
//! listener the test binds, over mutual TLS with enrollment on, as `serve` runs it. The
//! collector's own suite, the agent's exporter tests and the end-to-end delivery tests all
//! start it here.

use std::{path::Path, sync::Arc};

use clinicwatch_collector::{
    api::{enroll::EnrollService, listen::ServerTls},
    auth::pki,
    calls::SharedStore,
    config::Config,
    metrics::Metrics,
    server::Collector,
};

/// The collector's CA, its server certificate for `localhost`, and its enrollment key.
#[derive(Clone)]
pub struct Pki {
    pub ca: pki::Pem,
    pub server: pki::Pem,
    pub token_key: Vec<u8>,
}

impl Pki {
    /// A new CA and server certificate.
    pub fn new() -> Pki {
        let ca = pki::new_ca("test CA").expect("a test CA");
        let server = pki::server_cert(&ca, &["localhost".into()]).expect("a server certificate");
        Pki {
            ca,
            server,
            token_key: b"a test enrollment key of 32 byte".to_vec(),
        }
    }

    pub fn server_tls(&self) -> ServerTls {
        ServerTls::from_pem(&self.server.cert, &self.server.key, &self.ca.cert)
            .expect("the server's TLS")
    }

    /// A host's certificate for `clinic`/`host` (30 days) with the CA, written to `dir` as
    /// `ca.pem`, `cert.pem` and `key.pem`, as the agent's `[export]` reads them.
    pub fn write_host_files(&self, dir: &Path, clinic: &str, host: &str) {
        let me = pki::client_cert(&self.ca, clinic, host, 30).expect("a host certificate");
        for (name, text) in [
            ("ca.pem", &self.ca.cert),
            ("cert.pem", &me.cert),
            ("key.pem", &me.key),
        ] {
            std::fs::write(dir.join(name), text).expect("a host's TLS file");
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// A collector started by [`serve`]. Dropping it stops the server (as does its runtime
/// ending); [`Running::shutdown`] stops it and waits.
pub struct Running {
    pub url: String,
    pub port: u16,
    pub store: SharedStore,
    pub metrics: Arc<Metrics>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Records stored (blocking: from a multi-threaded runtime's test or a plain thread).
    pub fn records(&self) -> u64 {
        blocking(|| self.store.record_count().expect("the record count"))
    }

    /// Hosts as stored.
    pub fn hosts(&self) -> Vec<clinicwatch_collector::store::HostRow> {
        blocking(|| self.store.hosts().expect("the hosts"))
    }

    /// An enrollment token for `clinic`, recorded in this collector's store with `uses`
    /// uses, valid for an hour.
    pub fn token(&self, p: &Pki, clinic: &str, uses: u32) -> String {
        let exp = clinicwatch_collector::calls::now() as u64 + 3600;
        blocking(|| {
            clinicwatch_collector::api::enroll::issue_token(
                self.store.as_ref(),
                &p.token_key,
                clinic,
                "",
                uses,
                exp,
            )
            .expect("a token")
            .0
        })
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// Runs `f` on a plain thread: the PostgreSQL client blocks, which an async thread (a
/// test's body included) must not do.
pub fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the blocking call"))
}

/// Starts a collector (Ingest, Enroll, health) over `store` on `listener`, with `background`
/// as the second connection for correlation and the SOC service when given. Call it inside
/// the runtime the server is to run on.
pub fn serve(
    p: &Pki,
    cfg: Config,
    store: SharedStore,
    background: Option<SharedStore>,
    listener: tokio::net::TcpListener,
) -> Running {
    let port = listener
        .local_addr()
        .expect("the listener's address")
        .port();
    let mut c = Collector::new(cfg.clone(), store.clone(), p.server_tls());
    c.background = background;
    c.enroll = Some(EnrollService {
        ca: p.ca.clone(),
        token_key: p.token_key.clone(),
        cert_days: cfg.enroll.cert_days,
        store: store.clone(),
        metrics: c.metrics.clone(),
    });
    let metrics = c.metrics.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(c.run(listener, async {
        let _ = rx.await;
    }));
    Running {
        url: format!("https://localhost:{port}"),
        port,
        store,
        metrics,
        stop: Some(tx),
        task,
    }
}
