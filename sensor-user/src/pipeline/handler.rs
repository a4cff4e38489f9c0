//! Turns kernel records into reported events: resolves application names, ancestry, paths
//! and flags, applies the command-line filter, and reads final counters at exit. Also builds
//! the periodic snapshot of counters and health.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use clinicwatch_common::{
    hook, origin, path_flags, FileKey, FileStats, FlowAddr, FlowStats, PathBuf as KPath,
    WatchedProc, ARGV_LEN,
};
use regex::Regex;

use crate::{
    config::Config,
    event::DecodeStats,
    event::{
        Ancestor, Event, FileCounters, FileRef, FlowCounters, Health, HookHealth, ProcessCounters,
    },
    kernel::procfs,
    kernel::sensor::Sensor,
    pipeline::decode::KernelEvent,
    pipeline::proctable::{ProcInfo, ProcTable},
};

/// Converts the kernel's boot-time clock to Unix time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    /// Unix time in seconds of a `bpf_ktime_get_boot_ns` value.
    pub fn unix(&self, boot_ns: u64) -> f64 {
        (boot_ns as i128 + self.offset_ns) as f64 / 1e9
    }

    /// Now, on the same clock as event times (boot time plus the offset taken at start), so
    /// a step of the wall clock cannot split the agent's notion of time.
    pub fn now(&self) -> f64 {
        (clock_ns(libc::CLOCK_BOOTTIME) + self.offset_ns) as f64 / 1e9
    }

    /// How far the wall clock has moved from this clock since it was made (a step of NTP or
    /// of an administrator; suspend does not count, boot time runs through it).
    pub fn wall_drift(&self) -> f64 {
        (clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME) - self.offset_ns) as f64
            / 1e9
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A kernel path buffer (leaf first) as an absolute path.
pub fn path_string(p: &KPath) -> String {
    let depth = (p.depth as usize).min(p.comps.len());
    let mut s = String::new();
    if p.flags & path_flags::TRUNCATED != 0 {
        s.push_str("/...");
    }
    for comp in p.comps[..depth].iter().rev() {
        let end = comp.iter().position(|&b| b == 0).unwrap_or(comp.len());
        s.push('/');
        s.push_str(&String::from_utf8_lossy(&comp[..end]));
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// The status code of a captured HTTP/1 status line (`HTTP/1.1 200 OK`), if it is one.
pub fn http_status(line: &[u8]) -> Option<u16> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
}

fn comm_string(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

fn protocol_name(p: u16) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        other => format!("ip:{other}"),
    }
}

fn remote_ip(r: &FlowAddr) -> IpAddr {
    if r.family == libc::AF_INET6 as u16 {
        IpAddr::from(r.addr)
    } else {
        IpAddr::from([r.addr[0], r.addr[1], r.addr[2], r.addr[3]])
    }
}

pub fn flow_counters(cookie: u64, s: &FlowStats) -> FlowCounters {
    FlowCounters {
        flow: cookie,
        protocol: protocol_name(s.remote.protocol),
        dst: remote_ip(&s.remote),
        port: s.remote.port,
        bytes_sent: s.bytes_sent,
        bytes_recv: s.bytes_recv,
        packets_sent: s.packets_sent,
        packets_recv: s.packets_recv,
    }
}

fn file_counters(key: &FileKey, path: &str, s: &FileStats) -> FileCounters {
    FileCounters {
        path: path.to_string(),
        dev: procfs::dev_string(key.dev),
        ino: key.ino,
        bytes_read: s.bytes_read,
        reads: s.reads,
        opens: s.opens,
        mmaps: s.mmaps,
    }
}

/// The state the kernel records are interpreted against.
pub struct Handler {
    pub table: ProcTable,
    pub clock: Clock,
    pub decode: DecodeStats,
    pub unknown_process: u64,
    /// Processes forgotten because they vanished without an exit record.
    pub reaped: u64,
    /// File counters evicted from the LRU map before their process exited.
    pub evicted: u64,
    /// Open flows whose counters the LRU map evicted before they closed.
    pub flows_evicted: u64,
    /// Open flows without counters at the last snapshot.
    flows_missing: std::collections::HashSet<u64>,
    /// Protected readers not followed: the readers' quota was used up.
    pub readers_not_followed: u64,
    /// Processes found gone at the last `reap_dead`.
    suspects: Vec<u32>,
    apps: Vec<String>,
    cmdline: Vec<Option<Regex>>,
    protected: Vec<String>,
    /// Flows still open: cookie → pid, for exit summaries.
    open_flows: BTreeMap<u64, u32>,
    /// Instances of a watched executable whose command line did not match (and their
    /// children): unwatched in the kernel, and records already in flight are dropped.
    rejected: std::collections::HashSet<u32>,
    /// Watch a process outside the apps once it opens a protected file.
    follow_readers: bool,
    /// Names from the DNS answers watched flows received, by application and address.
    pub names: crate::pipeline::dns::Names,
    /// DNS answers that named addresses.
    pub dns_answers: u64,
    /// Answers from servers other than the resolvers, ignored (a process could otherwise
    /// name an address of its choosing after the vendor).
    pub dns_untrusted: u64,
    /// The resolvers whose answers are believed.
    resolvers: std::collections::HashSet<IpAddr>,
    /// Open flows to port 53: cookie → (server, application).
    dns_flows: HashMap<u64, (IpAddr, u32)>,
    /// The questions those flows asked: an answer is read only for one of them.
    pub dns_asked: crate::pipeline::dns::Asked,
    /// Makes query templates from TLS plaintext (the agent gives it the clinic's key).
    pub templater: crate::pipeline::query::Templater,
    /// The last request's template per TLS connection (process, `SSL *`), for its response.
    last_request: HashMap<(u32, u64), (String, String, String)>,
    /// TLS writes that were not the start of a request (bodies, other protocols).
    pub tls_other: u64,
}

/// TLS connections whose last request is remembered (past it, the memory is cleared).
const TLS_CONNECTIONS_KEPT: usize = 4096;

/// DNS questions remembered at once, for their answers.
const DNS_QUESTIONS_KEPT: usize = 4096;

/// Flows to port 53 remembered at once (past it, the oldest knowledge is dropped).
const DNS_FLOWS_KEPT: usize = 1024;

/// Addresses remembered with the name they were resolved from.
const NAMES_KEPT: usize = 4096;

/// The configured resolvers, or those of `/etc/resolv.conf` and systemd-resolved's stub.
fn resolvers(configured: &[String]) -> std::collections::HashSet<IpAddr> {
    if !configured.is_empty() {
        return configured.iter().filter_map(|r| r.parse().ok()).collect();
    }
    let mut set: std::collections::HashSet<IpAddr> = crate::pipeline::dns::resolvers(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    )
    .into_iter()
    .collect();
    set.insert(IpAddr::from([127, 0, 0, 53]));
    set
}

/// A keyed hash under a key of this run only (until the agent sets the clinic's).
fn random_key_hash() -> impl Fn(&str) -> u64 + Send {
    use std::hash::{BuildHasher as _, Hasher as _};
    let state = std::collections::hash_map::RandomState::new();
    move |s: &str| {
        let mut h = state.build_hasher();
        h.write(s.as_bytes());
        h.finish()
    }
}

/// The application index of processes followed because they opened a protected file.
pub const READER_APP: u32 = clinicwatch_common::READER_APP;

impl Handler {
    pub fn new(cfg: &Config) -> Self {
        Self {
            table: ProcTable::default(),
            clock: Clock::new(),
            decode: DecodeStats::default(),
            unknown_process: 0,
            reaped: 0,
            evicted: 0,
            flows_evicted: 0,
            flows_missing: Default::default(),
            readers_not_followed: 0,
            suspects: Vec::new(),
            apps: cfg.apps.iter().map(|a| a.name.clone()).collect(),
            // Validated in `Config::validate`.
            cmdline: cfg
                .apps
                .iter()
                .map(|a| a.cmdline.as_deref().and_then(|r| Regex::new(r).ok()))
                .collect(),
            protected: cfg.protected.iter().map(|p| p.name.clone()).collect(),
            open_flows: BTreeMap::new(),
            rejected: Default::default(),
            follow_readers: cfg.intel.follow_protected_readers,
            names: crate::pipeline::dns::Names::new(NAMES_KEPT),
            dns_answers: 0,
            dns_untrusted: 0,
            resolvers: resolvers(&cfg.agent.dns_resolvers),
            dns_flows: HashMap::new(),
            dns_asked: crate::pipeline::dns::Asked::new(DNS_QUESTIONS_KEPT),
            templater: crate::pipeline::query::Templater::new(
                Box::new(random_key_hash()),
                &cfg.intel.query_route_words,
            ),
            last_request: HashMap::new(),
            tls_other: 0,
        }
    }

    pub fn app_name(&self, app: u32) -> String {
        if app == READER_APP {
            return crate::intel::PROTECTED_READER_APP.into();
        }
        self.apps
            .get(app as usize)
            .cloned()
            .unwrap_or_else(|| format!("app#{app}"))
    }

    /// Whether a command line passes the application's optional filter.
    pub fn cmdline_matches(&self, app: u32, argv: &[String]) -> bool {
        match self.cmdline.get(app as usize) {
            Some(Some(re)) => re.is_match(&argv.join(" ")),
            _ => true,
        }
    }

    fn exe_of(&mut self, pid: u32) -> String {
        match self.table.get(pid) {
            Some(p) => p.exe.clone(),
            None => {
                self.unknown_process += 1;
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            }
        }
    }

    /// Interprets one kernel record; returns the event to report, if any.
    pub fn handle(&mut self, ev: KernelEvent, sensor: &mut Sensor) -> Option<Event> {
        if !self.rejected.is_empty() && self.drop_rejected(&ev, sensor) {
            return None;
        }
        match ev {
            KernelEvent::Exec(e) => {
                let pid = e.hdr.tgid;
                let time = self.clock.unix(e.hdr.time_ns);
                let len = (e.argv_len as usize).min(ARGV_LEN);
                let argv = procfs::split_args(&e.argv[..len]);
                let is_root = e.root_tgid == pid;
                // Judged once, on the exec that started the tree (a launcher that re-execs
                // stays in); on the whole command line, not the 256 bytes the kernel copied.
                let judged = is_root && self.table.get(pid).is_none();
                let full_argv = if judged && len == ARGV_LEN {
                    procfs::read_cmdline(pid)
                } else {
                    Vec::new()
                };
                let filter_argv = if full_argv.is_empty() {
                    &argv
                } else {
                    &full_argv
                };
                if judged && !self.cmdline_matches(e.app, filter_argv) {
                    // Right executable, wrong command line: not this application.
                    let _ = sensor.unwatch(pid);
                    self.table.remove(pid);
                    self.rejected.insert(pid);
                    return None;
                }
                let exe = path_string(&e.exe);
                // An exec keeps the files the process had already seen.
                let files = self.table.remove(pid).map(|p| p.files).unwrap_or_default();
                let info = ProcInfo {
                    files,
                    ..ProcInfo::new(e.ppid, e.app, e.root_tgid, exe.clone())
                };
                self.table.insert(pid, info);
                let ancestry = if is_root {
                    Vec::new()
                } else {
                    self.table.ancestry(e.ppid)
                };
                Some(Event::Exec {
                    time,
                    pid,
                    ppid: e.ppid,
                    uid: e.uid,
                    gid: e.gid,
                    app: self.app_name(e.app),
                    exe,
                    argv,
                    argv_truncated: len == ARGV_LEN,
                    cgroup_id: e.cgroup_id,
                    cgroup: procfs::cgroup_path(pid),
                    ancestry,
                })
            }
            KernelEvent::Fork(e) => {
                let pid = e.hdr.tgid;
                let exe = self.exe_of(e.ppid);
                self.table
                    .insert(pid, ProcInfo::new(e.ppid, e.app, e.root_tgid, exe));
                Some(Event::Fork {
                    time: self.clock.unix(e.hdr.time_ns),
                    pid,
                    ppid: e.ppid,
                    app: self.app_name(e.app),
                })
            }
            KernelEvent::Exit(e) => {
                let pid = e.hdr.tgid;
                let info = self.table.remove(pid).unwrap_or_default();
                // Files whose counters the LRU map evicted before the exit.
                let mut evicted = 0u64;
                let mut files: Vec<FileCounters> = info
                    .files
                    .iter()
                    .filter_map(|(key, path)| {
                        let s = sensor.take_file_stats(key);
                        if s.is_none() {
                            evicted += 1;
                        }
                        Some(file_counters(key, path, &s?))
                    })
                    .collect();
                files.sort_by(|a, b| a.path.cmp(&b.path));
                let cookies: Vec<u64> = self
                    .open_flows
                    .iter()
                    .filter(|(_, p)| **p == pid)
                    .map(|(c, _)| *c)
                    .collect();
                let flows = cookies
                    .iter()
                    .filter_map(|c| sensor.flow_stats(*c).map(|s| flow_counters(*c, &s)))
                    .collect();
                self.evicted += evicted;
                let status = e.exit_code as i32;
                Some(Event::Exit {
                    time: self.clock.unix(e.hdr.time_ns),
                    pid,
                    app: self.app_name(e.app),
                    exe: info.exe,
                    exit_code: (status >> 8) & 0xff,
                    signal: status & 0x7f,
                    files,
                    files_evicted: evicted,
                    flows,
                })
            }
            KernelEvent::FileOpen(e) | KernelEvent::FileMmap(e) => {
                let pid = e.hdr.tgid;
                let path = path_string(&e.path);
                let key = FileKey {
                    tgid: pid,
                    dev: e.dev,
                    ino: e.ino,
                };
                match self.table.get_mut(pid) {
                    Some(p) => {
                        p.files.insert(key, path.clone());
                    }
                    None => self.unknown_process += 1,
                }
                let time = self.clock.unix(e.hdr.time_ns);
                let app = self.app_name(e.app);
                let file = FileRef {
                    path,
                    flags: procfs::open_flags(e.flags),
                    dev: procfs::dev_string(e.dev),
                    ino: e.ino,
                };
                Some(match ev {
                    KernelEvent::FileMmap(_) => Event::FileMmap {
                        time,
                        pid,
                        app,
                        file,
                    },
                    _ => {
                        let origin = if e.origin == origin::READ {
                            "read"
                        } else {
                            "open"
                        };
                        Event::FileOpen {
                            time,
                            pid,
                            app,
                            file,
                            origin: origin.into(),
                        }
                    }
                })
            }
            KernelEvent::ProtectedOpen(e) => {
                let ancestry = e
                    .ancestors
                    .iter()
                    .take_while(|a| a.pid != 0)
                    .map(|a| {
                        let exe = std::fs::read_link(format!("/proc/{}/exe", a.pid))
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|_| comm_string(&a.comm));
                        Ancestor { pid: a.pid, exe }
                    })
                    .collect();
                let exe = path_string(&e.exe);
                if self.follow_readers && self.table.get(e.hdr.tgid).is_none() {
                    // From now on its connects, reads and children are seen (as the app
                    // `protected-reader`): the infostealer rule needs the connect.
                    let w = WatchedProc {
                        app: READER_APP,
                        root_tgid: e.hdr.tgid,
                        depth: 0,
                        _pad: 0,
                    };
                    match sensor.watch(e.hdr.tgid, w) {
                        Ok(()) => self.table.insert(
                            e.hdr.tgid,
                            ProcInfo::new(e.ppid, READER_APP, e.hdr.tgid, exe.clone()),
                        ),
                        Err(err) => {
                            use crate::kernel::sensor::SensorError;
                            if matches!(err, SensorError::ReaderQuota { .. }) {
                                self.readers_not_followed += 1;
                            }
                            tracing::debug!(error = %err, "cannot follow a protected reader")
                        }
                    }
                }
                Some(Event::ProtectedOpen {
                    time: self.clock.unix(e.hdr.time_ns),
                    pid: e.hdr.tgid,
                    ppid: e.ppid,
                    uid: e.uid,
                    comm: comm_string(&e.comm),
                    exe,
                    path: path_string(&e.path),
                    rule: self
                        .protected
                        .get(e.rule as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("protected#{}", e.rule)),
                    flags: procfs::open_flags(e.flags),
                    ancestry,
                })
            }
            KernelEvent::Connect(e) => {
                self.open_flows.insert(e.cookie, e.hdr.tgid);
                let dst = remote_ip(&e.remote);
                if e.remote.port == 53 {
                    if self.dns_flows.len() >= DNS_FLOWS_KEPT {
                        self.dns_flows.clear();
                    }
                    self.dns_flows.insert(e.cookie, (dst, e.app));
                }
                Some(Event::NetConnect {
                    time: self.clock.unix(e.hdr.time_ns),
                    pid: e.hdr.tgid,
                    app: self.app_name(e.app),
                    flow: e.cookie,
                    protocol: protocol_name(e.remote.protocol),
                    dst,
                    port: e.remote.port,
                    name: self.names.name(e.app, &dst).map(str::to_string),
                })
            }
            KernelEvent::Dns(e) => {
                let data = &e.data[..(e.len as usize).min(e.data.len())];
                let query = e.hdr.kind == clinicwatch_common::kind::DNS_QUERY;
                match self.dns_flows.get(&e.cookie) {
                    Some(_) if query => self.dns_asked.ask(e.cookie, e.hdr.time_ns, data),
                    Some((server, app)) if self.resolvers.contains(server) => {
                        // Only the answer to a question this flow asked.
                        if self.dns_asked.asked(e.cookie, e.hdr.time_ns, data)
                            && self.names.learn(*app, e.cookie, e.hdr.time_ns, data) > 0
                        {
                            self.dns_answers += 1;
                        }
                    }
                    _ if query => {}
                    _ => self.dns_untrusted += 1,
                }
                None
            }
            KernelEvent::TlsWrite(e) => {
                let data = &e.data[..(e.captured as usize).min(e.data.len())];
                let (protocol, requests, method, host, path, ids) =
                    match crate::pipeline::query::parse(data) {
                        crate::pipeline::query::Write::Http1(r) => {
                            let t = self.templater.template(&r);
                            if self.last_request.len() >= TLS_CONNECTIONS_KEPT {
                                self.last_request.clear();
                            }
                            self.last_request.insert(
                                (e.hdr.tgid, e.ssl),
                                (t.method.clone(), t.host.clone(), t.path.clone()),
                            );
                            ("http/1.1", 1, t.method, t.host, t.path, t.ids)
                        }
                        crate::pipeline::query::Write::Http2 { requests } if requests > 0 => (
                            "h2",
                            requests,
                            String::new(),
                            String::new(),
                            "{h2}".to_string(),
                            Vec::new(),
                        ),
                        _ => {
                            self.tls_other += 1;
                            return None;
                        }
                    };
                Some(Event::Query {
                    time: self.clock.unix(e.hdr.time_ns),
                    pid: e.hdr.tgid,
                    app: self.app_name(e.app),
                    protocol: protocol.into(),
                    method,
                    host,
                    path,
                    requests,
                    bytes: e.len,
                    ids,
                })
            }
            KernelEvent::TlsRead(e) => {
                let status = http_status(&e.status[..(e.captured as usize).min(e.status.len())])?;
                let (method, host, path) = self.last_request.get(&(e.hdr.tgid, e.ssl))?.clone();
                Some(Event::QueryResponse {
                    time: self.clock.unix(e.hdr.time_ns),
                    pid: e.hdr.tgid,
                    app: self.app_name(e.app),
                    method,
                    host,
                    path,
                    status,
                })
            }
            KernelEvent::FlowClose(e) => {
                self.open_flows.remove(&e.cookie);
                if self.dns_flows.remove(&e.cookie).is_some() {
                    self.dns_asked.forget(e.cookie);
                }
                Some(Event::NetClose {
                    time: self.clock.unix(e.hdr.time_ns),
                    pid: e.stats.tgid,
                    app: self.app_name(e.stats.app),
                    counters: flow_counters(e.cookie, &e.stats),
                })
            }
        }
    }

    /// Whether a record belongs to a rejected process (see `rejected`); keeps that set and
    /// the kernel's watched set in step.
    fn drop_rejected(&mut self, ev: &KernelEvent, sensor: &mut Sensor) -> bool {
        match ev {
            KernelEvent::Exec(e) if e.root_tgid == e.hdr.tgid => {
                // A fresh start of a watched executable is judged again.
                self.rejected.remove(&e.hdr.tgid);
                false
            }
            KernelEvent::Fork(e) if self.rejected.contains(&e.ppid) => {
                let _ = sensor.unwatch(e.hdr.tgid);
                self.rejected.insert(e.hdr.tgid);
                true
            }
            KernelEvent::Exit(e) => self.rejected.remove(&e.hdr.tgid),
            KernelEvent::FlowClose(e) => self.rejected.contains(&e.stats.tgid),
            KernelEvent::Exec(e) => self.rejected.contains(&e.hdr.tgid),
            KernelEvent::Fork(_) => false,
            KernelEvent::FileOpen(e) | KernelEvent::FileMmap(e) => {
                self.rejected.contains(&e.hdr.tgid)
            }
            KernelEvent::Connect(e) => self.rejected.contains(&e.hdr.tgid),
            KernelEvent::TlsWrite(e) => self.rejected.contains(&e.hdr.tgid),
            KernelEvent::TlsRead(e) => self.rejected.contains(&e.hdr.tgid),
            KernelEvent::ProtectedOpen(_) | KernelEvent::Dns(_) => false,
        }
    }

    /// Forgets processes that are gone without an exit record (lost to a full ring buffer):
    /// removes their counters from the kernel maps and counts them in `health`. A process is
    /// only forgotten when it was already gone at the previous call, so an exit record still
    /// in the ring buffer is always handled first.
    pub fn reap_dead(&mut self, sensor: &mut Sensor) {
        let gone = |pid: &u32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
        let suspects = std::mem::take(&mut self.suspects);
        for pid in suspects.into_iter().filter(gone) {
            if let Some(info) = self.table.remove(pid) {
                for key in info.files.keys() {
                    sensor.remove_file_stats(key);
                }
                let _ = sensor.unwatch(pid);
                self.reaped += 1;
            }
        }
        self.suspects = self.table.pids().filter(gone).collect();
        // A rejected process whose exit record was lost: forget it before its pid is reused.
        self.rejected.retain(|pid| !gone(pid));
    }

    /// Adds a process found running at start-up.
    pub fn seed(&mut self, pid: u32, ppid: u32, w: WatchedProc, exe: String) -> Event {
        self.table
            .insert(pid, ProcInfo::new(ppid, w.app, w.root_tgid, exe.clone()));
        Event::Seed {
            time: self.clock.now(),
            pid,
            ppid,
            app: self.app_name(w.app),
            exe,
            root_pid: w.root_tgid,
        }
    }

    /// The open flows' counters into their processes. A flow whose counters are gone at two
    /// snapshots in a row (not one: its close may be in flight) was evicted from the kernel's
    /// LRU map before it closed: counted, and forgotten.
    fn flows_into(&mut self, sensor: &mut Sensor, procs: &mut BTreeMap<u32, ProcessCounters>) {
        let mut missing = std::collections::HashSet::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use clinicwatch_common::{COMPONENT_LEN, PATH_COMPONENTS};

    fn kpath(comps: &[&str], flags: u32) -> KPath {
        let mut p = KPath {
            depth: comps.len() as u32,
            flags,
            comps: [[0; COMPONENT_LEN]; PATH_COMPONENTS],
        };
        for (i, c) in comps.iter().enumerate() {
            p.comps[i][..c.len()].copy_from_slice(c.as_bytes());
        }
        p
    }

    #[test]
    fn kernel_paths_read_leaf_first() {
        assert_eq!(path_string(&kpath(&["passwd", "etc"], 0)), "/etc/passwd");
        assert_eq!(path_string(&kpath(&[], 0)), "/");
        assert_eq!(
            path_string(&kpath(&["b", "a"], path_flags::TRUNCATED)),
            "/.../a/b"
        );
        // A depth larger than the buffer is clamped, not a panic.
        let mut p = kpath(&["x"], 0);
        p.depth = 1000;
        assert!(path_string(&p).ends_with("/x"));
    }

    #[test]
    fn addresses_by_family() {
        let mut r = FlowAddr {
            family: libc::AF_INET as u16,
            protocol: 6,
            port: 80,
            _pad: 0,
            addr: [0; 16],
        };
        r.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(remote_ip(&r).to_string(), "127.0.0.1");
        r.family = libc::AF_INET6 as u16;
        r.addr = std::net::Ipv6Addr::LOCALHOST.octets();
        assert_eq!(remote_ip(&r).to_string(), "::1");
    }
}
