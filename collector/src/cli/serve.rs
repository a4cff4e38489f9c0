//! `serve`: the collector's services until SIGTERM or Ctrl-C.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use clinicwatch_collector::{api::enroll, config::Config, server, store};

use super::dir::{ca, load_config, token_key};

pub(super) async fn serve(
    dir: &Path,
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    db: Option<String>,
) -> anyhow::Result<()> {
    let mut cfg = load_config(dir, config.as_deref(), db)?;
    raise_open_files(cfg.limits.max_connections);
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    let c = collector(dir, &cfg).await?;
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
    c.run(listener, stopped()).await
}

/// The collector of `cfg` over its store, with the TLS, CA and enrollment key of `dir`.
async fn collector(dir: &Path, cfg: &Config) -> anyhow::Result<server::Collector> {
    let url = cfg.store.url.clone();
    let (st, background) = tokio::task::spawn_blocking(move || {
        Ok::<_, store::StoreError>((store::open(&url)?, store::open_background(&url)?))
    })
    .await??;
    let st: clinicwatch_collector::calls::SharedStore = Arc::from(st);
    let mut c = server::Collector::new(cfg.clone(), st.clone(), server::tls_from_dir(dir)?);
    c.background = background.map(Arc::from);
    c.enroll = Some(enroll::EnrollService {
        ca: ca(dir)?,
        token_key: token_key(dir)?,
        cert_days: cfg.enroll.cert_days,
        store: st,
        metrics: c.metrics.clone(),
    });
    Ok(c)
}

/// Completes on SIGTERM or Ctrl-C; never if SIGTERM cannot be watched.
async fn stopped() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
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
