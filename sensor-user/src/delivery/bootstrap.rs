//! Enrollment in one step (`clinicwatch-agent enroll --collector URL --token T`): the
//! collector's CA (a file, or fetched from the collector and pinned by its SHA-256), the
//! host's key and certificate (`enroll`), and the `[export]` section written into the
//! config file, comments and all.
//!
//! Pinning follows kubeadm's discovery hash: the collector presents its CA in its TLS
//! chain; the agent takes the certificate whose SHA-256 (of the DER) is the pin the SOC
//! gave with the token, and from then on verifies the collector against that CA only. The
//! first handshake verifies nothing but the pin: no token or data is sent over it.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

use crate::config::ExportConfig;

/// How long fetching the CA may take (a firewall that swallows packets, a tarpit).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Where the CA comes from.
pub enum CaSource {
    File(PathBuf),
    /// Hex SHA-256 of the CA certificate's DER.
    Pin(String),
}

/// What `enroll` is asked to do.
pub struct Request {
    pub config: PathBuf,
    pub collector: String,
    pub token: String,
    pub ca: CaSource,
    pub host: String,
    pub force: bool,
}

/// What it did.
pub struct Enrolled {
    pub export: ExportConfig,
    pub not_after: f64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// Records the certificates the server presents; accepts any (see the module comment).
#[derive(Debug)]
struct Recorder {
    seen: Mutex<Vec<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.push(end_entity.to_vec());
        seen.extend(intermediates.iter().map(|c| c.to_vec()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `https://host:port` → (host, port).
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("`{url}`: the collector's URL must start with https://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("`{url}`: the URL needs a port (https://HOST:7443)"))?;
    let port = port
        .parse()
        .with_context(|| format!("`{url}`: `{port}` is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

/// The CA certificate (PEM) among those the collector presents whose SHA-256 is `pin`.
pub async fn fetch_pinned_ca(url: &str, pin: &str) -> anyhow::Result<String> {
    let pin = pin.trim().to_ascii_lowercase().replace(':', "");
    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--ca-sha256 must be 64 hex digits (the SHA-256 printed by `clinicwatch-collector enroll-token`)");
    }
    let (host, port) = host_port(url)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        seen: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone())
        .with_context(|| format!("`{host}` is not a valid server name"))?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("cannot connect to `{url}`"))?;
        tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with `{url}` failed"))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .with_context(|| {
            format!("`{url}` did not complete a TLS handshake within {HANDSHAKE_TIMEOUT:?}")
        })??;
    let seen = recorder
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let ca = seen
        .iter()
        .find(|der| fingerprint(der) == pin)
        .with_context(|| {
            format!(
                "`{url}` presented no certificate with SHA-256 {pin} ({} presented): a wrong pin, or not your collector",
                seen.len()
            )
        })?;
    Ok(pem("CERTIFICATE", ca))
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The host name of this machine (for `--host` by default), as a valid host id.
pub fn default_host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "host".into()
    } else {
        id
    }
}

/// The `[export]` the config gets: paths already set there are kept; others go to the state
/// folder.
fn export_for(cfg: &crate::Config, req: &Request) -> ExportConfig {
    let state = &cfg.agent.state_dir;
    let or = |p: &Path, name: &str| {
        if p.as_os_str().is_empty() {
            state.join(name)
        } else {
            p.to_path_buf()
        }
    };
    ExportConfig {
        collector: req.collector.clone(),
        // Checked against the certificate when set; learned from it when empty.
        clinic: cfg.export.clinic.clone(),
        host: req.host.clone(),
        ca_file: or(&cfg.export.ca_file, "collector-ca.pem"),
        cert_file: or(&cfg.export.cert_file, "host.pem"),
        key_file: or(&cfg.export.key_file, "host.key"),
        ..cfg.export.clone()
    }
}

/// Enrolls this host and writes `[export]` into the config file. Nothing is written before
/// the collector has issued the certificate: a refused token, a wrong pin or an enrolled
/// host leaves the CA, the key and the config as they were.
pub async fn enroll(req: &Request) -> anyhow::Result<Enrolled> {
    let cfg = crate::Config::from_file(&req.config)?;
    let mut export = export_for(&cfg, req);
    crate::delivery::enroll::check_not_enrolled(&export, req.force)?;
    let ca = match &req.ca {
        CaSource::File(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the collector's CA `{}`", p.display()))?,
        CaSource::Pin(pin) => fetch_pinned_ca(&req.collector, pin).await?,
    };
    // Makes the key's and certificate's folders (`enroll::store`).
    let (clinic, not_after) =
        crate::delivery::enroll::enroll(&export, &ca, &req.token, req.force).await?;
    if let Some(dir) = export.ca_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make `{}`", dir.display()))?;
    }
    // Root's and world-readable: the service's user reads it, and cannot replace it.
    crate::delivery::enroll::write_atomic_mode(&export.ca_file, &ca, 0o644, None)?;
    export.clinic = clinic;
    write_export(&req.config, &export)?;
    Ok(Enrolled { export, not_after })
}

/// Sets the `[export]` keys in the TOML file at `path`, keeping its comments and its other
/// sections, and replacing it whole (same mode).
pub fn write_export(path: &Path, export: &ExportConfig) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("`{}` is not valid TOML", path.display()))?;
    let table = doc
        .entry("export")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(table) = table.as_table_mut() else {
        bail!("`export` in `{}` is not a table", path.display());
    };
    let s = |p: &Path| p.display().to_string();
    for (key, value) in [
        ("collector", export.collector.clone()),
        ("clinic", export.clinic.clone()),
        ("host", export.host.clone()),
        ("ca_file", s(&export.ca_file)),
        ("cert_file", s(&export.cert_file)),
        ("key_file", s(&export.key_file)),
    ] {
        table[key] = toml_edit::value(value);
    }
    let out = doc.to_string();
    // What is written must load: the agent would otherwise not start.
    crate::Config::from_toml(&out).context("the updated config does not load")?;
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat `{}`", path.display()))?;
    crate::delivery::enroll::write_atomic_mode(
        path,
        &out,
        meta.mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips_through_the_parser() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        let ours = pem("CERTIFICATE", cert.der());
        assert_eq!(ours, cert.pem().replace("\r\n", "\n"));
    }

    #[test]
    fn urls_need_https_and_a_port() {
        assert_eq!(
            host_port("https://collector.example:7443/").unwrap(),
            ("collector.example".into(), 7443)
        );
        assert_eq!(
            host_port("https://[::1]:7443").unwrap(),
            ("::1".into(), 7443)
        );
        assert!(host_port("http://c:7443")
            .unwrap_err()
            .to_string()
            .contains("https://"));
        assert!(host_port("https://c")
            .unwrap_err()
            .to_string()
            .contains("port"));
    }

    #[test]
    fn the_export_section_is_written_and_comments_are_kept() {
        let dir = std::env::temp_dir().join(format!("cw-bootstrap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        let text = "# the clinic's browser\n[[app]]\nname = \"browser\"\nexe = \"/usr/bin/true\"\n\n[export]\n# kept\nspool_max_mb = 64\n";
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let export = ExportConfig {
            collector: "https://c.example:7443".into(),
            clinic: "clinic-a".into(),
            host: "ws1".into(),
            ca_file: "/var/lib/clinicwatch/collector-ca.pem".into(),
            cert_file: "/var/lib/clinicwatch/host.pem".into(),
            key_file: "/var/lib/clinicwatch/host.key".into(),
            ..Default::default()
        };
        write_export(&path, &export).unwrap();
        let out = std::fs::read_to_string(&path).unwrap();
        assert!(
            out.contains("# the clinic's browser") && out.contains("# kept"),
            "{out}"
        );
        let cfg = crate::Config::from_file(&path).unwrap();
        assert_eq!(cfg.export.collector, export.collector);
        assert_eq!(cfg.export.clinic, "clinic-a");
        assert_eq!(cfg.export.spool_max_mb, 64);
        assert_eq!(cfg.export.key_file, export.key_file);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o640);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
