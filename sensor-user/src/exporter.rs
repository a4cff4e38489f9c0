//! Drains the spool to the collector: one long-lived bidirectional stream with mutual TLS,
//! Hello (resuming after what the collector says it stored), batches of records, acks that
//! let the spool delete what is stored. Reconnects with exponential backoff and jitter;
//! obeys Throttle. Runs on its own thread with its own small tokio runtime.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Context as _;
use clinicwatch_proto::v1::{
    agent_frame::Frame, ingest_client::IngestClient, server_frame, AgentFrame, Batch, Hello, Record,
};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::{config::ExportConfig, spool::Spool};

pub struct Exporter {
    worker: crate::worker::Worker,
}

impl Exporter {
    /// Starts the exporter thread; the files are read now, so a missing one is an error here.
    pub fn start(
        cfg: &ExportConfig,
        spool: Arc<Mutex<Spool>>,
        hello: Hello,
    ) -> anyhow::Result<Exporter> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read `{}`", p.display()))
        };
        let ca = read(&cfg.ca_file)?;
        let (cert, key) = (read(&cfg.cert_file)?, read(&cfg.key_file)?);
        let url = cfg.collector.clone();
        let domain = url
            .trim_start_matches("https://")
            .split([':', '/'])
            .next()
            .unwrap_or("")
            .to_string();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(domain);
        let endpoint = Channel::from_shared(url.clone())
            .with_context(|| format!("`export.collector` `{url}` is not a valid URL"))?
            .tls_config(tls)
            .context("bad TLS material in `export`")?
            .connect_timeout(Duration::from_secs(5));
        let batch = cfg.batch_records;
        let worker = crate::worker::Worker::spawn("cw-export", move |stop| {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the exporter runtime");
                    return;
                }
            };
            rt.block_on(run(endpoint, spool, hello, batch, stop));
        })
        .context("cannot start the exporter thread")?;
        Ok(Exporter { worker })
    }

    pub fn stop(mut self) {
        self.worker.stop();
    }
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    // SAFETY: writes two bytes into b.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    let f = 0.5 + (u16::from_le_bytes(b) as f64 / u16::MAX as f64); // 0.5..1.5
    d.mul_f64(f)
}

async fn run(
    endpoint: tonic::transport::Endpoint,
    spool: Arc<Mutex<Spool>>,
    hello: Hello,
    batch: usize,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(250);
    while !stop.load(Ordering::SeqCst) {
        match session(&endpoint, &spool, &hello, batch, &stop).await {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "collector unreachable or stream ended; records stay spooled");
                let wait = jitter(backoff);
                let deadline = tokio::time::Instant::now() + wait;
                while tokio::time::Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One connection: Hello, then batches until the stop flag or an error.
async fn session(
    endpoint: &tonic::transport::Endpoint,
    spool: &Arc<Mutex<Spool>>,
    hello: &Hello,
    batch: usize,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let channel = endpoint.connect().await.context("cannot connect")?;
    let mut client = IngestClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<AgentFrame>(4);
    let (epoch, acked) = {
        let s = spool.lock().unwrap_or_else(|p| p.into_inner());
        (s.epoch(), s.acked())
    };
    let mut h = hello.clone();
    h.epoch = epoch;
    h.last_acked_seq = acked;
    tx.send(AgentFrame {
        frame: Some(Frame::Hello(h)),
    })
    .await?;
    let mut replies = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("the collector refused the stream")?
        .into_inner();
    let mut pace = Duration::ZERO;
    loop {
        // The collector's answer to the last frame: an ack, or a throttle.
        let reply = tokio::time::timeout(Duration::from_secs(30), replies.message())
            .await
            .context("no answer from the collector in 30 s")??
            .context("the collector closed the stream")?;
        match reply.frame {
            Some(server_frame::Frame::Ack(a)) if a.epoch == epoch => {
                spool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ack(a.up_to_seq)?;
            }
            Some(server_frame::Frame::Throttle(t)) => {
                pace = Duration::from_millis(t.retry_after_ms as u64);
            }
            _ => {}
        }
        // The next batch, once there is something to send.
        let records = loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let entries = {
                let s = spool.lock().unwrap_or_else(|p| p.into_inner());
                s.read_after(s.acked(), batch, clinicwatch_proto::MAX_FRAME_BYTES / 2)?
            };
            if !entries.is_empty() {
                break entries;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        let mut out = Vec::with_capacity(records.len());
        for e in &records {
            let mut r =
                Record::decode(e.payload.as_slice()).context("a spooled record does not decode")?;
            r.seq = e.seq;
            out.push(r);
        }
        tx.send(AgentFrame {
            frame: Some(Frame::Batch(Batch {
                epoch,
                first_seq: records[0].seq,
                records: out,
            })),
        })
        .await
        .context("the stream closed")?;
    }
}
