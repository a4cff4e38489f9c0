//! The collector's gRPC server: Ingest (mutual TLS), Enroll (TLS; a token or a client
//! certificate), the standard gRPC health service, and the background tasks (retention,
//! health status, limiter upkeep). `clinicwatch-collector serve` and the tests run it alike.

use std::{future::Future, path::Path, sync::Arc, time::Duration};

use clinicwatch_proto::v1::{enroll_server::EnrollServer, ingest_server::IngestServer};
use tonic::codec::CompressionEncoding;

use crate::{
    api::enroll::EnrollService,
    api::ingest::{IdentitySource, IngestService},
    api::listen::ServerTls,
    calls::{on_store, SharedStore},
    config::Config,
    metrics::Metrics,
};

/// TLS for the collector from its folder: `server.pem`/`server.key`, clients checked against
/// `ca.pem`. A client certificate is optional at the handshake so that a host can enroll;
/// Ingest refuses a stream without one.
pub fn tls_from_dir(dir: &Path) -> anyhow::Result<ServerTls> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p)
            .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", p.display()))
    };
    // The chain sent to clients ends with the CA, so that an agent can fetch it and check it
    // against the pin it was given (`clinicwatch-agent enroll --ca-sha256`).
    let ca = read("ca.pem")?;
    let mut chain = read("server.pem")?;
    if !chain.contains(ca.trim()) {
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&ca);
    }
    ServerTls::from_pem(&chain, &read("server.key")?, &ca)
}

/// HTTP/2 streams one connection may hold open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;

pub struct Collector {
    pub cfg: Config,
    pub store: SharedStore,
    pub metrics: Arc<Metrics>,
    /// `None`: plaintext (benchmarks only, with metadata identity).
    pub tls: Option<ServerTls>,
    pub identity: IdentitySource,
    pub enroll: Option<EnrollService>,
    /// A second connection to the database for correlation passes, retention and the SOC
    /// service (see `store::open_background`); `None` shares `store`.
    pub background: Option<SharedStore>,
}

impl Collector {
    pub fn new(cfg: Config, store: SharedStore, tls: ServerTls) -> Collector {
        Collector {
            cfg,
            store,
            metrics: Arc::new(Metrics::new()),
            tls: Some(tls),
            identity: IdentitySource::PeerCertificate,
            enroll: None,
            background: None,
        }
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let cfg = self.cfg;
        let background = self
            .background
            .clone()
            .unwrap_or_else(|| self.store.clone());
        let siem = crate::alert::Siem::start(&cfg.siem, self.metrics.clone())
            .map_err(|e| anyhow::anyhow!("[siem]: {e}"))?;
        let mut ingest =
            IngestService::new(self.store.clone(), self.metrics.clone(), cfg.limits.clone());
        ingest.identity = self.identity;
        ingest.siem = siem.clone();
        let limiter = ingest.limiter.clone();
        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<IngestServer<IngestService>>().await;
        let mut tasks = tokio::task::JoinSet::new();
        {
            let (metrics, health, store) =
                (self.metrics.clone(), health.clone(), self.store.clone());
            tasks.spawn(async move {
                let mut was = true;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if !metrics.store_ok.load(std::sync::atomic::Ordering::Relaxed) {
                        // Failing: probe, so that health recovers without waiting for traffic
                        // that a load balancer may have turned away.
                        let _ = on_store(&store, &metrics, |s| s.ping()).await;
                    }
                    let ok = metrics.store_ok.load(std::sync::atomic::Ordering::Relaxed);
                    if ok != was {
                        if ok {
                            health.set_serving::<IngestServer<IngestService>>().await;
                        } else {
                            health
                                .set_not_serving::<IngestServer<IngestService>>()
                                .await;
                        }
                        was = ok;
                    }
                    limiter.sweep(std::time::Instant::now());
                }
            });
        }
        {
            let (store, metrics, r) = (
                background.clone(),
                self.metrics.clone(),
                cfg.retention.clone(),
            );
            tasks.spawn(async move {
                loop {
                    let now = crate::calls::now();
                    let (s, f) = (
                        now - r.summaries_days * 86_400.0,
                        now - r.findings_days * 86_400.0,
                    );
                    match on_store(&store, &metrics, move |st| st.prune(s, f)).await {
                        Ok(p) => {
                            metrics.pruned.fetch_add(
                                p.records + p.findings,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                            if p.records + p.findings > 0 {
                                tracing::info!(
                                    records = p.records,
                                    findings = p.findings,
                                    "retention: removed old rows"
                                );
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
                    }
                    tokio::time::sleep(Duration::from_secs(r.every_secs)).await;
                }
            });
        }
        {
            let (store, metrics, c) = (
                background.clone(),
                self.metrics.clone(),
                cfg.correlation.clone(),
            );
            let engine = crate::correlate::Engine {
                rules: crate::correlate::rules::load(&c.rules_file)?,
                lateness_secs: c.lateness_secs as f64,
                vendor_domains: c.vendor_domains.clone(),
            };
            let engine = Arc::new(engine);
            let siem = siem.clone();
            tasks.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(c.every_secs)).await;
                    let e = engine.clone();
                    let now = crate::calls::now();
                    // The pass, then the incidents it opened or updated (for the exports).
                    let pass = on_store(&store, &metrics, move |s| {
                        let r = e.pass(s, now)?;
                        let mut changed = Vec::new();
                        for (ids, opened) in [(&r.opened, true), (&r.updated, false)] {
                            for id in ids {
                                if let Some(i) = s.incident(*id)? {
                                    changed.push((i, opened));
                                }
                            }
                        }
                        Ok((r, changed))
                    });
                    match pass.await {
                        Ok((r, changed)) if r.led => {
                            metrics
                                .correlation_leader
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                            metrics
                                .correlation_passes
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            metrics.incidents_opened.fetch_add(
                                r.opened.len() as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                            if let Some(siem) = &siem {
                                for (incident, opened) in changed {
                                    siem.send(crate::alert::Item::Incident { incident, opened });
                                }
                            }
                        }
                        Ok(_) => metrics
                            .correlation_leader
                            .store(false, std::sync::atomic::Ordering::Relaxed),
                        Err(e) => tracing::warn!(error = %e, "correlation pass failed; will retry"),
                    }
                }
            });
        }
        // Streams per connection are bounded too: with the connection limits of `listen`,
        // an unauthenticated peer holds a bounded number of health `Watch` streams.
        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        let ingest = IngestServer::new(ingest)
            .max_decoding_message_size(clinicwatch_proto::MAX_FRAME_BYTES)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Zstd);
        let soc = clinicwatch_proto::v1::soc_server::SocServer::new(crate::api::soc::SocService {
            store: background.clone(),
            metrics: self.metrics.clone(),
        });
        let mut router = builder
            .add_service(health_svc)
            .add_service(ingest)
            .add_service(soc);
        if let Some(e) = self.enroll {
            router = router.add_service(EnrollServer::new(e).max_decoding_message_size(64 << 10));
        }
        let r = match self.tls {
            Some(tls) => {
                let incoming =
                    crate::api::listen::incoming(listener, tls, &cfg.limits, self.metrics.clone());
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        shutdown,
                    )
                    .await
            }
        };
        tasks.abort_all();
        r?;
        Ok(())
    }
}
