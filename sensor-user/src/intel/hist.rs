//! Compact distributions for baselines: log-scale histograms (4 buckets per doubling, about
//! 19% resolution), and 168 of them for the hours of the week.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const PER_OCTAVE: f64 = 4.0;

/// Counts of values by log bucket; bucket 0 holds zeros.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogHist {
    pub count: u64,
    pub buckets: BTreeMap<u16, u64>,
}

fn bucket(v: u64) -> u16 {
    if v == 0 {
        0
    } else {
        1 + ((v as f64).log2() * PER_OCTAVE).floor() as u16
    }
}

/// The largest value of a bucket.
fn upper(b: u16) -> u64 {
    if b == 0 {
        0
    } else {
        (2f64.powf(b as f64 / PER_OCTAVE)).ceil() as u64
    }
}

impl LogHist {
    pub fn add(&mut self, v: u64) {
        self.count += 1;
        *self.buckets.entry(bucket(v)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &LogHist) {
        self.count += other.count;
        for (b, n) in &other.buckets {
            *self.buckets.entry(*b).or_default() += n;
        }
    }

    /// The value at quantile `q` (0..=1), as its bucket's upper bound; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(upper(*b));
            }
        }
        self.buckets.keys().last().map(|b| upper(*b))
    }
}

/// One histogram per hour of the week, plus their sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WeekHist {
    pub hours: BTreeMap<u16, LogHist>,
    pub all: LogHist,
}

impl WeekHist {
    pub fn add(&mut self, hour: u16, v: u64) {
        self.hours.entry(hour).or_default().add(v);
        self.all.add(v);
    }

    /// Quantile for this hour of the week when it has at least `min_samples` windows,
    /// otherwise over the whole week.
    pub fn quantile(&self, hour: u16, q: f64, min_samples: u64) -> Option<u64> {
        match self.hours.get(&hour) {
            Some(h) if h.count >= min_samples => h.quantile(q),
            _ => self.all.quantile(q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = LogHist::default();
        for v in 1..=1000u64 {
            h.add(v * 1000);
        }
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((990_000.0..=990_000.0 * 1.2).contains(&p99), "{p99}");
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((500_000.0..=500_000.0 * 1.2).contains(&p50), "{p50}");
        assert_eq!(LogHist::default().quantile(0.5), None);
        let mut z = LogHist::default();
        z.add(0);
        assert_eq!(z.quantile(0.99), Some(0));
    }

    #[test]
    fn sparse_hours_fall_back_to_the_week() {
        let mut w = WeekHist::default();
        for _ in 0..20 {
            w.add(10, 100);
        }
        w.add(11, 1_000_000);
        assert!(w.quantile(10, 0.99, 10).unwrap() <= 120);
        // Hour 11 has one sample: the week's p99 is used.
        assert!(w.quantile(11, 0.99, 10).unwrap() >= 1_000_000);
        assert!(w.quantile(12, 0.5, 10).unwrap() <= 120);
    }
}
