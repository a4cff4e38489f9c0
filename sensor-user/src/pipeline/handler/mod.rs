//! Turns kernel records into reported events: resolves application names, ancestry, paths
//! and flags, applies the command-line filter, and reads final counters at exit. One module
//! per record family ([`process`], [`files`], [`net`], [`tls`]), each an `on_<record>` of
//! [`Handler`]; [`snapshot`] builds the periodic snapshot of counters and health, and
//! [`convert`] makes the kernel's raw forms readable.

mod convert;
mod files;
mod net;
mod process;
mod snapshot;
mod tls;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use clinicwatch_common::WatchedProc;
use regex::Regex;

pub use convert::{flow_counters, http_status, path_string, Clock};

use crate::{
    config::Config,
    event::{DecodeStats, Event},
    kernel::sensor::Sensor,
    pipeline::decode::KernelEvent,
    pipeline::proctable::{ProcInfo, ProcTable},
};

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
    flows_missing: HashSet<u64>,
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
    rejected: HashSet<u32>,
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
    resolvers: HashSet<IpAddr>,
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
fn resolvers(configured: &[String]) -> HashSet<IpAddr> {
    if !configured.is_empty() {
        return configured.iter().filter_map(|r| r.parse().ok()).collect();
    }
    let mut set: HashSet<IpAddr> = crate::pipeline::dns::resolvers(
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
        match &ev {
            KernelEvent::Exec(e) => self.on_exec(e, sensor),
            KernelEvent::Fork(e) => Some(self.on_fork(e)),
            KernelEvent::Exit(e) => Some(self.on_exit(e, sensor)),
            KernelEvent::FileOpen(e) => Some(self.on_file(e, false)),
            KernelEvent::FileMmap(e) => Some(self.on_file(e, true)),
            KernelEvent::ProtectedOpen(e) => Some(self.on_protected_open(e, sensor)),
            KernelEvent::Connect(e) => Some(self.on_connect(e)),
            KernelEvent::Dns(e) => {
                self.on_dns(e);
                None
            }
            KernelEvent::TlsWrite(e) => self.on_tls_write(e),
            KernelEvent::TlsRead(e) => self.on_tls_read(e),
            KernelEvent::FlowClose(e) => Some(self.on_flow_close(e)),
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
}
