//! Exports for the SOC's other tools: OCSF JSON lines to a file, CEF over syslog (UDP or
//! TCP) for older SIEMs, and a webhook (HTTP(S) POST of JSON) for each new incident.
//!
//! Ingest and correlation hand items to a bounded queue and never wait on an export; a
//! full queue drops the item and counts it (`clinicwatch_collector_siem_dropped_total`).
//! Each export then has its own task and queue, so that a stalled one (a TCP syslog
//! receiver that stops reading, a slow webhook) drops only its own items, never the
//! others'; syslog's connect and write each have a timeout.
//! Each collector exports what it stored; incidents are exported by the collector that
//! runs correlation.

pub(crate) mod cef;
pub(crate) mod ocsf;
mod transport;

use std::sync::{atomic::Ordering, Arc};

use clinicwatch_proto::v1::{record::Body, Record};

use crate::{
    config::SiemConfig,
    metrics::Metrics,
    store::{HostKey, Incident},
};

/// Something to export.
#[derive(Debug, Clone)]
pub enum Item {
    /// Records a host sent, as stored (duplicates left out).
    Records { host: HostKey, records: Vec<Record> },
    /// An incident opened (`opened`) or updated by correlation.
    Incident { incident: Incident, opened: bool },
}

/// The handle ingest and correlation send to.
#[derive(Clone)]
pub struct Siem {
    tx: tokio::sync::mpsc::Sender<Item>,
    metrics: Arc<Metrics>,
}

impl Siem {
    /// Starts the export task when any export is configured; an error names a webhook URL
    /// or CA file that cannot be used.
    pub fn start(cfg: &SiemConfig, metrics: Arc<Metrics>) -> std::io::Result<Option<Siem>> {
        if cfg.ocsf_file.is_empty() && cfg.cef_syslog.is_empty() && cfg.webhook_url.is_empty() {
            return Ok(None);
        }
        let webhook = transport::Webhook::new(&cfg.webhook_url, &cfg.webhook_ca)?;
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.queue.max(1));
        tokio::spawn(run(cfg.clone(), webhook, rx, metrics.clone()));
        Ok(Some(Siem { tx, metrics }))
    }

    pub fn send(&self, item: Item) {
        if self.tx.try_send(item).is_err() {
            self.metrics.siem_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One export's queue and task: what it cannot take in time is dropped and counted.
struct Sink<T>(tokio::sync::mpsc::Sender<T>);

impl<T: Send + 'static> Sink<T> {
    fn start<F, Fut>(queue: usize, metrics: Arc<Metrics>, mut export: F) -> Sink<T>
    where
        F: FnMut(T) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<T>(queue);
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                let counter = if export(item).await {
                    &metrics.siem_exported
                } else {
                    &metrics.siem_errors
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Sink(tx)
    }

    fn offer(&self, item: T, metrics: &Metrics) {
        if self.0.try_send(item).is_err() {
            metrics.siem_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run(
    cfg: SiemConfig,
    webhook: Option<transport::Webhook>,
    mut rx: tokio::sync::mpsc::Receiver<Item>,
    metrics: Arc<Metrics>,
) {
    let q = cfg.queue.max(1);
    let file = transport::JsonLines::new(&cfg.ocsf_file).map(|f| {
        let f = Arc::new(tokio::sync::Mutex::new(f));
        Sink::start(q, metrics.clone(), move |v: Vec<serde_json::Value>| {
            let f = f.clone();
            async move { f.lock().await.write(&v).await.is_ok() }
        })
    });
    let syslog = transport::Syslog::new(&cfg.cef_syslog).map(|s| {
        let s = Arc::new(tokio::sync::Mutex::new(s));
        Sink::start(q, metrics.clone(), move |lines: Vec<String>| {
            let s = s.clone();
            async move {
                let mut s = s.lock().await;
                let mut ok = true;
                for line in &lines {
                    ok &= s.send(line).await.is_ok();
                }
                ok
            }
        })
    });
    let hook = webhook.map(|w| {
        let w = Arc::new(w);
        Sink::start(q, metrics.clone(), move |body: serde_json::Value| {
            let w = w.clone();
            async move { w.post(&body).await.is_ok() }
        })
    });
    while let Some(item) = rx.recv().await {
        let (ocsf, cef, body) = formats(&item);
        if let Some(f) = &file {
            f.offer(ocsf, &metrics);
        }
        if let (Some(s), false) = (&syslog, cef.is_empty()) {
            s.offer(cef, &metrics);
        }
        if let (Some(h), Some(body)) = (&hook, body) {
            h.offer(body, &metrics);
        }
    }
}

/// An item as each export carries it: OCSF objects, CEF lines, and the webhook's body
/// (new incidents only).
fn formats(
    item: &Item,
) -> (
    Vec<serde_json::Value>,
    Vec<String>,
    Option<serde_json::Value>,
) {
    match item {
        Item::Records { host, records } => {
            let ocsf: Vec<_> = records.iter().flat_map(|r| ocsf::record(host, r)).collect();
            let cef: Vec<String> = records
                .iter()
                .filter_map(|r| match &r.body {
                    Some(Body::Finding(f)) => Some(cef::finding(host, f)),
                    _ => None,
                })
                .collect();
            (ocsf, cef, None)
        }
        Item::Incident { incident, opened } => (
            vec![ocsf::incident(incident, *opened)],
            vec![cef::incident(incident)],
            opened.then(|| {
                serde_json::json!({
                    "event": "incident_opened",
                    "incident": incident,
                    "ocsf": ocsf::incident(incident, true),
                })
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clinicwatch_proto::v1::Finding;

    /// A TCP syslog receiver that accepts and never reads (24 MB of CEF, more than the
    /// sockets buffer): the OCSF file still gets every item.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_syslog_receiver_does_not_stall_the_file() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                keep.push(s);
            }
        });
        let dir = std::env::temp_dir().join(format!("cw-siem-stall-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ocsf.jsonl");
        let cfg = SiemConfig {
            ocsf_file: file.display().to_string(),
            cef_syslog: format!("tcp://127.0.0.1:{port}"),
            queue: 10_000,
            ..Default::default()
        };
        let metrics = Arc::new(Metrics::new());
        let siem = Siem::start(&cfg, metrics.clone()).unwrap().unwrap();
        let host = HostKey {
            clinic: "c".into(),
            host: "h".into(),
        };
        let n = 8000;
        let big = "x".repeat(3000);
        for seq in 1..=n {
            let r = Record {
                seq,
                body: Some(Body::Finding(Finding {
                    rule: "CW-X".into(),
                    summary: big.clone(),
                    time: 1.0,
                    ..Default::default()
                })),
            };
            siem.send(Item::Records {
                host: host.clone(),
                records: vec![r],
            });
            // Paced, so that the front queue never overflows: only the stalled export may.
            if seq % 50 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let lines = loop {
            let lines = std::fs::read_to_string(&file)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if lines as u64 >= n || std::time::Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(lines as u64, n, "every item reached the file");
        assert!(
            metrics.siem_exported.load(Ordering::Relaxed) < 2 * n,
            "syslog is stalled indeed"
        );
        held.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
