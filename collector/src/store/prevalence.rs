//! Fleet prevalence of an indicator: how many clinics ever saw it. Exact (one row per clinic
//! in `indicator_clinics`) up to [`EXACT_CLINICS`]; beyond, the rows are folded into a
//! HyperLogLog sketch on the indicator's row (`clinics_sketch`, 4 KiB, about 1.6% standard
//! error), so an indicator every clinic sees (the vendor's own domain) costs the same as one
//! seen by a hundred. The change is one way. A clinic is added to a sketch only when it would
//! raise a register, which after warm-up is almost never, so a popular indicator costs no
//! writes per batch.
//!
//! Several collectors on one PostgreSQL: the batch transaction's upsert of the indicator row
//! locks it until commit, so the fold and sketch updates of one indicator are serialised.
//! Each collector's cache of sketches may lag the database, which is safe: registers only
//! grow, so "would not change my copy" implies "would not change the stored one".

use std::collections::HashMap;

use clinicwatch_proto::hll::Hll;
use sha2::{Digest, Sha256};

use super::StoreError;

/// Clinics counted exactly before an indicator's count becomes a sketch.
pub const EXACT_CLINICS: i64 = 64;
/// Sketch precision: 4,096 registers.
pub const PRECISION: u8 = 12;
/// Sketches one collector keeps in memory (16 MiB at most).
const CACHE_MAX: usize = 4_096;

/// A clinic id's hash for the sketch (not secret: clinic ids are not).
pub fn clinic_hash(clinic: &str) -> u64 {
    let d = Sha256::digest(clinic.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn bad(kind: &str, value: &str, e: clinicwatch_proto::hll::SketchError) -> StoreError {
    StoreError::Db {
        path: format!("indicator {kind}:{value}"),
        source: Box::new(e),
    }
}

/// A stored sketch, or a new one.
pub fn read_sketch(kind: &str, value: &str, bytes: Option<&[u8]>) -> Result<Hll, StoreError> {
    match bytes {
        Some(b) => Hll::from_bytes(b).map_err(|e| bad(kind, value, e)),
        None => Hll::new(PRECISION).map_err(|e| bad(kind, value, e)),
    }
}

/// The stored sketch to add to. A sketch that no longer decodes is started again (and said
/// so): prevalence is evidence, not worth refusing a clinic's batch over.
pub fn sketch_for_update(kind: &str, value: &str, bytes: Option<&[u8]>) -> Hll {
    match read_sketch(kind, value, bytes) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "stored prevalence sketch unreadable; starting it again");
            fresh()
        }
    }
}

fn fresh() -> Hll {
    // PRECISION is within the accepted range (a test checks it).
    Hll::new(PRECISION).unwrap_or_else(|_| unreachable!("PRECISION is valid"))
}

/// The sketch that replaces an indicator's exact rows.
pub fn fold(clinics: &[String]) -> Hll {
    let mut h = fresh();
    for c in clinics {
        h.insert_hash(clinic_hash(c));
    }
    h
}

/// Clinics that ever saw the indicator: exact rows, or the sketch with any rows added since
/// the fold. The flag is true for an estimate.
pub fn count(
    kind: &str,
    value: &str,
    sketch: Option<&[u8]>,
    rows: &[String],
) -> Result<(u64, bool), StoreError> {
    if sketch.is_none() {
        return Ok((rows.len() as u64, false));
    }
    let mut h = read_sketch(kind, value, sketch)?;
    for c in rows {
        h.insert_hash(clinic_hash(c));
    }
    Ok((h.estimate().round() as u64, true))
}

/// Sketches this collector has seen, by indicator.
#[derive(Default)]
pub struct SketchCache {
    map: HashMap<(String, String), Hll>,
}

impl SketchCache {
    /// True when the cached sketch already covers this clinic (nothing to write).
    pub fn covers(&self, kind: &str, value: &str, clinic: &str) -> bool {
        self.map
            .get(&(kind.to_string(), value.to_string()))
            .is_some_and(|h| !h.would_change(clinic_hash(clinic)))
    }

    pub fn put(&mut self, kind: &str, value: &str, h: Hll) {
        if self.map.len() >= CACHE_MAX {
            // Dropping everything is crude but cheap, and only costs reads to refill.
            self.map.clear();
        }
        self.map.insert((kind.to_string(), value.to_string()), h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_without_a_sketch_and_estimated_with_one() {
        let rows: Vec<String> = (0..10).map(|i| format!("clinic-{i}")).collect();
        assert_eq!(count("dest_ip", "x", None, &rows).unwrap(), (10, false));
        let mut h = Hll::new(PRECISION).unwrap();
        for i in 0..1_000 {
            h.insert_hash(clinic_hash(&format!("clinic-{i}")));
        }
        let (n, est) = count("dest_ip", "x", Some(&h.to_bytes()), &rows).unwrap();
        assert!(est && (980..=1_020).contains(&n), "{n}");
        let e = count("dest_ip", "x", Some(b"junk"), &[]).unwrap_err();
        assert!(e.to_string().contains("indicator dest_ip:x"), "{e}");
        let mut cache = SketchCache::default();
        assert!(!cache.covers("dest_ip", "x", "clinic-1"));
        cache.put("dest_ip", "x", h);
        assert!(cache.covers("dest_ip", "x", "clinic-1"));
    }
}
