//! Aggregation windows: per watched app, what it read by file class, where it sent and
//! received how much, which children it ran. Built from the agent's events alone (live
//! counters arrive in snapshots, final ones at exit and flow close), so a recorded event
//! file replays to the same windows.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use super::classes::Classifier;
use crate::event::{
    class::FileClass,
    summary::{ClassStats, DestStats, QueryStats, WindowSummary},
    Event, FileCounters, FlowCounters, ProcessCounters,
};

/// Templates kept per app and window; the rest are counted under `{other}`.
pub const QUERY_TEMPLATES_MAX: usize = 256;
/// Precision of the distinct-identifier sketches (16,384 registers: about 0.8% error).
const QUERY_SKETCH_PRECISION: u8 = 14;

/// A destination as the window keys it: no string is built per event.
type DestKey = (IpAddr, u16, u8);

fn proto_code(p: &str) -> u8 {
    match p {
        "tcp" => 6,
        "udp" => 17,
        _ => 0,
    }
}

#[derive(Default)]
struct Acc {
    classes: BTreeMap<FileClass, ClassStats>,
    files: HashMap<FileClass, HashSet<(String, u64)>>,
    dests: BTreeMap<DestKey, DestStats>,
    children: BTreeMap<String, u64>,
    pids: HashSet<u32>,
    queries: BTreeMap<(String, String, String), (QueryStats, clinicwatch_proto::hll::Hll)>,
}

impl Acc {
    fn class(&mut self, c: FileClass, dev: &str, ino: u64) -> &mut ClassStats {
        self.files
            .entry(c)
            .or_default()
            .insert((dev.to_string(), ino));
        self.classes.entry(c).or_default()
    }

    fn query(
        &mut self,
        protocol: &str,
        method: &str,
        host: &str,
        path: &str,
    ) -> &mut (QueryStats, clinicwatch_proto::hll::Hll) {
        let mut key = (method.to_string(), host.to_string(), path.to_string());
        if !self.queries.contains_key(&key) && self.queries.len() >= QUERY_TEMPLATES_MAX {
            key.2 = "{other}".into();
        }
        self.queries.entry(key.clone()).or_insert_with(|| {
            (
                QueryStats {
                    protocol: protocol.to_string(),
                    method: key.0,
                    host: key.1,
                    path: key.2,
                    ..Default::default()
                },
                // The precision is a constant within the accepted range.
                clinicwatch_proto::hll::Hll::new(QUERY_SKETCH_PRECISION)
                    .unwrap_or_else(|_| unreachable!("valid precision")),
            )
        })
    }

    fn dest(&mut self, dst: IpAddr, port: u16, protocol: &str) -> &mut DestStats {
        self.dests
            .entry((dst, port, proto_code(protocol)))
            .or_insert_with(|| DestStats {
                dst,
                port,
                protocol: protocol.to_string(),
                name: None,
                bytes_sent: 0,
                bytes_recv: 0,
                connects: 0,
            })
    }
}

#[derive(Clone, Copy, Default)]
struct FileLast {
    bytes: u64,
    reads: u64,
    opens: u64,
    mmaps: u64,
}

/// Builds windows from events. `push` returns the windows an event's time closed.
pub struct Windows {
    len: f64,
    apps: Vec<String>,
    classifier: Classifier,
    hours: super::hours::PracticeHours,
    start: Option<f64>,
    acc: BTreeMap<String, Acc>,
    files: HashMap<(u32, String, u64), (FileClass, FileLast)>,
    flows: HashMap<u64, (u64, u64)>,
    /// Flow → the destination's name from its connect (flows outlive windows).
    names: HashMap<u64, String>,
}

fn delta(now: u64, last: u64) -> u64 {
    // A counter below its last value was recreated (LRU eviction): count it afresh.
    if now >= last {
        now - last
    } else {
        now
    }
}

impl Windows {
    pub fn new(
        len_secs: u64,
        apps: Vec<String>,
        classifier: Classifier,
        hours: super::hours::PracticeHours,
    ) -> Self {
        Self {
            len: len_secs as f64,
            apps,
            classifier,
            hours,
            start: None,
            acc: BTreeMap::new(),
            files: HashMap::new(),
            flows: HashMap::new(),
            names: HashMap::new(),
        }
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    fn align(&self, t: f64) -> f64 {
        (t / self.len).floor() * self.len
    }

    /// Closes the current window if `now` is past its end; a gap of several windows (the
    /// agent was not running) closes only the current one.
    pub fn tick(&mut self, now: f64) -> Vec<WindowSummary> {
        match self.start {
            None => {
                self.start = Some(self.align(now));
                Vec::new()
            }
            Some(start) if now >= start + self.len => {
                let out = self.close(start);
                self.start = Some(self.align(now));
                out
            }
            Some(_) => Vec::new(),
        }
    }

    /// More than a whole window past the current one's end.
    fn past(&self, t: f64) -> bool {
        self.start.is_some_and(|s| t >= s + 2.0 * self.len)
    }

    pub fn due(&self, now: f64) -> bool {
        self.start.is_some_and(|s| now >= s + self.len)
    }

    /// Closes the current window now (at stop).
    pub fn flush(&mut self) -> Vec<WindowSummary> {
        match self.start.take() {
            Some(start) => self.close(start),
            None => Vec::new(),
        }
    }

    fn close(&mut self, start: f64) -> Vec<WindowSummary> {
        let mid = start + self.len / 2.0;
        let offset = self.hours.offset_secs(mid);
        let hour = super::hours::hour_of_week(start, offset);
        let in_hours = self.hours.contains(start);
        let mut acc = std::mem::take(&mut self.acc);
        self.apps
            .iter()
            .filter_map(|app| {
                // Followed protected readers have a summary only when they did something.
                let a = match acc.remove(app) {
                    None if app == super::PROTECTED_READER_APP => return None,
                    a => a.unwrap_or_default(),
                };
                let mut classes = a.classes;
                for (c, set) in &a.files {
                    if let Some(s) = classes.get_mut(c) {
                        s.files = set.len() as u64;
                    }
                }
                let mut queries: Vec<QueryStats> = a
                    .queries
                    .into_values()
                    .map(|(mut q, ids)| {
                        q.distinct_ids = ids.estimate().round() as u64;
                        q
                    })
                    .collect();
                queries.sort_by(|x, y| y.requests.cmp(&x.requests).then(x.key().cmp(&y.key())));
                Some(WindowSummary {
                    app: app.clone(),
                    start,
                    end: start + self.len,
                    hour_of_week: hour,
                    in_practice_hours: in_hours,
                    classes,
                    destinations: a.dests.into_values().collect(),
                    children: a.children,
                    processes: a.pids.len() as u64,
                    queries,
                })
            })
            .collect()
    }

    /// The open window's accumulator of an app (allocating its name only the first time).
    fn acc(&mut self, app: &str) -> &mut Acc {
        if !self.acc.contains_key(app) {
            self.acc.insert(app.to_string(), Acc::default());
        }
        self.acc.get_mut(app).expect("inserted above")
    }

    fn file_counters(&mut self, app: &str, pid: u32, f: &FileCounters, last_one: bool) {
        let key = (pid, f.dev.clone(), f.ino);
        let (class, last) = match self.files.get(&key) {
            Some(v) => *v,
            None => (self.classifier.classify(app, &f.path), FileLast::default()),
        };
        let d = FileLast {
            bytes: delta(f.bytes_read, last.bytes),
            reads: delta(f.reads, last.reads),
            opens: delta(f.opens, last.opens),
            mmaps: delta(f.mmaps, last.mmaps),
        };
        if d.bytes + d.reads + d.opens + d.mmaps > 0 {
            let acc = self.acc(app);
            acc.pids.insert(pid);
            let s = acc.class(class, &f.dev, f.ino);
            s.bytes += d.bytes;
            s.reads += d.reads;
            s.opens += d.opens;
            s.mmaps += d.mmaps;
        }
        if last_one {
            self.files.remove(&key);
        } else {
            let now = FileLast {
                bytes: f.bytes_read,
                reads: f.reads,
                opens: f.opens,
                mmaps: f.mmaps,
            };
            self.files.insert(key, (class, now));
        }
    }

    fn flow_counters(&mut self, app: &str, pid: u32, f: &FlowCounters, last_one: bool) {
        let (ls, lr) = self.flows.get(&f.flow).copied().unwrap_or((0, 0));
        let (ds, dr) = (delta(f.bytes_sent, ls), delta(f.bytes_recv, lr));
        if ds + dr > 0 {
            let name = self.names.get(&f.flow).cloned();
            let acc = self.acc(app);
            acc.pids.insert(pid);
            let d = acc.dest(f.dst, f.port, &f.protocol);
            d.bytes_sent += ds;
            d.bytes_recv += dr;
            if d.name.is_none() {
                d.name = name;
            }
        }
        if last_one {
            self.flows.remove(&f.flow);
            self.names.remove(&f.flow);
        } else {
            self.flows.insert(f.flow, (f.bytes_sent, f.bytes_recv));
        }
    }

    /// Folds an event into the current window (closing it first if the event is past it).
    /// A snapshot's counters accrued before it was taken: they are folded into the window
    /// still open, and only then does its time close that window.
    pub fn push(&mut self, ev: &Event) -> Vec<WindowSummary> {
        let mut closed = match ev.time() {
            // Counters up to a snapshot taken just after the window's end belong to it; a
            // snapshot after a gap (the agent was stopped) starts afresh.
            Some(t) if matches!(ev, Event::Snapshot { .. }) && !self.past(t) => Vec::new(),
            Some(t) => self.tick(t),
            None => Vec::new(),
        };
        self.fold(ev);
        if let Event::Snapshot { time, .. } = ev {
            // After a gap the first tick closed the window before it; this one closes the
            // fresh window only if the snapshot already ends it. Both are returned.
            closed.extend(self.tick(*time));
        }
        closed
    }

    /// What `ev` adds to its app's open window.
    fn fold(&mut self, ev: &Event) {
        match ev {
            Event::Exec {
                app,
                pid,
                exe,
                ancestry,
                ..
            } if !ancestry.is_empty() && self.apps.contains(app) => {
                let acc = self.acc(app);
                acc.pids.insert(*pid);
                *acc.children
                    .entry(super::privacy::exe_path(exe))
                    .or_default() += 1;
            }
            Event::FileOpen { app, pid, file, .. } | Event::FileMmap { app, pid, file, .. }
                if self.apps.contains(app) =>
            {
                let class = self.classifier.classify(app, &file.path);
                let acc = self.acc(app);
                acc.pids.insert(*pid);
                acc.class(class, &file.dev, file.ino);
            }
            Event::NetConnect { app, .. } | Event::Query { app, .. } if self.apps.contains(app) => {
                self.on_connect_or_query(ev)
            }
            Event::QueryResponse {
                app,
                method,
                host,
                path,
                status,
                ..
            } if self.apps.contains(app) => {
                let acc = self.acc(app);
                let (q, _) = acc.query("http/1.1", method, host, path);
                q.responses[((*status / 100) as usize).clamp(1, 5) - 1] += 1;
            }
            Event::NetClose {
                app, pid, counters, ..
            } if self.apps.contains(app) => {
                self.flow_counters(&app.clone(), *pid, counters, true);
            }
            Event::Exit {
                app,
                pid,
                files,
                flows,
                ..
            } if self.apps.contains(app) => self.on_exit(app, *pid, files, flows),
            Event::Snapshot { processes, .. } => self.on_snapshot(processes),
            _ => {}
        }
    }

    /// A connection (its destination and name) or a query (its template's counts).
    fn on_connect_or_query(&mut self, ev: &Event) {
        match ev {
            Event::NetConnect {
                app,
                pid,
                flow,
                protocol,
                dst,
                port,
                name,
                ..
            } => {
                if let Some(n) = name {
                    self.names.insert(*flow, n.clone());
                }
                let acc = self.acc(app);
                acc.pids.insert(*pid);
                let d = acc.dest(*dst, *port, protocol);
                d.connects += 1;
                if d.name.is_none() {
                    d.name.clone_from(name);
                }
            }
            Event::Query {
                app,
                pid,
                protocol,
                method,
                host,
                path,
                requests,
                bytes,
                ids,
                ..
            } => {
                let acc = self.acc(app);
                acc.pids.insert(*pid);
                let (q, sketch) = acc.query(protocol, method, host, path);
                q.requests += *requests as u64;
                q.bytes_sent += bytes;
                for id in ids {
                    sketch.insert_hash(*id);
                }
            }
            _ => {}
        }
    }

    /// A process's final counters.
    fn on_exit(&mut self, app: &str, pid: u32, files: &[FileCounters], flows: &[FlowCounters]) {
        for f in files {
            self.file_counters(app, pid, f, true);
        }
        // A socket can outlive the process (inherited by a child): its close record
        // finishes the flow, so the counters so far are kept, not reset.
        for f in flows {
            self.flow_counters(app, pid, f, false);
        }
        // Files the exit did not list are gone with the process.
        self.files.retain(|(p, _, _), _| *p != pid);
    }

    /// The live counters of the watched apps' processes.
    fn on_snapshot(&mut self, processes: &[ProcessCounters]) {
        for p in processes {
            if !self.apps.contains(&p.app) {
                continue;
            }
            for f in &p.files {
                self.file_counters(&p.app, p.pid, f, false);
            }
            for f in &p.flows {
                self.flow_counters(&p.app, p.pid, f, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::UtcOffset, event::Health};

    fn windows() -> Windows {
        Windows::new(
            60,
            vec!["pm".into()],
            Classifier::new(&[], &[]),
            super::super::hours::PracticeHours::new(&[], UtcOffset::Minutes(0)),
        )
    }

    fn snapshot(time: f64) -> Event {
        Event::Snapshot {
            time,
            processes: Vec::new(),
            health: Health::default(),
        }
    }

    #[test]
    fn a_snapshot_after_a_gap_returns_the_window_before_the_gap() {
        let mut w = windows();
        assert!(w.push(&snapshot(10.0)).is_empty());
        // The agent was stopped for a quarter of an hour: the next snapshot closes the
        // window it was in, which must come back, not be dropped.
        let closed = w.push(&snapshot(1_000.0));
        let starts: Vec<f64> = closed.iter().map(|s| s.start).collect();
        assert_eq!(starts, [0.0]);
        // The fresh window starts at the snapshot's own window and closes in its turn.
        let next = w.push(&snapshot(1_021.0));
        assert_eq!(next.iter().map(|s| s.start).collect::<Vec<_>>(), [960.0]);
    }
}
