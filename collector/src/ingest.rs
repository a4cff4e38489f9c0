//! The `Ingest` gRPC service: one stream per agent. The host is the client certificate's
//! (clinic, host); a Hello that claims another is `permission_denied`. Each batch is stored
//! durably, then acked; a malformed one is `invalid_argument` and ends the stream.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use clinicwatch_proto::v1::{
    agent_frame::Frame, ingest_server::Ingest, server_frame, Ack, AgentFrame, ServerFrame,
};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};

use crate::store::{HostKey, SqliteStore, StoreError};

pub struct IngestService {
    pub store: Arc<Mutex<SqliteStore>>,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::Invalid(why) => Status::invalid_argument(why),
        StoreError::Db { .. } => Status::unavailable(format!("storage: {e}")),
    }
}

/// The host a request comes from: its client certificate, or `unauthenticated`.
fn host_of<T>(req: &Request<T>) -> Result<HostKey, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let der = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let (clinic, host) =
        crate::pki::identity(der).map_err(|e| Status::unauthenticated(e.to_string()))?;
    Ok(HostKey { clinic, host })
}

/// Runs a store call off the async threads (SQLite blocks on its fsync).
async fn on_store<T: Send + 'static>(
    store: &Arc<Mutex<SqliteStore>>,
    f: impl FnOnce(&mut SqliteStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    let store = store.clone();
    let r = tokio::task::spawn_blocking(move || {
        f(&mut store.lock().unwrap_or_else(|p| p.into_inner()))
    })
    .await;
    match r {
        Ok(r) => r.map_err(status),
        Err(_) => Err(Status::internal("store task failed")),
    }
}

fn ack(epoch: u64, up_to_seq: u64) -> ServerFrame {
    ServerFrame {
        frame: Some(server_frame::Frame::Ack(Ack { epoch, up_to_seq })),
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
        let host = host_of(&req)?;
        let mut inbound = req.into_inner();
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut epoch: Option<u64> = None;
            loop {
                let frame = match inbound.message().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(clinic = %host.clinic, host = %host.host, error = %e, "stream ended");
                        break;
                    }
                };
                let reply = match frame.frame {
                    Some(Frame::Hello(h)) => {
                        if h.clinic_id != host.clinic || h.host_id != host.host {
                            Err(Status::permission_denied(format!(
                                "this certificate is for {}/{}, not {}/{}",
                                host.clinic, host.host, h.clinic_id, h.host_id
                            )))
                        } else {
                            let (host2, e) = (host.clone(), h.epoch);
                            on_store(&store, move |s| s.hello(&host2, &h, now()))
                                .await
                                .map(|up| {
                                    epoch = Some(e);
                                    Some(ack(e, up))
                                })
                        }
                    }
                    Some(Frame::Batch(b)) => match epoch {
                        None => Err(Status::failed_precondition("Hello first")),
                        Some(e) if e != b.epoch => Err(Status::invalid_argument(format!(
                            "batch of epoch {} on a stream that said epoch {e}",
                            b.epoch
                        ))),
                        Some(e) => {
                            let host2 = host.clone();
                            on_store(&store, move |s| s.ingest(&host2, &b, now()))
                                .await
                                .map(|i| Some(ack(e, i.up_to_seq)))
                                .inspect_err(|err| {
                                    tracing::warn!(clinic = %host.clinic, host = %host.host, error = %err, "batch refused");
                                })
                        }
                    },
                    Some(Frame::Heartbeat(_)) => Ok(None),
                    None => Err(Status::invalid_argument("empty frame")),
                };
                match reply {
                    Ok(Some(f)) => {
                        if tx.send(Ok(f)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
