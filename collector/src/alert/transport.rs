//! Where exports go: an append-only file, a syslog server, an HTTP(S) endpoint. Failures
//! are logged and counted; the next item tries again (a TCP syslog reconnects).

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

pub struct JsonLines {
    path: String,
}

impl JsonLines {
    pub fn new(path: &str) -> Option<JsonLines> {
        (!path.is_empty()).then(|| JsonLines { path: path.into() })
    }

    pub async fn write(&mut self, values: &[serde_json::Value]) -> std::io::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for v in values {
            text.push_str(&v.to_string());
            text.push('\n');
        }
        let r = async {
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await?;
            f.write_all(text.as_bytes()).await?;
            f.flush().await
        }
        .await;
        if let Err(e) = &r {
            tracing::warn!(path = %self.path, error = %e, "cannot append OCSF lines");
        }
        r
    }
}

pub struct Syslog {
    udp: bool,
    addr: String,
    tcp: Option<tokio::net::TcpStream>,
    udp_sock: Option<tokio::net::UdpSocket>,
}

impl Syslog {
    /// `udp://host:514` or `tcp://host:514`.
    pub fn new(url: &str) -> Option<Syslog> {
        let (scheme, addr) = url.split_once("://")?;
        Some(Syslog {
            udp: scheme == "udp",
            addr: addr.to_string(),
            tcp: None,
            udp_sock: None,
        })
    }

    /// One message, RFC 5424 framing, facility local4, severity notice.
    pub async fn send(&mut self, cef: &str) -> std::io::Result<()> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let line = format!(
            "<165>1 - {} clinicwatch-collector - - - {cef}",
            host.trim().replace(' ', "_")
        );
        let r = if self.udp {
            if self.udp_sock.is_none() {
                let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
                s.connect(&self.addr).await?;
                self.udp_sock = Some(s);
            }
            match &self.udp_sock {
                Some(s) => s.send(line.as_bytes()).await.map(|_| ()),
                None => Ok(()),
            }
        } else {
            // A receiver that stops reading, or never answers, costs at most the timeout.
            let timeout = std::time::Duration::from_secs(5);
            let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
            if self.tcp.is_none() {
                let s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&self.addr))
                    .await
                    .map_err(|_| timed_out())??;
                self.tcp = Some(s);
            }
            let r = match self.tcp.as_mut() {
                Some(s) => {
                    tokio::time::timeout(timeout, s.write_all(format!("{line}\n").as_bytes()))
                        .await
                        .unwrap_or_else(|_| Err(timed_out()))
                }
                None => Ok(()),
            };
            if r.is_err() {
                self.tcp = None;
            }
            r
        };
        if let Err(e) = &r {
            tracing::warn!(addr = %self.addr, error = %e, "cannot send to syslog");
        }
        r
    }
}

/// Where a webhook POSTs: its address, the `Host` header, the path, and TLS when
/// `https://`. The URL is parsed by `http::Uri` and the exchange is hyper's HTTP/1.1 client;
/// the collector opens the TCP (and rustls) stream itself so that the CA is the one given.
pub struct Webhook {
    url: String,
    authority: String,
    addr: String,
    path: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
}

/// The system's certificate bundle on Debian (package `ca-certificates`).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, why)
}

/// A rustls client trusting only the certificates in `ca_file` (the system's when empty).
fn tls_connector(ca_file: &str) -> std::io::Result<tokio_rustls::TlsConnector> {
    let ca_file = if ca_file.is_empty() {
        SYSTEM_CAS
    } else {
        ca_file
    };
    let bad = |e: &dyn std::fmt::Display| invalid(format!("webhook_ca `{ca_file}`: {e}"));
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject as _;
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(&e))? {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(invalid(format!(
            "webhook_ca `{ca_file}` holds no certificate"
        )));
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("webhook TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// `url` as error messages show it: any credentials before the host cut out, so that a
/// refused URL does not put its password in the log.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The port written in the URL's `authority` after `host`, if any (an empty one is the
/// scheme's default, as RFC 3986 has it). Credentials in the URL are refused (they would
/// travel in the `Host` header), and so is anything after the host that is not `:` and a
/// number from 1 to 65535: `http::Uri` lets such authorities through, and `port_u16` would
/// turn a bad port into the scheme's default without a word.
fn port_of(url: &str, authority: &str, host: &str) -> std::io::Result<Option<u16>> {
    if authority.contains('@') {
        return Err(invalid(format!(
            "webhook_url `{}` carries credentials (`user@`): not supported, they would go out in the Host header",
            shown(url)
        )));
    }
    let rest = authority.strip_prefix(host).unwrap_or(authority);
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => return Ok(None),
        Some("") => return Ok(None),
        Some(port) => port,
        None => {
            return Err(invalid(format!(
                "webhook_url `{url}`: `{rest}` after the host is not a port (`:` and a number)"
            )))
        }
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(p)),
        _ => Err(invalid(format!(
            "webhook_url `{url}`: port `{port}` is not a number from 1 to 65535"
        ))),
    }
}

impl Webhook {
    /// `None` when no URL is set; an error names what is wrong with the URL or the CA file.
    pub fn new(url: &str, ca_file: &str) -> std::io::Result<Option<Webhook>> {
        if url.is_empty() {
            return Ok(None);
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|e| invalid(format!("webhook_url `{}`: {e}", shown(url))))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(invalid(format!(
                    "webhook_url `{}` must start with http:// or https://",
                    shown(url)
                )))
            }
        };
        let (Some(authority), Some(host)) = (uri.authority(), uri.host().filter(|h| !h.is_empty()))
        else {
            return Err(invalid(format!("webhook_url `{url}` has no host")));
        };
        let port = port_of(url, authority.as_str(), host)?.unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let name = rustls_pki_types::ServerName::try_from(bare)
                .map_err(|e| invalid(format!("webhook_url `{url}`: {e}")))?;
            Some((tls_connector(ca_file)?, name))
        } else {
            None
        };
        Ok(Some(Webhook {
            url: url.into(),
            authority: authority.as_str().into(),
            addr: format!("{host}:{port}"),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).into(),
            tls,
        }))
    }

    /// POSTs JSON; a status other than 2xx is an error.
    pub async fn post(&self, body: &serde_json::Value) -> std::io::Result<()> {
        let r = tokio::time::timeout(Duration::from_secs(10), self.post_inner(body)).await;
        let r = match r {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::other("timed out after 10 s")),
        };
        if let Err(e) = &r {
            tracing::warn!(url = %self.url, error = %e, "webhook failed");
        }
        r
    }

    async fn post_inner(&self, body: &serde_json::Value) -> std::io::Result<()> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                self.exchange(hyper_util::rt::TokioIo::new(tls), body).await
            }
            None => self.exchange(hyper_util::rt::TokioIo::new(tcp), body).await,
        }
    }

    /// One request on a fresh connection (`Connection: close`), driven beside it.
    async fn exchange(
        &self,
        io: impl hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        body: &serde_json::Value,
    ) -> std::io::Result<()> {
        use http::header;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        let req = http::Request::post(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONNECTION, "close")
            .header(header::USER_AGENT, "clinicwatch-collector")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .map_err(std::io::Error::other)?;
        let send = async move {
            let r = sender.send_request(req).await;
            drop(sender); // lets the connection finish once the answer is in
            r.map(|resp| resp.status())
        };
        let (status, conn) = tokio::join!(send, conn);
        let status = status.map_err(std::io::Error::other)?;
        if !status.is_success() {
            return Err(std::io::Error::other(format!(
                "HTTP status `{}`",
                status.as_u16()
            )));
        }
        // An answer came; a connection that then ends badly does not undo it.
        if let Err(e) = conn {
            tracing::debug!(url = %self.url, error = %e, "webhook connection ended badly");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject as _;
    use tokio::io::AsyncReadExt as _;

    #[test]
    fn a_webhook_url_with_credentials_or_a_bad_port_is_refused_by_name() {
        let err = |url: &str| Webhook::new(url, "").err().map(|e| e.to_string());
        for url in [
            "http://user:secret@siem.example:8080/x",
            "ftp://user:secret@siem.example/x",
        ] {
            let e = err(url).unwrap_or_default();
            assert!(
                !e.contains("secret") && e.contains("<redacted>@siem.example"),
                "{e}"
            );
        }
        assert!(err("http://user:secret@siem.example:8080/x")
            .is_some_and(|e| e.contains("credentials")));
        assert!(err("http://[::1]8080/x").is_some_and(|e| e.contains("`8080` after the host")));
        for port in ["99999", "0", "65536", "+8080"] {
            let url = format!("http://siem.example:{port}/x");
            assert!(
                err(&url).is_some_and(|e| e.contains(&format!("port `{port}`"))),
                "{url}"
            );
        }
        let hook = |url: &str| Webhook::new(url, "").ok().flatten();
        assert_eq!(
            hook("http://siem.example/x").map(|w| w.addr),
            Some("siem.example:80".into())
        );
        assert_eq!(
            hook("http://[::1]:8080/x").map(|w| w.addr),
            Some("[::1]:8080".into())
        );
        assert_eq!(
            hook("http://siem.example:8080").map(|w| w.authority),
            Some("siem.example:8080".into())
        );
        assert_eq!(
            hook("http://siem.example:/x").map(|w| w.addr),
            Some("siem.example:80".into())
        );
    }

    #[tokio::test]
    async fn a_plain_webhook_sends_one_request_and_a_refusal_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&req).contains('}') {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
                .await;
            String::from_utf8_lossy(&req).into_owned()
        });
        let hook = Webhook::new(&format!("http://127.0.0.1:{port}/hook?team=soc"), "")
            .unwrap()
            .unwrap();
        let e = hook.post(&serde_json::json!({"n": 1})).await.unwrap_err();
        assert!(e.to_string().contains("HTTP status `503`"), "{e}");
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /hook?team=soc HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{req}"
        );
        assert!(req.contains("Content-Type: application/json\r\n"), "{req}");
        assert!(req.contains("Content-Length: 7\r\n"), "{req}");
        assert!(req.ends_with("{\"n\":1}"), "{req}");
        let e = Webhook::new("https:///nohost", "").err().unwrap();
        assert!(e.to_string().contains("webhook_url"), "{e}");
    }

    /// An HTTPS server for `localhost` under a CA of its own; answers one request per
    /// connection with 204 and hands over what it read.
    async fn https_server(
        ca: &crate::auth::pki::Pem,
    ) -> (u16, tokio::sync::mpsc::Receiver<String>) {
        let cert = crate::auth::pki::server_cert(ca, &["localhost".to_string()]).unwrap();
        let chain =
            vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.cert.as_bytes()).unwrap()];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap();
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    continue; // a client that refused our certificate
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&req).contains("}") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = s.shutdown().await;
                let _ = tx.send(String::from_utf8_lossy(&req).into_owned()).await;
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn an_https_webhook_posts_to_a_server_its_ca_vouches_for_and_only_to_such() {
        let dir = std::env::temp_dir().join(format!("cw-webhook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, other) = (
            crate::auth::pki::new_ca("soc ca").unwrap(),
            crate::auth::pki::new_ca("someone else").unwrap(),
        );
        let (ca_file, other_file) = (dir.join("ca.pem"), dir.join("other.pem"));
        std::fs::write(&ca_file, &ca.cert).unwrap();
        std::fs::write(&other_file, &other.cert).unwrap();
        let (port, mut got) = https_server(&ca).await;
        let url = format!("https://localhost:{port}/soc/hook");
        let hook = Webhook::new(&url, ca_file.to_str().unwrap())
            .unwrap()
            .unwrap();
        hook.post(&serde_json::json!({"event": "incident_opened"}))
            .await
            .unwrap();
        let req = got.recv().await.unwrap();
        assert!(req.starts_with("POST /soc/hook HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("Host: localhost:{port}")), "{req}");
        assert!(req.ends_with("{\"event\":\"incident_opened\"}"), "{req}");
        // The same server, not vouched for by the CA given: refused, nothing sent.
        let stranger = Webhook::new(&url, other_file.to_str().unwrap())
            .unwrap()
            .unwrap();
        let e = stranger.post(&serde_json::json!({})).await.unwrap_err();
        assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
        // Bad settings are named.
        let e = Webhook::new(&url, "/nonexistent/ca.pem").err().unwrap();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = Webhook::new("ftp://x/y", "").err().unwrap();
        assert!(e.to_string().contains("http:// or https://"), "{e}");
        std::fs::write(&other_file, "not a certificate").unwrap();
        let e = Webhook::new(&url, other_file.to_str().unwrap())
            .err()
            .unwrap();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
