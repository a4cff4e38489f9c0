//! Where exports go: an append-only file, a syslog server, an HTTP(S) endpoint. Failures
//! are logged and counted; the next item tries again (a TCP syslog reconnects).

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
            if self.tcp.is_none() {
                self.tcp = Some(tokio::net::TcpStream::connect(&self.addr).await?);
            }
            let r = match self.tcp.as_mut() {
                Some(s) => s.write_all(format!("{line}\n").as_bytes()).await,
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

pub struct Webhook {
    url: String,
}

impl Webhook {
    pub fn new(url: &str) -> Option<Webhook> {
        (!url.is_empty()).then(|| Webhook { url: url.into() })
    }

    /// POSTs JSON; a status other than 2xx is an error. Plain `http://` only: put a TLS
    /// proxy in front for `https://` endpoints (see the README).
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
        let rest = self
            .url
            .strip_prefix("http://")
            .ok_or_else(|| std::io::Error::other("webhook_url must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let body = body.to_string();
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: clinicwatch-collector\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = s.read(&mut head).await?;
        let status = String::from_utf8_lossy(&head[..n]);
        let code = status.split_whitespace().nth(1).unwrap_or("");
        if code.starts_with('2') {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("HTTP status `{code}`")))
        }
    }
}
