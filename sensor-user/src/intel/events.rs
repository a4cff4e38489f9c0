//! The event rules: what single events say, not windows. A restart and missing hooks at
//! start-up, map pressure and lost records at each snapshot, a protected file opened by a
//! process outside the watched apps, and such a reader connecting out soon after.

use super::{drops, privacy, rules::RuleKind, Intel};
use crate::{event::finding::Finding, event::Health, kernel::capabilities::CapabilityReport};

impl Intel {
    /// A restart (after a clean stop or not) and capabilities no hook serves.
    pub(super) fn on_startup(
        &mut self,
        time: f64,
        capabilities: &[CapabilityReport],
    ) -> Vec<Finding> {
        let mut found = Vec::new();
        self.startups += 1;
        if let Some(r) = self.rule(|k| matches!(k, RuleKind::AgentRestart {})) {
            let previous = self.startups > 1
                || self.previous_run.is_some()
                || self.baselines.values().any(|b| b.windows > 0);
            if previous {
                let clean = self.startups > 1 || self.previous_run != Some(false);
                found.push(
                    Finding::new(&r.id, r.severity, "-", time, "agent")
                        .summary(if clean {
                            "the agent restarted: activity while it was down was not seen"
                        } else {
                            "the agent restarted after it was killed or crashed: activity while it was down was not seen"
                        })
                        .with("startups_in_this_run", self.startups)
                        .with("previous_stop_clean", clean),
                );
            }
        }
        if let Some(r) = self.rule(|k| matches!(k, RuleKind::SensorHooks {})) {
            let missing: Vec<String> = capabilities
                .iter()
                .filter(|c| c.hook.is_none())
                .map(|c| c.capability.to_string())
                .collect();
            if !missing.is_empty() {
                found.push(
                    Finding::new(&r.id, r.severity, "-", time, "hooks")
                        .summary(format!("no hook serves: {}", missing.join(", ")))
                        .with("capabilities_missing", missing),
                );
            }
        }
        found
    }

    /// Map pressure and records lost since the last snapshot.
    pub(super) fn on_snapshot(&mut self, time: f64, health: &Health) -> Vec<Finding> {
        let mut found = Vec::new();
        let pressure = self
            .rule(|k| matches!(k, RuleKind::SensorPressure { .. }))
            .map(|r| (r.id.clone(), r.severity, r.kind.clone()));
        if let Some((id, severity, RuleKind::SensorPressure { watched_percent })) = pressure {
            found.extend(
                self.pressure
                    .check(&id, severity, watched_percent, time, health),
            );
        }
        let total = drops(health);
        let before = self.drops_seen.replace(total);
        if let (Some(before), Some(r)) = (
            before,
            self.rule(|k| matches!(k, RuleKind::SensorDrops { .. })),
        ) {
            let RuleKind::SensorDrops { min_drops } = r.kind else {
                unreachable!()
            };
            let new = total.saturating_sub(before);
            if new >= min_drops {
                found.push(
                    Finding::new(&r.id, r.severity, "-", time, "drops")
                        .summary(format!(
                            "the sensor lost {new} record(s) since the last snapshot"
                        ))
                        .with("records_lost", new)
                        .with("ringbuf_drops_total", health.ringbuf_drops)
                        .with("exits_missed_total", health.exits_missed)
                        .with("file_counters_evicted_total", health.file_counters_evicted),
                );
            }
        }
        found
    }

    /// A process outside the watched apps opened a protected file: remembered (for a
    /// connect that follows) and found.
    pub(super) fn on_protected_open(
        &mut self,
        time: f64,
        pid: u32,
        exe: &str,
        prule: &str,
        uid: u32,
    ) -> Vec<Finding> {
        // The path as it may leave the host (no user's name in it).
        let exe = &privacy::exe_path(exe);
        self.readers
            .insert(pid, (time, exe.clone(), prule.to_string()));
        let Some(r) = self.rule(|k| matches!(k, RuleKind::ProtectedRead {})) else {
            return Vec::new();
        };
        vec![
            Finding::new(&r.id, r.severity, "-", time, &format!("{exe} {prule}"))
                .summary(format!(
                    "{exe} (outside the watched apps) opened protected `{prule}`"
                ))
                .with("exe", exe.clone())
                .with("pid", pid)
                .with("uid", uid)
                .with("protected", prule.to_string()),
        ]
    }

    /// A protected reader that connects out soon after its read.
    pub(super) fn on_connect(
        &self,
        time: f64,
        pid: u32,
        dst: std::net::IpAddr,
        port: u16,
        protocol: &str,
    ) -> Vec<Finding> {
        // Most connects are the app's own: one map lookup, nothing else.
        let Some((t, exe, prule)) = self.readers.get(&pid).cloned() else {
            return Vec::new();
        };
        let Some(r) = self.rule(|k| matches!(k, RuleKind::ProtectedReadThenConnect { .. })) else {
            return Vec::new();
        };
        let RuleKind::ProtectedReadThenConnect { within_secs } = r.kind else {
            unreachable!()
        };
        // Written as the window's test (a NaN time is never within it).
        let within = time - t <= within_secs;
        if !within {
            return Vec::new();
        }
        let d = crate::event::summary::dest_key(dst, port, protocol);
        vec![
            Finding::new(&r.id, r.severity, "-", time, &format!("{exe} {d}"))
                .summary(format!(
                    "{exe} opened protected `{prule}` and connected to {d} {:.0} s later",
                    time - t
                ))
                .with("exe", exe.clone())
                .with("pid", pid)
                .with("protected", prule.clone())
                .with("destination", d)
                .with("seconds_after_read", ((time - t) * 10.0).round() / 10.0),
        ]
    }
}
