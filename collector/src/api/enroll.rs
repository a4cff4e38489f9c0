//! Enrollment: a host gets its client certificate without anyone handling keys.
//!
//! - `clinicwatch-collector enroll-token --clinic X [--uses N] [--days D] [--host H]` makes a
//!   per-clinic token: the clinic, an expiry and a nonce, authenticated with HMAC-SHA-256
//!   under the collector's `enroll.key` (made at `ca init`, 0600). The database keeps the
//!   nonce with the uses left (1 by default), the expiry (30 days at most) and an optional
//!   host id it is bound to; each enrollment takes one use atomically, and `tokens revoke ID`
//!   ends one token. Rotating the key revokes every token at once.
//! - The agent makes its own key and a CSR and calls `Enroll` with the token and its host id.
//!   The CA signs a short-lived certificate (`enroll.cert_days`) naming the token's clinic
//!   (O) and that host (CN); the CSR's own subject is ignored, only its key is certified.
//! - To renew, the agent calls `Enroll` without a token over mutual TLS: the certificate it
//!   presents decides clinic and host, and the new one names the same. Renewal is two-phase:
//!   the new key is recorded as pending and both are accepted until a stream opens with the
//!   new one, so a renewal whose reply is lost leaves the host its old certificate.

use crate::status;
use hmac::{Hmac, Mac};
use rcgen::{
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair,
};
use sha2::Sha256;
use tonic::{Request, Response, Status};

use clinicwatch_proto::v1::{enroll_server::Enroll, EnrollRequest, EnrollResponse};

use crate::{
    auth::identity::check_key,
    auth::pki::Pem,
    calls::{on_store, SharedStore},
    store::{Enrollment, HostKey},
};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("the enrollment token is malformed")]
    Malformed,
    #[error("the enrollment token was not issued by this collector (or its key was rotated)")]
    BadSignature,
    #[error("the enrollment token expired")]
    Expired,
}

const PREFIX: &str = "cwe1";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(key: &[u8], msg: &str) -> Hmac<Sha256> {
    let mut m = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(msg.as_bytes());
    m
}

/// A clinic or host id: 1 to 64 characters, letters, digits, `.`, `_`, `-`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A token for `clinic`, valid until `expires` (unix seconds), and its id (the nonce, which
/// the database keeps with the uses left).
pub fn make_token(key: &[u8], clinic: &str, expires: u64) -> Result<(String, String), String> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| format!("no randomness for the token: {e}"))?;
    let id = hex(&nonce);
    let body = format!("{PREFIX}.{}.{expires}.{id}", hex(clinic.as_bytes()));
    let tag = mac(key, &body).finalize().into_bytes();
    Ok((format!("{body}.{}", hex(&tag)), id))
}

/// Makes a token for `clinic` and records it in the store with `uses` uses, bound to
/// `host` when not empty: what `enroll-token` does.
pub fn issue_token(
    store: &dyn crate::store::Store,
    key: &[u8],
    clinic: &str,
    host: &str,
    uses: u32,
    expires: u64,
) -> Result<(String, crate::store::TokenRow), String> {
    let (token, id) = make_token(key, clinic, expires)?;
    let row = crate::store::TokenRow {
        id,
        clinic: clinic.to_string(),
        host: host.to_string(),
        expires: expires as f64,
        uses_left: uses as i64,
        revoked: false,
        created: crate::calls::now(),
    };
    store.put_token(&row).map_err(|e| e.to_string())?;
    Ok((token, row))
}

/// The token's id (its nonce), from a token that [`check_token`] accepted.
pub fn token_id(token: &str) -> Option<&str> {
    let (body, _) = token.trim().rsplit_once('.')?;
    body.rsplit('.').next()
}

/// The clinic a token names, if it is ours and not expired at `now`.
pub fn check_token(key: &[u8], token: &str, now: u64) -> Result<String, TokenError> {
    let token = token.trim();
    let (body, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let parts: Vec<&str> = body.split('.').collect();
    let [prefix, clinic, expires, _nonce] = parts[..] else {
        return Err(TokenError::Malformed);
    };
    if prefix != PREFIX {
        return Err(TokenError::Malformed);
    }
    let tag = unhex(tag).ok_or(TokenError::Malformed)?;
    mac(key, body)
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    if now >= expires {
        return Err(TokenError::Expired);
    }
    let clinic = String::from_utf8(unhex(clinic).ok_or(TokenError::Malformed)?)
        .map_err(|_| TokenError::Malformed)?;
    Ok(clinic)
}

/// Signs the key of `csr_pem` into a client certificate for (clinic, host), valid `days`.
pub fn sign_csr(
    ca: &Pem,
    csr_pem: &str,
    clinic: &str,
    host: &str,
    days: u32,
) -> Result<(String, f64), String> {
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| format!("the CSR does not parse or its signature is wrong: {e}"))?;
    let p = &mut csr.params;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, clinic);
    p.distinguished_name.push(DnType::CommonName, host);
    p.subject_alt_names.clear();
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.custom_extensions.clear();
    let now = std::time::SystemTime::now();
    let not_after = now + std::time::Duration::from_secs(days as u64 * 86_400);
    p.not_before = (now - std::time::Duration::from_secs(300)).into();
    p.not_after = not_after.into();
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| format!("no randomness for the serial: {e}"))?;
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| format!("the CA key: {e}"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| format!("the CA: {e}"))?;
    let cert = csr
        .signed_by(&issuer)
        .map_err(|e| format!("cannot sign: {e}"))?;
    let secs = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Ok((cert.pem(), secs))
}

pub struct EnrollService {
    pub ca: Pem,
    pub token_key: Vec<u8>,
    pub cert_days: u32,
    pub store: SharedStore,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl EnrollService {
    /// The host a token enrolls, checked against the token's signature (the database's
    /// record of it is checked, and one use taken, once the CSR has been signed).
    fn by_token(&self, req: &EnrollRequest) -> Result<HostKey, Status> {
        let now = crate::calls::now() as u64;
        let clinic = check_token(&self.token_key, &req.token, now)
            .map_err(|e| status::unauthenticated(e.to_string()))?;
        Ok(HostKey {
            clinic,
            host: req.host_id.clone(),
        })
    }

    /// What this enrollment may do given the host's record: a token enrolls a new host, or
    /// one an operator unenrolled, never one that is enrolled; a renewal needs the host's
    /// current or pending key.
    fn admit(
        host: &HostKey,
        presented: Option<&str>,
        existing: Option<&Enrollment>,
    ) -> Result<(), Status> {
        match (presented, existing) {
            (None, Some(e)) if !e.revoked => Err(status::precondition(format!(
                "{c}/{h} is already enrolled; to enroll it again (a reinstalled host), run \
                 `clinicwatch-collector unenroll --clinic {c} --host {h}` first",
                c = host.clinic,
                h = host.host
            ))),
            (Some(key), e) => check_key(e, key).map(|_| ()).map_err(status::denied),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Enroll for EnrollService {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let renewing = req.get_ref().token.is_empty();
        let (host, presented) = self.requester(&req)?;
        let h = host.clone();
        let existing = on_store(&self.store, &self.metrics, move |s| s.enrollment(&h)).await?;
        Self::admit(&host, presented.as_deref(), existing.as_ref())?;
        let (cert_pem, not_after) = sign_csr(
            &self.ca,
            &req.get_ref().csr_pem,
            &host.clinic,
            &host.host,
            self.cert_days,
        )
        .map_err(status::invalid)?;
        self.record(&host, presented, &req.get_ref().token, &cert_pem)
            .await?;
        self.metrics
            .enrolled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(clinic = %host.clinic, host = %host.host, renewing, "certificate issued");
        Ok(Response::new(EnrollResponse {
            cert_pem,
            ca_pem: self.ca.cert.clone(),
            not_after,
        }))
    }
}

impl EnrollService {
    /// Who enrolls: the token's clinic and the host id asked for, or (a renewal, without a
    /// token) the name and key of the certificate presented.
    fn requester(&self, req: &Request<EnrollRequest>) -> Result<(HostKey, Option<String>), Status> {
        let renewing = req.get_ref().token.is_empty();
        let (host, presented) = if renewing {
            let (who, key) = crate::auth::identity::peer_of(req)?;
            (who, Some(key))
        } else {
            (self.by_token(req.get_ref())?, None)
        };
        let (clinic, hostname) = (&host.clinic, &host.host);
        if clinic == crate::auth::identity::SOC_ORG {
            return Err(status::denied(
                "analyst certificates are issued by hand (`issue --soc`), not enrolled",
            ));
        }
        if !valid_id(hostname) {
            return Err(status::invalid(format!(
                "host id `{}` must be 1 to 64 letters, digits, `.`, `_` or `-`",
                hostname.escape_debug()
            )));
        }
        if renewing && req.get_ref().host_id != *hostname {
            return Err(status::denied(format!(
                "this certificate is for {clinic}/{hostname}, not {}",
                req.get_ref().host_id.escape_debug()
            )));
        }
        Ok((host, presented))
    }

    /// Records the key of the certificate just signed and, with a token (empty for a
    /// renewal), takes one of its uses; a token refused by the database refuses the call.
    async fn record(
        &self,
        host: &HostKey,
        presented: Option<String>,
        token: &str,
        cert_pem: &str,
    ) -> Result<(), Status> {
        let renewing = token.is_empty();
        let key = crate::auth::pki::pem_to_der(cert_pem)
            .and_then(|der| crate::auth::pki::key_fingerprint(&der))
            .map_err(|e| status::unavailable(e.to_string()))?;
        let now = crate::calls::now();
        // A renewal keeps the presented key valid until the new one is used (two-phase).
        let record = match presented {
            Some(old) => Enrollment {
                key_sha256: old,
                revoked: false,
                updated: now,
                pending_key_sha256: key,
            },
            None => Enrollment {
                key_sha256: key,
                revoked: false,
                updated: now,
                pending_key_sha256: String::new(),
            },
        };
        let (h, token) = (host.clone(), token.to_string());
        let taken = on_store(&self.store, &self.metrics, move |s| {
            if !renewing {
                let id = token_id(&token).unwrap_or_default();
                if let Err(why) = s.use_token(id, &h.host, now)? {
                    return Ok(Err(why));
                }
            }
            s.set_enrollment(&h, &record).map(Ok)
        })
        .await?;
        if let Err(why) = taken {
            tracing::warn!(clinic = %host.clinic, host = %host.host, %why, "enrollment token refused");
            return Err(status::denied(why.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_clinic_and_refuse_forgery_and_age() {
        let key = b"0123456789abcdef0123456789abcdef";
        let (t, id) = make_token(key, "clinic-42", 1000).unwrap();
        assert_eq!(token_id(&t), Some(id.as_str()));
        assert_eq!(check_token(key, &t, 999).unwrap(), "clinic-42");
        assert_eq!(check_token(key, &t, 1000), Err(TokenError::Expired));
        assert_eq!(
            check_token(b"another key", &t, 10),
            Err(TokenError::BadSignature)
        );
        // Another clinic pasted into a valid token.
        let forged = t.replacen(&hex(b"clinic-42"), &hex(b"clinic-43"), 1);
        assert_eq!(check_token(key, &forged, 10), Err(TokenError::BadSignature));
        // A longer expiry pasted in.
        let forged = t.replacen(".1000.", ".9999999999.", 1);
        assert_eq!(check_token(key, &forged, 10), Err(TokenError::BadSignature));
        for bad in ["", "cwe1", "x.y.z.w.v", "cwe1.zz.1.00.0g"] {
            assert_eq!(
                check_token(key, bad, 10),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_csr_is_signed_for_the_tokens_clinic_whatever_it_claims() {
        let ca = crate::auth::pki::new_ca("test CA").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(DnType::OrganizationName, "clinic-b");
        p.distinguished_name.push(DnType::CommonName, "evil");
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let (cert, not_after) = sign_csr(&ca, &csr, "clinic-a", "ws1", 30).unwrap();
        let der = rustls_pemfile_der(&cert);
        assert_eq!(
            crate::auth::pki::identity(&der).unwrap(),
            ("clinic-a".to_string(), "ws1".to_string())
        );
        assert!(not_after > 0.0);
        let e = sign_csr(
            &ca,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "a",
            "b",
            1,
        )
        .unwrap_err();
        assert!(e.contains("CSR"), "{e}");
    }

    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }
}
