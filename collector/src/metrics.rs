//! The collector's counters and their exposition. The services bump atomics; at each
//! scrape prometheus-client renders them (a [`Collector`] over them), so the text format,
//! escaping and `# EOF` are the library's. Label sets are bounded: the reasons are enums.
//! Per-host figures are not series (15,000 agents would be 75,000 of them on every
//! scrape): they are kept here, bounded, for `/api/hosts`.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::store::HostKey;

/// Hosts remembered for `/api/hosts`; past it, those not heard from for a day are forgotten.
const MAX_HOSTS: usize = 100_000;

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

/// What this collector saw of a host since it started.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HostStats {
    pub accepted: u64,
    pub duplicates: u64,
    /// Receive time minus the newest record's own time, at the last batch.
    pub lag_secs: f64,
    pub spooled: u64,
    pub last_seen: f64,
}

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

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
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

    /// The host's entry, made if new (forgetting hosts silent for a day when full).
    fn host<T>(&self, host: &HostKey, now: f64, f: impl FnOnce(&mut HostStats) -> T) -> T {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(host) {
            hosts.retain(|_, h| now - h.last_seen < 86_400.0);
        }
        let h = hosts.entry(host.clone()).or_default();
        h.last_seen = now;
        f(h)
    }

    /// A batch was stored.
    pub fn batch(&self, host: &HostKey, stored: u64, duplicates: u64, newest: f64, now: f64) {
        self.accepted.fetch_add(stored, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.host(host, now, |h| {
            h.accepted += stored;
            h.duplicates += duplicates;
            h.lag_secs = (now - newest).max(0.0);
        });
    }

    pub fn heartbeat(&self, host: &HostKey, spooled: u64, now: f64) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        self.host(host, now, |h| h.spooled = spooled);
    }

    pub fn seen(&self, host: &HostKey, now: f64) {
        self.host(host, now, |_| ());
    }

    /// What this collector saw of each host since it started.
    pub fn hosts(&self) -> BTreeMap<HostKey, HostStats> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The exposition (OpenMetrics text, which Prometheus reads).
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(self.clone())));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "rendering metrics");
        }
        out
    }
}

/// The counters as prometheus-client sees them at a scrape.
#[derive(Debug)]
struct Exposition(Arc<Metrics>);

/// (name without `_total`, help, value) of the plain counters.
fn counters(m: &Metrics) -> [(&'static str, &'static str, u64); 14] {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    [
        (
            "clinicwatch_collector_records_accepted",
            "Records stored (new).",
            g(&m.accepted),
        ),
        (
            "clinicwatch_collector_records_duplicate",
            "Records received again and not stored twice.",
            g(&m.duplicates),
        ),
        (
            "clinicwatch_collector_batches",
            "Batches stored and acked.",
            g(&m.batches),
        ),
        (
            "clinicwatch_collector_heartbeats",
            "Heartbeats received.",
            g(&m.heartbeats),
        ),
        (
            "clinicwatch_collector_throttles",
            "Throttle frames sent.",
            g(&m.throttles),
        ),
        (
            "clinicwatch_collector_streams",
            "Agent streams opened.",
            g(&m.streams_total),
        ),
        (
            "clinicwatch_collector_enrolled",
            "Certificates issued by enrollment or renewal.",
            g(&m.enrolled),
        ),
        (
            "clinicwatch_collector_incidents_opened",
            "Incidents opened by correlation.",
            g(&m.incidents_opened),
        ),
        (
            "clinicwatch_collector_siem_exported",
            "Items exported (OCSF file, CEF syslog, webhook) without error.",
            g(&m.siem_exported),
        ),
        (
            "clinicwatch_collector_siem_errors",
            "Items whose export failed somewhere (see the log).",
            g(&m.siem_errors),
        ),
        (
            "clinicwatch_collector_siem_dropped",
            "Items dropped because the export queue was full.",
            g(&m.siem_dropped),
        ),
        (
            "clinicwatch_collector_correlation_passes",
            "Correlation passes run by this collector (the leader).",
            g(&m.correlation_passes),
        ),
        (
            "clinicwatch_collector_pruned_rows",
            "Rows removed by retention.",
            g(&m.pruned),
        ),
        (
            "clinicwatch_collector_records_out_of_window",
            "Records stored but not correlated: their time is implausible.",
            g(&m.out_of_window),
        ),
    ]
}

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        for (name, help, v) in counters(m) {
            let c = ConstCounter::new(v);
            c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        let secs = ConstCounter::new(m.store_micros.load(Ordering::Relaxed) as f64 / 1e6);
        secs.encode(e.encode_descriptor(
            "clinicwatch_collector_store_batch_seconds",
            "Time spent storing batches.",
            None,
            MetricType::Counter,
        )?)?;
        let gauges = [
            (
                "clinicwatch_collector_streams_active",
                "Agent streams open now.",
                m.streams_active.load(Ordering::Relaxed) as i64,
            ),
            (
                "clinicwatch_collector_correlation_leader",
                "1 when this collector leads correlation (one per database), else 0.",
                i64::from(m.correlation_leader.load(Ordering::Relaxed)),
            ),
            (
                "clinicwatch_collector_store_up",
                "1 when the last store call succeeded.",
                i64::from(m.store_ok.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, v) in gauges {
            ConstGauge::new(v).encode(e.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        let mut f = e.encode_descriptor(
            "clinicwatch_collector_rejected",
            "Frames or streams refused, by reason.",
            None,
            MetricType::Counter,
        )?;
        for r in Rejection::ALL {
            ConstCounter::new(m.rejected(r)).encode(f.encode_family(&[("reason", r.label())])?)?;
        }
        let mut f = e.encode_descriptor(
            "clinicwatch_collector_connections_refused",
            "Connections closed before a request, by the limit that closed them.",
            None,
            MetricType::Counter,
        )?;
        for r in Refusal::ALL {
            ConstCounter::new(m.refused(r)).encode(f.encode_family(&[("reason", r.label())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_bounded_labels_and_keeps_hosts_for_the_api() {
        let m = Arc::new(Metrics::new());
        let h = HostKey {
            clinic: "clinic \"A\"".into(),
            host: "ws1".into(),
        };
        m.batch(&h, 10, 2, 100.0, 103.5);
        m.reject(Rejection::Throttled);
        m.store_micros.store(1_500_000, Ordering::Relaxed);
        let t = m.render();
        for want in [
            "clinicwatch_collector_records_accepted_total 10\n",
            "clinicwatch_collector_rejected_total{reason=\"throttled\"} 1\n",
            "clinicwatch_collector_rejected_total{reason=\"invalid\"} 0\n",
            "clinicwatch_collector_store_batch_seconds_total 1.5\n",
            "# TYPE clinicwatch_collector_streams_active gauge\n",
            "# EOF\n",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
        assert!(!t.contains("clinic \\\"A"), "no per-host series: {t}");
        assert_eq!(m.hosts()[&h].lag_secs, 3.5);
    }

    #[test]
    fn hosts_silent_for_a_day_are_forgotten_when_the_map_is_full() {
        let m = Metrics::new();
        let key = |i: usize| HostKey {
            clinic: "c".into(),
            host: format!("h{i}"),
        };
        for i in 0..MAX_HOSTS {
            m.seen(&key(i), 0.0);
        }
        m.seen(&key(0), 90_000.0);
        m.seen(&key(MAX_HOSTS), 90_000.0);
        assert_eq!(
            m.hosts().len(),
            2,
            "the day-old hosts went, the fresh stayed"
        );
    }
}
