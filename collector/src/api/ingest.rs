//! The `Ingest` gRPC service: one stream per agent. The host is the client certificate's
//! (clinic, host); a Hello that claims another is `permission_denied`, and the certificate's
//! key is checked against the host's enrollment at Hello and with every batch and heartbeat
//! (an unenrolled host is cut off at once). Each batch is stored durably, then acked; a
//! malformed or oversized frame is `invalid_argument` (logged with the host) and ends the
//! stream; a host past its rate (counted in record units, heartbeats included) gets
//! `resource_exhausted` with a retry pushback, and nothing of that batch is stored. One
//! stream per host (a newer one closes the older); a stream silent for
//! `limits.stream_idle_secs` is closed.

use crate::status;
use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Instant,
};

use clinicwatch_proto::v1::{
    agent_frame::Frame, ingest_server::Ingest, server_frame, Ack, AgentFrame, Batch, Heartbeat,
    Hello, ServerFrame, Throttle,
};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::{
    api::limit::{Decision, Limiter},
    metrics::{Metrics, Rejection},
    store::{record_time, HostKey, Store, StoreError},
};

use crate::auth::identity::{check_key, peer_of, KeyUse};
use crate::calls::{now, on_store, SharedStore};

/// Where a stream's identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// The client certificate (the only choice of the `clinicwatch-collector` binary).
    PeerCertificate,
    /// `x-clinicwatch-clinic` / `x-clinicwatch-host` request metadata. Trusts the client:
    /// only for measuring the cost of TLS in benchmarks (no TLS, so no certificate).
    TrustedMetadataForBenchmarks,
}

pub struct IngestService {
    pub store: SharedStore,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
    pub limits: crate::config::LimitsConfig,
    pub identity: IdentitySource,
    /// Exports of what is stored (OCSF, CEF), when configured.
    pub siem: Option<crate::alert::Siem>,
    pub streams: Arc<Streams>,
}

impl IngestService {
    pub fn new(
        store: SharedStore,
        metrics: Arc<Metrics>,
        limits: crate::config::LimitsConfig,
    ) -> IngestService {
        IngestService {
            store,
            metrics,
            limiter: Arc::new(Limiter::new(limits.records_per_sec, limits.burst_records)),
            limits,
            identity: IdentitySource::PeerCertificate,
            siem: None,
            streams: Arc::default(),
        }
    }
}

/// The open stream of each host: one per host, the newest wins (an agent runs one; a second
/// from the same certificate is a reconnect whose old connection has not died yet, or a
/// copied key, and either way must not hold more slots).
#[derive(Default)]
pub struct Streams {
    next: std::sync::atomic::AtomicU64,
    open: Mutex<std::collections::HashMap<HostKey, (u64, Arc<tokio::sync::Notify>)>>,
}

/// A stream's place in [`Streams`]; leaving it on drop.
struct Registered {
    streams: Arc<Streams>,
    host: HostKey,
    id: u64,
    superseded: Arc<tokio::sync::Notify>,
}

impl Streams {
    fn register(self: &Arc<Self>, host: &HostKey) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let superseded = Arc::new(tokio::sync::Notify::new());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, older)) = open.insert(host.clone(), (id, superseded.clone())) {
            // A stored permit: the older stream sees it even if it is busy storing.
            older.notify_one();
        }
        Registered {
            streams: self.clone(),
            host: host.clone(),
            id,
            superseded,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.get(&self.host).is_some_and(|(id, _)| *id == self.id) {
            open.remove(&self.host);
        }
    }
}

fn host_from_metadata<T>(req: &Request<T>) -> Result<HostKey, Status> {
    let get = |k: &str| {
        req.metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| status::unauthenticated(format!("`{k}` metadata is required")))
    };
    Ok(HostKey {
        clinic: get("x-clinicwatch-clinic")?,
        host: get("x-clinicwatch-host")?,
    })
}

fn ack(epoch: u64, up_to_seq: u64) -> ServerFrame {
    ServerFrame {
        frame: Some(server_frame::Frame::Ack(Ack { epoch, up_to_seq })),
    }
}

/// Decrements the open-stream gauge when the stream's task ends.
struct StreamGuard(Arc<Metrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams_active.fetch_sub(1, Ordering::Relaxed);
    }
}

type Frames = Pin<Box<dyn Stream<Item = Result<ServerFrame, Status>> + Send>>;

/// Whether the certificate (its key) may still act for the host: checked at Hello and again
/// with every batch and heartbeat, so that `unenroll` cuts an open stream off at once.
fn authorized(
    s: &dyn Store,
    host: &HostKey,
    key: Option<&str>,
) -> Result<Result<KeyUse, String>, StoreError> {
    match key {
        None => Ok(Ok(KeyUse::Unrecorded)),
        Some(k) => Ok(check_key(s.enrollment(host)?.as_ref(), k)),
    }
}

/// One agent stream after its certificate was read.
struct Session {
    host: HostKey,
    /// The certificate key's fingerprint (`None`: benchmark identity by metadata).
    key: Option<String>,
    store: SharedStore,
    metrics: Arc<Metrics>,
    limiter: Arc<Limiter>,
    limits: crate::config::LimitsConfig,
    siem: Option<crate::alert::Siem>,
    /// The stream's epoch (after Hello) and the last seq acked on it.
    epoch: Option<u64>,
    acked: u64,
    streams: Arc<Streams>,
    /// Its place as the host's stream, taken once Hello was accepted (so that a refused
    /// certificate cannot close the host's stream).
    me: Option<Registered>,
}

impl Session {
    async fn frame(&mut self, frame: Option<Frame>) -> Result<Vec<ServerFrame>, Status> {
        match frame {
            Some(Frame::Hello(h)) => self.hello(h).await,
            Some(Frame::Batch(b)) => self.batch(b).await,
            Some(Frame::Heartbeat(hb)) => self.heartbeat(hb).await,
            None => {
                self.metrics.reject(Rejection::Invalid);
                Err(status::invalid("empty frame"))
            }
        }
    }

    fn denied(&self, why: String) -> Status {
        self.metrics.reject(Rejection::Permission);
        tracing::warn!(%why, "certificate refused");
        status::denied(why)
    }

    fn epoch(&self) -> Result<u64, Status> {
        self.epoch.ok_or_else(|| {
            self.metrics.reject(Rejection::Invalid);
            status::precondition("Hello first")
        })
    }

    async fn hello(&mut self, h: Hello) -> Result<Vec<ServerFrame>, Status> {
        if let Err(e) = crate::store::validate_hello(&h) {
            self.metrics.reject(Rejection::Invalid);
            return Err(status::invalid(e.to_string()));
        }
        let host = self.host.clone();
        if h.clinic_id != host.clinic || h.host_id != host.host {
            return Err(self.denied(format!(
                "this certificate is for {}/{}, not {}/{}",
                host.clinic,
                host.host,
                h.clinic_id.escape_debug(),
                h.host_id.escape_debug()
            )));
        }
        let (t, e, key) = (now(), h.epoch, self.key.clone());
        let r = on_store(&self.store, &self.metrics, move |s| {
            let verdict = authorized(s, &host, key.as_deref())?;
            if verdict == Ok(KeyUse::Pending) {
                // The renewed certificate is in use: the old one is refused from now on.
                if let Some(old) = s.enrollment(&host)? {
                    s.set_enrollment(&host, &crate::auth::identity::promoted(&old, t))?;
                }
            }
            match verdict {
                Ok(_) => s.hello(&host, &h, t).map(Ok),
                Err(why) => Ok(Err(why)),
            }
        })
        .await?;
        let up = r.map_err(|why| self.denied(why))?;
        if self.me.is_none() {
            self.me = Some(self.streams.register(&self.host));
        }
        self.epoch = Some(e);
        self.acked = up;
        self.metrics.seen(&self.host, t);
        Ok(vec![ack(e, up)])
    }

    /// Takes `cost` from the host's bucket: a Throttle to send, nothing, or a refusal.
    fn admit(&self, cost: u64, what: &str) -> Result<Option<ServerFrame>, Status> {
        match self.limiter.take(&self.host, cost, Instant::now()) {
            Decision::Accept => Ok(None),
            Decision::Slow { retry_after_ms } => {
                self.metrics.throttles.fetch_add(1, Ordering::Relaxed);
                Ok(Some(ServerFrame {
                    frame: Some(server_frame::Frame::Throttle(Throttle {
                        max_records_per_sec: self.limiter.rate(),
                        retry_after_ms,
                    })),
                }))
            }
            Decision::Refuse { pushback_ms } => {
                self.metrics.reject(Rejection::Throttled);
                // Counted (`rejected_total{reason="throttled"}`); a host over its rate for minutes
                // would otherwise log a line per batch.
                tracing::debug!(pushback_ms, cost, what, "host over its rate; refused");
                Err(status::exhausted(
                    format!(
                        "over {} record units/s; retry in {pushback_ms} ms",
                        self.limiter.rate()
                    ),
                    pushback_ms,
                ))
            }
        }
    }

    async fn batch(&mut self, b: Batch) -> Result<Vec<ServerFrame>, Status> {
        let e = self.epoch()?;
        if e != b.epoch {
            self.metrics.reject(Rejection::Invalid);
            return Err(status::invalid(format!(
                "batch of epoch {} on a stream that said epoch {e}",
                b.epoch
            )));
        }
        let cost: u64 = b.records.iter().map(clinicwatch_proto::limits::cost).sum();
        let mut out: Vec<ServerFrame> = self.admit(cost, "batch")?.into_iter().collect();
        let newest = b.records.iter().map(record_time).fold(0.0, f64::max);
        let (host, key, t) = (self.host.clone(), self.key.clone(), now());
        let window = self.limits.window(t);
        let started = Instant::now();
        let r = on_store(&self.store, &self.metrics, move |s| {
            if let Err(why) = authorized(s, &host, key.as_deref())? {
                return Ok(Err(why));
            }
            s.ingest(&host, &b, t, window).map(|i| Ok((i, b)))
        })
        .await;
        self.metrics
            .store_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let (i, b) = match r {
            Ok(Ok(v)) => v,
            Ok(Err(why)) => return Err(self.denied(why)),
            Err(s) => {
                // Not stored: the resend should not pay twice.
                self.limiter.refund(&self.host, cost);
                return Err(s);
            }
        };
        if i.out_of_window > 0 {
            self.metrics
                .out_of_window
                .fetch_add(i.out_of_window, Ordering::Relaxed);
            tracing::warn!(records = i.out_of_window,
                "records dated outside the plausible window (a wrong clock, or a forgery): stored, not correlated");
        }
        self.export(&i, b);
        self.metrics
            .batch(&self.host, i.stored, i.duplicates, newest, t);
        self.acked = self.acked.max(i.up_to_seq);
        out.push(ack(e, i.up_to_seq));
        Ok(out)
    }

    fn export(&self, i: &crate::store::Ingested, b: Batch) {
        let Some(siem) = &self.siem else {
            return;
        };
        let new: std::collections::HashSet<u64> = i.new_seqs.iter().copied().collect();
        let records: Vec<_> = b
            .records
            .into_iter()
            .filter(|r| new.contains(&r.seq))
            .collect();
        if !records.is_empty() {
            siem.send(crate::alert::Item::Records {
                host: self.host.clone(),
                records,
            });
        }
    }

    async fn heartbeat(&mut self, hb: Heartbeat) -> Result<Vec<ServerFrame>, Status> {
        let e = self.epoch()?;
        let mut out: Vec<ServerFrame> = self.admit(1, "heartbeat")?.into_iter().collect();
        let t = now();
        self.metrics.heartbeat(&self.host, hb.spooled, t);
        let (host, key) = (self.host.clone(), self.key.clone());
        let r = on_store(&self.store, &self.metrics, move |s| {
            if let Err(why) = authorized(s, &host, key.as_deref())? {
                return Ok(Err(why));
            }
            s.heartbeat(&host, &hb, t).map(Ok)
        })
        .await?;
        r.map_err(|why| self.denied(why))?;
        out.push(ack(e, self.acked));
        Ok(out)
    }
}

/// Why reading the next frame stopped the stream: a refusal to send, or `None` when the
/// peer went away.
fn read_error(e: &Status) -> Option<String> {
    // tonic reports an oversized frame as out_of_range and one that does not decode as
    // internal; anything else is the connection ending.
    match e.code() {
        tonic::Code::OutOfRange => Some(format!("frame too large: {}", e.message())),
        tonic::Code::Internal => Some(format!("malformed frame: {}", e.message())),
        _ => None,
    }
}

impl IngestService {
    fn identify<T>(&self, req: &Request<T>) -> Result<(HostKey, Option<String>), Status> {
        let (host, key) = match self.identity {
            IdentitySource::PeerCertificate => peer_of(req).map(|(h, k)| (h, Some(k))),
            IdentitySource::TrustedMetadataForBenchmarks => {
                host_from_metadata(req).map(|h| (h, None))
            }
        }
        .inspect_err(|_| self.metrics.reject(Rejection::Unauthenticated))?;
        if host.clinic == crate::auth::identity::SOC_ORG {
            self.metrics.reject(Rejection::Permission);
            return Err(status::denied("an analyst certificate cannot send records"));
        }
        Ok((host, key))
    }
}

/// Reads frames until the peer ends, a refusal, `stream_idle` without a frame, or a newer
/// stream of the same host.
async fn serve_stream(
    mut session: Session,
    mut inbound: Streaming<AgentFrame>,
    tx: tokio::sync::mpsc::Sender<Result<ServerFrame, Status>>,
    idle: std::time::Duration,
) {
    loop {
        let superseded = session.me.as_ref().map(|m| m.superseded.clone());
        let replaced = async {
            match superseded {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            m = tokio::time::timeout(idle, inbound.message()) => m,
            () = replaced => {
                session.metrics.reject(Rejection::Superseded);
                tracing::info!("stream replaced by a newer one from this host");
                let _ = tx.send(Err(status::unavailable("a newer stream from this host replaced this one"))).await;
                return;
            }
        };
        let frame = match next {
            Err(_) => {
                session.metrics.reject(Rejection::Idle);
                let why = format!("no frame in {} s", idle.as_secs());
                tracing::info!(%why, "idle stream closed");
                let _ = tx.send(Err(status::unavailable(why))).await;
                return;
            }
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                match read_error(&e) {
                    Some(why) => {
                        session.metrics.reject(Rejection::Invalid);
                        tracing::warn!(%why, "frame refused");
                        let _ = tx.send(Err(status::invalid(why))).await;
                    }
                    None => tracing::debug!(error = %e, "stream ended"),
                }
                return;
            }
        };
        match session.frame(frame.frame).await {
            Ok(frames) => {
                for f in frames {
                    if tx.send(Ok(f)).await.is_err() {
                        return;
                    }
                }
            }
            Err(s) => {
                if s.code() == tonic::Code::InvalidArgument {
                    tracing::warn!(why = %s.message(), "frame refused");
                }
                let _ = tx.send(Err(s)).await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = Frames;

    async fn stream(
        &self,
        req: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let (host, key) = self.identify(&req)?;
        let metrics = self.metrics.clone();
        let open = metrics.streams_active.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = StreamGuard(metrics.clone());
        if open as usize > self.limits.max_streams {
            metrics.reject(Rejection::TooManyStreams);
            return Err(status::exhausted(
                format!(
                    "{} streams are open (at most {})",
                    open - 1,
                    self.limits.max_streams
                ),
                1000 + (open % 4000) as u32,
            ));
        }
        metrics.streams_total.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            host,
            key,
            store: self.store.clone(),
            metrics,
            limiter: self.limiter.clone(),
            limits: self.limits.clone(),
            siem: self.siem.clone(),
            epoch: None,
            acked: 0,
            streams: self.streams.clone(),
            me: None,
        };
        let idle = std::time::Duration::from_secs(self.limits.stream_idle_secs);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let inbound = req.into_inner();
        // Every line logged for the stream carries its clinic and host.
        let span =
            tracing::info_span!("stream", clinic = %session.host.clinic, host = %session.host.host);
        tokio::spawn(
            async move {
                let _guard = guard;
                serve_stream(session, inbound, tx, idle).await;
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
