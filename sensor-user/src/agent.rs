//! The running agent: loads the sensor, seeds the processes already running, then a thread
//! drains the ring buffer, interprets records and writes events and periodic snapshots.

use std::{
    collections::{HashMap, VecDeque},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::Sender,
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use clinicwatch_common::WatchedProc;
use tracing::{info, warn};

use crate::{
    config::{
        targets::{resolve_apps, resolve_protected, AppExe},
        Config,
    },
    event::Event,
    intel::{Intel, Persist},
    kernel::capabilities::CapabilityReport,
    kernel::procfs,
    kernel::sensor::{Sensor, SensorOptions},
    pipeline::decode,
    pipeline::handler::Handler,
    sinks::output::Output,
};

struct Core {
    sensor: Sensor,
    handler: Handler,
    output: Output,
    intel: Intel,
    /// Records for the collector, when exporting.
    spool: Option<Arc<Mutex<crate::sinks::spool::Spool>>>,
    /// Records the spool could not take yet.
    unspooled: crate::sinks::unspooled::Unspooled,
    /// TLS libraries found in watched processes and probed.
    tls: crate::kernel::tls::Discovery,
    query_profiling: bool,
}

impl Core {
    /// Every event goes through the intelligence (which may add summaries and findings),
    /// then out: in-process subscribers get it as it is, the output through the privacy edge.
    fn emit(&mut self, ev: Event) {
        let produced = self.intel.observe(&ev);
        if matches!(ev, Event::Snapshot { .. }) {
            self.spool(&ev);
        }
        let intel = &self.intel;
        if matches!(ev, Event::Query { .. } | Event::QueryResponse { .. }) {
            // One per request: counted in the window, not written out.
            self.output.notify(ev);
        } else {
            self.output.emit_filtered(ev, |e| intel.filter(e));
        }
        for e in produced {
            self.spool(&e);
            self.output.emit(e);
        }
    }

    /// Summaries, findings and health go to the spool (when exporting). One the spool cannot
    /// take (a full disk) waits in memory ([`crate::sinks::unspooled`]); the end of such an episode
    /// is reported by a finding, spooled and emitted like the others.
    fn spool(&mut self, ev: &Event) {
        let Some(spool) = &self.spool else { return };
        let now = self.handler.clock.now();
        let report = {
            let mut s = spool.lock().unwrap_or_else(|p| p.into_inner());
            match crate::delivery::records::record(ev, s.dropped) {
                Some((kind, payload)) => self.unspooled.put(&mut s, kind, payload, now),
                None => None,
            }
        };
        if let Some(f) = report {
            self.spool_report(f);
        }
    }

    /// Writes what waits for the spool, if it can be written again (each tick).
    fn drain_unspooled(&mut self) {
        let Some(spool) = &self.spool else { return };
        if self.unspooled.is_empty() {
            return;
        }
        let now = self.handler.clock.now();
        let report = self
            .unspooled
            .drain(&mut spool.lock().unwrap_or_else(|p| p.into_inner()), now);
        if let Some(f) = report {
            self.spool_report(f);
        }
    }

    fn spool_report(&mut self, f: crate::event::finding::Finding) {
        let ev = Event::Finding(f);
        self.spool(&ev);
        self.output.emit(ev);
    }

    /// Probes the TLS library of any watched process that loaded one since the last look.
    fn scan_tls(&mut self) {
        let pids: Vec<u32> = self.handler.table.pids().collect();
        let sensor = &mut self.sensor;
        for a in self
            .tls
            .scan(pids.into_iter(), |lib| sensor.attach_tls(lib))
        {
            match a.error {
                None => {
                    info!(library = %a.path.display(), "TLS library probed: queries are counted")
                }
                Some(e) => {
                    warn!(library = %a.path.display(), error = %e, "cannot probe a TLS library: its queries are not counted")
                }
            }
        }
    }

    /// Time passes: when a window is due, counters are taken first so that it holds them.
    /// Called before each batch of ring-buffer records, so records of the next window do not
    /// close this one first.
    fn tick(&mut self) {
        self.drain_unspooled();
        let now = self.handler.clock.now();
        if self.intel.window_due(now) {
            let snap = self
                .handler
                .snapshot(&mut self.sensor, self.output.write_errors);
            self.emit(snap);
        }
        let drift = self.handler.clock.wall_drift();
        // A window closed by time alone (no snapshot at its end: a stall, a suspend, a clock
        // step) and the clock-jump finding go to the collector like the rest.
        for e in self.intel.tick(now, Some(drift)) {
            self.spool(&e);
            self.output.emit(e);
        }
        if self.intel.take_clock_jump() {
            warn!(
                drift,
                "the wall clock jumped: event times follow it from now on"
            );
            self.handler.clock = crate::pipeline::handler::Clock::new();
        }
    }
}

/// A running agent. Dropping it (or [`Agent::stop`]) detaches every probe.
pub struct Agent {
    core: Arc<Mutex<Core>>,
    /// The thread that drains the ring buffer.
    events: crate::worker::Worker,
    pub capabilities: Vec<CapabilityReport>,
    /// `state_dir/agent.lock`, held while running (when writing output).
    _lock: Option<std::fs::File>,
    exporter: Option<crate::delivery::client::Exporter>,
}

/// Watches the processes already running that belong to a watched tree: instances of a
/// watched executable (whose command line matches), and all their descendants.
fn seed(core: &mut Core, exes: &[AppExe]) -> Vec<Event> {
    let procs = procfs::scan();
    let me = std::process::id();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in procs.values() {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut queue: VecDeque<(u32, WatchedProc)> = VecDeque::new();
    for p in procs.values() {
        let Some(key) = p.exe_key else { continue };
        let Some(app) = exes.iter().find(|a| a.stat == key).map(|a| a.app) else {
            continue;
        };
        if p.pid == me || !core.handler.cmdline_matches(app, &p.cmdline) {
            continue;
        }
        // A root is the highest instance: skip it if its parent is one too (found as a child).
        let parent_is_instance = procs
            .get(&p.ppid)
            .and_then(|pp| pp.exe_key)
            .is_some_and(|k| k == key);
        if !parent_is_instance {
            queue.push_back((
                p.pid,
                WatchedProc {
                    app,
                    root_tgid: p.pid,
                    depth: 0,
                    _pad: 0,
                },
            ));
        }
    }
    let mut events = Vec::new();
    while let Some((pid, w)) = queue.pop_front() {
        if pid == me || core.handler.table.get(pid).is_some() {
            continue;
        }
        if let Err(e) = core.sensor.watch(pid, w) {
            warn!(pid, error = %e, "cannot seed watched process");
            continue;
        }
        let p = &procs[&pid];
        let exe = p
            .exe
            .as_deref()
            .map(|e| e.display().to_string())
            .unwrap_or_default();
        events.push(core.handler.seed(pid, p.ppid, w, exe));
        for &child in children.get(&pid).into_iter().flatten() {
            queue.push_back((
                child,
                WatchedProc {
                    depth: w.depth + 1,
                    ..w
                },
            ));
        }
    }
    events
}

/// Says which hook serves each capability, which fell back to a costly hook, which are
/// unavailable and why the better hooks were passed over.
fn log_capabilities(caps: &[CapabilityReport]) {
    for c in caps {
        match (c.hook.as_deref(), c.scope) {
            (Some(hook), Some(scope)) => {
                info!(capability = %c.capability, hook, ?scope, "capability served");
                if scope == crate::kernel::capabilities::Scope::EverySyscall {
                    warn!(
                        capability = %c.capability,
                        hook,
                        "fallback hook fires on these syscalls of every process on the host"
                    );
                }
            }
            _ => warn!(
                capability = %c.capability,
                "capability unavailable on this kernel"
            ),
        }
        for t in &c.passed_over {
            info!(capability = %c.capability, hook = %t.hook, reason = %t.error, "hook passed over");
        }
    }
}

/// The spool and the exporter that drains it to the collector.
fn start_delivery(
    cfg: &Config,
    capabilities: &[CapabilityReport],
) -> anyhow::Result<(
    Arc<Mutex<crate::sinks::spool::Spool>>,
    crate::delivery::client::Exporter,
)> {
    let spool = crate::sinks::spool::Spool::open(crate::sinks::spool::SpoolConfig {
        dir: cfg.agent.state_dir.join("spool"),
        max_bytes: cfg.export.spool_max_mb << 20,
        segment_bytes: 4 << 20,
        // Records are few (summaries per window, findings, health): each is on disk
        // before the next, so a power loss loses none that was spooled.
        fsync_each: true,
    })?;
    let spool = Arc::new(Mutex::new(spool));
    let exporter = crate::delivery::client::Exporter::start(
        &cfg.export,
        spool.clone(),
        hello(cfg, capabilities),
    )
    .context("cannot start the exporter")?;
    Ok((spool, exporter))
}

/// What the agent says of itself when it connects.
fn hello(cfg: &Config, capabilities: &[CapabilityReport]) -> clinicwatch_proto::v1::Hello {
    clinicwatch_proto::v1::Hello {
        clinic_id: cfg.export.clinic.clone(),
        host_id: cfg.export.host.clone(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel_release(),
        capabilities: capabilities
            .iter()
            .map(|c| clinicwatch_proto::v1::HookChoice {
                capability: c.capability.to_string(),
                hook: c.hook.as_deref().unwrap_or("").to_string(),
                scope: c.scope.map_or("", |s| s.as_str()).to_string(),
            })
            .collect(),
        epoch: 0,
        last_acked_seq: 0,
    }
}

/// The output: the configured file or stdout when `write_output`, plus `subscriber`.
fn open_output(
    cfg: &Config,
    write_output: bool,
    subscriber: Option<Sender<Event>>,
) -> anyhow::Result<Output> {
    let rotation = crate::sinks::output::Rotation {
        max_bytes: cfg.agent.output_max_mb << 20,
        keep: cfg.agent.output_keep,
    };
    let mut output = Output::open(write_output.then_some(cfg.agent.output.as_str()), rotation)
        .with_context(|| format!("cannot open output `{}`", cfg.agent.output))?;
    if let Some(tx) = subscriber {
        output.subscribe(tx);
    }
    Ok(output)
}

/// The startup event, then the processes already running that are seeded.
fn announce(core: &mut Core, exes: &[AppExe], capabilities: &[CapabilityReport]) {
    let startup = Event::Startup {
        time: core.handler.clock.now(),
        agent_pid: std::process::id(),
        kernel: kernel_release(),
        capabilities: capabilities.to_vec(),
    };
    core.emit(startup);
    for ev in seed(core, exes) {
        core.emit(ev);
    }
    core.output.flush();
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Agent {
    /// Loads the probes and starts the agent. `write_output` sends events to
    /// `config.agent.output`; `subscriber` receives them in-process as well.
    pub fn start(
        cfg: &Config,
        write_output: bool,
        subscriber: Option<Sender<Event>>,
    ) -> anyhow::Result<Agent> {
        Self::start_as(cfg, write_output, subscriber, false)
    }

    /// Loads and attaches every probe with nothing written anywhere: no state folder, no
    /// privacy key, no baselines, no spool, no connection to the collector
    /// (`clinicwatch-agent check`).
    pub fn probe(cfg: &Config) -> anyhow::Result<Agent> {
        Self::start_as(cfg, false, None, true)
    }

    fn start_as(
        cfg: &Config,
        write_output: bool,
        subscriber: Option<Sender<Event>>,
        probe_only: bool,
    ) -> anyhow::Result<Agent> {
        cfg.validate()?;
        let exes = resolve_apps(cfg)?;
        let protected = resolve_protected(cfg)?;
        let opts = SensorOptions {
            exes: exes.iter().map(|a| (a.kernel, a.app)).collect(),
            protected,
            cgroup_root: (cfg.agent.cgroup_root != "auto")
                .then(|| PathBuf::from(&cfg.agent.cgroup_root)),
            disabled_hooks: cfg.agent.disabled_hooks.clone(),
        };
        crate::kernel::privileges::check()?;
        let (sensor, ring) = Sensor::load(&opts)?;
        log_capabilities(&sensor.capabilities);
        let output = open_output(cfg, write_output, subscriber)?;
        let capabilities = sensor.capabilities.clone();
        // The agent that writes events owns the state folder (after the sensor loaded, so
        // an unprivileged start fails on privileges, not on the lock).
        let lock = if write_output {
            Some(crate::cli::report::lock_state(&cfg.agent.state_dir)?)
        } else {
            None
        };
        let handler = Handler::new(cfg);
        let persist = (!probe_only).then(|| Persist {
            state_dir: cfg.agent.state_dir.clone(),
        });
        let intel =
            Intel::new(cfg, persist, handler.clock.now()).context("cannot start the detectors")?;
        let (spool, exporter) = if probe_only || cfg.export.collector.is_empty() {
            (None, None)
        } else {
            let (spool, exporter) = start_delivery(cfg, &capabilities)?;
            (Some(spool), Some(exporter))
        };
        let mut handler = handler;
        handler.templater = crate::pipeline::query::Templater::new(
            Box::new(intel.privacy.hasher()),
            &cfg.intel.query_route_words,
        );
        let mut core = Core {
            sensor,
            handler,
            output,
            intel,
            spool,
            unspooled: crate::sinks::unspooled::Unspooled::new(crate::sinks::unspooled::MAX_BYTES),
            tls: crate::kernel::tls::Discovery::default(),
            query_profiling: cfg.intel.query_profiling,
        };
        announce(&mut core, &exes, &capabilities);

        let core = Arc::new(Mutex::new(core));
        let interval = Duration::from_secs(cfg.agent.snapshot_interval_secs);
        let events = {
            let core = core.clone();
            crate::worker::Worker::spawn(EVENT_THREAD, move |stop| {
                event_loop(core, ring, stop, interval)
            })
            .context("cannot start the event thread")?
        };
        Ok(Agent {
            core,
            events,
            capabilities,
            _lock: lock,
            exporter,
        })
    }

    /// Current counters and health, as a `Snapshot` event (also written to the output).
    pub fn snapshot(&self) -> Event {
        let mut guard = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let core = &mut *guard;
        let ev = core
            .handler
            .snapshot(&mut core.sensor, core.output.write_errors);
        let intel = &core.intel;
        core.output.emit_filtered(ev.clone(), |e| intel.filter(e));
        core.output.flush();
        ev
    }

    /// TLS libraries probed so far (found in watched processes' mappings).
    pub fn tls_libraries(&self) -> Vec<std::path::PathBuf> {
        self.core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tls
            .libraries()
    }

    /// Whether a process is in the kernel's watched set.
    pub fn is_watched(&self, pid: u32) -> bool {
        self.core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sensor
            .is_watched(pid)
    }

    /// Stops the event thread, writes a last snapshot and detaches every probe.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.events.stop();
        // After the event thread: its last records are spooled (and sent next start).
        let spool = self
            .core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spool
            .clone();
        if let Some(spool) = spool {
            if let Err(e) = spool.lock().unwrap_or_else(|p| p.into_inner()).sync() {
                warn!(error = %e, "cannot sync the spool at stop");
            }
        }
        if let Some(e) = self.exporter.take() {
            e.stop();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Name of the thread that drains the ring buffer (under the kernel's 15-character limit, so
/// `/proc/*/task/*/comm` shows it whole).
pub const EVENT_THREAD: &str = "cw-events";

/// How often the process table is checked for processes whose exit record was lost.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// How often watched processes' mappings are checked for a TLS library to probe.
const TLS_SCAN_EVERY: Duration = Duration::from_secs(1);

fn event_loop(
    core: Arc<Mutex<Core>>,
    mut ring: RingBuf<MapData>,
    stop: Arc<AtomicBool>,
    interval: Duration,
) {
    let mut last_snapshot = Instant::now();
    let mut last_reap = Instant::now();
    let mut last_tls_scan: Option<Instant> = None;
    let fd = ring.as_raw_fd();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if !stopping {
            crate::kernel::ringbuf::wait_readable(fd, Duration::from_millis(50));
        }
        let mut guard = core.lock().unwrap_or_else(|p| p.into_inner());
        let c = &mut *guard;
        if !stopping {
            c.tick();
        }
        while let Some(item) = ring.next() {
            let r = decode::decode(&item);
            crate::pipeline::decode::count(&mut c.handler.decode, &r);
            match r {
                Ok(ev) => {
                    if let Some(out) = c.handler.handle(ev, &mut c.sensor) {
                        c.emit(out);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "dropped a ring buffer record"),
            }
        }
        if last_reap.elapsed() >= REAP_EVERY {
            c.handler.reap_dead(&mut c.sensor);
            last_reap = Instant::now();
        }
        if c.query_profiling && last_tls_scan.is_none_or(|t| t.elapsed() >= TLS_SCAN_EVERY) {
            c.scan_tls();
            last_tls_scan = Some(Instant::now());
        }
        if stopping || (!interval.is_zero() && last_snapshot.elapsed() >= interval) {
            let snap = c.handler.snapshot(&mut c.sensor, c.output.write_errors);
            c.emit(snap);
            last_snapshot = Instant::now();
        }
        if stopping {
            for e in c.intel.stop() {
                c.output.emit(e);
            }
        }
        c.output.flush();
        if stopping {
            break;
        }
    }
}

/// The config file path given on the command line, or the default location.
pub fn default_config_path() -> &'static Path {
    Path::new("/etc/clinicwatch/agent.toml")
}
