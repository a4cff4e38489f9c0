//! Drains the spool to the collector: one long-lived bidirectional stream with mutual TLS
//! and zstd, Hello (resuming after what the collector says it stored), batches of records,
//! heartbeats when idle, acks that let the spool delete what is stored. Reconnects with
//! exponential backoff and jitter; obeys Throttle and the `resource_exhausted` retry
//! pushback; renews the host certificate when a third of its life is left. Runs on its own
//! thread with its own small tokio runtime.
//!
//! No record can block the ones after it: each is checked against the collector's limits
//! before it is sent, and one the collector refuses as invalid anyway is found and
//! quarantined ([`crate::delivery::quarantine`]). Findings the full spool had to drop are reported as
//! a `CW-SENSOR-SPOOL-FULL` finding.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Context as _;
use clinicwatch_proto::v1::{
    agent_frame::Frame, ingest_client::IngestClient, server_frame, AgentFrame, Batch, Heartbeat,
    Hello, Record,
};
use tonic::codec::CompressionEncoding;

use crate::{
    config::ExportConfig,
    delivery::quarantine::{Quarantine, Screen, Screened},
    event::finding::{Finding, Severity},
    event::Event,
    sinks::spool::{Spool, SpoolError},
};

pub struct Exporter {
    worker: crate::worker::Worker,
}

/// The host's TLS material, read from the configured files.
struct Material {
    ca: String,
    cert: String,
    key: String,
}

fn read_material(cfg: &ExportConfig) -> anyhow::Result<Material> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| {
            format!(
                "cannot read `{}` (enroll first: `clinicwatch-agent enroll --token …`)",
                p.display()
            )
        })
    };
    Ok(Material {
        ca: read(&cfg.ca_file)?,
        cert: read(&cfg.cert_file)?,
        key: read(&cfg.key_file)?,
    })
}

use crate::delivery::channel::endpoint;

impl Exporter {
    /// Starts the exporter thread; the files are read now, so a missing one is an error here.
    pub fn start(
        cfg: &ExportConfig,
        spool: Arc<Mutex<Spool>>,
        hello: Hello,
    ) -> anyhow::Result<Exporter> {
        let m = read_material(cfg)?;
        endpoint(&cfg.collector, &m.ca, Some((&m.cert, &m.key)))?;
        let cfg = cfg.clone();
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
            rt.block_on(run(cfg, spool, hello, stop));
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
    // 0.5..1.5; without randomness (never on Linux ≥ 3.17), no jitter.
    let f = match getrandom::fill(&mut b) {
        Ok(()) => 0.5 + (u16::from_le_bytes(b) as f64 / u16::MAX as f64),
        Err(_) => 1.0,
    };
    d.mul_f64(f)
}

/// How a session ended badly: with the collector's retry pushback, or not.
#[derive(Debug)]
struct Ended {
    error: anyhow::Error,
    pushback: Option<Duration>,
}

impl<E: Into<anyhow::Error>> From<E> for Ended {
    fn from(e: E) -> Self {
        let error = e.into();
        let pushback = error
            .downcast_ref::<tonic::Status>()
            .filter(|s| s.code() == tonic::Code::ResourceExhausted)
            .map(|s| {
                s.metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(Duration::from_secs(5), Duration::from_millis)
            });
        Ended { error, pushback }
    }
}

async fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let deadline = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50).min(d)).await;
    }
}

/// The collector's message when it refused what we sent as invalid.
fn invalid_argument(error: &anyhow::Error) -> Option<&str> {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>())
        .filter(|s| s.code() == tonic::Code::InvalidArgument)
        .map(|s| s.message())
}

/// The rule of the finding that reports findings the full spool dropped.
pub const SPOOL_FULL_RULE: &str = "CW-SENSOR-SPOOL-FULL";
/// How often, at most, dropped findings are reported again.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(600);

/// Findings the full spool dropped that were reported, and when.
#[derive(Debug, Default)]
pub(crate) struct DropReport {
    reported: u64,
    last: Option<std::time::Instant>,
}

/// When the full spool dropped findings since the last report: appends a
/// `CW-SENSOR-SPOOL-FULL` finding (high: findings were lost) saying how many, at once and
/// then at most every [`DROP_REPORT_EVERY`].
pub(crate) fn report_drops(s: &mut Spool, r: &mut DropReport) -> Result<(), SpoolError> {
    let new = s.dropped_findings - r.reported;
    if new == 0 || r.last.is_some_and(|t| t.elapsed() < DROP_REPORT_EVERY) {
        return Ok(());
    }
    let now = crate::delivery::records::unix_time();
    let f = Finding::new(SPOOL_FULL_RULE, Severity::High, "-", now, "spool")
        .summary(format!(
            "the spool reached its {}-byte cap with findings alone (the collector unreachable for long?): its {new} oldest finding(s) were dropped",
            s.max_bytes()
        ))
        .with("findings_dropped", new)
        .with("findings_dropped_total", s.dropped_findings)
        .with("summaries_dropped_total", s.dropped)
        .with("spool_bytes", s.bytes())
        .with("spool_max_bytes", s.max_bytes());
    tracing::error!(
        dropped = new,
        total = s.dropped_findings,
        "the full spool dropped findings"
    );
    r.reported = s.dropped_findings;
    r.last = Some(std::time::Instant::now());
    if let Some((kind, payload)) = crate::delivery::records::record(&Event::Finding(f), s.dropped) {
        s.append(kind, &payload)?;
    }
    // Findings the report itself pushes out are reported next time.
    Ok(())
}

/// Records quarantined by one [`next_batch`] at most (the next call goes on).
const QUARANTINES_PER_CALL: usize = 16;

/// The next batch to send: pending records up to the first bad one, after quarantining any
/// bad one that is the oldest; `None` when nothing is pending.
pub(crate) fn next_batch(
    spool: &Mutex<Spool>,
    screen: &mut Screen,
    drops: &mut DropReport,
    max_records: usize,
) -> Result<Option<Vec<Record>>, SpoolError> {
    let mut s = spool.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = report_drops(&mut s, drops) {
        tracing::warn!(error = %e, "cannot spool the report of dropped findings");
    }
    // At most a few quarantines per call: each syncs files, under the spool's lock.
    for _ in 0..QUARANTINES_PER_CALL {
        let limit = screen.batch_limit(s.acked(), max_records);
        let entries = s.read_after(s.acked(), limit, clinicwatch_proto::MAX_FRAME_BYTES / 2)?;
        match screen.screen(entries) {
            Screened::Bad(e, why) => screen.quarantine(&mut s, e, &why)?,
            Screened::Send(records) if records.is_empty() => return Ok(None),
            Screened::Send(records) => return Ok(Some(records)),
        }
    }
    Ok(None)
}

async fn run(cfg: ExportConfig, spool: Arc<Mutex<Spool>>, hello: Hello, stop: Arc<AtomicBool>) {
    let quarantine = Quarantine::new(
        spool.lock().unwrap_or_else(|p| p.into_inner()).dir(),
        crate::delivery::quarantine::MAX_BYTES,
    );
    let mut screen = Screen::new(quarantine);
    let mut drops = DropReport::default();
    let mut backoff = Duration::from_millis(250);
    // A failed renewal is tried again after 10 minutes, not at every reconnect.
    let mut renew_failed: Option<std::time::Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let renew_allowed = renew_failed.is_none_or(|t| t.elapsed() >= Duration::from_secs(600));
        if cfg.renew && renew_allowed {
            match crate::delivery::enroll::renew_if_due(&cfg).await {
                Ok(()) => renew_failed = None,
                Err(e) => {
                    renew_failed = Some(std::time::Instant::now());
                    tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed; will retry in 10 minutes");
                }
            }
        }
        let renew_allowed = renew_failed.is_none_or(|t| t.elapsed() >= Duration::from_secs(600));
        // Also while the collector is unreachable, which is when the spool fills.
        let reported = report_drops(
            &mut spool.lock().unwrap_or_else(|p| p.into_inner()),
            &mut drops,
        );
        if let Err(e) = reported {
            tracing::warn!(error = %e, "cannot spool the report of dropped findings");
        }
        let ended = session(
            &cfg,
            &spool,
            &hello,
            &stop,
            renew_allowed,
            &mut screen,
            &mut drops,
        )
        .await;
        match ended {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(Ended { error, .. })
                if invalid_argument(&error).is_some_and(|why| screen.refused(why)) =>
            {
                // Each refusal narrows the search for the bad record (or names it): go on
                // at once, it is quarantined within a few sessions.
                tracing::warn!(error = %format!("{error:#}"), refusals = screen.refusals, "the collector refused a batch as invalid; finding the record to quarantine");
                backoff = Duration::from_millis(250);
                sleep_unless_stopped(Duration::from_millis(100), &stop).await;
            }
            Err(Ended {
                error,
                pushback: Some(wait),
            }) => {
                tracing::info!(error = %format!("{error:#}"), retry_in_ms = wait.as_millis() as u64, "the collector asked us to wait; records stay spooled");
                sleep_unless_stopped(wait, &stop).await;
            }
            Err(Ended { error, .. }) => {
                let denied = error.downcast_ref::<tonic::Status>().is_some_and(|s| {
                    matches!(
                        s.code(),
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                    )
                });
                if denied {
                    // Not going to fix itself quickly: check `export.clinic`/`host` and the
                    // certificate.
                    backoff = Duration::from_secs(30);
                    tracing::error!(error = %format!("{error:#}"), "the collector refused this host");
                } else {
                    tracing::warn!(error = %format!("{error:#}"), retry_in_ms = backoff.as_millis() as u64, "collector unreachable or stream ended; records stay spooled");
                }
                sleep_unless_stopped(jitter(backoff), &stop).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Reads server frames until an ack; a throttle on the way sets `pace`.
async fn until_ack(
    replies: &mut Replies,
    spool: &Arc<Mutex<Spool>>,
    epoch: u64,
    pace: &mut Duration,
) -> Result<(), Ended> {
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(60), replies.message())
            .await
            .context("no answer from the collector in 60 s")??
            .context("the collector closed the stream")?;
        match reply.frame {
            Some(server_frame::Frame::Ack(a)) => {
                if a.epoch == epoch {
                    spool
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .ack(a.up_to_seq)?;
                }
                return Ok(());
            }
            Some(server_frame::Frame::Throttle(t)) => {
                *pace = Duration::from_millis(t.retry_after_ms as u64);
                tracing::debug!(
                    retry_after_ms = t.retry_after_ms,
                    max = t.max_records_per_sec,
                    "throttled by the collector"
                );
            }
            Some(server_frame::Frame::Policy(_)) | None => {}
        }
    }
}

type Replies = tonic::Streaming<clinicwatch_proto::v1::ServerFrame>;

/// One connection: Hello, then batches (or heartbeats when idle) until the stop flag or an
/// error.
async fn session(
    cfg: &ExportConfig,
    spool: &Arc<Mutex<Spool>>,
    hello: &Hello,
    stop: &AtomicBool,
    renew_allowed: bool,
    screen: &mut Screen,
    drops: &mut DropReport,
) -> Result<(), Ended> {
    // A batch of an earlier session that ended unacked is not the one a refusal in this
    // session is about.
    screen.settled();
    let m = read_material(cfg)?;
    let client = connect(cfg, &m).await?;
    let (tx, mut replies, epoch, mut pace) = open(client, spool, hello).await?;
    let heartbeat = Duration::from_secs(cfg.heartbeat_secs);
    // When the certificate enters its last third: end the session, so that `run` renews it
    // and reconnects with the new one (a stream can outlive a certificate's renewal window).
    let renew_at = if cfg.renew && renew_allowed {
        crate::delivery::enroll::lifetime(&m.cert)
            .ok()
            .map(|(nb, na)| na - (na - nb).max(1) / 3)
    } else {
        None
    };
    let mut last_beat = tokio::time::Instant::now();
    loop {
        if renew_at.is_some_and(|t| crate::delivery::enroll::unix_now() >= t) {
            tracing::info!("certificate due for renewal: reconnecting");
            return Ok(());
        }
        let next = next_batch_or_beat(cfg, spool, stop, screen, drops, last_beat, heartbeat);
        let Some(records) = next.await? else {
            return Ok(()); // stopped
        };
        if !pace.is_zero() {
            sleep_unless_stopped(pace, stop).await;
            pace = Duration::ZERO;
        }
        let frame = match records {
            None => {
                last_beat = tokio::time::Instant::now();
                let s = spool.lock().unwrap_or_else(|p| p.into_inner());
                Frame::Heartbeat(Heartbeat {
                    time: crate::delivery::records::unix_time(),
                    spooled: s.pending(),
                    dropped: s.dropped,
                })
            }
            Some(records) => {
                screen.sending(&records);
                Frame::Batch(Batch {
                    epoch,
                    first_seq: records[0].seq,
                    records,
                })
            }
        };
        tx.send(AgentFrame { frame: Some(frame) })
            .await
            .context("the stream closed")?;
        until_ack(&mut replies, spool, epoch, &mut pace).await?;
        screen.settled();
    }
}

/// The mTLS channel and the Ingest client on it, compressed as configured.
async fn connect(
    cfg: &ExportConfig,
    m: &Material,
) -> Result<IngestClient<tonic::transport::Channel>, Ended> {
    let channel = endpoint(&cfg.collector, &m.ca, Some((&m.cert, &m.key)))?
        .connect()
        .await
        .context("cannot connect")?;
    let mut client = IngestClient::new(channel)
        .max_encoding_message_size(clinicwatch_proto::MAX_FRAME_BYTES)
        .max_decoding_message_size(clinicwatch_proto::MAX_FRAME_BYTES);
    if cfg.compression == "zstd" {
        client = client
            .send_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Zstd);
    }
    Ok(client)
}

/// Opens the stream with Hello and settles the spool with the collector's answer (how far
/// it has stored this epoch). Returns the sender, the replies, the epoch and the pace the
/// collector asked for.
async fn open(
    mut client: IngestClient<tonic::transport::Channel>,
    spool: &Arc<Mutex<Spool>>,
    hello: &Hello,
) -> Result<
    (
        tokio::sync::mpsc::Sender<AgentFrame>,
        Replies,
        u64,
        Duration,
    ),
    Ended,
> {
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
    let stored = loop {
        let reply = tokio::time::timeout(Duration::from_secs(60), replies.message())
            .await
            .context("no answer to Hello from the collector in 60 s")??
            .context("the collector closed the stream")?;
        match reply.frame {
            Some(server_frame::Frame::Ack(a)) if a.epoch == epoch => break a.up_to_seq,
            Some(server_frame::Frame::Ack(_)) => break 0,
            Some(server_frame::Frame::Throttle(t)) => {
                pace = Duration::from_millis(t.retry_after_ms as u64)
            }
            _ => {}
        }
    };
    resume_from(spool, stored)?;
    Ok((tx, replies, epoch, pace))
}

/// Acks what the collector says it stored; a collector ahead of the spool (state restored
/// from an older copy) starts a new epoch and ends the session.
fn resume_from(spool: &Arc<Mutex<Spool>>, stored: u64) -> Result<(), Ended> {
    let mut s = spool.lock().unwrap_or_else(|p| p.into_inner());
    if stored >= s.next_seq() {
        let e = s.new_epoch()?;
        tracing::warn!(
            stored,
            written = s.next_seq() - 1,
            new_epoch = e,
            "the collector holds records this spool never wrote (state restored from an older copy?): new epoch"
        );
        return Err(
            anyhow::anyhow!("spool behind the collector; reconnecting with a new epoch").into(),
        );
    }
    s.ack(stored)?;
    Ok(())
}

/// The next batch, once there is something to send (`Some(Some(records))`); a heartbeat
/// every `heartbeat` whatever the traffic (`Some(None)`), so the collector always knows the
/// spool's depth (a backlog draining after an outage shows there); `None` when stopped.
async fn next_batch_or_beat(
    cfg: &ExportConfig,
    spool: &Arc<Mutex<Spool>>,
    stop: &AtomicBool,
    screen: &mut Screen,
    drops: &mut DropReport,
    last_beat: tokio::time::Instant,
    heartbeat: Duration,
) -> Result<Option<Option<Vec<Record>>>, Ended> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if last_beat.elapsed() >= heartbeat {
            return Ok(Some(None));
        }
        if let Some(records) = next_batch(spool, screen, drops, cfg.batch_records)? {
            return Ok(Some(Some(records)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use clinicwatch_proto::v1::record::Body;
    use prost::Message as _;

    use super::*;
    use crate::sinks::spool::{Kind, SpoolConfig};

    #[test]
    fn findings_dropped_by_the_full_spool_are_reported_at_once_then_at_most_every_10_minutes() {
        let d = std::env::temp_dir().join(format!("cw-exporter-drops-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut s = Spool::open(SpoolConfig {
            dir: d.clone(),
            max_bytes: 8 << 10,
            segment_bytes: 1 << 10,
            fsync_each: false,
        })
        .unwrap();
        let mut r = DropReport::default();
        report_drops(&mut s, &mut r).unwrap();
        assert_eq!(s.next_seq(), 1, "nothing dropped, nothing reported");
        for i in 0..1000u32 {
            s.append(Kind::Finding, &i.to_le_bytes()).unwrap();
        }
        assert!(s.dropped_findings > 0);
        report_drops(&mut s, &mut r).unwrap();
        let last = s.read_after(0, 100_000, usize::MAX).unwrap().pop().unwrap();
        assert_eq!(last.seq, 1001);
        let rec = Record::decode(last.payload.as_slice()).unwrap();
        let Some(Body::Finding(f)) = rec.body else {
            panic!("{rec:?}")
        };
        assert_eq!(f.rule, SPOOL_FULL_RULE);
        assert_eq!(f.severity, clinicwatch_proto::v1::Severity::High as i32);
        assert!(f.evidence["findings_dropped"].parse::<u64>().unwrap() > 0);
        for i in 0..1000u32 {
            s.append(Kind::Finding, &i.to_le_bytes()).unwrap();
        }
        let before = s.next_seq();
        report_drops(&mut s, &mut r).unwrap();
        assert_eq!(s.next_seq(), before, "not again within 10 minutes");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
