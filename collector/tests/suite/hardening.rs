//! The collector against a peer that holds one certificate, or none, over real sockets with
//! real TLS: idle sockets cannot hold the door, one host holds one stream, idle streams
//! close, records dated in 1970 or 2100 are stored but never correlated, a record's cost is
//! what the rate limit counts, a renewal whose reply is lost locks nobody out, unenrolling
//! cuts an open stream off, analysts can be revoked, and tokens are counted and revocable.

use clinicwatch_testkit::TempDir;

use std::time::Duration;

use crate::support::*;
use clinicwatch_collector::{auth::identity::SOC_ORG, auth::pki, config::Config, store};
use clinicwatch_proto::v1::{
    agent_frame::Frame, enroll_client::EnrollClient, record::Body, soc_client::SocClient,
    AgentFrame, Batch, Destination, EnrollRequest, Finding, ListHostsRequest, Record,
    WindowSummary,
};

fn finding_at(seq: u64, t: f64) -> Record {
    Record {
        seq,
        body: Some(Body::Finding(Finding {
            rule: "CW-READ-THEN-SEND".into(),
            time: t,
            ..Default::default()
        })),
    }
}

fn frame(epoch: u64, records: Vec<Record>) -> AgentFrame {
    AgentFrame {
        frame: Some(Frame::Batch(Batch {
            epoch,
            first_seq: records[0].seq,
            records,
        })),
    }
}

/// `n` TCP connections to `port` from 127.0.0.2 that never send a byte.
async fn idle_sockets(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(c) = s.connect(([127, 0, 0, 1], port).into()).await {
            out.push(c);
        }
    }
    out
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_sockets_cannot_hold_the_door() {
    let (p, dir) = (new_pki(), TempDir::new("hard-door"));
    let mut cfg = Config::default();
    cfg.limits.handshake_timeout_secs = 2;
    cfg.limits.max_handshakes_per_ip = 50;
    let srv = serve_with(&p, &dir.join("c.db"), cfg).await;
    // 400 sockets from one address, never a byte: most are closed at once (50 handshakes
    // per address), the rest after the handshake timeout.
    let mut idle = idle_sockets(port_of(&srv.url), 400).await;
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let started = std::time::Instant::now();
    let mut c = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    let acks = exchange(&mut c, vec![hello("clinic-a", "ws1", 1), batch(1, 1, 3)])
        .await
        .unwrap();
    assert_eq!(acks, vec![0, 3]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an agent got through while 400 idle sockets were open ({:?})",
        started.elapsed()
    );
    let per_ip = srv
        .metrics
        .refused(clinicwatch_collector::metrics::Refusal::HandshakesPerIp);
    assert!(per_ip >= 300, "{per_ip} refused at once");
    // After the handshake timeout, the server has closed every idle socket.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut open = 0;
    for s in &mut idle {
        use tokio::io::AsyncReadExt as _;
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            _ => open += 1,
        }
    }
    assert_eq!(open, 0, "every idle socket was closed by the collector");
    assert!(
        srv.metrics
            .refused(clinicwatch_collector::metrics::Refusal::HandshakeTimeout)
            >= 40
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_per_host_and_idle_streams_close() {
    let (p, dir) = (new_pki(), TempDir::new("hard-streams"));
    let mut cfg = Config::default();
    cfg.limits.stream_idle_secs = 2;
    let srv = serve_with(&p, &dir.join("c.db"), cfg).await;
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    // The first stream says Hello and stays open.
    let (tx1, rx1) = tokio::sync::mpsc::channel(4);
    let mut c1 = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    tx1.send(hello("clinic-a", "ws1", 1)).await.unwrap();
    let mut first = c1
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx1))
        .await
        .unwrap()
        .into_inner();
    assert!(first.message().await.unwrap().is_some(), "Hello acked");
    // A second stream of the same certificate replaces it.
    let mut c2 = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    let acks = exchange(&mut c2, vec![hello("clinic-a", "ws1", 1), batch(1, 1, 3)])
        .await
        .unwrap();
    assert_eq!(acks, vec![0, 3]);
    let e = first.message().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(e.message().contains("newer stream"), "{e}");
    drop(tx1);
    // A stream that says nothing after Hello is closed after `stream_idle_secs`.
    let (tx3, rx3) = tokio::sync::mpsc::channel(4);
    tx3.send(hello("clinic-a", "ws1", 1)).await.unwrap();
    let mut quiet = c2
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx3))
        .await
        .unwrap()
        .into_inner();
    assert!(quiet.message().await.unwrap().is_some());
    let started = std::time::Instant::now();
    let e = quiet.message().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(tx3);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implausible_times_are_stored_and_counted_but_never_correlated() {
    let (p, dir) = (new_pki(), TempDir::new("hard-times"));
    let srv = serve(&p, &dir.join("c.db")).await;
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let mut c = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    let now = clinicwatch_collector::calls::now();
    let records = vec![
        finding_at(1, 0.0),
        finding_at(2, 4_102_444_800.0), // 2100
        finding_at(3, now - 60.0),
    ];
    let acks = exchange(&mut c, vec![hello("clinic-a", "ws1", 1), frame(1, records)])
        .await
        .unwrap();
    assert_eq!(acks, vec![0, 3], "acked: they never block delivery");
    assert_eq!(srv.records(), 3, "kept for the record");
    let f = blocking(|| srv.store.findings_since(f64::MIN).unwrap());
    assert_eq!(f.len(), 1, "only the plausible one can join an incident");
    assert_eq!(
        srv.metrics
            .out_of_window
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_counts_cost_and_oversized_lists_are_refused() {
    let (p, dir) = (new_pki(), TempDir::new("hard-cost"));
    let mut cfg = Config::default();
    cfg.limits.records_per_sec = 1000;
    cfg.limits.burst_records = 10_000;
    let srv = serve_with(&p, &dir.join("c.db"), cfg).await;
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let mut c = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    let t = clinicwatch_collector::calls::now() - 60.0;
    let summary = |seq: u64, n: usize| Record {
        seq,
        body: Some(Body::Summary(WindowSummary {
            app: "pm".into(),
            start: t - 60.0,
            end: t,
            destinations: (0..n)
                .map(|i| Destination {
                    ip: format!("198.18.{}.{}", i / 250, i % 250),
                    port: 443,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
    };
    // 20,000 destinations in one record: refused by name, nothing stored.
    let e = exchange(
        &mut c,
        vec![
            hello("clinic-a", "ws1", 1),
            frame(1, vec![summary(1, 20_000)]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("20000 destinations (at most 512)"),
        "{e}"
    );
    // Ten records of 500 destinations cost 15,000 units: more than the burst, taken once
    // from a full bucket; the next small batch of the same host is refused.
    let big: Vec<Record> = (1..=10).map(|s| summary(s, 500)).collect();
    let acks = exchange(&mut c, vec![hello("clinic-a", "ws1", 1), frame(1, big)])
        .await
        .unwrap();
    assert_eq!(acks, vec![0, 10]);
    let e = exchange(
        &mut c,
        vec![hello("clinic-a", "ws1", 1), frame(1, vec![summary(11, 1)])],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    // Another host is not slowed by it.
    let other = pki::client_cert(&p.ca, "clinic-b", "ws1", 30).unwrap();
    let mut o = client(&srv.url, &p.ca, Some(&other)).await.unwrap();
    assert_eq!(
        exchange(&mut o, vec![hello("clinic-b", "ws1", 1), batch(1, 1, 3)])
            .await
            .unwrap(),
        vec![0, 3]
    );
    srv.shutdown().await;
}

fn csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (csr, key.serialize_pem())
}

async fn enroll(
    url: &str,
    p: &Pki,
    me: Option<&pki::Pem>,
    token: &str,
    host: &str,
) -> Result<pki::Pem, tonic::Status> {
    let mut e = EnrollClient::new(channel(url, &p.ca, me).await.unwrap());
    let (csr, key) = csr();
    let r = e
        .enroll(EnrollRequest {
            token: token.into(),
            host_id: host.into(),
            csr_pem: csr,
        })
        .await?
        .into_inner();
    Ok(pki::Pem {
        cert: r.cert_pem,
        key,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_is_two_phase_and_unenroll_cuts_open_streams() {
    let (p, dir) = (new_pki(), TempDir::new("hard-renew"));
    let srv = serve(&p, &dir.join("c.db")).await;
    let token = srv.token(&p, "clinic-a", 1);
    let first = enroll(&srv.url, &p, None, &token, "ws1").await.unwrap();
    // A renewal whose reply is lost: the host still has only its first certificate, and
    // it still works; it renews again.
    enroll(&srv.url, &p, Some(&first), "", "ws1").await.unwrap();
    let mut c = client(&srv.url, &p.ca, Some(&first)).await.unwrap();
    assert_eq!(
        exchange(&mut c, vec![hello("clinic-a", "ws1", 1), batch(1, 1, 2)])
            .await
            .unwrap(),
        vec![0, 2],
        "the certificate of a renewal whose reply was lost is still valid"
    );
    let second = enroll(&srv.url, &p, Some(&first), "", "ws1").await.unwrap();
    // The new certificate used once: the old one is refused from then on.
    let mut c2 = client(&srv.url, &p.ca, Some(&second)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("clinic-a", "ws1", 1)).await.unwrap();
    let mut open = c2
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(open.message().await.unwrap().is_some());
    let mut old = client(&srv.url, &p.ca, Some(&first)).await.unwrap();
    let e = exchange(&mut old, vec![hello("clinic-a", "ws1", 1)])
        .await
        .unwrap_err();
    assert!(e.message().contains("replaced"), "{e}");
    // Unenrolled while its stream is open: the next batch is refused, and nothing stored.
    blocking(|| {
        let st = &srv.store;
        st.set_enrollment(
            &store::HostKey {
                clinic: "clinic-a".into(),
                host: "ws1".into(),
            },
            &store::Enrollment {
                key_sha256: String::new(),
                revoked: true,
                updated: 0.0,
                pending_key_sha256: String::new(),
            },
        )
        .unwrap()
    });
    let before = srv.records();
    tx.send(batch(1, 3, 2)).await.unwrap();
    let e = open.message().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert_eq!(srv.records(), before);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_counted_bound_and_revocable_and_analysts_revocable() {
    let (p, dir) = (new_pki(), TempDir::new("hard-tokens"));
    let srv = serve(&p, &dir.join("c.db")).await;
    // One use: the second host is refused.
    let once = srv.token(&p, "clinic-a", 1);
    enroll(&srv.url, &p, None, &once, "ws1").await.unwrap();
    let e = enroll(&srv.url, &p, None, &once, "ws2").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("as many times"), "{e}");
    // Revoked one by one.
    let three = srv.token(&p, "clinic-a", 3);
    let id = clinicwatch_collector::api::enroll::token_id(&three)
        .unwrap()
        .to_string();
    assert!(blocking(|| srv.store.revoke_token(&id).unwrap()));
    let e = enroll(&srv.url, &p, None, &three, "ws3").await.unwrap_err();
    assert!(e.message().contains("revoked"), "{e}");
    // Bound to a host id: no other name can be squatted with it.
    let exp = clinicwatch_collector::calls::now() as u64 + 600;
    let (bound, _) = blocking(|| {
        let st = &srv.store;
        clinicwatch_collector::api::enroll::issue_token(
            st.as_ref(),
            &p.token_key,
            "clinic-a",
            "ws9",
            5,
            exp,
        )
        .unwrap()
    });
    let e = enroll(&srv.url, &p, None, &bound, "ws8").await.unwrap_err();
    assert!(e.message().contains("for host `ws9` only"), "{e}");
    enroll(&srv.url, &p, None, &bound, "ws9").await.unwrap();
    // A token signed by this collector but unknown to its database is refused.
    let (ghost, _) =
        clinicwatch_collector::api::enroll::make_token(&p.token_key, "clinic-a", exp).unwrap();
    let e = enroll(&srv.url, &p, None, &ghost, "ws4").await.unwrap_err();
    assert!(e.message().contains("unknown"), "{e}");

    // An analyst whose key is recorded (as `issue --soc` does) is cut off by revocation.
    let alice = pki::client_cert(&p.ca, SOC_ORG, "alice", 30).unwrap();
    let key = pki::key_fingerprint(&pki::pem_to_der(&alice.cert).unwrap()).unwrap();
    let who = store::HostKey {
        clinic: SOC_ORG.into(),
        host: "alice".into(),
    };
    let set = |revoked: bool| {
        let (who, key) = (who.clone(), key.clone());
        blocking(|| {
            srv.store
                .set_enrollment(
                    &who,
                    &store::Enrollment {
                        key_sha256: if revoked { String::new() } else { key },
                        revoked,
                        updated: 0.0,
                        pending_key_sha256: String::new(),
                    },
                )
                .unwrap()
        })
    };
    set(false);
    let mut soc = SocClient::new(channel(&srv.url, &p.ca, Some(&alice)).await.unwrap());
    soc.list_hosts(ListHostsRequest {}).await.unwrap();
    set(true);
    let e = soc.list_hosts(ListHostsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    srv.shutdown().await;
}
