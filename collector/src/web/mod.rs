//! The collector's plain-HTTP side (`server.metrics_listen`, 127.0.0.1 by default):
//! `/metrics` (Prometheus), `/healthz`, and, when given the store, a small SOC page at `/`
//! (incidents, a timeline, clinics affected, host health) fed by `/api/incidents` and
//! `/api/hosts`. It has no authentication of its own: keep it on localhost, or behind an
//! authenticating reverse proxy; remote tools use the `Soc` gRPC service.

use std::sync::{atomic::Ordering, Arc};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{ingest::SharedStore, metrics::Metrics};

const INDEX: &str = include_str!("index.html");

/// A host is shown as silent after this long without a word.
const SILENT_SECS: f64 = 300.0;

async fn api(path: &str, store: &SharedStore, metrics: &Metrics) -> Option<String> {
    let now = crate::ingest::now();
    let r = match path {
        "/api/incidents" => crate::ingest::on_store(store, metrics, |s| s.incidents(None))
            .await
            .map(|mut v| {
                v.truncate(500);
                serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
            }),
        "/api/hosts" => crate::ingest::on_store(store, metrics, |s| s.hosts())
            .await
            .map(|hosts| {
                let v: Vec<serde_json::Value> = hosts
                    .into_iter()
                    .map(|h| {
                        serde_json::json!({
                            "clinic": h.clinic, "host": h.host, "hostname": h.hostname,
                            "agent_version": h.agent_version, "kernel": h.kernel,
                            "last_seen": h.last_seen, "spooled": h.spooled, "dropped": h.dropped,
                            "silent": now - h.last_seen > SILENT_SECS,
                        })
                    })
                    .collect();
                serde_json::Value::Array(v).to_string()
            }),
        _ => return None,
    };
    Some(r.unwrap_or_else(|s| serde_json::json!({"error": s.message()}).to_string()))
}

/// Serves until the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Option<SharedStore>,
) {
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP listener");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, store) = (metrics.clone(), store.clone());
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let read = async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let line = String::from_utf8_lossy(&buf).to_string();
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let get = line.starts_with("GET ");
            let (status, ctype, body) = match (get, path, &store) {
                (true, "/metrics", _) => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                (true, "/healthz", _) => {
                    if metrics.store_ok.load(Ordering::Relaxed) {
                        ("200 OK", "text/plain", "ok\n".to_string())
                    } else {
                        (
                            "503 Service Unavailable",
                            "text/plain",
                            "store failing\n".to_string(),
                        )
                    }
                }
                (true, "/", Some(_)) => ("200 OK", "text/html; charset=utf-8", INDEX.to_string()),
                (true, p, Some(st)) if p.starts_with("/api/") => match api(p, st, &metrics).await {
                    Some(json) => ("200 OK", "application/json", json),
                    None => ("404 Not Found", "text/plain", "not found\n".to_string()),
                },
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
