//! The collector under test: the real server over SQLite (or the PostgreSQL URL given),
//! until SIGTERM.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use clinicwatch_collector::{
    api::ingest::IdentitySource,
    config::Config,
    server::{tls_from_dir, Collector},
    store,
};

pub fn serve(dir: &Path, tls: bool, db: Option<String>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // The bench's own settings (correlation, for the fleet), then no rate limits.
        let mut cfg = Config::load(&dir.join("collector.toml"), true)?;
        cfg.limits.records_per_sec = u32::MAX;
        cfg.limits.burst_records = u32::MAX;
        cfg.retention.every_secs = 86_400;
        let db = db.unwrap_or_else(|| dir.join("collector.db").display().to_string());
        let (st, background) = tokio::task::spawn_blocking(move || {
            Ok::<_, store::StoreError>((store::open(&db)?, store::open_background(&db)?))
        })
        .await??;
        let mut c = Collector::new(cfg, Arc::from(st), tls_from_dir(dir)?);
        c.background = background.map(Arc::from);
        if !tls {
            c.tls = None;
            c.identity = IdentitySource::TrustedMetadataForBenchmarks;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        std::fs::write(dir.join("port"), port.to_string()).context("port file")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        c.run(listener, async move {
            term.recv().await;
        })
        .await
    })
}
