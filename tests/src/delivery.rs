//! Shared by the delivery and fault tests: an in-process collector over mutual TLS (the
//! testkit's), the agent's side of the PKI, and the check that every record and finding
//! arrived once.

use std::{path::Path, sync::Arc};

use clinicwatch_collector::{
    config::Config as CollectorConfig,
    store::{self, HostKey, Store},
};
pub use clinicwatch_testkit::collector::{Pki, Running};

use crate::Fixture;

/// A free TCP port on 127.0.0.1 (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An in-process collector on `port`, storing into `db`, running on `rt` until the
/// [`Running`] it returns is dropped.
pub fn collector(rt: &tokio::runtime::Runtime, port: u16, pki: &Pki, db: &Path) -> Running {
    let store = Arc::from(store::open(&db.display().to_string()).unwrap());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("the collector's port");
    let _in = rt.enter();
    clinicwatch_testkit::collector::serve(pki, CollectorConfig::default(), store, None, listener)
}

/// The collector's PKI, and the host's CA, certificate and key as `ca.pem`, `cert.pem` and
/// `key.pem` in `dir`.
pub fn host_pki(dir: &Path, clinic: &str, host: &str) -> Pki {
    let pki = Pki::new();
    pki.write_host_files(dir, clinic, host);
    pki
}

/// The agent's spool in `state_dir/spool` (the agent stopped).
pub fn open_spool(fx: &Fixture) -> clinicwatch_agent::sinks::spool::Spool {
    clinicwatch_agent::sinks::spool::Spool::open(clinicwatch_agent::sinks::spool::SpoolConfig {
        dir: fx.state_dir().join("spool"),
        max_bytes: 256 << 20,
        segment_bytes: 4 << 20,
        fsync_each: false,
    })
    .unwrap()
}

/// What [`assert_each_once`] found.
#[derive(Debug)]
pub struct Delivered {
    /// Records stored at the collector (all of seqs `1..=stored`).
    pub stored: u64,
    /// Records still in the spool, not stored.
    pub waiting: u64,
    /// Findings the agent raised (its `findings.jsonl`), and of them stored.
    pub raised: Vec<(String, i64)>,
    pub findings_stored: usize,
}

/// A finding as the checks compare them: rule, time in milliseconds.
pub fn finding_key(rule: &str, time: f64) -> (String, i64) {
    (rule.to_string(), (time * 1000.0).round() as i64)
}

/// The findings the agent logged (`state_dir/findings.jsonl`).
pub fn findings_log(fx: &Fixture) -> Vec<(String, i64)> {
    let (raised, _) =
        clinicwatch_agent::cli::report::read_findings(&fx.state_dir().join("findings.jsonl"), 0.0)
            .unwrap();
    raised
        .iter()
        .map(|f| finding_key(&f.rule, f.time))
        .collect()
}

/// Every record the agent spooled is stored once or still waits in its spool (no gap, no
/// duplicate); every finding in `raised` is stored once or waits, and no other. The agent
/// is stopped.
pub fn assert_each_once(
    fx: &Fixture,
    s: &dyn Store,
    host: &HostKey,
    mut raised: Vec<(String, i64)>,
) -> Delivered {
    use clinicwatch_proto::v1::{record::Body, Record};
    use prost::Message as _;
    let spool = open_spool(fx);
    assert_eq!(spool.dropped, 0, "the spool dropped nothing");
    let last = spool.next_seq() - 1;
    let waiting = spool
        .read_after(spool.acked(), 1_000_000, usize::MAX)
        .unwrap();
    let stored_to = s.stored_up_to(host, spool.epoch()).unwrap();
    let stored = s.record_count().unwrap();
    assert!(
        stored_to >= spool.acked(),
        "acked {} but stored only to {stored_to}",
        spool.acked()
    );
    assert_eq!(
        stored, stored_to,
        "no gap and no duplicate: {stored} rows up to seq {stored_to}"
    );
    let unsent: Vec<_> = waiting.iter().filter(|e| e.seq > stored_to).collect();
    assert_eq!(
        stored + unsent.len() as u64,
        last,
        "every spooled record is stored or waiting"
    );
    let stored_findings: Vec<(String, i64)> = s
        .findings_since(0.0)
        .unwrap()
        .into_iter()
        .map(|f| finding_key(&f.rule, f.time))
        .collect();
    let mut at_collector = stored_findings.clone();
    for e in &unsent {
        if let Ok(Record {
            body: Some(Body::Finding(f)),
            ..
        }) = Record::decode(e.payload.as_slice())
        {
            at_collector.push(finding_key(&f.rule, f.time));
        }
    }
    at_collector.sort();
    raised.sort();
    assert_eq!(at_collector, raised, "each finding exactly once");
    Delivered {
        stored,
        waiting: unsent.len() as u64,
        raised,
        findings_stored: stored_findings.len(),
    }
}
