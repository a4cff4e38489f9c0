//! Shared by the collector's integration tests: a real collector on a real socket with real
//! mutual TLS, clients, frames, and a private PostgreSQL server.
#![allow(dead_code)]

pub mod pg;
pub mod raw;

use std::sync::Arc;

use clinicwatch_collector::{
    api::listen::ServerTls,
    auth::pki,
    config::Config,
    store::{self, Store},
};
use clinicwatch_proto::v1::{
    agent_frame::Frame, ingest_client::IngestClient, record::Body, server_frame, AgentFrame, Batch,
    Destination, Finding, Hello, Record, ServerFrame, WindowSummary,
};
use tonic::{
    codec::CompressionEncoding,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

pub use clinicwatch_testkit::collector::{blocking, Pki, Running};

pub fn new_pki() -> Pki {
    Pki::new()
}

pub fn server_tls(p: &Pki) -> ServerTls {
    p.server_tls()
}

/// Starts a collector (Ingest, Enroll, health) over `store` on an ephemeral port.
pub async fn serve_store(p: &Pki, cfg: Config, store: Box<dyn Store>) -> Running {
    serve_stores(p, cfg, store, None).await
}

/// A collector with a second connection for its background work (as `serve` runs it).
pub async fn serve_stores(
    p: &Pki,
    cfg: Config,
    store: Box<dyn Store>,
    background: Option<Box<dyn Store>>,
) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    clinicwatch_testkit::collector::serve(
        p,
        cfg,
        Arc::from(store),
        background.map(Arc::from),
        listener,
    )
}

pub async fn serve(p: &Pki, db: &std::path::Path) -> Running {
    serve_with(p, db, Config::default()).await
}

pub async fn serve_with(p: &Pki, db: &std::path::Path, cfg: Config) -> Running {
    let spec = db.display().to_string();
    let st = store::open(&spec).unwrap();
    serve_stores(p, cfg, st, store::open_background(&spec).unwrap()).await
}

pub async fn channel(
    url: &str,
    ca: &pki::Pem,
    me: Option<&pki::Pem>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert))
        .domain_name("localhost");
    if let Some(me) = me {
        tls = tls.identity(Identity::from_pem(&me.cert, &me.key));
    }
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

pub async fn client(
    url: &str,
    ca: &pki::Pem,
    me: Option<&pki::Pem>,
) -> Result<IngestClient<Channel>, tonic::transport::Error> {
    Ok(IngestClient::new(channel(url, ca, me).await?)
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(clinicwatch_proto::MAX_FRAME_BYTES)
        .max_encoding_message_size(64 << 20))
}

pub fn hello(clinic: &str, host: &str, epoch: u64) -> AgentFrame {
    AgentFrame {
        frame: Some(Frame::Hello(Hello {
            clinic_id: clinic.into(),
            host_id: host.into(),
            epoch,
            ..Default::default()
        })),
    }
}

/// Records `first..first+n`: every third a finding, the others summaries, dated an hour
/// ago plus their seq in seconds (within the collector's plausible window).
pub fn records(first: u64, n: u64) -> Vec<Record> {
    let base = (clinicwatch_collector::calls::now() - 3600.0).floor();
    (first..first + n)
        .map(|seq| Record {
            seq,
            body: Some(if seq % 3 == 0 {
                Body::Finding(Finding {
                    rule: "CW-PM-BULK-READ".into(),
                    time: base + seq as f64,
                    app: "pm".into(),
                    summary: format!("finding {seq}"),
                    ..Default::default()
                })
            } else {
                Body::Summary(WindowSummary {
                    app: "pm".into(),
                    start: base + seq as f64,
                    end: base + seq as f64 + 60.0,
                    ..Default::default()
                })
            }),
        })
        .collect()
}

pub fn raw_batch(epoch: u64, first: u64, n: u64) -> Batch {
    Batch {
        epoch,
        first_seq: first,
        records: records(first, n),
    }
}

pub fn batch(epoch: u64, first: u64, n: u64) -> AgentFrame {
    AgentFrame {
        frame: Some(Frame::Batch(raw_batch(epoch, first, n))),
    }
}

/// Sends the frames; returns every server frame until `n_acks` acks, or the status that
/// ended the stream.
pub async fn exchange_frames(
    c: &mut IngestClient<Channel>,
    frames: Vec<AgentFrame>,
    n_acks: usize,
) -> Result<Vec<ServerFrame>, tonic::Status> {
    let mut replies = c.stream(tokio_stream::iter(frames)).await?.into_inner();
    let mut got = Vec::new();
    let mut acks = 0;
    while acks < n_acks {
        match replies.message().await? {
            Some(f) => {
                if matches!(f.frame, Some(server_frame::Frame::Ack(_))) {
                    acks += 1;
                }
                got.push(f);
            }
            None => break,
        }
    }
    Ok(got)
}

/// Sends the frames; returns the acked seqs, or the status that ended the stream.
pub async fn exchange(
    c: &mut IngestClient<Channel>,
    frames: Vec<AgentFrame>,
) -> Result<Vec<u64>, tonic::Status> {
    let n = frames.len();
    Ok(exchange_frames(c, frames, n)
        .await?
        .into_iter()
        .filter_map(|f| match f.frame {
            Some(server_frame::Frame::Ack(a)) => Some(a.up_to_seq),
            _ => None,
        })
        .collect())
}

/// An app's window ending at `t` in which it sent `sent` bytes to `ip` (named `name`, or
/// unnamed when empty) on port 443.
#[allow(dead_code)]
pub fn contact_summary(app: &str, ip: &str, name: &str, sent: u64, t: f64) -> WindowSummary {
    WindowSummary {
        app: app.into(),
        start: t - 60.0,
        end: t,
        destinations: vec![Destination {
            ip: ip.into(),
            port: 443,
            protocol: "tcp".into(),
            name: name.into(),
            bytes_sent: sent,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `GET path` over plain HTTP/1.1 with this `Host`, the connection closed after: the whole
/// answer, head and body (empty when the server closed without one).
#[allow(dead_code)]
pub async fn http_get(addr: std::net::SocketAddr, path: &str, host: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}
