//! Enrollment and renewal of the host's client certificate. The agent makes its own key
//! (ECDSA P-256, never leaves the host) and a CSR; the collector's CA signs a short-lived
//! certificate naming the clinic (from the per-clinic token, or from the current
//! certificate when renewing) and this host.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::Context as _;
use clinicwatch_proto::v1::{enroll_client::EnrollClient, EnrollRequest};

use crate::config::ExportConfig;

/// (not_before, not_after) of a PEM certificate, unix seconds.
pub fn lifetime(cert_pem: &str) -> anyhow::Result<(i64, i64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not a certificate: {e}"))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// True when less than a third of the certificate's life is left.
pub fn due(not_before: i64, not_after: i64, now: i64) -> bool {
    let life = (not_after - not_before).max(1);
    not_after - now < life / 3
}

/// Writes `data` to `path` through a temporary file and a rename; `secret` makes it 0600.
/// The file is given to the owner of its folder when that is not the writer (`enroll`
/// runs as root; the packaged service as its own user, which must read its key and renew
/// its certificate).
pub(crate) fn write_atomic(path: &Path, data: &str, secret: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = path
        .parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .map(|m| (m.uid(), m.gid()));
    write_atomic_mode(path, data, if secret { 0o600 } else { 0o644 }, owner)
}

/// Writes `data` to `path` with `mode` (and `owner`, when it differs from the writer's)
/// through a temporary file, an fsync and a rename. The temporary file is created anew
/// (`O_EXCL`, so never through a link someone planted) and its mode and owner are set on
/// the open file, never by path.
pub(crate) fn write_atomic_mode(
    path: &Path,
    data: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot create `{}`", tmp.display()))?;
    // The umask may have narrowed `mode`.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of `{}`", tmp.display()))?;
    // SAFETY: plain syscall.
    let me = unsafe { libc::geteuid() };
    if let Some((uid, gid)) = owner.filter(|&(uid, _)| uid != me) {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .with_context(|| format!("cannot give `{}` to uid {uid}", tmp.display()))?;
    }
    f.write_all(data.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename `{}` to `{}`", tmp.display(), path.display()))?;
    // The rename is durable once the folder is.
    crate::sinks::statefile::sync_parent(path)
        .with_context(|| format!("cannot sync the folder of `{}`", path.display()))
}

/// A new key and a CSR for `host`.
fn key_and_csr(host: &str) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("cannot make a key")?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, host);
    let csr = p
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .context("cannot make the CSR")?;
    Ok((key.serialize_pem(), csr))
}

fn read_ca(cfg: &ExportConfig) -> anyhow::Result<String> {
    std::fs::read_to_string(&cfg.ca_file)
        .with_context(|| format!("cannot read the collector's CA `{}`", cfg.ca_file.display()))
}

/// Asks the collector (verified against `ca`) for a certificate: with `token`, or (empty
/// token) with the current one.
async fn request(
    cfg: &ExportConfig,
    ca: &str,
    token: &str,
) -> anyhow::Result<(String, String, f64)> {
    let current = if token.is_empty() {
        Some((
            std::fs::read_to_string(&cfg.cert_file)?,
            std::fs::read_to_string(&cfg.key_file)?,
        ))
    } else {
        None
    };
    let ep = crate::delivery::channel::endpoint(
        &cfg.collector,
        ca,
        current.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
    )?;
    let ch = ep
        .connect()
        .await
        .with_context(|| format!("cannot connect to `{}`", cfg.collector))?;
    let (key, csr) = key_and_csr(&cfg.host)?;
    let r = EnrollClient::new(ch)
        .enroll(EnrollRequest {
            token: token.trim().to_string(),
            host_id: cfg.host.clone(),
            csr_pem: csr,
        })
        .await
        .map_err(|s| anyhow::anyhow!("the collector refused: {}", s.message()))?
        .into_inner();
    Ok((key, r.cert_pem, r.not_after))
}

/// Fails when this host is enrolled already and `force` is not given.
pub fn check_not_enrolled(cfg: &ExportConfig, force: bool) -> anyhow::Result<()> {
    if cfg.key_file.exists() && !force {
        anyhow::bail!(
            "`{}` exists: this host is enrolled (use --force to enroll again)",
            cfg.key_file.display()
        );
    }
    Ok(())
}

/// Enrolls with a token, trusting the collector's CA `ca` (PEM); writes `export.key_file`
/// (0600) and `export.cert_file`. Returns the clinic the certificate names (the token's)
/// and its end (unix seconds).
pub async fn enroll(
    cfg: &ExportConfig,
    ca: &str,
    token: &str,
    force: bool,
) -> anyhow::Result<(String, f64)> {
    if token.trim().is_empty() {
        anyhow::bail!("the enrollment token is empty");
    }
    check_not_enrolled(cfg, force)?;
    let (key, cert, not_after) = request(cfg, ca, token).await?;
    let clinic = names(cfg, &cert)?;
    store(cfg, &key, &cert)?;
    Ok((clinic, not_after))
}

/// Checks that the certificate names this host (CN) and, when `export.clinic` is set, this
/// clinic (O): a token of another clinic would give a certificate the collector then
/// refuses for `export.clinic`. Returns the clinic it names.
fn names(cfg: &ExportConfig, cert_pem: &str) -> anyhow::Result<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the collector sent no PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("the collector sent no certificate: {e}"))?;
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let o = first(&mut cert.subject().iter_organization());
    let cn = first(&mut cert.subject().iter_common_name());
    if (!cfg.clinic.is_empty() && o != cfg.clinic) || cn != cfg.host {
        anyhow::bail!(
            "the certificate is for {o}/{cn}, but `export` says {}/{}: the token is for clinic `{o}`; fix `export.clinic` or use that clinic's token",
            cfg.clinic,
            cfg.host
        );
    }
    Ok(o)
}

/// Key first, then certificate: each replaced whole. A folder made for them is 0700 (one
/// that exists is left as it is: it may hold the config).
fn store(cfg: &ExportConfig, key: &str, cert: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    for p in [&cfg.key_file, &cfg.cert_file] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(crate::sinks::statefile::DIR_MODE)
                .create(dir)
                .with_context(|| format!("cannot make `{}`", dir.display()))?;
        }
    }
    write_atomic(&cfg.key_file, key, true)?;
    write_atomic(&cfg.cert_file, cert, false)
}

/// Renews the certificate when a third of its life is left (or it expired: the collector
/// then refuses, and the host must enroll again).
pub async fn renew_if_due(cfg: &ExportConfig) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(&cfg.cert_file)
        .with_context(|| format!("cannot read `{}`", cfg.cert_file.display()))?;
    let (nb, na) = lifetime(&pem)?;
    let t = unix_now();
    if !due(nb, na, t) {
        return Ok(());
    }
    if t >= na {
        anyhow::bail!(
            "the certificate `{}` expired; enroll again with a token",
            cfg.cert_file.display()
        );
    }
    let (key, cert, not_after) = request(cfg, &read_ca(cfg)?, "").await?;
    names(cfg, &cert)?;
    store(cfg, &key, &cert)?;
    tracing::info!(not_after, "certificate renewed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_in_the_last_third() {
        assert!(!due(0, 30, 10));
        assert!(!due(0, 30, 20));
        assert!(due(0, 30, 21));
        assert!(due(0, 30, 40));
    }

    #[test]
    fn a_certificate_for_another_clinic_is_not_saved() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "clinic-x");
        p.distinguished_name.push(rcgen::DnType::CommonName, "ws1");
        let cert = p.self_signed(&key).unwrap().pem();
        let cfg = ExportConfig {
            clinic: "clinic-a".into(),
            host: "ws1".into(),
            ..Default::default()
        };
        let e = names(&cfg, &cert).unwrap_err().to_string();
        assert!(
            e.contains("clinic-x/ws1") && e.contains("clinic-a/ws1"),
            "{e}"
        );
        let ok = ExportConfig {
            clinic: "clinic-x".into(),
            ..cfg
        };
        assert_eq!(names(&ok, &cert).unwrap(), "clinic-x");
        let unset = ExportConfig {
            clinic: String::new(),
            ..ok
        };
        assert_eq!(
            names(&unset, &cert).unwrap(),
            "clinic-x",
            "one-step enrollment learns the clinic"
        );
    }

    #[test]
    fn the_key_is_0600_in_a_0700_folder_and_a_planted_link_is_never_followed() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = std::env::temp_dir().join(format!("cw-enroll-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = ExportConfig {
            key_file: d.join("tls/host.key"),
            cert_file: d.join("tls/host.pem"),
            ..Default::default()
        };
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        store(&cfg, "KEY", "CERT").unwrap();
        assert_eq!(mode(&d.join("tls")), 0o700);
        assert_eq!(mode(&cfg.key_file), 0o600);
        // Links planted at the key and at its temporary file: replaced, never written
        // through.
        let target = d.join("target");
        std::fs::write(&target, "precious").unwrap();
        std::fs::remove_file(&cfg.key_file).unwrap();
        std::os::unix::fs::symlink(&target, &cfg.key_file).unwrap();
        std::os::unix::fs::symlink(&target, cfg.key_file.with_extension("tmp")).unwrap();
        store(&cfg, "NEW KEY", "CERT").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&cfg.key_file).unwrap(), "NEW KEY");
        assert!(!std::fs::symlink_metadata(&cfg.key_file)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(mode(&cfg.key_file), 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_csr_names_the_host_and_the_key_is_pem() {
        let (key, csr) = key_and_csr("ws1").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let p = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert!(format!("{:?}", p.params.distinguished_name).contains("ws1"));
    }
}
