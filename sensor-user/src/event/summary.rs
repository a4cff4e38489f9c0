//! What an aggregation window reports: per app, bytes read by file class, destinations
//! with exact bytes, children and query templates. Data only: `intel::window` builds them,
//! the output, the spool and the exporter carry them.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::class::FileClass;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    pub bytes: u64,
    pub reads: u64,
    pub opens: u64,
    pub mmaps: u64,
    /// Distinct files with activity in the window.
    pub files: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestStats {
    pub dst: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// From the app's DNS lookups or TLS SNI when known (not captured yet).
    pub name: Option<String>,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub connects: u64,
}

impl DestStats {
    pub fn key(&self) -> String {
        dest_key(self.dst, self.port, &self.protocol)
    }
}

/// One query template's counts in a window (see `query.rs`: the template holds no identifier
/// and no name; `distinct_ids` is a count, the identifiers stay on the agent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryStats {
    /// `http/1.1` or `h2` (whose paths are compressed: one template, `{h2}`).
    pub protocol: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub requests: u64,
    pub bytes_sent: u64,
    /// Distinct identifiers (records) the requests named: a HyperLogLog estimate.
    pub distinct_ids: u64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
}

impl QueryStats {
    /// `GET api.vendor.example/api/v1/patients/{n}`: how baselines and findings name it.
    pub fn key(&self) -> String {
        format!("{} {}{}", self.method, self.host, self.path)
    }
}

/// One app's window. Paths never appear: files are counted by class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    pub app: String,
    pub start: f64,
    pub end: f64,
    /// Local hour of the week (Monday 00:00 is 0).
    pub hour_of_week: u16,
    pub in_practice_hours: bool,
    pub classes: BTreeMap<FileClass, ClassStats>,
    pub destinations: Vec<DestStats>,
    /// Children executed, by executable.
    pub children: BTreeMap<String, u64>,
    /// Processes of the app with activity in the window.
    pub processes: u64,
    /// HTTPS queries by template, most requested first.
    #[serde(default)]
    pub queries: Vec<QueryStats>,
}

impl WindowSummary {
    pub fn class_bytes(&self, c: FileClass) -> u64 {
        self.classes.get(&c).map_or(0, |s| s.bytes)
    }

    pub fn bytes_read(&self) -> u64 {
        self.classes.values().map(|s| s.bytes).sum()
    }

    pub fn bytes_sent(&self) -> u64 {
        self.destinations.iter().map(|d| d.bytes_sent).sum()
    }

    pub fn requests(&self) -> u64 {
        self.queries.iter().map(|q| q.requests).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
            && self.destinations.is_empty()
            && self.children.is_empty()
            && self.queries.is_empty()
    }
}

/// How baselines, findings and the allow-list name a destination: `1.2.3.4:443/tcp`,
/// `[::1]:443/tcp`.
pub fn dest_key(ip: IpAddr, port: u16, protocol: &str) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}/{protocol}"),
        IpAddr::V4(v4) => format!("{v4}:{port}/{protocol}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_keyed_with_brackets_for_ipv6() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(dest_key(ip("::1"), 443, "tcp"), "[::1]:443/tcp");
        assert_eq!(dest_key(ip("192.0.2.1"), 53, "udp"), "192.0.2.1:53/udp");
    }
}
