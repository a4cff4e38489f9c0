//! The collector's configuration: `collector.toml` in its folder (or `--config FILE`). Every
//! key is optional; the defaults are documented beside each field and in the README.

use std::{net::SocketAddr, path::Path};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}`: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("`{path}`: `{key}` {why}")]
    Invalid {
        path: String,
        key: &'static str,
        why: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub retention: RetentionConfig,
    pub limits: LimitsConfig,
    pub enroll: EnrollConfig,
    pub correlation: CorrelationConfig,
    pub siem: SiemConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SiemConfig {
    /// Append OCSF JSON lines here: agents' findings and incidents (Detection Finding 2004),
    /// window summaries (Network 4001, File System 1001, Process 1007). Default: off.
    pub ocsf_file: String,
    /// CEF over syslog for findings and incidents: `udp://host:514` or `tcp://host:514`.
    /// Default: off.
    pub cef_syslog: String,
    /// POST each new incident as JSON to this `http://` or `https://` URL. Default: off.
    pub webhook_url: String,
    /// For an `https://` webhook: PEM file of the certificate authorities to trust. Default:
    /// the system's bundle, `/etc/ssl/certs/ca-certificates.crt`.
    pub webhook_ca: String,
    /// Items waiting for export; beyond it they are dropped and counted. Default 10000.
    pub queue: usize,
}

impl Default for SiemConfig {
    fn default() -> Self {
        Self {
            ocsf_file: String::new(),
            cef_syslog: String::new(),
            webhook_url: String::new(),
            webhook_ca: String::new(),
            queue: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationConfig {
    /// Seconds between correlation passes. Default 30.
    pub every_secs: u64,
    /// How late (event time) records may arrive and still be correlated, seconds. Default
    /// 7200: an agent back from two hours offline still counts.
    pub lateness_secs: u64,
    /// The practice-management vendor's domains (and their subdomains), for
    /// `vendor_domains_only` rules. Default none.
    pub vendor_domains: Vec<String>,
    /// Site rule file merged over the shipped rules by `id`. Default none.
    pub rules_file: String,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        Self {
            every_secs: 30,
            lateness_secs: 7200,
            vendor_domains: Vec::new(),
            rules_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where agents connect (gRPC with mutual TLS). Default `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// Prometheus metrics (`GET /metrics`) and `GET /healthz`, plain HTTP; empty: off.
    /// Default `127.0.0.1:9464`.
    pub metrics_listen: String,
    /// Host names the page and API answer to besides IP addresses and `localhost` (a
    /// reverse proxy's name); any other `Host` header is refused, so that a web page cannot
    /// read the API through DNS rebinding. Default `[]`.
    pub web_hosts: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            metrics_listen: "127.0.0.1:9464".into(),
            web_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A SQLite file, or `postgres://user:password@host/db` for PostgreSQL (several
    /// collectors sharing one database). Default: `collector.db` in the collector's folder.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Summaries and health records are kept this many days. Default 90.
    pub summaries_days: f64,
    /// Findings are kept this many days. Default 365.
    pub findings_days: f64,
    /// Seconds between retention passes (the first runs at start). Default 3600.
    pub every_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            summaries_days: 90.0,
            findings_days: 365.0,
            every_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Record units per second one host may send, sustained: a record costs 1, plus one per
    /// entry in its lists (3 per destination) and one per KiB (`clinicwatch_proto::limits::
    /// cost`); a heartbeat costs 1. Default 10000 (an agent sends a few records a minute; a
    /// backlog after an outage drains at this rate).
    pub records_per_sec: u32,
    /// Record units one host may send at once above that rate. Default 100000. A batch that
    /// costs more is still taken when the host's bucket is full, and the host then waits
    /// until the bucket has refilled.
    pub burst_records: u32,
    /// Streams open at once, all hosts together; more are refused with
    /// `resource_exhausted`. Default 20000. One host holds one stream: a newer one from the
    /// same certificate closes the older.
    pub max_streams: usize,
    /// An agent stream with no frame for this long is closed (agents send a heartbeat every
    /// `export.heartbeat_secs`, 30 by default). Default 300.
    pub stream_idle_secs: u64,
    /// TCP connections open at once (TLS or not yet); past it a new one is closed at once.
    /// Default 10000 (the collector raises its open-file limit to fit).
    pub max_connections: usize,
    /// TLS handshakes in flight at once, all peers together. Default 512.
    pub max_handshakes: usize,
    /// TLS handshakes in flight from one IP address. Default 64.
    pub max_handshakes_per_ip: u32,
    /// Seconds a peer has to complete its TLS handshake. Default 10.
    pub handshake_timeout_secs: u64,
    /// A connection without a client certificate (enrollment, health checks) is closed after
    /// this long without a byte from the peer. Default 30.
    pub unauthenticated_idle_secs: u64,
    /// Records whose own time is older than this (seconds before the collector's clock) are
    /// stored and acked but never correlated, and counted. Default 2592000 (30 days).
    pub max_record_age_secs: u64,
    /// Likewise for records dated more than this ahead of the collector's clock. Default 300.
    pub max_clock_skew_secs: u64,
}

impl LimitsConfig {
    /// The event times plausible at `now`: `max_record_age_secs` before to
    /// `max_clock_skew_secs` after (see [`crate::store::TimeWindow`]).
    pub fn window(&self, now: f64) -> crate::store::TimeWindow {
        crate::store::TimeWindow::between(
            now - self.max_record_age_secs as f64,
            now + self.max_clock_skew_secs as f64,
        )
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            records_per_sec: 10_000,
            burst_records: 100_000,
            max_streams: 20_000,
            stream_idle_secs: 300,
            max_connections: 10_000,
            max_handshakes: 512,
            max_handshakes_per_ip: 64,
            handshake_timeout_secs: 10,
            unauthenticated_idle_secs: 30,
            max_record_age_secs: 30 * 86_400,
            max_clock_skew_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollConfig {
    /// Days an enrolled host's certificate is valid; the agent renews it when a third is
    /// left. Default 30.
    pub cert_days: u32,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        Self { cert_days: 30 }
    }
}

impl Config {
    /// Reads `path`; a missing file gives the defaults only when `optional`.
    pub fn load(path: &Path, optional: bool) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: shown,
                    source,
                })
            }
        };
        Config::parse(&text, &shown)
    }

    pub fn parse(text: &str, shown: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: shown.to_string(),
            source,
        })?;
        cfg.check().map_err(|(key, why)| ConfigError::Invalid {
            path: shown.to_string(),
            key,
            why,
        })?;
        Ok(cfg)
    }

    /// The first key with an unusable value, section by section.
    fn check(&self) -> Result<(), Invalid> {
        self.retention.check()?;
        self.limits.check()?;
        if self.enroll.cert_days == 0 || self.enroll.cert_days > 825 {
            return bad("enroll.cert_days", "must be between 1 and 825");
        }
        self.siem.check()?;
        if self.correlation.every_secs == 0 {
            return bad("correlation.every_secs", "must be at least 1");
        }
        if let Err(e) = crate::correlate::rules::load(&self.correlation.rules_file) {
            return Err(("correlation.rules_file", e.to_string()));
        }
        let m = &self.server.metrics_listen;
        if !m.is_empty() && m.parse::<SocketAddr>().is_err() {
            return bad("server.metrics_listen", "must be ADDRESS:PORT or empty");
        }
        Ok(())
    }
}

/// A key whose value is unusable, and why.
type Invalid = (&'static str, String);

fn bad(key: &'static str, why: &str) -> Result<(), Invalid> {
    Err((key, why.to_string()))
}

impl RetentionConfig {
    fn check(&self) -> Result<(), Invalid> {
        for (key, v) in [
            ("retention.summaries_days", self.summaries_days),
            ("retention.findings_days", self.findings_days),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, "must be a number of days > 0");
            }
        }
        if self.every_secs == 0 {
            return bad("retention.every_secs", "must be at least 1");
        }
        Ok(())
    }
}

impl LimitsConfig {
    fn check(&self) -> Result<(), Invalid> {
        if self.records_per_sec == 0 {
            return bad("limits.records_per_sec", "must be at least 1");
        }
        if (self.burst_records as usize) < clinicwatch_proto::limits::MAX_BATCH_RECORDS {
            return bad(
                "limits.burst_records",
                &format!(
                    "must be at least {} (one full batch)",
                    clinicwatch_proto::limits::MAX_BATCH_RECORDS
                ),
            );
        }
        for (key, v) in [
            ("limits.max_streams", self.max_streams as u64),
            ("limits.stream_idle_secs", self.stream_idle_secs),
            ("limits.max_connections", self.max_connections as u64),
            ("limits.max_handshakes", self.max_handshakes as u64),
            (
                "limits.max_handshakes_per_ip",
                self.max_handshakes_per_ip as u64,
            ),
            ("limits.handshake_timeout_secs", self.handshake_timeout_secs),
            (
                "limits.unauthenticated_idle_secs",
                self.unauthenticated_idle_secs,
            ),
            ("limits.max_record_age_secs", self.max_record_age_secs),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        Ok(())
    }
}

impl SiemConfig {
    fn check(&self) -> Result<(), Invalid> {
        if !(self.cef_syslog.is_empty()
            || self.cef_syslog.starts_with("udp://")
            || self.cef_syslog.starts_with("tcp://"))
        {
            return bad(
                "siem.cef_syslog",
                "must be udp://HOST:PORT or tcp://HOST:PORT",
            );
        }
        if !self.webhook_url.is_empty()
            && !self.webhook_url.starts_with("http://")
            && !self.webhook_url.starts_with("https://")
        {
            return bad("siem.webhook_url", "must be an http:// or https:// URL");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example (every key at its default) and the config the package installs load.
    #[test]
    fn the_example_and_packaged_configs_load() {
        let example = include_str!("../../examples/collector.toml");
        let c = Config::parse(example, "examples/collector.toml").unwrap();
        let d = Config::parse("", "defaults").unwrap();
        assert_eq!(
            format!("{c:?}"),
            format!("{d:?}"),
            "the example shows the defaults"
        );
        let packaged = include_str!("../../packaging/collector/collector.toml");
        Config::parse(packaged, "packaging/collector/collector.toml").unwrap();
    }

    #[test]
    fn defaults_and_errors_that_name_the_key() {
        let c = Config::parse("", "c.toml").unwrap();
        assert_eq!(c.retention.summaries_days, 90.0);
        assert_eq!(c.limits.records_per_sec, 10_000);
        let c = Config::parse(
            "[store]\nurl = \"postgres://cw@db/cw\"\n[retention]\nfindings_days = 730\n",
            "c.toml",
        )
        .unwrap();
        assert_eq!(c.retention.findings_days, 730.0);
        assert_eq!(c.store.url, "postgres://cw@db/cw");
        for (text, key) in [
            (
                "[retention]\nsummaries_days = 0",
                "retention.summaries_days",
            ),
            ("[limits]\nburst_records = 10", "limits.burst_records"),
            (
                "[server]\nmetrics_listen = \"nope\"",
                "server.metrics_listen",
            ),
            ("[enroll]\ncert_days = 0", "enroll.cert_days"),
            ("[siem]\ncef_syslog = \"10.0.0.5:514\"", "siem.cef_syslog"),
            (
                "[siem]\nwebhook_url = \"ftp://soc.example/hook\"",
                "siem.webhook_url",
            ),
            (
                "[correlation]\nrules_file = \"/nonexistent.toml\"",
                "correlation.rules_file",
            ),
            ("[limits]\nrecords_per_second = 5", "records_per_second"),
        ] {
            let e = Config::parse(text, "c.toml").unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("c.toml"), "{text}: {e}");
        }
    }
}
