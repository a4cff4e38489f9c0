//! The periodic snapshot: counters of every watched process and open flow, and the
//! sensor's health (per-hook counters, census, what was lost and why).

use std::collections::{BTreeMap, HashSet};

use clinicwatch_common::hook;

use super::{
    convert::{file_counters, flow_counters},
    Handler,
};
use crate::{
    event::{Event, FileCounters, Health, HookHealth, ProcessCounters},
    kernel::sensor::Sensor,
};

impl Handler {
    /// The open flows' counters into their processes. A flow whose counters are gone at two
    /// snapshots in a row (not one: its close may be in flight) was evicted from the kernel's
    /// LRU map before it closed: counted, and forgotten.
    fn flows_into(&mut self, sensor: &mut Sensor, procs: &mut BTreeMap<u32, ProcessCounters>) {
        let mut missing = HashSet::new();
        for (&cookie, &pid) in &self.open_flows {
            match sensor.flow_stats(cookie) {
                Some(s) => {
                    if let Some(pc) = procs.get_mut(&pid) {
                        pc.flows.push(flow_counters(cookie, &s));
                    }
                }
                None => {
                    missing.insert(cookie);
                }
            }
        }
        let evicted: Vec<u64> = missing
            .iter()
            .filter(|c| self.flows_missing.contains(c))
            .copied()
            .collect();
        for cookie in &evicted {
            missing.remove(cookie);
            self.open_flows.remove(cookie);
        }
        self.flows_evicted += evicted.len() as u64;
        self.flows_missing = missing;
    }

    /// Counters of every watched process and the sensor's health.
    pub fn snapshot(&mut self, sensor: &mut Sensor, output_write_errors: u64) -> Event {
        let mut procs: BTreeMap<u32, ProcessCounters> = BTreeMap::new();
        for pid in self.table.pids() {
            let Some(p) = self.table.get(pid) else {
                continue;
            };
            let mut files: Vec<FileCounters> = p
                .files
                .iter()
                .filter_map(|(key, path)| {
                    sensor.file_stats(key).map(|s| file_counters(key, path, &s))
                })
                .collect();
            files.sort_by(|a, b| a.path.cmp(&b.path));
            procs.insert(
                pid,
                ProcessCounters {
                    pid,
                    app: self.app_name(p.app),
                    exe: p.exe.clone(),
                    files,
                    flows: Vec::new(),
                },
            );
        }
        self.flows_into(sensor, &mut procs);
        let counters = sensor.hook_counters();
        let hooks: Vec<HookHealth> = counters
            .iter()
            .zip(hook::NAMES)
            .map(|(c, name)| HookHealth {
                hook: name.into(),
                events: c.events,
                ringbuf_drops: c.ringbuf_drops,
                read_errors: c.read_errors,
                map_full: c.map_full,
                quota_refused: c.quota_refused,
            })
            .collect();
        let census = sensor.census();
        Event::Snapshot {
            time: self.clock.now(),
            processes: procs.into_values().collect(),
            health: Health {
                quota_refused: hooks.iter().map(|h| h.quota_refused).sum(),
                map_full: hooks.iter().map(|h| h.map_full).sum(),
                watched_capacity: clinicwatch_common::capacity::WATCHED as usize,
                reader_processes: census.reader_processes,
                reader_flows: census.reader_flows,
                readers_not_followed: self.readers_not_followed,
                flows_evicted: self.flows_evicted,
                ringbuf_drops: hooks.iter().map(|h| h.ringbuf_drops).sum(),
                hooks,
                decode: self.decode,
                unknown_process: self.unknown_process,
                exits_missed: self.reaped,
                file_counters_evicted: self.evicted,
                output_write_errors,
                watched_processes: census.watched,
            },
        }
    }
}
