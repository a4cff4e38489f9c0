//! The collector's certificate authority: a CA that signs the collector's server certificate
//! and one client certificate per host, naming its clinic (O) and host (CN). The client
//! certificate is the host's identity; nothing an agent sends can change it.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("client certificate: {0}")]
    Parse(String),
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A new CA (ten years).
pub fn new_ca(name: &str) -> Result<Pem, PkiError> {
    new_ca_for(name, 3650)
}

/// A new CA valid for `days`.
pub fn new_ca_for(name: &str, days: u32) -> Result<Pem, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(300)).into();
    p.not_after = (now + std::time::Duration::from_secs(days as u64 * 86_400)).into();
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn issue(ca: &Pem, p: CertificateParams) -> Result<Pem, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The collector's server certificate for these DNS names or IPs (ten years).
pub fn server_cert(ca: &Pem, names: &[String]) -> Result<Pem, PkiError> {
    server_cert_for(ca, names, 3650)
}

/// The collector's server certificate, valid for `days`.
pub fn server_cert_for(ca: &Pem, names: &[String], days: u32) -> Result<Pem, PkiError> {
    let mut p = CertificateParams::new(names.to_vec())?;
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(300)).into();
    p.not_after = (now + std::time::Duration::from_secs(days as u64 * 86_400)).into();
    p.distinguished_name
        .push(DnType::CommonName, "clinicwatch-collector");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(ca, p)
}

/// A host's client certificate: O = clinic, CN = host; valid `days`.
pub fn client_cert(ca: &Pem, clinic: &str, host: &str, days: i64) -> Result<Pem, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, clinic);
    p.distinguished_name.push(DnType::CommonName, host);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(300)).into();
    p.not_after = (now + std::time::Duration::from_secs(days.max(0) as u64 * 86_400)).into();
    issue(ca, p)
}

/// SHA-256 (hex) of a certificate's public key: what the collector remembers of an enrolled
/// host, so that a replaced or revoked key is refused.
pub fn key_fingerprint(der: &[u8]) -> Result<String, PkiError> {
    use sha2::Digest as _;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let key = &cert.public_key().subject_public_key.data;
    Ok(sha2::Sha256::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The DER of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map(|(_, p)| p.contents)
        .map_err(|e| PkiError::Parse(e.to_string()))
}

/// The SHA-256 of a PEM certificate's DER, hex: the pin agents enroll with
/// (`clinicwatch-agent enroll --ca-sha256`).
pub fn cert_sha256(pem: &str) -> Result<String, PkiError> {
    use sha2::Digest as _;
    let der = pem_to_der(pem)?;
    Ok(sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// (clinic, host) named by a client certificate (DER).
pub fn identity(der: &[u8]) -> Result<(String, String), PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let clinic = first(&mut subject.iter_organization())
        .ok_or_else(|| PkiError::Parse("no organization (clinic)".into()))?;
    let host = first(&mut subject.iter_common_name())
        .ok_or_else(|| PkiError::Parse("no common name (host)".into()))?;
    Ok((clinic, host))
}
