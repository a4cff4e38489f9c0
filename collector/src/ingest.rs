//! The `Ingest` gRPC service: one stream per agent. The host is the client certificate's
//! (clinic, host); a Hello that claims another is `permission_denied`. Each batch is stored
//! durably, then acked; a malformed or oversized frame is `invalid_argument` (logged with
//! the host) and ends the stream; a host past its rate gets `resource_exhausted` with a
//! retry pushback, and nothing of that batch is stored.

use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Instant,
};

use clinicwatch_proto::v1::{
    agent_frame::Frame, ingest_server::Ingest, server_frame, Ack, AgentFrame, ServerFrame, Throttle,
};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    limit::{Decision, Limiter},
    metrics::{Metrics, Rejection},
    store::{record_time, HostKey, Store, StoreError},
};

/// The store, shared by every stream; calls run off the async threads.
pub type SharedStore = Arc<Mutex<Box<dyn Store>>>;

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
    pub max_streams: usize,
    pub identity: IdentitySource,
    /// Exports of what is stored (OCSF, CEF), when configured.
    pub siem: Option<crate::siem::Siem>,
}

impl IngestService {
    /// A service with the default limits and identity from client certificates.
    pub fn new(store: SharedStore, metrics: Arc<Metrics>) -> IngestService {
        let l = crate::config::LimitsConfig::default();
        IngestService {
            store,
            metrics,
            limiter: Arc::new(Limiter::new(l.records_per_sec, l.burst_records)),
            max_streams: l.max_streams,
            identity: IdentitySource::PeerCertificate,
            siem: None,
        }
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The host a request comes from and its key's fingerprint: its client certificate, or
/// `unauthenticated`.
pub(crate) fn peer_of<T>(req: &Request<T>) -> Result<(HostKey, String), Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let der = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let (clinic, host) =
        crate::pki::identity(der).map_err(|e| Status::unauthenticated(e.to_string()))?;
    let key =
        crate::pki::key_fingerprint(der).map_err(|e| Status::unauthenticated(e.to_string()))?;
    Ok((HostKey { clinic, host }, key))
}

fn host_from_metadata<T>(req: &Request<T>) -> Result<HostKey, Status> {
    let get = |k: &str| {
        req.metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| Status::unauthenticated(format!("`{k}` metadata is required")))
    };
    Ok(HostKey {
        clinic: get("x-clinicwatch-clinic")?,
        host: get("x-clinicwatch-host")?,
    })
}

/// Runs a store call off the async threads (SQLite and the PostgreSQL client block).
pub(crate) async fn on_store<T: Send + 'static>(
    store: &SharedStore,
    metrics: &Metrics,
    f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    let store = store.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
        f(s.as_mut())
    })
    .await;
    match r {
        Ok(Ok(v)) => {
            metrics.store_ok.store(true, Ordering::Relaxed);
            Ok(v)
        }
        Ok(Err(StoreError::Invalid(why))) => {
            metrics.reject(Rejection::Invalid);
            Err(Status::invalid_argument(why))
        }
        Ok(Err(e)) => {
            metrics.store_ok.store(false, Ordering::Relaxed);
            metrics.reject(Rejection::Storage);
            tracing::error!(error = %e, "store call failed; the agent will resend");
            Err(Status::unavailable(format!("storage: {e}")))
        }
        Err(_) => Err(Status::internal("store task failed")),
    }
}

fn ack(epoch: u64, up_to_seq: u64) -> ServerFrame {
    ServerFrame {
        frame: Some(server_frame::Frame::Ack(Ack { epoch, up_to_seq })),
    }
}

/// `resource_exhausted` with the gRPC retry pushback (milliseconds) in the trailers.
pub fn exhausted(why: String, pushback_ms: u32) -> Status {
    let mut s = Status::resource_exhausted(why);
    if let Ok(v) = pushback_ms.to_string().parse() {
        s.metadata_mut().insert("grpc-retry-pushback-ms", v);
    }
    s
}

/// Decrements the open-stream gauge when the stream's task ends.
struct StreamGuard(Arc<Metrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams_active.fetch_sub(1, Ordering::Relaxed);
    }
}

type Frames = Pin<Box<dyn Stream<Item = Result<ServerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = Frames;

    async fn stream(
        &self,
        req: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let metrics = self.metrics.clone();
        let (host, key) = match self.identity {
            IdentitySource::PeerCertificate => peer_of(&req).map(|(h, k)| (h, Some(k))),
            IdentitySource::TrustedMetadataForBenchmarks => {
                host_from_metadata(&req).map(|h| (h, None))
            }
        }
        .inspect_err(|_| metrics.reject(Rejection::Unauthenticated))?;
        if host.clinic == crate::soc::SOC_ORG {
            metrics.reject(Rejection::Permission);
            return Err(Status::permission_denied(
                "an analyst certificate cannot send records",
            ));
        }
        let open = metrics.streams_active.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = StreamGuard(metrics.clone());
        if open as usize > self.max_streams {
            metrics.reject(Rejection::TooManyStreams);
            return Err(exhausted(
                format!(
                    "{} streams are open (at most {})",
                    open - 1,
                    self.max_streams
                ),
                1000 + (open % 4000) as u32,
            ));
        }
        metrics.streams_total.fetch_add(1, Ordering::Relaxed);
        let mut inbound = req.into_inner();
        let store = self.store.clone();
        let limiter = self.limiter.clone();
        let siem = self.siem.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _guard = guard;
            let (clinic, hostname) = (host.clinic.clone(), host.host.clone());
            // The stream's epoch (after Hello) and the last seq acked on it.
            let mut epoch: Option<u64> = None;
            let mut acked = 0u64;
            loop {
                let frame = match inbound.message().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        // tonic reports an oversized frame as out_of_range and one that does
                        // not decode as internal; anything else is the connection ending.
                        let refused = match e.code() {
                            tonic::Code::OutOfRange => {
                                Some(format!("frame too large: {}", e.message()))
                            }
                            tonic::Code::Internal => {
                                Some(format!("malformed frame: {}", e.message()))
                            }
                            _ => None,
                        };
                        match refused {
                            Some(why) => {
                                metrics.reject(Rejection::Invalid);
                                tracing::warn!(%clinic, host = %hostname, %why, "frame refused");
                                let _ = tx.send(Err(Status::invalid_argument(why))).await;
                            }
                            None => {
                                tracing::debug!(%clinic, host = %hostname, error = %e, "stream ended")
                            }
                        }
                        break;
                    }
                };
                let t = now();
                let reply: Result<Vec<ServerFrame>, Status> = match frame.frame {
                    Some(Frame::Hello(h)) => {
                        let h2 = host.clone();
                        let enrolled = match &key {
                            Some(_) => on_store(&store, &metrics, move |s| s.enrollment(&h2)).await,
                            None => Ok(None),
                        };
                        let refused = match (&enrolled, &key) {
                            (Err(s), _) => Some(s.clone()),
                            (Ok(e), Some(k)) => crate::enroll::check_key(e.as_ref(), k)
                                .err()
                                .map(Status::permission_denied),
                            _ => None,
                        };
                        if let Some(s) = refused {
                            if s.code() == tonic::Code::PermissionDenied {
                                metrics.reject(Rejection::Permission);
                                tracing::warn!(%clinic, host = %hostname, why = %s.message(), "certificate refused");
                            }
                            Err(s)
                        } else if let Err(e) = crate::store::validate_hello(&h) {
                            metrics.reject(Rejection::Invalid);
                            Err(Status::invalid_argument(e.to_string()))
                        } else if h.clinic_id != host.clinic || h.host_id != host.host {
                            metrics.reject(Rejection::Permission);
                            Err(Status::permission_denied(format!(
                                "this certificate is for {}/{}, not {}/{}",
                                host.clinic,
                                host.host,
                                h.clinic_id.escape_debug(),
                                h.host_id.escape_debug()
                            )))
                        } else {
                            let (host2, e) = (host.clone(), h.epoch);
                            on_store(&store, &metrics, move |s| s.hello(&host2, &h, t))
                                .await
                                .map(|up| {
                                    epoch = Some(e);
                                    acked = up;
                                    metrics.seen(&host, t);
                                    vec![ack(e, up)]
                                })
                        }
                    }
                    Some(Frame::Batch(b)) => match epoch {
                        None => {
                            metrics.reject(Rejection::Invalid);
                            Err(Status::failed_precondition("Hello first"))
                        }
                        Some(e) if e != b.epoch => {
                            metrics.reject(Rejection::Invalid);
                            Err(Status::invalid_argument(format!(
                                "batch of epoch {} on a stream that said epoch {e}",
                                b.epoch
                            )))
                        }
                        Some(e) => {
                            let mut out = Vec::new();
                            let admitted = match limiter.take(
                                &host,
                                b.records.len(),
                                Instant::now(),
                            ) {
                                Decision::Accept => Ok(()),
                                Decision::Slow { retry_after_ms } => {
                                    metrics.throttles.fetch_add(1, Ordering::Relaxed);
                                    out.push(ServerFrame {
                                        frame: Some(server_frame::Frame::Throttle(Throttle {
                                            max_records_per_sec: limiter.rate(),
                                            retry_after_ms,
                                        })),
                                    });
                                    Ok(())
                                }
                                Decision::Refuse { pushback_ms } => {
                                    metrics.reject(Rejection::Throttled);
                                    tracing::info!(%clinic, host = %hostname, pushback_ms, records = b.records.len(), "host over its rate; batch refused");
                                    Err(exhausted(
                                        format!(
                                            "over {} records/s; retry in {pushback_ms} ms",
                                            limiter.rate()
                                        ),
                                        pushback_ms,
                                    ))
                                }
                            };
                            match admitted {
                                Err(s) => Err(s),
                                Ok(()) => {
                                    let newest =
                                        b.records.iter().map(record_time).fold(0.0, f64::max);
                                    let host2 = host.clone();
                                    let started = Instant::now();
                                    let n = b.records.len();
                                    let r = on_store(&store, &metrics, move |s| {
                                        s.ingest(&host2, &b, t).map(|i| (i, b))
                                    })
                                    .await;
                                    if r.is_err() {
                                        // Not stored: the resend should not pay twice.
                                        limiter.refund(&host, n);
                                    }
                                    metrics.store_micros.fetch_add(
                                        started.elapsed().as_micros() as u64,
                                        Ordering::Relaxed,
                                    );
                                    r.map(|(i, b)| {
                                        if let Some(siem) = &siem {
                                            let new: std::collections::HashSet<u64> =
                                                i.new_seqs.iter().copied().collect();
                                            let records: Vec<_> = b
                                                .records
                                                .into_iter()
                                                .filter(|r| new.contains(&r.seq))
                                                .collect();
                                            if !records.is_empty() {
                                                siem.send(crate::siem::Item::Records {
                                                    host: host.clone(),
                                                    records,
                                                });
                                            }
                                        }
                                        metrics.batch(&host, i.stored, i.duplicates, newest, t);
                                        acked = acked.max(i.up_to_seq);
                                        out.push(ack(e, i.up_to_seq));
                                        out
                                    })
                                }
                            }
                        }
                    },
                    Some(Frame::Heartbeat(hb)) => match epoch {
                        None => {
                            metrics.reject(Rejection::Invalid);
                            Err(Status::failed_precondition("Hello first"))
                        }
                        Some(e) => {
                            metrics.heartbeat(&host, hb.spooled, t);
                            let host2 = host.clone();
                            on_store(&store, &metrics, move |s| s.heartbeat(&host2, &hb, t))
                                .await
                                .map(|()| vec![ack(e, acked)])
                        }
                    },
                    None => {
                        metrics.reject(Rejection::Invalid);
                        Err(Status::invalid_argument("empty frame"))
                    }
                };
                match reply {
                    Ok(frames) => {
                        for f in frames {
                            if tx.send(Ok(f)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(s) => {
                        if s.code() == tonic::Code::InvalidArgument {
                            tracing::warn!(%clinic, host = %hostname, why = %s.message(), "frame refused");
                        }
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
