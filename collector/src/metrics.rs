//! The collector's counters, rendered in the Prometheus text format, and a small HTTP
//! endpoint that serves them (`GET /metrics`) with a liveness check (`GET /healthz`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
};

use crate::store::HostKey;

/// Why a frame or stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Invalid,
    Permission,
    Unauthenticated,
    Throttled,
    Storage,
    TooManyStreams,
    /// A stream closed after `limits.stream_idle_secs` without a frame.
    Idle,
    /// A stream closed because a newer one from the same host opened.
    Superseded,
}

impl Rejection {
    const ALL: [Rejection; 8] = [
        Rejection::Invalid,
        Rejection::Permission,
        Rejection::Unauthenticated,
        Rejection::Throttled,
        Rejection::Storage,
        Rejection::TooManyStreams,
        Rejection::Idle,
        Rejection::Superseded,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejection::Invalid => "invalid",
            Rejection::Permission => "permission",
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::Throttled => "throttled",
            Rejection::Storage => "storage",
            Rejection::TooManyStreams => "too_many_streams",
            Rejection::Idle => "idle",
            Rejection::Superseded => "superseded",
        }
    }
}

/// Why a connection was closed before it could carry a request (`listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Connections,
    Handshakes,
    HandshakesPerIp,
    HandshakeTimeout,
    HandshakeFailed,
    AcceptError,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::Connections,
        Refusal::Handshakes,
        Refusal::HandshakesPerIp,
        Refusal::HandshakeTimeout,
        Refusal::HandshakeFailed,
        Refusal::AcceptError,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections",
            Refusal::Handshakes => "max_handshakes",
            Refusal::HandshakesPerIp => "max_handshakes_per_ip",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::AcceptError => "accept_error",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct HostStats {
    accepted: u64,
    duplicates: u64,
    /// Receive time minus the newest record's own time, at the last batch.
    lag_secs: f64,
    spooled: u64,
    last_seen: f64,
}

/// A per-host series: name, type, help, value.
type HostSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&HostStats) -> String,
);

#[derive(Default)]
pub struct Metrics {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub batches: AtomicU64,
    pub heartbeats: AtomicU64,
    pub throttles: AtomicU64,
    pub streams_active: AtomicU64,
    pub streams_total: AtomicU64,
    pub enrolled: AtomicU64,
    pub pruned: AtomicU64,
    pub incidents_opened: AtomicU64,
    pub siem_exported: AtomicU64,
    pub siem_errors: AtomicU64,
    pub siem_dropped: AtomicU64,
    pub correlation_passes: AtomicU64,
    /// This collector ran the last correlation pass (it holds the lead).
    pub correlation_leader: AtomicBool,
    /// Microseconds spent in store calls for batches, and their number.
    pub store_micros: AtomicU64,
    rejected: [AtomicU64; 8],
    refused: [AtomicU64; 6],
    /// Records stored but kept out of correlation: their own time is outside the plausible
    /// window around the collector's clock (`limits.max_record_age_secs`, `max_clock_skew_secs`).
    pub out_of_window: AtomicU64,
    /// False after a store call failed, until one succeeds (drives the health service).
    pub store_ok: AtomicBool,
    hosts: Mutex<BTreeMap<HostKey, HostStats>>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::default();
        m.store_ok.store(true, Ordering::Relaxed);
        m
    }

    pub fn reject(&self, why: Rejection) {
        let i = Rejection::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refuse(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].load(Ordering::Relaxed)
    }

    pub fn rejected(&self, why: Rejection) -> u64 {
        let i = Rejection::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejected[i].load(Ordering::Relaxed)
    }

    /// A batch was stored.
    pub fn batch(&self, host: &HostKey, stored: u64, duplicates: u64, newest: f64, now: f64) {
        self.accepted.fetch_add(stored, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let h = hosts.entry(host.clone()).or_default();
        h.accepted += stored;
        h.duplicates += duplicates;
        h.lag_secs = (now - newest).max(0.0);
        h.last_seen = now;
    }

    pub fn heartbeat(&self, host: &HostKey, spooled: u64, now: f64) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let h = hosts.entry(host.clone()).or_default();
        h.spooled = spooled;
        h.last_seen = now;
    }

    pub fn seen(&self, host: &HostKey, now: f64) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.entry(host.clone()).or_default().last_seen = now;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            "clinicwatch_collector_records_accepted_total",
            "counter",
            "Records stored (new).",
            g(&self.accepted),
        );
        one(
            "clinicwatch_collector_records_duplicate_total",
            "counter",
            "Records received again and not stored twice.",
            g(&self.duplicates),
        );
        one(
            "clinicwatch_collector_batches_total",
            "counter",
            "Batches stored and acked.",
            g(&self.batches),
        );
        one(
            "clinicwatch_collector_heartbeats_total",
            "counter",
            "Heartbeats received.",
            g(&self.heartbeats),
        );
        one(
            "clinicwatch_collector_throttles_total",
            "counter",
            "Throttle frames sent.",
            g(&self.throttles),
        );
        one(
            "clinicwatch_collector_streams_active",
            "gauge",
            "Agent streams open now.",
            g(&self.streams_active),
        );
        one(
            "clinicwatch_collector_streams_total",
            "counter",
            "Agent streams opened.",
            g(&self.streams_total),
        );
        one(
            "clinicwatch_collector_enrolled_total",
            "counter",
            "Certificates issued by enrollment or renewal.",
            g(&self.enrolled),
        );
        one(
            "clinicwatch_collector_incidents_opened_total",
            "counter",
            "Incidents opened by correlation.",
            g(&self.incidents_opened),
        );
        one(
            "clinicwatch_collector_siem_exported_total",
            "counter",
            "Items exported (OCSF file, CEF syslog, webhook) without error.",
            g(&self.siem_exported),
        );
        one(
            "clinicwatch_collector_siem_errors_total",
            "counter",
            "Items whose export failed somewhere (see the log).",
            g(&self.siem_errors),
        );
        one(
            "clinicwatch_collector_siem_dropped_total",
            "counter",
            "Items dropped because the export queue was full.",
            g(&self.siem_dropped),
        );
        one(
            "clinicwatch_collector_correlation_passes_total",
            "counter",
            "Correlation passes run by this collector (the leader).",
            g(&self.correlation_passes),
        );
        one(
            "clinicwatch_collector_correlation_leader",
            "gauge",
            "1 when this collector leads correlation (one per database), else 0.",
            self.correlation_leader.load(Ordering::Relaxed) as u64,
        );
        one(
            "clinicwatch_collector_pruned_rows_total",
            "counter",
            "Rows removed by retention.",
            g(&self.pruned),
        );
        let _ = writeln!(
            o,
            "# HELP clinicwatch_collector_store_batch_seconds_total Time spent storing batches.\n# TYPE clinicwatch_collector_store_batch_seconds_total counter\nclinicwatch_collector_store_batch_seconds_total {}",
            g(&self.store_micros) as f64 / 1e6
        );
        let _ = writeln!(o, "# HELP clinicwatch_collector_rejected_total Frames or streams refused, by reason.\n# TYPE clinicwatch_collector_rejected_total counter");
        for r in Rejection::ALL {
            let _ = writeln!(
                o,
                "clinicwatch_collector_rejected_total{{reason=\"{}\"}} {}",
                r.label(),
                self.rejected(r)
            );
        }
        let _ = writeln!(o, "# HELP clinicwatch_collector_connections_refused_total Connections closed before a request, by the limit that closed them.\n# TYPE clinicwatch_collector_connections_refused_total counter");
        for r in Refusal::ALL {
            let _ = writeln!(
                o,
                "clinicwatch_collector_connections_refused_total{{reason=\"{}\"}} {}",
                r.label(),
                self.refused(r)
            );
        }
        let _ = writeln!(
            o,
            "# HELP clinicwatch_collector_records_out_of_window_total Records stored but not correlated: their time is implausible.\n# TYPE clinicwatch_collector_records_out_of_window_total counter\nclinicwatch_collector_records_out_of_window_total {}",
            g(&self.out_of_window)
        );
        let _ = writeln!(o, "# HELP clinicwatch_collector_store_up Whether the last store call succeeded.\n# TYPE clinicwatch_collector_store_up gauge\nclinicwatch_collector_store_up {}", self.store_ok.load(Ordering::Relaxed) as u8);
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let per_host: [HostSeries; 5] = [
            (
                "clinicwatch_host_records_accepted_total",
                "counter",
                "Records stored from this host.",
                |h| h.accepted.to_string(),
            ),
            (
                "clinicwatch_host_records_duplicate_total",
                "counter",
                "Records from this host received again.",
                |h| h.duplicates.to_string(),
            ),
            (
                "clinicwatch_host_lag_seconds",
                "gauge",
                "At the host's last batch: receive time minus its newest record's time.",
                |h| format!("{:.3}", h.lag_secs),
            ),
            (
                "clinicwatch_host_spooled_records",
                "gauge",
                "Records waiting in the host's spool (last heartbeat).",
                |h| h.spooled.to_string(),
            ),
            (
                "clinicwatch_host_last_seen_timestamp_seconds",
                "gauge",
                "When the host was last heard from (unix seconds).",
                |h| format!("{:.3}", h.last_seen),
            ),
        ];
        for (name, kind, help, value) in per_host {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (k, h) in hosts.iter() {
                let _ = writeln!(
                    o,
                    "{name}{{clinic=\"{}\",host=\"{}\"}} {}",
                    escape(&k.clinic),
                    escape(&k.host),
                    value(h)
                );
            }
        }
        o
    }
}

/// Serves `/metrics` and `/healthz` until the listener fails (the SOC page needs the store:
/// [`crate::web::serve`]).
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    crate::web::serve(listener, metrics, None, Vec::new()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_escaped_host_labels() {
        let m = Metrics::new();
        let h = HostKey {
            clinic: "clinic \"A\"".into(),
            host: "ws1".into(),
        };
        m.batch(&h, 10, 2, 100.0, 103.5);
        m.reject(Rejection::Throttled);
        m.store_micros.store(1_500_000, Ordering::Relaxed);
        let t = m.render();
        assert!(
            t.contains("clinicwatch_collector_records_accepted_total 10\n"),
            "{t}"
        );
        assert!(
            t.contains("clinicwatch_collector_rejected_total{reason=\"throttled\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "clinicwatch_host_lag_seconds{clinic=\"clinic \\\"A\\\"\",host=\"ws1\"} 3.500\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("clinicwatch_collector_store_batch_seconds_total 1.5\n"),
            "{t}"
        );
    }
}
