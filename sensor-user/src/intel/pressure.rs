//! Map pressure: what a local user trying to blind the sensor causes, made a finding that
//! reaches the SOC. The kernel's maps are sized and split so that this is hard (protected
//! readers under quotas, their file counters apart); what still happens is reported:
//! inserts refused by a full map, reader entries refused by their quota, readers not
//! followed, open flows evicted before they closed, and a watched map filling up.

use crate::event::finding::{Finding, Severity};
use crate::event::Health;

/// The counters whose growth is map pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    map_full: u64,
    quota_refused: u64,
    readers_not_followed: u64,
    flows_evicted: u64,
}

impl Counts {
    fn of(h: &Health) -> Counts {
        Counts {
            map_full: h.map_full,
            quota_refused: h.quota_refused,
            readers_not_followed: h.readers_not_followed,
            flows_evicted: h.flows_evicted,
        }
    }
}

/// Between snapshots: the last counts, and whether the watched map was over the threshold.
#[derive(Debug, Default)]
pub struct Pressure {
    last: Option<Counts>,
    watched_high: bool,
}

impl Pressure {
    /// A finding when a pressure counter grew since the last snapshot, or the watched map
    /// went over `watched_percent` of its capacity (once per crossing).
    pub fn check(
        &mut self,
        rule: &str,
        severity: Severity,
        watched_percent: f64,
        time: f64,
        h: &Health,
    ) -> Option<Finding> {
        let now = Counts::of(h);
        let before = self.last.replace(now).unwrap_or_default();
        let capacity = h.watched_capacity.max(1) as f64;
        let percent = 100.0 * h.watched_processes as f64 / capacity;
        let high = h.watched_capacity > 0 && percent >= watched_percent;
        let crossed = high && !self.watched_high;
        self.watched_high = high;
        let grew = [
            (
                "map inserts refused (map full)",
                now.map_full,
                before.map_full,
            ),
            (
                "protected-reader entries refused (quota)",
                now.quota_refused,
                before.quota_refused,
            ),
            (
                "protected readers not followed",
                now.readers_not_followed,
                before.readers_not_followed,
            ),
            (
                "open flows evicted before they closed",
                now.flows_evicted,
                before.flows_evicted,
            ),
        ];
        let mut what: Vec<String> = grew
            .iter()
            .filter(|(_, n, b)| n > b)
            .map(|(w, n, b)| format!("{} {w}", n - b))
            .collect();
        if crossed {
            what.push(format!(
                "the watched map is {percent:.0}% full ({} of {})",
                h.watched_processes, h.watched_capacity
            ));
        }
        if what.is_empty() {
            return None;
        }
        Some(
            Finding::new(rule, severity, "-", time, "maps")
                .summary(format!(
                    "the sensor's maps are under pressure (a local user filling them would blind it): {}",
                    what.join("; ")
                ))
                .with("watched_processes", h.watched_processes)
                .with("watched_capacity", h.watched_capacity)
                .with("watched_percent", (percent * 10.0).round() / 10.0)
                .with("map_full", now.map_full.saturating_sub(before.map_full))
                .with("map_full_total", now.map_full)
                .with(
                    "quota_refused",
                    now.quota_refused.saturating_sub(before.quota_refused),
                )
                .with("quota_refused_total", now.quota_refused)
                .with("readers_not_followed_total", now.readers_not_followed)
                .with("reader_processes", h.reader_processes)
                .with("reader_flows", h.reader_flows)
                .with(
                    "flows_evicted",
                    now.flows_evicted.saturating_sub(before.flows_evicted),
                )
                .with("flows_evicted_total", now.flows_evicted)
                .with("file_counters_evicted_total", h.file_counters_evicted),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(watched: usize, quota_refused: u64, flows_evicted: u64) -> Health {
        Health {
            watched_processes: watched,
            watched_capacity: 16_384,
            quota_refused,
            flows_evicted,
            ..Health::default()
        }
    }

    #[test]
    fn fires_on_growth_and_on_crossing_the_threshold_once() {
        let mut p = Pressure::default();
        let check = |p: &mut Pressure, h: &Health| p.check("CW-P", Severity::High, 90.0, 1.0, h);
        assert!(check(&mut p, &health(10, 0, 0)).is_none(), "quiet");
        let f = check(&mut p, &health(10, 7, 0)).expect("quota refusals");
        assert_eq!(f.evidence["quota_refused"], serde_json::json!(7));
        assert!(
            f.summary.contains("7 protected-reader entries refused"),
            "{}",
            f.summary
        );
        assert!(
            check(&mut p, &health(10, 7, 0)).is_none(),
            "no new refusals"
        );
        let f = check(&mut p, &health(15_000, 7, 0)).expect("over 90%");
        assert!(f.summary.contains("92% full"), "{}", f.summary);
        assert!(
            check(&mut p, &health(15_100, 7, 0)).is_none(),
            "still over: once"
        );
        assert!(check(&mut p, &health(100, 7, 0)).is_none());
        assert!(check(&mut p, &health(100, 7, 2)).is_some(), "evicted flows");
    }
}
