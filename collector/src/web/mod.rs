//! The collector's plain-HTTP side (`server.metrics_listen`, 127.0.0.1 by default):
//! `/metrics` (Prometheus), `/healthz`, and, when given the store, a small SOC page at `/`
//! (incidents, a timeline, clinics affected, host health) fed by `/api/incidents` and
//! `/api/hosts`. It has no authentication of its own: keep it on localhost, or behind an
//! authenticating reverse proxy; remote tools use the `Soc` gRPC service. A request whose
//! `Host` is not an IP address, `localhost` or one of `server.web_hosts` is refused (DNS
//! rebinding), and at most [`MAX_CONNECTIONS`] connections are served at once.

use std::sync::{atomic::Ordering, Arc};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{ingest::SharedStore, metrics::Metrics};

const INDEX: &str = include_str!("index.html");

/// A host is shown as silent after this long without a word.
const SILENT_SECS: f64 = 300.0;

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// The `Host` header of a request head, without its port.
fn host_header(head: &str) -> Option<&str> {
    let v = head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("host").then_some(v.trim())
    })?;
    Some(match v.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => v.rsplit_once(':').map_or(v, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                v
            }
        }),
    })
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
    allowed_hosts: Vec<String>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let allowed = Arc::new(allowed_hosts);
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP listener");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (metrics, store, allowed) = (metrics.clone(), store.clone(), allowed.clone());
        tokio::spawn(async move {
            let _slot = slot;
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
            let target = line.split_whitespace().nth(1).unwrap_or("");
            // The query string does not choose the resource (`/metrics?x` is `/metrics`).
            let path = target.split('?').next().unwrap_or("");
            let get = line.starts_with("GET ");
            let host_ok = host_allowed(host_header(&line), &allowed);
            let (status, ctype, body) = match (get, path, &store) {
                _ if !host_ok => (
                    "421 Misdirected Request",
                    "text/plain",
                    "this Host is not served here (see server.web_hosts)\n".to_string(),
                ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_localhost_and_configured_names_are_served() {
        let allowed = vec!["soc.example".to_string()];
        for (head, ok) in [
            ("GET / HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n", true),
            ("GET / HTTP/1.1\r\nhost: localhost:9464\r\n", true),
            ("GET / HTTP/1.1\r\nHost: [::1]:9464\r\n", true),
            ("GET / HTTP/1.1\r\nHost: SOC.example\r\n", true),
            (
                "GET / HTTP/1.1\r\nHost: rebind.attacker.example:9464\r\n",
                false,
            ),
            ("GET / HTTP/1.0\r\n", true),
        ] {
            assert_eq!(host_allowed(host_header(head), &allowed), ok, "{head}");
        }
    }
}
