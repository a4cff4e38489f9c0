//! The Ingest service over real sockets with real mutual TLS: acks after storage, resends
//! stored once, a certificate speaks only for its own host, and no or foreign certificates
//! are refused.

use std::sync::{Arc, Mutex};

use clinicwatch_collector::{ingest::IngestService, pki, store::SqliteStore};
use clinicwatch_proto::v1::{
    agent_frame::Frame, ingest_client::IngestClient, ingest_server::IngestServer, record::Body,
    server_frame, AgentFrame, Batch, Finding, Hello, Record,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};

struct Pki {
    ca: pki::Pem,
    server: pki::Pem,
}

async fn serve(p: &Pki, db: &std::path::Path) -> (String, Arc<Mutex<SqliteStore>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Arc::new(Mutex::new(SqliteStore::open(db).unwrap()));
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&p.server.cert, &p.server.key))
        .client_ca_root(Certificate::from_pem(&p.ca.cert));
    let svc = IngestService {
        store: store.clone(),
    };
    tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(IngestServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (format!("https://localhost:{}", addr.port()), store)
}

async fn client(
    url: &str,
    ca: &pki::Pem,
    me: Option<&pki::Pem>,
) -> Result<IngestClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert))
        .domain_name("localhost");
    if let Some(me) = me {
        tls = tls.identity(Identity::from_pem(&me.cert, &me.key));
    }
    let ch = Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(IngestClient::new(ch))
}

fn hello(clinic: &str, host: &str, epoch: u64) -> AgentFrame {
    AgentFrame {
        frame: Some(Frame::Hello(Hello {
            clinic_id: clinic.into(),
            host_id: host.into(),
            epoch,
            ..Default::default()
        })),
    }
}

fn batch(epoch: u64, first: u64, n: u64) -> AgentFrame {
    AgentFrame {
        frame: Some(Frame::Batch(Batch {
            epoch,
            first_seq: first,
            records: (first..first + n)
                .map(|seq| Record {
                    seq,
                    body: Some(Body::Finding(Finding {
                        rule: "CW-PM-BULK-READ".into(),
                        time: seq as f64,
                        ..Default::default()
                    })),
                })
                .collect(),
        })),
    }
}

/// Sends the frames; returns the acked seqs, or the status that ended the stream.
async fn exchange(
    c: &mut IngestClient<Channel>,
    frames: Vec<AgentFrame>,
) -> Result<Vec<u64>, tonic::Status> {
    let n = frames.len();
    let mut replies = c.stream(tokio_stream::iter(frames)).await?.into_inner();
    let mut acks = Vec::new();
    while acks.len() < n {
        match replies.message().await? {
            Some(f) => {
                if let Some(server_frame::Frame::Ack(a)) = f.frame {
                    acks.push(a.up_to_seq);
                }
            }
            None => break,
        }
    }
    Ok(acks)
}

fn setup() -> (Pki, std::path::PathBuf) {
    let ca = pki::new_ca("test CA").unwrap();
    let server = pki::server_cert(&ca, &["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "cw-ingest-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (Pki { ca, server }, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_acked_after_storage_and_a_resend_is_stored_once() {
    let (p, dir) = setup();
    let (url, store) = serve(&p, &dir.join("c.db")).await;
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
    let s = store.lock().unwrap();
    assert_eq!(s.record_count().unwrap(), 15, "each record once");
    assert_eq!(s.findings_since(0.0).unwrap()[0].clinic, "clinic-a");
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_speaks_only_for_its_own_host() {
    let (p, dir) = setup();
    let (url, store) = serve(&p, &dir.join("c.db")).await;
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
    assert_eq!(store.lock().unwrap().record_count().unwrap(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_an_expired_one_or_another_cas_is_refused() {
    let (p, dir) = setup();
    let (url, store) = serve(&p, &dir.join("c.db")).await;
    let refused = |r: Result<Vec<u64>, tonic::Status>| match r {
        Ok(acks) => panic!("accepted: {acks:?}"),
        Err(e) => e,
    };
    // No client certificate: the handshake or the first call fails.
    if let Ok(mut c) = client(&url, &p.ca, None).await {
        refused(exchange(&mut c, vec![hello("clinic-a", "ws1", 5)]).await);
    }
    // A certificate from another CA.
    let other = pki::new_ca("someone else").unwrap();
    let forged = pki::client_cert(&other, "clinic-a", "ws1", 30).unwrap();
    if let Ok(mut c) = client(&url, &p.ca, Some(&forged)).await {
        refused(exchange(&mut c, vec![hello("clinic-a", "ws1", 5)]).await);
    }
    // An expired certificate (valid for 0 days: it ended before it was used).
    let expired = pki::client_cert(&p.ca, "clinic-a", "ws1", 0).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    if let Ok(mut c) = client(&url, &p.ca, Some(&expired)).await {
        refused(exchange(&mut c, vec![hello("clinic-a", "ws1", 5)]).await);
    }
    assert_eq!(store.lock().unwrap().record_count().unwrap(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
