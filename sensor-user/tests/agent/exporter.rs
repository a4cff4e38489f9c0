//! The exporter against a real collector over mutual TLS with zstd: a backlog drains at the
//! collector's pace (Throttle and the retry pushback obeyed, not hammered), heartbeats keep
//! the host alive while idle, a certificate in the last third of its life is renewed, and
//! no record the collector would refuse blocks the ones after it (the last tests; one
//! against a stand-in collector that refuses a record the agent's checks let through).

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use clinicwatch_testkit::{
    collector::{Pki, Running},
    wait_until, TempDir,
};

use clinicwatch_agent::{
    config::ExportConfig,
    delivery::client::Exporter,
    sinks::spool::{Kind, Spool, SpoolConfig},
};
use clinicwatch_collector::{config::Config, store};
use clinicwatch_proto::v1::{
    agent_frame,
    ingest_server::{Ingest, IngestServer},
    record::Body,
    server_frame, Ack, AgentFrame, Finding, Hello, Record, ServerFrame, Severity, WindowSummary,
};
use prost::Message as _;

/// Fields drop in order: the runtime (and with it the collector and its store) before the
/// folder that holds the database and certificates.
struct Setup {
    export: ExportConfig,
    collector: Arc<clinicwatch_collector::metrics::Metrics>,
    store: clinicwatch_collector::calls::SharedStore,
    _running: Running,
    _rt: tokio::runtime::Runtime,
    dir: TempDir,
}

/// The collector's PKI, and the host's key and certificate valid from `nb` to `na` (unix
/// seconds) written to `dir` (`ca.pem`, `cert.pem`, `key.pem`).
fn host_pki(dir: &std::path::Path, nb: i64, na: i64) -> Pki {
    let p = Pki::new();
    // The host certificate, with the lifetime asked for.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "clinic-a");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ws1");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let t = |s: i64| std::time::UNIX_EPOCH + Duration::from_secs(s as u64);
    params.not_before = t(nb).into();
    params.not_after = t(na).into();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&p.ca.cert, rcgen::KeyPair::from_pem(&p.ca.key).unwrap())
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), &p.ca.cert).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    p
}

fn export_to(dir: &std::path::Path, port: u16) -> ExportConfig {
    ExportConfig {
        collector: format!("https://localhost:{port}"),
        clinic: "clinic-a".into(),
        host: "ws1".into(),
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
        batch_records: 2000,
        heartbeat_secs: 1,
        ..Default::default()
    }
}

/// A collector with `cfg` and a host certificate valid from `nb` to `na` (unix seconds).
fn setup(name: &str, cfg: Config, nb: i64, na: i64) -> Setup {
    let dir = TempDir::new(&format!("exporter-{name}"));
    let pki = host_pki(&dir, nb, na);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let st: clinicwatch_collector::calls::SharedStore =
        Arc::from(store::open(&dir.join("c.db").display().to_string()).unwrap());
    let running = {
        let _in = rt.enter();
        clinicwatch_testkit::collector::serve(&pki, cfg, st.clone(), None, listener)
    };
    Setup {
        export: export_to(&dir, running.port),
        collector: running.metrics.clone(),
        store: st,
        _running: running,
        _rt: rt,
        dir,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn spool(dir: &std::path::Path, n: u64) -> Arc<Mutex<Spool>> {
    let mut s = Spool::open(SpoolConfig {
        dir: dir.join("spool"),
        max_bytes: 256 << 20,
        segment_bytes: 4 << 20,
        fsync_each: false,
    })
    .unwrap();
    for i in 0..n {
        let r = Record {
            seq: 0,
            body: Some(Body::Summary(WindowSummary {
                app: "pm".into(),
                start: i as f64,
                end: i as f64 + 60.0,
                ..Default::default()
            })),
        };
        s.append(Kind::Summary, &r.encode_to_vec()).unwrap();
    }
    s.sync().unwrap();
    Arc::new(Mutex::new(s))
}

fn hello() -> Hello {
    Hello {
        clinic_id: "clinic-a".into(),
        host_id: "ws1".into(),
        ..Default::default()
    }
}

#[test]
fn a_backlog_drains_at_the_collectors_pace_then_heartbeats_keep_the_host_alive() {
    let mut cfg = Config::default();
    cfg.limits.records_per_sec = 5000;
    cfg.limits.burst_records = 10_000;
    let s = setup("pace", cfg, now() - 60, now() + 30 * 86_400);
    let n = 25_000;
    let sp = spool(&s.dir, n);
    let started = Instant::now();
    let ex = Exporter::start(&s.export, sp.clone(), hello()).unwrap();
    wait_until(
        "the backlog at the collector",
        Duration::from_secs(60),
        || sp.lock().unwrap().acked() == n,
    );
    let took = started.elapsed();
    let m = &s.collector;
    let (throttles, refused) = (
        m.throttles.load(Ordering::Relaxed),
        m.rejected(clinicwatch_collector::metrics::Rejection::Throttled),
    );
    eprintln!("{n} records in {took:?}: {throttles} throttles, {refused} refusals with pushback");
    // 10,000 at once, then 15,000 at 5,000/s: at least about 3 s.
    assert!(
        took >= Duration::from_millis(2500),
        "faster than the limit: {took:?}"
    );
    assert!(throttles >= 1, "the collector slowed the host down");
    assert!(
        refused <= 3,
        "the exporter obeys rather than hammering: {refused} refusals"
    );
    assert_eq!(m.accepted.load(Ordering::Relaxed), n);
    assert_eq!(m.duplicates.load(Ordering::Relaxed), 0);
    // Idle: heartbeats say the spool is empty.
    let hb = m.heartbeats.load(Ordering::Relaxed);
    wait_until("heartbeats", Duration::from_secs(10), || {
        m.heartbeats.load(Ordering::Relaxed) >= hb + 2
    });
    let hosts = s.store.hosts().unwrap();
    assert_eq!(hosts[0].spooled, 0);
    ex.stop();
}

#[test]
fn a_certificate_in_its_last_third_is_renewed_and_used() {
    // Valid 30 days, 25 of them gone.
    let s = setup(
        "renew",
        Config::default(),
        now() - 25 * 86_400,
        now() + 5 * 86_400,
    );
    let before = std::fs::read_to_string(&s.export.cert_file).unwrap();
    let sp = spool(&s.dir, 10);
    let ex = Exporter::start(&s.export, sp.clone(), hello()).unwrap();
    wait_until(
        "the records at the collector",
        Duration::from_secs(30),
        || sp.lock().unwrap().acked() == 10,
    );
    ex.stop();
    let after = std::fs::read_to_string(&s.export.cert_file).unwrap();
    assert_ne!(before, after, "renewed");
    let (nb, na) = clinicwatch_agent::delivery::enroll::lifetime(&after).unwrap();
    assert!(
        na - now() > 29 * 86_400 && nb <= now(),
        "a fresh 30-day certificate"
    );
    assert_eq!(s.collector.enrolled.load(Ordering::Relaxed), 1);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&s.export.key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_refused_batch_waits_out_the_pushback_and_is_sent_again() {
    // Full batches of 10,000 at 4,000/s: the second batch finds 2,500 tokens and is refused
    // with a pushback of about 1.9 s; obeyed, that is the only refusal.
    let mut cfg = Config::default();
    cfg.limits.records_per_sec = 4000;
    cfg.limits.burst_records = 10_000;
    let mut s = setup("pushback", cfg, now() - 60, now() + 30 * 86_400);
    s.export.batch_records = 10_000;
    let n = 20_000;
    let sp = spool(&s.dir, n);
    let started = Instant::now();
    let ex = Exporter::start(&s.export, sp.clone(), hello()).unwrap();
    wait_until(
        "the backlog at the collector",
        Duration::from_secs(60),
        || sp.lock().unwrap().acked() == n,
    );
    let took = started.elapsed();
    ex.stop();
    let refused = s
        .collector
        .rejected(clinicwatch_collector::metrics::Rejection::Throttled);
    eprintln!("{n} records in {took:?}: {refused} refusals");
    assert_eq!(refused, 1, "one refusal, then the pushback was waited out");
    assert!(took >= Duration::from_millis(2000), "{took:?}");
    assert_eq!(s.collector.accepted.load(Ordering::Relaxed), n);
}

fn append(sp: &Arc<Mutex<Spool>>, n: u64, tag: &str) {
    let mut s = sp.lock().unwrap();
    for i in 0..n {
        let r = Record {
            seq: 0,
            body: Some(Body::Summary(WindowSummary {
                app: format!("{tag}-{i}"),
                ..Default::default()
            })),
        };
        s.append(Kind::Summary, &r.encode_to_vec()).unwrap();
    }
    s.sync().unwrap();
}

#[test]
fn a_certificate_that_becomes_due_during_a_stream_is_renewed_and_the_old_one_retired() {
    // Valid 30 s, 15 gone: due in 5 s, while the stream is up.
    let s = setup("renew-live", Config::default(), now() - 15, now() + 15);
    let before = std::fs::read_to_string(&s.export.cert_file).unwrap();
    let sp = spool(&s.dir, 5);
    let ex = Exporter::start(&s.export, sp.clone(), hello()).unwrap();
    wait_until("the first records", Duration::from_secs(10), || {
        sp.lock().unwrap().acked() == 5
    });
    wait_until("the renewal", Duration::from_secs(20), || {
        std::fs::read_to_string(&s.export.cert_file).unwrap() != before
    });
    // Records after the renewal travel on the new certificate (the collector now refuses
    // the old key: it remembers the host's current one).
    append(&sp, 5, "after");
    wait_until("the records after renewal", Duration::from_secs(15), || {
        sp.lock().unwrap().acked() == 10
    });
    ex.stop();
    let (_, na) = clinicwatch_agent::delivery::enroll::lifetime(
        &std::fs::read_to_string(&s.export.cert_file).unwrap(),
    )
    .unwrap();
    assert!(na - now() > 29 * 86_400);
    assert_eq!(s.collector.enrolled.load(Ordering::Relaxed), 1);
}

#[test]
fn a_spool_restored_from_an_older_copy_starts_a_new_epoch_and_loses_nothing() {
    let s = setup(
        "rollback",
        Config::default(),
        now() - 60,
        now() + 30 * 86_400,
    );
    let sp = spool(&s.dir, 20);
    let epoch = sp.lock().unwrap().epoch();
    // A backup of the state after 20 records.
    let backup = s.dir.join("spool-backup");
    std::fs::create_dir_all(&backup).unwrap();
    for e in std::fs::read_dir(s.dir.join("spool")).unwrap().flatten() {
        std::fs::copy(e.path(), backup.join(e.file_name())).unwrap();
    }
    append(&sp, 30, "before");
    let ex = Exporter::start(&s.export, sp.clone(), hello()).unwrap();
    wait_until("50 records", Duration::from_secs(15), || {
        sp.lock().unwrap().acked() == 50
    });
    ex.stop();
    drop(sp);
    // The host's state is restored from the backup: same epoch, 20 records, none acked.
    std::fs::remove_dir_all(s.dir.join("spool")).unwrap();
    std::fs::rename(&backup, s.dir.join("spool")).unwrap();
    let sp = spool(&s.dir, 0);
    assert_eq!(sp.lock().unwrap().epoch(), epoch);
    append(&sp, 10, "new"); // seqs 21..30, which the collector already holds for this epoch
    let ex = Exporter::start(&s.export, sp.clone(), hello()).unwrap();
    wait_until(
        "the restored spool drained",
        Duration::from_secs(20),
        || {
            let s = sp.lock().unwrap();
            s.epoch() != epoch && s.acked() == 30
        },
    );
    ex.stop();
    let new_epoch = sp.lock().unwrap().epoch();
    let host = clinicwatch_collector::store::HostKey {
        clinic: "clinic-a".into(),
        host: "ws1".into(),
    };
    let st = &s.store;
    assert_eq!(st.stored_up_to(&host, epoch).unwrap(), 50);
    assert_eq!(
        st.stored_up_to(&host, new_epoch).unwrap(),
        30,
        "the new records were stored, not taken for duplicates"
    );
    assert_eq!(st.record_count().unwrap(), 80);
}

// No poison record.

fn summary_record(app: &str) -> Record {
    Record {
        seq: 0,
        body: Some(Body::Summary(WindowSummary {
            app: app.into(),
            start: now() as f64 - 60.0,
            end: now() as f64,
            ..Default::default()
        })),
    }
}

fn finding_record(rule: &str, severity: Severity, evidence: &[(&str, &str)]) -> Record {
    Record {
        seq: 0,
        body: Some(Body::Finding(Finding {
            rule: rule.into(),
            severity: severity as i32,
            app: "pm".into(),
            time: now() as f64,
            subject: "198.51.100.66:443/tcp".into(),
            summary: "s".into(),
            evidence: evidence
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })),
    }
}

/// Appends records as they are (not shaped: as an older agent, or a bug, may have spooled
/// them); returns their seqs.
fn append_raw(sp: &Arc<Mutex<Spool>>, records: &[Record]) -> Vec<u64> {
    let mut s = sp.lock().unwrap();
    let seqs = records
        .iter()
        .map(|r| {
            let kind = match r.body {
                Some(Body::Finding(_)) => Kind::Finding,
                _ => Kind::Summary,
            };
            s.append(kind, &r.encode_to_vec()).unwrap()
        })
        .collect();
    s.sync().unwrap();
    seqs
}

fn quarantine_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("spool/quarantine"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_record_over_the_limits_is_quarantined_and_every_record_after_it_reaches_the_collector() {
    let s = setup("poison", Config::default(), now() - 60, now() + 30 * 86_400);
    let sp = spool(&s.dir, 5);
    // Two that no shaping can fix (times that are not numbers), then two an older agent
    // spooled unshaped (a NUL, an over-long name): those are shaped and sent.
    let mut nan_finding = finding_record("CW-NEW-DESTINATION", Severity::Low, &[]);
    let mut nan_summary = summary_record("pm");
    match (&mut nan_finding.body, &mut nan_summary.body) {
        (Some(Body::Finding(f)), Some(Body::Summary(w))) => {
            f.time = f64::NAN;
            w.start = f64::NAN;
        }
        _ => unreachable!(),
    }
    let bad = append_raw(&sp, &[nan_finding, nan_summary]);
    append_raw(
        &sp,
        &[
            finding_record("CW-NEW-CHILD", Severity::Low, &[("name", "\"a\0b\"")]),
            summary_record(&"x".repeat(5000)),
        ],
    );
    append_raw(
        &sp,
        &(0..5)
            .map(|i| summary_record(&format!("after-{i}")))
            .collect::<Vec<_>>(),
    );
    let critical = append_raw(
        &sp,
        &[finding_record(
            "CW-READ-THEN-SEND",
            Severity::Critical,
            &[("bytes_sent_non_vendor", "26214400")],
        )],
    )[0];
    let ex = Exporter::start(&s.export, sp.clone(), hello()).unwrap();
    // 15 records and the two quarantine findings.
    wait_until(
        "every record at the collector",
        Duration::from_secs(30),
        || sp.lock().unwrap().acked() == critical + 2,
    );
    ex.stop();
    let m = &s.collector;
    assert_eq!(
        m.rejected(clinicwatch_collector::metrics::Rejection::Invalid),
        0,
        "checked before it was sent: nothing refused"
    );
    let st = &s.store;
    assert_eq!(st.record_count().unwrap(), 13 + 2);
    let findings = st.findings_since(0.0).unwrap();
    let rules: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
    assert!(
        findings
            .iter()
            .any(|f| f.rule == "CW-READ-THEN-SEND" && f.severity == Severity::Critical as i32),
        "the critical finding after the bad records arrived: {rules:?}"
    );
    let reports: Vec<_> = findings
        .iter()
        .filter(|f| f.rule == "CW-SENSOR-QUARANTINE")
        .collect();
    assert_eq!(reports.len(), 2, "{rules:?}");
    assert_eq!(reports[0].severity, Severity::Medium as i32);
    let seqs: Vec<&str> = reports.iter().map(|f| f.evidence["seq"].as_str()).collect();
    assert_eq!(seqs, [bad[0].to_string(), bad[1].to_string()]);
    assert!(reports[0].evidence["reason"].contains("time that is not a number"));
    assert_eq!(reports[0].evidence["record_rule"], "\"CW-NEW-DESTINATION\"");
    assert!(reports[1].evidence["reason"].contains("start that is not a number"));
    let shaped = findings.iter().find(|f| f.rule == "CW-NEW-CHILD").unwrap();
    assert_eq!(
        shaped.evidence["name"], "\"a\u{fffd}b\"",
        "shaped, then sent"
    );
    assert_eq!(quarantine_files(&s.dir).len(), 2);
}

/// A stand-in collector: stores what it is sent, but refuses (as the real one refuses a
/// malformed batch: `invalid_argument`, ending the stream) any batch holding a summary of
/// app `poison`, with a message that names no record.
#[derive(Clone, Default)]
struct Refusing {
    stored: Arc<Mutex<Vec<Record>>>,
    refusals: Arc<std::sync::atomic::AtomicU64>,
}

type Replies =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ServerFrame, tonic::Status>> + Send>>;

fn ack(epoch: u64, up_to_seq: u64) -> Result<ServerFrame, tonic::Status> {
    Ok(ServerFrame {
        frame: Some(server_frame::Frame::Ack(Ack { epoch, up_to_seq })),
    })
}

impl Refusing {
    fn reply(
        &self,
        epoch: &mut u64,
        frame: agent_frame::Frame,
    ) -> Result<ServerFrame, tonic::Status> {
        let stored = || self.stored.lock().unwrap().last().map_or(0, |r| r.seq);
        match frame {
            agent_frame::Frame::Hello(h) => {
                *epoch = h.epoch;
                ack(*epoch, stored())
            }
            agent_frame::Frame::Batch(b) => {
                let poison = b
                    .records
                    .iter()
                    .any(|r| matches!(&r.body, Some(Body::Summary(s)) if s.app == "poison"));
                if poison {
                    self.refusals.fetch_add(1, Ordering::Relaxed);
                    return Err(tonic::Status::invalid_argument(
                        "a field this collector does not take",
                    ));
                }
                self.stored.lock().unwrap().extend(b.records);
                ack(*epoch, stored())
            }
            agent_frame::Frame::Heartbeat(_) => ack(*epoch, stored()),
        }
    }
}

#[tonic::async_trait]
impl Ingest for Refusing {
    type StreamStream = Replies;

    async fn stream(
        &self,
        req: tonic::Request<tonic::Streaming<AgentFrame>>,
    ) -> Result<tonic::Response<Replies>, tonic::Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            let mut epoch = 0;
            while let Ok(Some(f)) = inbound.message().await {
                let Some(frame) = f.frame else { continue };
                let reply = me.reply(&mut epoch, frame);
                let end = reply.is_err();
                if tx.send(reply).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[test]
fn a_batch_refused_as_invalid_is_halved_until_the_refused_record_is_quarantined() {
    let dir = TempDir::new("exporter-refused");
    let server = host_pki(&dir, now() - 60, now() + 86_400).server;
    let collector = Refusing::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&server.cert, &server.key),
    );
    let serve = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(
            IngestServer::new(collector.clone())
                .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
                .send_compressed(tonic::codec::CompressionEncoding::Zstd),
        )
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    rt.spawn(serve);
    let mut export = export_to(&dir, port);
    export.batch_records = 64;
    let sp = spool(&dir, 150);
    let poison = append_raw(&sp, &[summary_record("poison")])[0];
    append_raw(
        &sp,
        &(0..150)
            .map(|i| summary_record(&format!("after-{i}")))
            .collect::<Vec<_>>(),
    );
    let critical = append_raw(
        &sp,
        &[finding_record("CW-READ-THEN-SEND", Severity::Critical, &[])],
    )[0];
    let ex = Exporter::start(&export, sp.clone(), hello()).unwrap();
    wait_until(
        "every other record at the collector",
        Duration::from_secs(60),
        || sp.lock().unwrap().acked() == critical + 1,
    );
    ex.stop();
    let refusals = collector.refusals.load(Ordering::Relaxed);
    // 64 → 32 → 16 → 8 → 4 → 2 → 1: at most seven refusals.
    assert!((2..=7).contains(&refusals), "{refusals} refusals");
    let stored = collector.stored.lock().unwrap();
    let seqs: Vec<u64> = stored.iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (1..=critical + 1).filter(|s| *s != poison).collect();
    assert_eq!(seqs, expected, "all but the refused one, in order, once");
    let Some(Body::Finding(report)) = &stored.last().unwrap().body else {
        panic!("{:?}", stored.last())
    };
    assert_eq!(report.rule, "CW-SENSOR-QUARANTINE");
    assert_eq!(report.evidence["seq"], poison.to_string());
    assert!(
        report.evidence["reason"].contains("does not take"),
        "{report:?}"
    );
    assert_eq!(quarantine_files(&dir).len(), 1);
    drop(stored);
}
