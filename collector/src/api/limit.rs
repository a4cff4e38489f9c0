//! Flood control: a token bucket per host (kept across its reconnects), counting what a
//! batch costs the collector (`clinicwatch_proto::limits::cost`: a record with 500
//! destinations costs what 1,500 small ones do), not its number of records. A host near its
//! limit is told to slow down (Throttle); past it, its batch is refused with
//! `resource_exhausted` and a retry pushback, and nothing of it is stored. A batch dearer
//! than the whole burst is taken from a full bucket, which then goes into debt: the host
//! waits until it is repaid.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::store::HostKey;

/// What to do with a batch of `n` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    /// Accept, and tell the host to wait this long before its next batch.
    Slow {
        retry_after_ms: u32,
    },
    /// Refuse; the host may try again after this long.
    Refuse {
        pushback_ms: u32,
    },
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Limiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<HostKey, Bucket>>,
}

impl Limiter {
    pub fn new(records_per_sec: u32, burst_records: u32) -> Limiter {
        Limiter {
            rate: records_per_sec.max(1) as f64,
            burst: burst_records.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate as u32
    }

    /// Takes `n` units for a batch of `host`.
    pub fn take(&self, host: &HostKey, n: u64, now: Instant) -> Decision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(host.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate).min(self.burst);
        b.at = now;
        let n = n as f64;
        let ms = |deficit: f64| {
            ((deficit / self.rate) * 1000.0)
                .ceil()
                .clamp(1.0, 600_000.0) as u32
        };
        if b.tokens < n && b.tokens < self.burst {
            return Decision::Refuse {
                pushback_ms: ms(n - b.tokens),
            };
        }
        b.tokens -= n;
        if b.tokens < self.burst / 4.0 {
            // Pace the next batch so the bucket refills to a quarter.
            Decision::Slow {
                retry_after_ms: ms(self.burst / 4.0 - b.tokens),
            }
        } else {
            Decision::Accept
        }
    }

    /// Gives back what a batch took when it was not stored after all (refused, or the store
    /// failed), so that resends after an outage are not counted twice.
    pub fn refund(&self, host: &HostKey, n: u64) {
        if let Some(b) = self
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(host)
        {
            b.tokens = (b.tokens + n as f64).min(self.burst);
        }
    }

    /// Forgets hosts idle long enough to have a full bucket again (bounded memory).
    pub fn sweep(&self, now: Instant) {
        let full = std::time::Duration::from_secs_f64(self.burst / self.rate);
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, b| now.saturating_duration_since(b.at) < full);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_host_past_its_rate_is_slowed_then_refused_and_recovers() {
        let l = Limiter::new(100, 1000);
        let h = HostKey {
            clinic: "c".into(),
            host: "h".into(),
        };
        let other = HostKey {
            clinic: "c".into(),
            host: "other".into(),
        };
        let t0 = Instant::now();
        assert_eq!(l.take(&h, 500, t0), Decision::Accept);
        assert!(
            matches!(l.take(&h, 400, t0), Decision::Slow { retry_after_ms } if retry_after_ms == 1500)
        );
        assert_eq!(l.take(&h, 500, t0), Decision::Refuse { pushback_ms: 4000 });
        assert_eq!(
            l.take(&other, 500, t0),
            Decision::Accept,
            "buckets are per host"
        );
        // Four seconds later 400 more tokens are there.
        assert!(matches!(
            l.take(&h, 500, t0 + Duration::from_secs(4)),
            Decision::Slow { .. }
        ));
        l.sweep(t0 + Duration::from_secs(60));
        assert_eq!(l.buckets.lock().unwrap().len(), 0);
    }

    #[test]
    fn a_batch_dearer_than_the_burst_is_taken_once_then_repaid() {
        let l = Limiter::new(100, 1000);
        let h = HostKey {
            clinic: "c".into(),
            host: "h".into(),
        };
        let t0 = Instant::now();
        assert!(matches!(l.take(&h, 5000, t0), Decision::Slow { .. }));
        // 4000 in debt: 50 s to get back to a quarter of the burst, refused until then.
        assert_eq!(
            l.take(&h, 1, t0),
            Decision::Refuse {
                pushback_ms: 40_010
            }
        );
        assert!(matches!(
            l.take(&h, 1, t0 + Duration::from_secs(30)),
            Decision::Refuse { .. }
        ));
        assert!(matches!(
            l.take(&h, 1, t0 + Duration::from_secs(41)),
            Decision::Slow { .. }
        ));
    }
}
