//! The collector's plain-HTTP side (`server.metrics_listen`, 127.0.0.1 by default), an axum
//! router: `/metrics` (OpenMetrics text from prometheus-client), `/healthz`, and, when given
//! the store, a small SOC page at `/` (incidents, a timeline, clinics affected, host health)
//! fed by `/api/incidents` and `/api/hosts`. It has no authentication of its own: keep it on
//! localhost, or behind an authenticating reverse proxy; remote tools use the `Soc` gRPC
//! service.
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections at once (more are closed at accept), a
//! request head must arrive within [`HEAD_TIMEOUT`] and an answer take at most
//! [`ANSWER_TIMEOUT`]. A request whose `Host` is not an IP address, `localhost` or one of
//! `server.web_hosts` is refused with 421 (DNS rebinding).

use std::sync::{atomic::Ordering, Arc};
use std::time::Duration;

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};

use crate::{calls::SharedStore, metrics::Metrics};

const INDEX: &str = include_str!("index.html");

/// A host is shown as silent after this long without a word.
const SILENT_SECS: f64 = 300.0;

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a connection has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time an answer may take (the store's calls included).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct Web {
    metrics: Arc<Metrics>,
    store: Option<SharedStore>,
    allowed: Arc<Vec<String>>,
}

/// The host a `Host` header names, without its port or brackets.
fn host_of(value: &str) -> Option<String> {
    let a: axum::http::uri::Authority = value.parse().ok()?;
    Some(
        a.host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// Whether a request naming `host` may be answered: IP literals and `localhost` (a
/// rebinding attack needs a name it controls), and the configured names. A request without
/// `Host` (HTTP/1.0 tools) is answered: a browser, which rebinding needs, always sends one.
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(h) = host else {
        return true;
    };
    h.parse::<std::net::IpAddr>().is_ok()
        || h.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(h))
}

/// Every answer: the `Host` check first, a time limit, and headers that keep the page's
/// answers out of caches and other origins.
async fn guard(State(w): State<Web>, req: Request, next: Next) -> Response {
    let host = match req.headers().get(header::HOST).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => host_of(v).or(Some(String::new())),
        Some(Err(_)) => Some(String::new()),
    };
    let mut res = if !host_allowed(host.as_deref(), &w.allowed) {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served here (see server.web_hosts)\n",
        )
            .into_response()
    } else {
        match tokio::time::timeout(ANSWER_TIMEOUT, next.run(req)).await {
            Ok(r) => r,
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the answer took too long\n",
            )
                .into_response(),
        }
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
        ),
    );
    res
}

async fn metrics(State(w): State<Web>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        w.metrics.render(),
    )
}

async fn healthz(State(w): State<Web>) -> (StatusCode, &'static str) {
    if w.metrics.store_ok.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store failing\n")
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn index(State(w): State<Web>) -> Response {
    match w.store {
        Some(_) => Html(INDEX).into_response(),
        None => not_found(),
    }
}

/// A store call's answer as JSON, or 503 with the reason.
fn json<T: serde::Serialize>(r: Result<T, tonic::Status>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(s) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": s.message() })),
        )
            .into_response(),
    }
}

async fn incidents(State(w): State<Web>) -> Response {
    let Some(store) = &w.store else {
        return not_found();
    };
    let r = crate::calls::on_store(store, &w.metrics, |s| s.incidents(None)).await;
    json(r.map(|mut v| {
        v.truncate(500);
        v
    }))
}

/// The hosts as the store knows them, with what this collector saw of each since it
/// started (records, duplicates, lag).
async fn hosts(State(w): State<Web>) -> Response {
    let Some(store) = &w.store else {
        return not_found();
    };
    let now = crate::calls::now();
    let seen = w.metrics.hosts();
    let r = crate::calls::on_store(store, &w.metrics, |s| s.hosts()).await;
    json(r.map(|hosts| {
        hosts
            .into_iter()
            .map(|h| {
                let key = crate::store::HostKey {
                    clinic: h.clinic.clone(),
                    host: h.host.clone(),
                };
                let here = seen.get(&key).cloned().unwrap_or_default();
                serde_json::json!({
                    "clinic": h.clinic, "host": h.host, "hostname": h.hostname,
                    "agent_version": h.agent_version, "kernel": h.kernel,
                    "last_seen": h.last_seen, "spooled": h.spooled, "dropped": h.dropped,
                    "silent": now - h.last_seen > SILENT_SECS,
                    "records_accepted": here.accepted, "records_duplicate": here.duplicates,
                    "lag_secs": here.lag_secs,
                })
            })
            .collect::<Vec<_>>()
    }))
}

fn router(w: Web) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/", get(index))
        .route("/api/incidents", get(incidents))
        .route("/api/hosts", get(hosts))
        .fallback(|| async { not_found() })
        .layer(middleware::from_fn_with_state(w.clone(), guard))
        .with_state(w)
}

/// Serves until the listener fails: each connection on its own task, at most
/// [`MAX_CONNECTIONS`] at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Option<SharedStore>,
    allowed_hosts: Vec<String>,
) {
    let app = router(Web {
        metrics,
        store,
        allowed: Arc::new(allowed_hosts),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let sock = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection");
            }
        });
    }
}

/// `/metrics` and `/healthz` only (no store: no page, no API).
pub async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    serve(listener, metrics, None, Vec::new()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_localhost_and_configured_names_are_served() {
        let allowed = vec!["soc.example".to_string()];
        for (header, ok) in [
            (Some("127.0.0.1:9464"), true),
            (Some("localhost:9464"), true),
            (Some("[::1]:9464"), true),
            (Some("SOC.example"), true),
            (Some("rebind.attacker.example:9464"), false),
            (None, true),
        ] {
            let host = header.and_then(host_of);
            assert_eq!(host_allowed(host.as_deref(), &allowed), ok, "{header:?}");
        }
    }
}
