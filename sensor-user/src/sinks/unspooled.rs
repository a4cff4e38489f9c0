//! A full disk loses nothing already made: a record the spool cannot take (no space, an I/O
//! error) waits in memory, in order, and goes to the spool as soon as it can be written
//! again; only what does not fit the memory bound is lost, and counted. When the spool can
//! be written again, the episode is reported as a `CW-SENSOR-SPOOL-WRITE` finding (how long,
//! the error, how many records waited, how many were lost), which reaches the collector like
//! any other.

use std::collections::VecDeque;

use crate::{
    event::finding::{Finding, Severity},
    sinks::spool::{Kind, Spool},
};

/// The rule of the finding that reports records the spool could not take.
pub const RULE: &str = "CW-SENSOR-SPOOL-WRITE";
/// Records waiting in memory, at most (bytes of their payloads).
pub const MAX_BYTES: usize = 16 << 20;

/// An episode of failed writes.
#[derive(Debug)]
struct Episode {
    since: f64,
    error: String,
    held: u64,
    lost: u64,
}

/// Records waiting for the spool.
#[derive(Debug)]
pub struct Unspooled {
    waiting: VecDeque<(Kind, Vec<u8>)>,
    bytes: usize,
    max_bytes: usize,
    episode: Option<Episode>,
    /// Appends that failed, and records lost over the bound, since the agent started.
    pub failures: u64,
    pub lost: u64,
}

impl Unspooled {
    pub fn new(max_bytes: usize) -> Unspooled {
        Unspooled {
            waiting: VecDeque::new(),
            bytes: 0,
            max_bytes,
            episode: None,
            failures: 0,
            lost: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Appends a record after those waiting; keeps it in memory if the spool cannot take it.
    /// Returns the report of an episode that this append ended (see [`Unspooled::drain`]).
    pub fn put(
        &mut self,
        s: &mut Spool,
        kind: Kind,
        payload: Vec<u8>,
        now: f64,
    ) -> Option<Finding> {
        self.waiting.push_back((kind, payload));
        self.bytes += self.waiting.back().map_or(0, |(_, p)| p.len());
        if let Some(e) = &mut self.episode {
            e.held += 1;
        }
        let report = self.drain(s, now);
        while self.bytes > self.max_bytes {
            // The newest waits longest for room: the oldest are kept, they were first.
            let Some((_, p)) = self.waiting.pop_back() else {
                break;
            };
            self.bytes -= p.len();
            self.lost += 1;
            if let Some(e) = &mut self.episode {
                e.lost += 1;
                e.held = e.held.saturating_sub(1);
            }
        }
        report
    }

    /// Writes what waits, in order, until the spool refuses; returns the report of an
    /// episode that just ended (the caller spools and emits it).
    pub fn drain(&mut self, s: &mut Spool, now: f64) -> Option<Finding> {
        while let Some((kind, payload)) = self.waiting.front() {
            if let Err(err) = s.append(*kind, payload) {
                self.failures += 1;
                if self.episode.is_none() {
                    tracing::error!(error = %err, "the spool cannot be written (disk full?): records wait in memory");
                    self.episode = Some(Episode {
                        since: now,
                        error: err.to_string(),
                        held: self.waiting.len() as u64,
                        lost: 0,
                    });
                }
                return None;
            }
            self.bytes -= payload.len();
            self.waiting.pop_front();
        }
        let e = self.episode.take()?;
        tracing::warn!(
            held = e.held,
            lost = e.lost,
            "the spool can be written again"
        );
        Some(report(&e, now))
    }
}

fn report(e: &Episode, now: f64) -> Finding {
    let secs = (now - e.since).max(0.0).round();
    let severity = if e.lost > 0 {
        Severity::High
    } else {
        Severity::Medium
    };
    Finding::new(RULE, severity, "-", now, "spool")
        .summary(format!(
            "the spool could not be written for {secs} s ({}): {} record(s) waited in memory and were spooled, {} lost",
            clinicwatch_proto::limits::fit_text(&e.error, 512),
            e.held,
            e.lost
        ))
        .with("seconds", secs)
        .with("error", clinicwatch_proto::limits::fit_text(&e.error, 1024))
        .with("records_held", e.held)
        .with("records_lost", e.lost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::spool::SpoolConfig;

    #[test]
    fn records_wait_in_order_while_the_spool_fails_and_the_episode_is_reported() {
        let d = std::env::temp_dir().join(format!("cw-unspooled-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut s = Spool::open(SpoolConfig {
            dir: d.clone(),
            max_bytes: 1 << 20,
            segment_bytes: 1 << 10,
            fsync_each: false,
        })
        .unwrap();
        let mut u = Unspooled::new(64);
        assert!(u.put(&mut s, Kind::Finding, b"one".to_vec(), 1.0).is_none());
        assert!(u.is_empty());
        // The spool's folder made read-only... as root that does not fail: take it away.
        let moved = d.with_extension("away");
        std::fs::rename(&d, &moved).unwrap();
        std::fs::write(&d, b"not a folder").unwrap();
        // Fill the segment so that the next append must start a new one, which fails.
        for i in 0..40u8 {
            assert!(u.put(&mut s, Kind::Finding, vec![i; 30], 2.0).is_none());
        }
        assert!(u.failures > 0, "appends failed");
        assert!(u.lost > 0, "over the 64-byte bound some were lost");
        let waiting = u.waiting.len();
        assert!(waiting > 0);
        std::fs::remove_file(&d).unwrap();
        std::fs::rename(&moved, &d).unwrap();
        let f = u.drain(&mut s, 12.0).expect("the episode is reported");
        assert!(u.is_empty());
        assert_eq!(f.rule, RULE);
        assert_eq!(f.severity, Severity::High, "records were lost");
        assert_eq!(f.evidence["records_lost"], serde_json::json!(u.lost));
        // In order, nothing twice.
        let got: Vec<Vec<u8>> = s
            .read_after(0, 1000, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(got[0], b"one");
        let rest: Vec<u8> = got[1..].iter().map(|p| p[0]).collect();
        let mut sorted = rest.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(rest, sorted, "in order, once each");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
