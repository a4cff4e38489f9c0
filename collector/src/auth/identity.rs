//! Who a call comes from, and whether its certificate may still act: the identity in a
//! client certificate (clinic = O, host = CN, or the SOC's analysts under [`SOC_ORG`]) and
//! its key checked against the host's enrollment (two-phase renewal included). The ingest,
//! enrollment and SOC services all ask here.

use tonic::{Request, Status};

use crate::status;
use crate::store::{Enrollment, HostKey};

/// The organization of analysts' certificates; never a clinic.
pub const SOC_ORG: &str = "clinicwatch-soc";

/// The host a request comes from and its key's fingerprint: its client certificate, or
/// `unauthenticated`.
pub(crate) fn peer_of<T>(req: &Request<T>) -> Result<(HostKey, String), Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| status::unauthenticated("a client certificate is required"))?;
    let der = certs
        .first()
        .ok_or_else(|| status::unauthenticated("a client certificate is required"))?;
    let (clinic, host) =
        crate::auth::pki::identity(der).map_err(|e| status::unauthenticated(e.to_string()))?;
    let key = crate::auth::pki::key_fingerprint(der)
        .map_err(|e| status::unauthenticated(e.to_string()))?;
    Ok((HostKey { clinic, host }, key))
}

/// Which of a host's keys a certificate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// The host has no record (a certificate made by hand before `issue` recorded keys).
    Unrecorded,
    Current,
    /// The key of the last renewal, used for the first time: it becomes the current one.
    Pending,
}

/// Whether a certificate with this key may act for the host. A revoked host, or a key that
/// is neither its current one nor the one of its last renewal, does not.
pub fn check_key(e: Option<&Enrollment>, key_sha256: &str) -> Result<KeyUse, String> {
    match e {
        None => Ok(KeyUse::Unrecorded),
        Some(e) if e.revoked => Err("this certificate's holder was unenrolled or revoked: \
             enroll it again with a token (an analyst: a new `issue --soc`)"
            .into()),
        Some(e) if e.key_sha256 == key_sha256 => Ok(KeyUse::Current),
        Some(e) if !e.pending_key_sha256.is_empty() && e.pending_key_sha256 == key_sha256 => {
            Ok(KeyUse::Pending)
        }
        Some(_) => {
            Err("this certificate was replaced by a later enrollment or renewal of the host".into())
        }
    }
}

/// After a certificate with the pending key was used: that key is the host's, the old one
/// is refused from now on.
pub fn promoted(e: &Enrollment, now: f64) -> Enrollment {
    Enrollment {
        key_sha256: e.pending_key_sha256.clone(),
        revoked: false,
        updated: now,
        pending_key_sha256: String::new(),
    }
}
