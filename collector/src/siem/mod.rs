//! Exports for the SOC's other tools: OCSF JSON lines to a file, CEF over syslog (UDP or
//! TCP) for older SIEMs, and a webhook (HTTP(S) POST of JSON) for each new incident.
//!
//! Ingest and correlation hand items to a bounded queue and never wait on an export; a
//! full queue drops the item and counts it (`clinicwatch_collector_siem_dropped_total`).
//! Each collector exports what it stored; incidents are exported by the collector that
//! runs correlation.

pub mod cef;
pub mod ocsf;
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

async fn run(
    cfg: SiemConfig,
    webhook: Option<transport::Webhook>,
    mut rx: tokio::sync::mpsc::Receiver<Item>,
    metrics: Arc<Metrics>,
) {
    let mut file = transport::JsonLines::new(&cfg.ocsf_file);
    let mut syslog = transport::Syslog::new(&cfg.cef_syslog);
    while let Some(item) = rx.recv().await {
        let (ocsf, cef, hook) = match &item {
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
        };
        let mut failed = false;
        if let Some(f) = file.as_mut() {
            failed |= f.write(&ocsf).await.is_err();
        }
        if let Some(s) = syslog.as_mut() {
            for line in &cef {
                failed |= s.send(line).await.is_err();
            }
        }
        if let (Some(w), Some(body)) = (&webhook, hook) {
            failed |= w.post(&body).await.is_err();
        }
        if failed {
            metrics.siem_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            metrics.siem_exported.fetch_add(1, Ordering::Relaxed);
        }
    }
}
