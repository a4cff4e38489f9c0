//! The collector over real sockets with real mutual TLS: acks after storage, resends stored
//! once, a certificate speaks only for its own host, no or foreign certificates are refused,
//! enrollment, flood pushback, malformed and oversized frames, health, metrics, retention.

use clinicwatch_testkit::TempDir;

use std::time::Duration;

use crate::support::*;
use clinicwatch_collector::{auth::pki, config::Config};
use clinicwatch_proto::v1::{
    agent_frame::Frame, enroll_client::EnrollClient, server_frame, AgentFrame, EnrollRequest,
    Heartbeat,
};

fn setup(name: &str) -> (Pki, TempDir) {
    (new_pki(), TempDir::new(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_acked_after_storage_and_a_resend_is_stored_once() {
    let (p, dir) = setup(&format!("ingest-{}", line!()));
    let srv = serve(&p, &dir.join("c.db")).await;
    let url = srv.url.clone();
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let mut c = client(&url, &p.ca, Some(&me)).await.unwrap();
    let acks = exchange(&mut c, vec![hello("clinic-a", "ws1", 5), batch(5, 1, 10)])
        .await
        .unwrap();
    assert_eq!(acks, vec![0, 10]);
    // The agent lost the ack: it reconnects, hears where to resume, and resends 6..15.
    let acks = exchange(&mut c, vec![hello("clinic-a", "ws1", 5), batch(5, 6, 10)])
        .await
        .unwrap();
    assert_eq!(acks, vec![10, 15]);
    assert_eq!(srv.records(), 15, "each record once");
    let f = srv.store.findings_since(0.0).unwrap();
    assert_eq!(f[0].clinic, "clinic-a");
    assert_eq!(
        srv.metrics
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_speaks_only_for_its_own_host() {
    let (p, dir) = setup(&format!("ingest-{}", line!()));
    let srv = serve(&p, &dir.join("c.db")).await;
    let url = srv.url.clone();
    let a = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let mut c = client(&url, &p.ca, Some(&a)).await.unwrap();
    let e = exchange(&mut c, vec![hello("clinic-b", "ws1", 5), batch(5, 1, 3)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("clinic-a/ws1"), "{e}");
    let e = exchange(&mut c, vec![batch(5, 1, 3)]).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::FailedPrecondition,
        "a batch before Hello: {e}"
    );
    let mut bad = batch(5, 1, 3);
    if let Some(Frame::Batch(b)) = &mut bad.frame {
        b.records[2].seq = 1;
    }
    let e = exchange(&mut c, vec![hello("clinic-a", "ws1", 5), bad])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert_eq!(srv.records(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_an_expired_one_or_another_cas_is_refused() {
    let (p, dir) = setup(&format!("ingest-{}", line!()));
    let srv = serve(&p, &dir.join("c.db")).await;
    let url = srv.url.clone();
    // Hello and a batch with this certificate: the acks, or where it was refused.
    let attempt = |me: Option<pki::Pem>| {
        let (url, ca) = (url.clone(), p.ca.clone());
        async move {
            match client(&url, &ca, me.as_ref()).await {
                Err(e) => Err(format!("connect: {e:?}")),
                Ok(mut c) => exchange(&mut c, vec![hello("clinic-a", "ws1", 5), batch(5, 1, 3)])
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            }
        }
    };
    let other = pki::new_ca("someone else").unwrap();
    let forged = pki::client_cert(&other, "clinic-a", "ws1", 30).unwrap();
    // Valid for 0 days: it ended before it was used.
    let expired = pki::client_cert(&p.ca, "clinic-a", "ws1", 0).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for (what, me, says) in [
        ("no certificate", None, "Unauthenticated"),
        ("another CA's", Some(forged), ""),
        ("an expired one", Some(expired), ""),
    ] {
        let r = attempt(me).await;
        // Refused at the handshake (the TLS alert ends the connection or the call), or, with
        // no certificate, by Ingest itself.
        let why = r.expect_err(&format!("{what} was accepted"));
        assert!(why.contains(says), "{what}: {why}");
        eprintln!("{what}: refused: {why}");
    }
    assert_eq!(srv.records(), 0);
    // The same attempt with a valid certificate is accepted: the refusals above are real.
    let good = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    assert_eq!(attempt(Some(good)).await.unwrap(), vec![0, 3]);
    assert_eq!(srv.records(), 3);
}

/// A CSR for a fresh key, claiming `claims_clinic` (which enrollment must ignore).
fn csr(claims_clinic: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, claims_clinic);
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    (csr, key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_issues_a_certificate_for_the_tokens_clinic_and_renews_it() {
    let (p, dir) = setup("enroll");
    let srv = serve(&p, &dir.join("c.db")).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Two uses: ws7 enrolls, and enrolls again after it is unenrolled.
    let token = srv.token(&p, "clinic-a", 2);
    let mut anon = EnrollClient::new(channel(&srv.url, &p.ca, None).await.unwrap());
    let (csr_pem, key_pem) = csr("clinic-b");
    let req = |token: &str, host: &str, csr: &str| EnrollRequest {
        token: token.into(),
        host_id: host.into(),
        csr_pem: csr.into(),
    };
    let got = anon
        .enroll(req(&token, "ws7", &csr_pem))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.ca_pem, p.ca.cert);
    assert!(got.not_after > now as f64 + 29.0 * 86_400.0);
    let me = pki::Pem {
        cert: got.cert_pem,
        key: key_pem,
    };
    // The certificate works for clinic-a/ws7, and only for it.
    let mut c = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    let acks = exchange(&mut c, vec![hello("clinic-a", "ws7", 1), batch(1, 1, 3)])
        .await
        .unwrap();
    assert_eq!(acks, vec![0, 3]);
    let e = exchange(&mut c, vec![hello("clinic-b", "ws7", 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    // Refused: a token from another collector, an expired one, a bad host id, a bad CSR.
    let other = clinicwatch_collector::api::enroll::make_token(
        b"another collector's key 32 bytes",
        "clinic-a",
        now + 3600,
    )
    .unwrap()
    .0;
    let expired = clinicwatch_collector::api::enroll::make_token(&p.token_key, "clinic-a", now - 1)
        .unwrap()
        .0;
    for (r, code, says) in [
        (
            req(&other, "ws8", &csr_pem),
            tonic::Code::Unauthenticated,
            "not issued",
        ),
        (
            req(&expired, "ws8", &csr_pem),
            tonic::Code::Unauthenticated,
            "expired",
        ),
        (
            req(&token, "ws 8/../x", &csr_pem),
            tonic::Code::InvalidArgument,
            "host id",
        ),
        (
            req(&token, "ws8", "not a csr"),
            tonic::Code::InvalidArgument,
            "CSR",
        ),
        (
            req("", "ws8", &csr_pem),
            tonic::Code::Unauthenticated,
            "client certificate",
        ),
    ] {
        let e = anon.enroll(r).await.unwrap_err();
        assert_eq!(e.code(), code, "{e}");
        assert!(e.message().contains(says), "{e}");
    }

    // Renewal: the current certificate decides who; it cannot become another host.
    let mut mine = EnrollClient::new(channel(&srv.url, &p.ca, Some(&me)).await.unwrap());
    let (csr2, key2) = csr("whatever");
    let renewed = mine
        .enroll(req("", "ws7", &csr2))
        .await
        .unwrap()
        .into_inner();
    let e = mine.enroll(req("", "ws8", &csr2)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let me2 = pki::Pem {
        cert: renewed.cert_pem,
        key: key2,
    };
    let mut c = client(&srv.url, &p.ca, Some(&me2)).await.unwrap();
    assert_eq!(
        exchange(&mut c, vec![hello("clinic-a", "ws7", 1)])
            .await
            .unwrap(),
        vec![3],
        "the renewed certificate resumes the same host"
    );
    // The certificate it replaced is refused from now on.
    let mut old = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    let e = exchange(&mut old, vec![hello("clinic-a", "ws7", 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("replaced"), "{e}");
    // A token does not take over an enrolled host...
    let (csr3, key3) = csr("clinic-a");
    let e = anon.enroll(req(&token, "ws7", &csr3)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("unenroll"), "{e}");
    // ...until an operator unenrolls it (`clinicwatch-collector unenroll`): then its
    // certificates are refused, and the token enrolls it again.
    blocking(|| {
        srv.store
            .set_enrollment(
                &clinicwatch_collector::store::HostKey {
                    clinic: "clinic-a".into(),
                    host: "ws7".into(),
                },
                &clinicwatch_collector::store::Enrollment {
                    key_sha256: String::new(),
                    revoked: true,
                    updated: 0.0,
                    pending_key_sha256: String::new(),
                },
            )
            .unwrap()
    });
    let e = exchange(&mut c, vec![hello("clinic-a", "ws7", 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("unenrolled"), "{e}");
    let again = anon
        .enroll(req(&token, "ws7", &csr3))
        .await
        .unwrap()
        .into_inner();
    let me3 = pki::Pem {
        cert: again.cert_pem,
        key: key3,
    };
    let mut c = client(&srv.url, &p.ca, Some(&me3)).await.unwrap();
    assert_eq!(
        exchange(&mut c, vec![hello("clinic-a", "ws7", 1)])
            .await
            .unwrap(),
        vec![3]
    );
    assert_eq!(
        srv.metrics
            .enrolled
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_host_is_slowed_then_refused_with_a_retry_pushback() {
    let (p, dir) = setup("flood");
    let mut cfg = Config::default();
    cfg.limits.records_per_sec = 1000;
    cfg.limits.burst_records = 10_000;
    let srv = serve_with(&p, &dir.join("c.db"), cfg).await;
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let mut c = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    let mut replies = c
        .stream(tokio_stream::iter(vec![
            hello("clinic-a", "ws1", 1),
            batch(1, 1, 8000),
            batch(1, 8001, 5000),
        ]))
        .await
        .unwrap()
        .into_inner();
    let mut frames = Vec::new();
    let status = loop {
        match replies.message().await {
            Ok(Some(f)) => frames.push(f.frame),
            Ok(None) => panic!("the stream ended without a refusal: {frames:?}"),
            Err(s) => break s,
        }
    };
    assert!(
        matches!(frames[1], Some(server_frame::Frame::Throttle(t)) if t.max_records_per_sec == 1000 && t.retry_after_ms > 0),
        "{frames:?}"
    );
    assert!(
        matches!(frames[2], Some(server_frame::Frame::Ack(a)) if a.up_to_seq == 8000),
        "{frames:?}"
    );
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("a retry pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (2_500..=3_000).contains(&pushback),
        "3000 records short at 1000/s: {pushback} ms"
    );
    assert_eq!(
        srv.records(),
        8000,
        "nothing of the refused batch is stored"
    );
    // Another host of the clinic has its own budget.
    let other = pki::client_cert(&p.ca, "clinic-a", "ws2", 30).unwrap();
    let mut c2 = client(&srv.url, &p.ca, Some(&other)).await.unwrap();
    assert_eq!(
        exchange(&mut c2, vec![hello("clinic-a", "ws2", 1), batch(1, 1, 100)])
            .await
            .unwrap(),
        vec![0, 100]
    );
    let m = srv.metrics.render();
    assert!(
        m.contains("clinicwatch_collector_rejected_total{reason=\"throttled\"} 1\n"),
        "{m}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_are_invalid_argument() {
    use prost::Message as _;
    let (p, dir) = setup("malformed");
    let srv = serve(&p, &dir.join("c.db")).await;
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let ch = || channel(&srv.url, &p.ca, Some(&me));
    let hello = hello("clinic-a", "ws1", 1).encode_to_vec();
    // Field 2 (batch) with a length running past the end; then a frame of 5 MiB.
    for (frame, says) in [
        (vec![0x12, 0xff, 0xff, 0x03, 0x01], "malformed frame"),
        (
            vec![0u8; clinicwatch_proto::MAX_FRAME_BYTES + 1],
            "too large",
        ),
    ] {
        let e = crate::support::raw::send(ch().await.unwrap(), vec![hello.clone(), frame])
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(says), "{e}");
    }
    // The stream survived neither, but the host can connect again and send.
    let mut c = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    assert_eq!(
        exchange(&mut c, vec![hello_frame(), batch(1, 1, 2)])
            .await
            .unwrap(),
        vec![0, 2]
    );
    let m = srv.metrics.render();
    assert!(
        m.contains("clinicwatch_collector_rejected_total{reason=\"invalid\"} 2\n"),
        "{m}"
    );
    srv.shutdown().await;
}

fn hello_frame() -> AgentFrame {
    hello("clinic-a", "ws1", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_health_metrics_and_scheduled_retention() {
    let (p, dir) = setup("ops");
    let mut cfg = Config::default();
    cfg.retention.every_secs = 1;
    cfg.retention.summaries_days = 3.0 / 86_400.0; // three seconds
    cfg.retention.findings_days = 100_000.0; // the test findings are dated 1970
    let srv = serve_with(&p, &dir.join("c.db"), cfg).await;
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let mut c = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    let hb = AgentFrame {
        frame: Some(Frame::Heartbeat(Heartbeat {
            time: 1.0,
            spooled: 42,
            dropped: 0,
        })),
    };
    // A heartbeat is answered with an ack of what is stored.
    assert_eq!(
        exchange(&mut c, vec![hello_frame(), batch(1, 1, 9), hb])
            .await
            .unwrap(),
        vec![0, 9, 9]
    );
    let hosts = srv.hosts();
    assert_eq!(hosts[0].spooled, 42);

    // gRPC health.
    let mut h = tonic_health::pb::health_client::HealthClient::new(
        channel(&srv.url, &p.ca, None).await.unwrap(),
    );
    let st = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "clinicwatch.v1.Ingest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // Prometheus over HTTP.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(clinicwatch_collector::http::serve_metrics(
        l,
        srv.metrics.clone(),
    ));
    let get = |path: &'static str| http_get(addr, path, "127.0.0.1");
    let m = get("/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("clinicwatch_collector_records_accepted_total 9\n"),
        "{m}"
    );
    assert!(m.contains("application/openmetrics-text"), "{m}");
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
    // Per-host figures are not series (bounded labels): they are kept for `/api/hosts`.
    assert!(!m.contains("clinic-a"), "{m}");
    let seen = srv.metrics.hosts();
    let a = &seen[&clinicwatch_collector::store::HostKey {
        clinic: "clinic-a".into(),
        host: "ws1".into(),
    }];
    assert_eq!((a.spooled, a.accepted), (42, 9));
    // The query string does not choose the resource; other methods are not served.
    assert!(get("/metrics?x").await.starts_with("HTTP/1.1 200"));
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));

    // Retention: the 6 summaries go after 3 s; the 3 findings stay.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while srv.records() != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run: {} records",
            srv.records()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(srv.store.findings_since(0.0).unwrap().len(), 3);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_on_one_postgres_share_dedup_and_resume() {
    // The PostgreSQL client blocks: off the async threads.
    let Some(url) = blocking(|| {
        crate::support::pg::database("two_collectors_on_one_postgres_share_dedup_and_resume")
    }) else {
        return;
    };
    let p = new_pki();
    let open = || blocking(|| clinicwatch_collector::store::open(&url).unwrap());
    let (a, b) = (
        serve_store(&p, Config::default(), open()).await,
        serve_store(&p, Config::default(), open()).await,
    );
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let mut ca = client(&a.url, &p.ca, Some(&me)).await.unwrap();
    assert_eq!(
        exchange(&mut ca, vec![hello_frame(), batch(1, 1, 50)])
            .await
            .unwrap(),
        vec![0, 50]
    );
    // The agent's next connection lands on the other collector, having lost the last ack.
    let mut cb = client(&b.url, &p.ca, Some(&me)).await.unwrap();
    assert_eq!(
        exchange(&mut cb, vec![hello_frame(), batch(1, 41, 20)])
            .await
            .unwrap(),
        vec![50, 60],
        "collector b knows where a stopped"
    );
    assert_eq!(
        b.metrics
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        10
    );
    assert_eq!(a.records(), 60);
    assert_eq!(b.records(), 60);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_streamed_by_agents_becomes_an_incident_at_the_collector() {
    let (p, dir) = setup("campaign");
    // The SOC's tools: a syslog server (UDP) and a webhook receiver.
    let syslog = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let hook_bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let bodies = hook_bodies.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = hook.accept().await {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            bodies
                                .lock()
                                .unwrap()
                                .push(format!("{}\n{body}", head.lines().next().unwrap_or("")));
                            break;
                        }
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
    }
    let mut cfg = Config::default();
    cfg.correlation.every_secs = 1;
    cfg.siem.ocsf_file = dir.join("ocsf.jsonl").display().to_string();
    cfg.siem.cef_syslog = format!("udp://{}", syslog.local_addr().unwrap());
    cfg.siem.webhook_url = format!("http://{hook_addr}/soc/hook");
    let srv = serve_with(&p, &dir.join("c.db"), cfg).await;
    let now = clinicwatch_collector::calls::now();
    // Six clinics' PM apps contact a destination nobody had seen, minutes apart.
    for c in 0..6 {
        let summary = exfil_summary(1, now - 600.0 + c as f64 * 60.0);
        stream_records(&srv.url, &p, &format!("clinic-{c}"), vec![summary]).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let incident = loop {
        let found = blocking(|| srv.store.incidents(None).unwrap())
            .into_iter()
            .find(|i| i.key == "dest_name:exfil.example");
        if let Some(i) = found {
            break i;
        }
        assert!(std::time::Instant::now() < deadline, "no incident");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(incident.rule, "CW-FLEET-RARE-DESTINATION");
    assert_eq!(incident.clinics.len(), 6);
    // Exported: OCSF lines for the summaries and the incident, CEF to syslog, the webhook.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ocsf = loop {
        let text = std::fs::read_to_string(dir.join("ocsf.jsonl")).unwrap_or_default();
        if text.contains("incident-") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<serde_json::Value> = ocsf
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let network = lines.iter().filter(|v| v["class_uid"] == 4001).count();
    assert_eq!(
        network, 6,
        "one Network Activity per summary destination: {ocsf}"
    );
    let found = lines
        .iter()
        .find(|v| {
            v["class_uid"] == 2004
                && v["finding_info"]["uid"] == format!("incident-{}", incident.id)
        })
        .unwrap_or_else(|| panic!("no Detection Finding for the incident: {ocsf}"));
    assert_eq!(found["severity_id"], 5);
    assert_eq!(found["unmapped"]["clinics"].as_array().unwrap().len(), 6);
    assert_eq!(found["type_uid"], 200401);
    let mut buf = vec![0u8; 4096];
    let mut cef = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(3), syslog.recv(&mut buf)).await
    {
        cef.push(String::from_utf8_lossy(&buf[..n]).to_string());
        if cef.iter().any(|l| l.contains("CW-FLEET-RARE-DESTINATION")) {
            break;
        }
    }
    assert!(
        cef.iter().any(|l| l.starts_with("<165>1 ")
            && l.contains("CEF:0|clinicwatch|collector|")
            && l.contains("|CW-FLEET-RARE-DESTINATION|")
            && l.contains("cnt=6")),
        "{cef:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hook_bodies.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bodies = hook_bodies.lock().unwrap().clone();
    assert!(
        bodies
            .iter()
            .any(|b| b.starts_with("POST /soc/hook HTTP/1.1")
                && b.contains("\"event\":\"incident_opened\"")
                && b.contains("exfil.example")),
        "{bodies:?}"
    );
    assert!(srv
        .metrics
        .render()
        .contains("clinicwatch_collector_incidents_opened_total 2\n"));
    srv.shutdown().await;
}

/// One clinic's agent: a hello and one batch of `records` through `url`.
async fn stream_records(
    url: &str,
    p: &Pki,
    clinic: &str,
    records: Vec<clinicwatch_proto::v1::Record>,
) {
    let me = pki::client_cert(&p.ca, clinic, "ws1", 30).unwrap();
    let mut client = client(url, &p.ca, Some(&me)).await.unwrap();
    let n = records.len() as u64;
    let frames = vec![
        hello(clinic, "ws1", 1),
        AgentFrame {
            frame: Some(Frame::Batch(clinicwatch_proto::v1::Batch {
                epoch: 1,
                first_seq: records[0].seq,
                records,
            })),
        },
    ];
    let acks = exchange(&mut client, frames).await.unwrap();
    assert_eq!(acks.last(), Some(&n), "{clinic} via {url}");
}

/// The PM app's window ending at `t`: 50 MiB to a destination nobody had seen.
fn exfil_summary(seq: u64, t: f64) -> clinicwatch_proto::v1::Record {
    clinicwatch_proto::v1::Record {
        seq,
        body: Some(clinicwatch_proto::v1::record::Body::Summary(
            contact_summary("pm-client", "203.0.113.9", "exfil.example", 50 << 20, t),
        )),
    }
}

/// A campaign's records for clinic number `c`: the PM app contacting a destination nobody
/// had seen, and for some clinics the same infostealer precursor.
fn campaign_records(c: usize, now: f64) -> Vec<clinicwatch_proto::v1::Record> {
    use clinicwatch_proto::v1::{record::Body, Finding, Record};
    let t = now - 1800.0 + c as f64 * 120.0;
    let mut records = vec![exfil_summary(1, t)];
    if c.is_multiple_of(2) {
        records.push(Record {
            seq: 2,
            body: Some(Body::Finding(Finding {
                rule: "CW-INFOSTEALER-PRECURSOR".into(),
                severity: 4,
                app: "protected-reader".into(),
                time: t,
                subject: "browser-credentials".into(),
                summary: "x".into(),
                evidence: [("exe".to_string(), "\"/tmp/.cache/upd\"".to_string())].into(),
            })),
        });
    }
    records
}

/// (rule, key, clinics, hosts) of every incident, sorted.
fn incident_view(
    st: &clinicwatch_collector::calls::SharedStore,
) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let mut v: Vec<_> = blocking(|| st.incidents(None).unwrap())
        .into_iter()
        .map(|i| (i.rule, i.key, i.clinics, i.hosts))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_collectors_on_one_postgres_open_the_same_incidents_as_one() {
    let Some(url) = blocking(|| {
        crate::support::pg::database(
            "several_collectors_on_one_postgres_open_the_same_incidents_as_one",
        )
    }) else {
        return;
    };
    let (p, dir) = setup("several-collectors");
    let mut cfg = Config::default();
    cfg.correlation.every_secs = 1;
    let open = || blocking(|| clinicwatch_collector::store::open(&url).unwrap());
    // Each with its own connection for correlation, as `serve` runs them.
    let fleet = [
        serve_stores(&p, cfg.clone(), open(), Some(open())).await,
        serve_stores(&p, cfg.clone(), open(), Some(open())).await,
        serve_stores(&p, cfg.clone(), open(), Some(open())).await,
    ];
    let alone = serve_with(&p, &dir.join("alone.db"), cfg.clone()).await;
    let now = clinicwatch_collector::calls::now();
    // Nine clinics: each reaches one of the three collectors (the one alone gets all).
    for c in 0..9 {
        let clinic = format!("clinic-{c}");
        stream_records(&fleet[c % 3].url, &p, &clinic, campaign_records(c, now)).await;
        stream_records(&alone.url, &p, &clinic, campaign_records(c, now)).await;
    }
    let expected = ["CW-FLEET-INFOSTEALER", "CW-FLEET-RARE-DESTINATION"];
    let settled = |view: &Vec<(String, String, Vec<String>, Vec<String>)>| {
        expected.iter().all(|r| {
            view.iter()
                .any(|(rule, _, clinics, _)| rule == r && clinics.len() >= 5)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (one, shared) = loop {
        let one = incident_view(&alone.store);
        let shared = incident_view(&fleet[0].store);
        // Wait a pass more so that each side has folded in every clinic.
        if settled(&one) && settled(&shared) && one == shared {
            break (one, shared);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "incidents differ:\none collector: {one:#?}\nthree: {shared:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Rare destination: by IP and by name, all 9 clinics; infostealer: the 5 even ones.
    assert_eq!(one.len(), 3, "{one:#?}");
    assert_eq!(
        shared
            .iter()
            .map(|(r, k, c, _)| (r.as_str(), k.as_str(), c.len()))
            .collect::<Vec<_>>(),
        [
            ("CW-FLEET-INFOSTEALER", "exe:/tmp/.cache/upd", 5),
            ("CW-FLEET-RARE-DESTINATION", "dest_ip:203.0.113.9", 9),
            ("CW-FLEET-RARE-DESTINATION", "dest_name:exfil.example", 9),
        ]
    );
    // Every collector sees the same incidents, and more passes (by whichever leads) double
    // nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for c in &fleet {
        assert_eq!(incident_view(&c.store), shared);
    }
    let leaders = fleet
        .iter()
        .filter(|c| {
            c.metrics
                .render()
                .lines()
                .any(|l| l.starts_with("clinicwatch_collector_correlation_leader 1"))
        })
        .count();
    assert_eq!(leaders, 1, "exactly one collector leads correlation");
    for c in fleet {
        c.shutdown().await;
    }
    alone.shutdown().await;
}
