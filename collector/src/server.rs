//! The collector's gRPC server: Ingest (mutual TLS), Enroll (TLS; a token or a client
//! certificate), the standard gRPC health service, and the background tasks (retention,
//! health status, limiter upkeep). `clinicwatch-collector serve` and the tests run it alike.

use std::{
    future::Future,
    path::Path,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use clinicwatch_proto::v1::{enroll_server::EnrollServer, ingest_server::IngestServer};
use tonic::codec::CompressionEncoding;

use crate::{
    api::enroll::EnrollService,
    api::ingest::{IdentitySource, IngestService},
    api::limit::Limiter,
    api::listen::ServerTls,
    calls::{on_store, SharedStore},
    config::{Config, RetentionConfig},
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
        let Collector {
            cfg,
            store,
            metrics,
            tls,
            identity,
            enroll,
            background,
        } = self;
        let background = background.unwrap_or_else(|| store.clone());
        let siem = crate::alert::Siem::start(&cfg.siem, metrics.clone())
            .map_err(|e| anyhow::anyhow!("[siem]: {e}"))?;
        let mut ingest = IngestService::new(store.clone(), metrics.clone(), cfg.limits.clone());
        ingest.identity = identity;
        ingest.siem = siem.clone();
        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<IngestServer<IngestService>>().await;
        // Dropped (so aborted) on every return, an early error included.
        let mut tasks = background_tasks(
            &cfg,
            &store,
            &background,
            &metrics,
            &health,
            ingest.limiter.clone(),
            siem,
        )?;
        let soc = crate::api::soc::SocService {
            store: background,
            metrics: metrics.clone(),
        };
        let router = services(health_svc, ingest, soc, enroll);
        let r = serve(router, listener, tls, &cfg.limits, metrics, shutdown).await;
        tasks.abort_all();
        r?;
        Ok(())
    }
}

/// Spawns the background tasks: health and limiter upkeep (on `store`), then retention and
/// correlation passes (on `background`); an unusable rule file spawns no correlation.
fn background_tasks(
    cfg: &Config,
    store: &SharedStore,
    background: &SharedStore,
    metrics: &Arc<Metrics>,
    health: &tonic_health::server::HealthReporter,
    limiter: Arc<Limiter>,
    siem: Option<crate::alert::Siem>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(upkeep(
        metrics.clone(),
        health.clone(),
        store.clone(),
        limiter,
    ));
    tasks.spawn(retention(
        background.clone(),
        metrics.clone(),
        cfg.retention.clone(),
    ));
    let engine = Arc::new(crate::correlate::Engine {
        rules: crate::correlate::rules::load(&cfg.correlation.rules_file)?,
        lateness_secs: cfg.correlation.lateness_secs as f64,
        vendor_domains: cfg.correlation.vendor_domains.clone(),
    });
    tasks.spawn(correlation(
        engine,
        background.clone(),
        metrics.clone(),
        cfg.correlation.every_secs,
        siem,
    ));
    Ok(tasks)
}

/// Serves `router` on `listener` (through the TLS and connection limits of `listen`, or
/// plaintext without `tls`) until `shutdown` completes.
async fn serve(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    limits: &crate::config::LimitsConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            let incoming = crate::api::listen::incoming(listener, tls, limits, metrics);
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
    }
}

/// The gRPC services on a server with bounded streams and keepalives.
fn services(
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    ingest: IngestService,
    soc: crate::api::soc::SocService,
    enroll: Option<EnrollService>,
) -> tonic::transport::server::Router {
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
    let soc = clinicwatch_proto::v1::soc_server::SocServer::new(soc);
    let mut router = builder
        .add_service(health)
        .add_service(ingest)
        .add_service(soc);
    if let Some(e) = enroll {
        router = router.add_service(EnrollServer::new(e).max_decoding_message_size(64 << 10));
    }
    router
}

/// Every second: health follows the store (probed while it fails, so that health recovers
/// without waiting for traffic that a load balancer may have turned away), and the limiter
/// forgets idle hosts.
async fn upkeep(
    metrics: Arc<Metrics>,
    health: tonic_health::server::HealthReporter,
    store: SharedStore,
    limiter: Arc<Limiter>,
) {
    let mut was = true;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !metrics.store_ok.load(Ordering::Relaxed) {
            let _ = on_store(&store, &metrics, |s| s.ping()).await;
        }
        let ok = metrics.store_ok.load(Ordering::Relaxed);
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
}

/// Removes old rows now and then every `r.every_secs`.
async fn retention(store: SharedStore, metrics: Arc<Metrics>, r: RetentionConfig) {
    loop {
        let now = crate::calls::now();
        let (s, f) = (
            now - r.summaries_days * 86_400.0,
            now - r.findings_days * 86_400.0,
        );
        match on_store(&store, &metrics, move |st| st.prune(s, f)).await {
            Ok(p) => {
                metrics
                    .pruned
                    .fetch_add(p.records + p.findings, Ordering::Relaxed);
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
}

/// A correlation pass every `every_secs` (when this collector leads), its incidents sent
/// to the SIEM.
async fn correlation(
    engine: Arc<crate::correlate::Engine>,
    store: SharedStore,
    metrics: Arc<Metrics>,
    every_secs: u64,
    siem: Option<crate::alert::Siem>,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(every_secs)).await;
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
                metrics.correlation_leader.store(true, Ordering::Relaxed);
                metrics.correlation_passes.fetch_add(1, Ordering::Relaxed);
                metrics
                    .incidents_opened
                    .fetch_add(r.opened.len() as u64, Ordering::Relaxed);
                if let Some(siem) = &siem {
                    for (incident, opened) in changed {
                        siem.send(crate::alert::Item::Incident { incident, opened });
                    }
                }
            }
            Ok(_) => metrics.correlation_leader.store(false, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "correlation pass failed; will retry"),
        }
    }
}
