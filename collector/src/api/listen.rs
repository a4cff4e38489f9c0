//! The collector's front door: TCP accept and the TLS handshake, bounded before anyone has
//! authenticated. tonic's own TLS accept has no handshake timeout and no connection cap (300
//! idle sockets held every fd), so the collector does the handshake itself with
//! tokio-rustls and hands tonic finished TLS streams:
//! - at most `max_connections` open at once; past it a new socket is closed at once;
//! - at most `max_handshakes` handshakes in flight, `max_handshakes_per_ip` from one
//!   address, each given `handshake_timeout_secs`;
//! - a connection that presented no client certificate (enrollment, health checks) is
//!   closed after `unauthenticated_idle_secs` without a byte from the peer;
//! - accept errors (EMFILE) pause the loop instead of spinning.
//!
//! Refusals are counted in `clinicwatch_collector_connections_refused_total{reason}`.

use std::{
    collections::HashMap,
    future::Future as _,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::{rustls, server::TlsStream, TlsAcceptor};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::{
    config::LimitsConfig,
    metrics::{Metrics, Refusal},
};

/// The collector's TLS: its chain (ending with the CA, so that agents can pin it), its key,
/// and the CA that client certificates must chain to (optional at the handshake, so that a
/// host can enroll; Ingest refuses a stream without one).
#[derive(Clone)]
pub struct ServerTls(pub Arc<rustls::ServerConfig>);

impl ServerTls {
    pub fn from_pem(chain: &str, key: &str, ca: &str) -> anyhow::Result<ServerTls> {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("the server certificate chain: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| anyhow::anyhow!("the server key: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let c = c.map_err(|e| anyhow::anyhow!("the CA certificate: {e}"))?;
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("the CA certificate: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| anyhow::anyhow!("the client verifier: {e}"))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| anyhow::anyhow!("the server certificate and key: {e}"))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls(Arc::new(cfg)))
    }
}

/// Handshakes in flight by source address.
struct PerIp {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

struct IpSlot(Arc<PerIp>, IpAddr);

impl PerIp {
    fn enter(this: &Arc<PerIp>, ip: IpAddr) -> Option<IpSlot> {
        let mut open = this.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= this.max {
            return None;
        }
        *n += 1;
        Some(IpSlot(this.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A finished TLS connection, holding its slot until it closes.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    _slot: OwnedSemaphorePermit,
    /// Closes a connection without a client certificate that stays silent this long.
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl Connected for Conn {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.tls).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if let Some((d, sleep)) = this.idle.as_mut() {
                    if buf.filled().len() > before {
                        sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .idle
                    .as_mut()
                    .is_some_and(|(_, sleep)| sleep.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "idle connection without a client certificate",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// Finished TLS connections from `listener`, within `limits`; ends when the receiver is
/// dropped (the server shut down), which also closes the listener.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    limits: &LimitsConfig,
    metrics: Arc<Metrics>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let door = Door {
        acceptor: TlsAcceptor::from(tls.0),
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
        per_ip: Arc::new(PerIp {
            max: limits.max_handshakes_per_ip,
            open: Mutex::new(HashMap::new()),
        }),
        handshake_timeout: Duration::from_secs(limits.handshake_timeout_secs),
        idle: Duration::from_secs(limits.unauthenticated_idle_secs),
        metrics,
    };
    tokio::spawn(door.run(listener, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

struct Door {
    acceptor: TlsAcceptor,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    handshake_timeout: Duration,
    idle: Duration,
    metrics: Arc<Metrics>,
}

type Sender = tokio::sync::mpsc::Sender<std::io::Result<Conn>>;

impl Door {
    async fn run(self, listener: TcpListener, tx: Sender) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (sock, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS do not clear by retrying at once: pause.
                    tracing::warn!(error = %e, "accept failed; pausing 100 ms");
                    self.metrics.refuse(Refusal::AcceptError);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            self.admit(sock, peer, &tx);
        }
    }

    /// Starts the handshake of `sock`, or closes it when a limit is reached.
    fn admit(&self, sock: TcpStream, peer: SocketAddr, tx: &Sender) {
        let Ok(slot) = self.connections.clone().try_acquire_owned() else {
            self.metrics.refuse(Refusal::Connections);
            tracing::debug!(%peer, "connection limit reached; closed");
            return;
        };
        let Ok(handshake) = self.handshakes.clone().try_acquire_owned() else {
            self.metrics.refuse(Refusal::Handshakes);
            tracing::debug!(%peer, "handshake limit reached; closed");
            return;
        };
        let Some(ip_slot) = PerIp::enter(&self.per_ip, peer.ip()) else {
            self.metrics.refuse(Refusal::HandshakesPerIp);
            tracing::debug!(%peer, "handshake limit for this address reached; closed");
            return;
        };
        let _ = sock.set_nodelay(true);
        let (acceptor, timeout, idle, metrics, tx) = (
            self.acceptor.clone(),
            self.handshake_timeout,
            self.idle,
            self.metrics.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let r = tokio::time::timeout(timeout, acceptor.accept(sock)).await;
            drop((handshake, ip_slot));
            let tls = match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics.refuse(Refusal::HandshakeFailed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.refuse(Refusal::HandshakeTimeout);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let anonymous = tls.get_ref().1.peer_certificates().is_none();
            let idle = anonymous.then(|| (idle, Box::pin(tokio::time::sleep(idle))));
            let _ = tx
                .send(Ok(Conn {
                    tls,
                    _slot: slot,
                    idle,
                }))
                .await;
        });
    }
}
