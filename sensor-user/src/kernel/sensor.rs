//! Loading the kernel programs: checks, struct offsets, globals, map contents, hook choice.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    Btf as AyaBtf, Ebpf, EbpfError, EbpfLoader,
};
use clinicwatch_common::{
    hook,
    names::{global, map},
    quota, FileKey, FileStats, FlowStats, HookCounters, InodeKey, KernelOffsets, WatchedProc,
    READER_APP,
};
use tracing::warn;

use crate::{
    kernel::btf::{Btf, BtfError, VMLINUX_BTF},
    kernel::capabilities::{AttachError, Attacher, CapabilityReport, Links},
    kernel::klog::KernelLog,
};

/// The eBPF object, built by this crate's build script (empty when bpf-linker was missing).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("this agent was built without its eBPF object (bpf-linker was missing at build time): run `cargo xtask setup`, then rebuild")]
    NoObject,
    #[error("this kernel has no BTF at `{VMLINUX_BTF}` (CONFIG_DEBUG_INFO_BTF): the agent needs it to find kernel struct offsets")]
    NoBtf,
    #[error("cannot read kernel struct offsets from BTF")]
    Offsets(#[from] BtfError),
    #[error("the kernel refused the eBPF object (is BPF enabled, CONFIG_BPF_SYSCALL, and not blocked by lockdown or seccomp?)")]
    Load(#[source] EbpfError),
    #[error("eBPF map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("no cgroup v2 mount found (needed by the socket hooks); set `agent.cgroup_root`")]
    NoCgroup2,
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("the protected readers' quota of {max} processes in `WATCHED` is used up")]
    ReaderQuota { max: u64 },
    #[error("process {tgid} is watched already")]
    AlreadyWatched { tgid: u32 },
}

/// How full the maps that a local user could try to fill are (read at each snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Entries in `WATCHED` (of `capacity::WATCHED`).
    pub watched: usize,
    /// Of which followed protected readers (quota [`quota::MAX_PROCESSES`]).
    pub reader_processes: u64,
    /// Flows of followed protected readers in `FLOWS` (quota [`quota::MAX_FLOWS`]).
    pub reader_flows: u64,
}

pub struct SensorOptions {
    /// Executables that start a watched tree → application index.
    pub exes: Vec<(InodeKey, u32)>,
    /// Protected inodes → protected-entry index.
    pub protected: Vec<(InodeKey, u32)>,
    /// `None` finds the cgroup v2 mount.
    pub cgroup_root: Option<PathBuf>,
    pub disabled_hooks: Vec<String>,
}

/// The programs, loaded and attached. Dropping it detaches everything.
pub struct Sensor {
    // The log reader first: it stops before anything detaches. Links before the object:
    // they detach first.
    _klog: Option<KernelLog>,
    _links: Links,
    ebpf: Ebpf,
    pub capabilities: Vec<CapabilityReport>,
    pub offsets: KernelOffsets,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> SensorError {
    move |source| SensorError::Map { name, source }
}

fn missing(name: &'static str) -> SensorError {
    SensorError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    }
}

/// Fills a `u32`-valued hash map of the object.
fn fill(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(InodeKey, u32)],
) -> Result<(), SensorError> {
    let mut m: BpfHashMap<_, InodeKey, u32> =
        BpfHashMap::try_from(ebpf.map_mut(name).ok_or_else(|| missing(name))?)
            .map_err(map_err(name))?;
    for (key, value) in entries {
        m.insert(key, value, 0).map_err(map_err(name))?;
    }
    Ok(())
}

impl Sensor {
    /// Loads the programs and attaches the best hook for each capability. Also returns the
    /// ring buffer of events.
    pub fn load(opts: &SensorOptions) -> Result<(Self, RingBuf<MapData>), SensorError> {
        if EBPF_OBJECT.is_empty() {
            return Err(SensorError::NoObject);
        }
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            return Err(SensorError::NoBtf);
        }
        raise_memlock();
        let offsets = Btf::from_sys_fs()?.kernel_offsets()?;
        let agent_tgid = std::process::id();
        let protect_enabled: u32 = u32::from(!opts.protected.is_empty());
        let mut ebpf = EbpfLoader::new()
            .override_global(global::OFFSETS, &offsets, true)
            .override_global(global::AGENT_TGID, &agent_tgid, true)
            .override_global(global::PROTECT_ENABLED, &protect_enabled, true)
            .load(EBPF_OBJECT)
            .map_err(SensorError::Load)?;
        // Taken before any program loads: the programs refer to its map.
        let klog = KernelLog::start(&mut ebpf);

        fill(&mut ebpf, map::WATCHED_EXES, &opts.exes)?;
        fill(&mut ebpf, map::PROTECTED, &opts.protected)?;
        let events = RingBuf::try_from(
            ebpf.take_map(map::EVENTS)
                .ok_or_else(|| missing(map::EVENTS))?,
        )
        .map_err(map_err(map::EVENTS))?;

        let cgroup_root = match &opts.cgroup_root {
            Some(p) => p.clone(),
            None => crate::kernel::procfs::find_cgroup2_root().ok_or(SensorError::NoCgroup2)?,
        };
        let tracefs = match crate::kernel::procfs::ensure_tracefs() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "no tracefs and cannot mount it: tracepoint hooks will fail");
                PathBuf::from("/sys/kernel/tracing")
            }
        };
        let lsms = crate::kernel::procfs::active_lsms().map_err(|e| {
            format!("cannot read the active LSM list `/sys/kernel/security/lsm`: {e}")
        });
        let btf = AyaBtf::from_sys_fs().map_err(|_| SensorError::NoBtf)?;
        let mut links = Links::new();
        let capabilities = Attacher::new(
            &mut ebpf,
            &btf,
            &cgroup_root,
            &tracefs,
            &opts.disabled_hooks,
        )
        .with_active_lsms(lsms)
        .attach_all(&mut links)?;
        Ok((
            Sensor {
                _klog: klog,
                _links: links,
                ebpf,
                capabilities,
                offsets,
            },
            events,
        ))
    }

    /// Puts the TLS uprobes on a library (`SSL_write`, `SSL_write_ex`, `SSL_read`,
    /// `SSL_read_ex`; the `_ex` ones are optional, OpenSSL before 1.1.1 lacks them). The
    /// programs are loaded on first use; they detach when the sensor is dropped.
    pub fn attach_tls(&mut self, lib: &std::path::Path) -> Result<(), String> {
        use aya::programs::{uprobe::UProbeScope, UProbe};
        use clinicwatch_common::names::prog;
        const PLAN: [(&str, &[(&str, bool)]); 4] = [
            (
                prog::TLS_WRITE,
                &[("SSL_write", true), ("SSL_write_ex", false)],
            ),
            (prog::TLS_READ_ENTER, &[("SSL_read", true)]),
            (prog::TLS_READ_EX_ENTER, &[("SSL_read_ex", false)]),
            (
                prog::TLS_READ_EXIT,
                &[("SSL_read", true), ("SSL_read_ex", false)],
            ),
        ];
        for (name, symbols) in PLAN {
            let p: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program `{name}` is missing from the eBPF object"))?
                .try_into()
                .map_err(|e| format!("program `{name}`: {e}"))?;
            if p.fd().is_err() {
                p.load()
                    .map_err(|e| format!("the kernel refused `{name}`: {e}"))?;
            }
            for (symbol, required) in symbols {
                match p.attach(*symbol, lib, UProbeScope::AllProcesses) {
                    Ok(_) => {}
                    Err(e) if *required => {
                        return Err(format!("cannot probe `{symbol}` in {}: {e}", lib.display()))
                    }
                    Err(e) => {
                        tracing::debug!(symbol, lib = %lib.display(), error = %e, "optional TLS symbol not probed")
                    }
                }
            }
        }
        Ok(())
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, SensorError> {
        let m = self.ebpf.map_mut(name).ok_or_else(|| missing(name))?;
        BpfHashMap::try_from(m).map_err(map_err(name))
    }

    /// Marks a process watched (used to seed processes that were running before the agent,
    /// and to follow a protected reader, within the readers' quota).
    pub fn watch(&mut self, tgid: u32, w: WatchedProc) -> Result<(), SensorError> {
        let used = (w.app == READER_APP).then(|| self.quota_used(quota::PROCESSES));
        if let Some(used) = used {
            if used >= quota::MAX_PROCESSES {
                return Err(SensorError::ReaderQuota {
                    max: quota::MAX_PROCESSES,
                });
            }
        }
        // A reader is added only if the process is not watched yet: between the kernel's
        // record and now it may have exec'd a watched program (or its pid been reused).
        const BPF_NOEXIST: u64 = 1;
        let flags = if used.is_some() { BPF_NOEXIST } else { 0 };
        match self
            .hash::<u32, WatchedProc>(map::WATCHED)?
            .insert(tgid, w, flags)
        {
            Ok(()) => {}
            Err(MapError::SyscallError(e))
                if used.is_some() && e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                return Err(SensorError::AlreadyWatched { tgid })
            }
            Err(e) => return Err(map_err(map::WATCHED)(e)),
        }
        if let Some(used) = used {
            // Not atomic with the kernel's counting: the next census heals any drift.
            self.set_quota_used(quota::PROCESSES, used + 1);
        }
        Ok(())
    }

    /// Entries of quota `slot` in use, as counted.
    pub fn quota_used(&mut self, slot: u32) -> u64 {
        self.ebpf
            .map_mut(map::QUOTAS)
            .and_then(|m| Array::<_, u64>::try_from(m).ok())
            .and_then(|a| a.get(&slot, 0).ok())
            .unwrap_or(0)
    }

    fn set_quota_used(&mut self, slot: u32, v: u64) {
        if let Some(mut a) = self
            .ebpf
            .map_mut(map::QUOTAS)
            .and_then(|m| Array::<_, u64>::try_from(m).ok())
        {
            if let Err(e) = a.set(slot, v, 0) {
                warn!(slot, error = %e, "cannot set a reader quota counter");
            }
        }
    }

    /// Counts `WATCHED` (and the readers in it), and the readers' flows when their counter
    /// says the quota is used up (an LRU eviction of a reader's flow is never given back by
    /// the kernel); writes back what it counted, so that the quotas never drift for long.
    pub fn census(&mut self) -> Census {
        // A walk of a hash map starts over when the key it stands on is deleted (a process
        // exiting meanwhile): keys are counted once each, and the walk is bounded.
        let mut procs: std::collections::HashMap<u32, bool> = Default::default();
        if let Ok(m) = self.hash::<u32, WatchedProc>(map::WATCHED) {
            let bound = 2 * clinicwatch_common::capacity::WATCHED as usize;
            for (tgid, w) in m.iter().take(bound).flatten() {
                procs.insert(tgid, w.app == READER_APP);
            }
        }
        let watched = procs.len();
        let readers = procs.values().filter(|r| **r).count() as u64;
        self.set_quota_used(quota::PROCESSES, readers);
        let mut reader_flows = self.quota_used(quota::FLOWS);
        if reader_flows >= quota::MAX_FLOWS {
            if let Ok(m) = self.hash::<u64, FlowStats>(map::FLOWS) {
                let bound = 2 * clinicwatch_common::capacity::FLOWS as usize;
                let cookies: std::collections::HashSet<u64> = m
                    .iter()
                    .take(bound)
                    .flatten()
                    .filter(|(_, f)| f.app == READER_APP)
                    .map(|(c, _)| c)
                    .collect();
                reader_flows = cookies.len() as u64;
            }
            self.set_quota_used(quota::FLOWS, reader_flows);
        }
        Census {
            watched,
            reader_processes: readers,
            reader_flows,
        }
    }

    pub fn unwatch(&mut self, tgid: u32) -> Result<(), SensorError> {
        match self.hash::<u32, WatchedProc>(map::WATCHED)?.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(SensorError::Map {
                name: map::WATCHED,
                source: e,
            }),
        }
    }

    pub fn is_watched(&mut self, tgid: u32) -> bool {
        self.hash::<u32, WatchedProc>(map::WATCHED)
            .is_ok_and(|m| m.get(&tgid, 0).is_ok())
    }

    /// The counters of a (process, file): in `FILE_STATS`, or `READER_FILES` for a followed
    /// protected reader.
    pub fn file_stats(&mut self, key: &FileKey) -> Option<FileStats> {
        [map::FILE_STATS, map::READER_FILES]
            .into_iter()
            .find_map(|name| self.hash::<FileKey, FileStats>(name).ok()?.get(key, 0).ok())
    }

    pub fn remove_file_stats(&mut self, key: &FileKey) {
        for name in [map::FILE_STATS, map::READER_FILES] {
            if let Ok(mut m) = self.hash::<FileKey, FileStats>(name) {
                let _ = m.remove(key);
            }
        }
    }

    /// Reads and removes the counters of a (process, file): one `BPF_MAP_LOOKUP_AND_DELETE_ELEM`
    /// per map (hash maps, 5.14+), or a lookup then a delete where the kernel lacks it.
    pub fn take_file_stats(&mut self, key: &FileKey) -> Option<FileStats> {
        let mut supported = true;
        for name in [map::FILE_STATS, map::READER_FILES] {
            if let Some(Map::LruHashMap(data)) = self.ebpf.map_mut(name) {
                let mut value = FileStats::default();
                match lookup_and_delete(data.fd().as_fd().as_raw_fd(), key, &mut value) {
                    Ok(true) => return Some(value),
                    Ok(false) => {}
                    Err(_) => supported = false, // the two-call way below
                }
            }
        }
        if supported {
            return None;
        }
        let stats = self.file_stats(key)?;
        self.remove_file_stats(key);
        Some(stats)
    }

    pub fn flow_stats(&mut self, cookie: u64) -> Option<FlowStats> {
        self.hash::<u64, FlowStats>(map::FLOWS)
            .ok()?
            .get(&cookie, 0)
            .ok()
    }

    /// Per-hook counters summed over CPUs, in `hook::NAMES` order.
    pub fn hook_counters(&mut self) -> Vec<HookCounters> {
        let Some(m) = self.ebpf.map_mut(map::HOOK_COUNTERS) else {
            return Vec::new();
        };
        let Ok(arr) = PerCpuArray::<_, HookCounters>::try_from(m) else {
            return Vec::new();
        };
        (0..hook::COUNT)
            .map(|i| {
                let mut sum = HookCounters::default();
                if let Ok(per_cpu) = arr.get(&i, 0) {
                    for c in per_cpu.iter() {
                        sum.events += c.events;
                        sum.ringbuf_drops += c.ringbuf_drops;
                        sum.read_errors += c.read_errors;
                        sum.map_full += c.map_full;
                        sum.quota_refused += c.quota_refused;
                    }
                }
                sum
            })
            .collect()
    }
}

/// `bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM)`: `Ok(false)` when the key is absent.
fn lookup_and_delete<K, V>(map_fd: i32, key: &K, value: &mut V) -> std::io::Result<bool> {
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let attr = ElemAttr {
        map_fd: map_fd as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *mut V as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a valid key and a value buffer of the map's value size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        return Ok(false);
    }
    Err(err)
}

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot raise RLIMIT_MEMLOCK; relying on memcg accounting");
    }
}

#[cfg(test)]
mod object_tests {
    //! Unprivileged: parses the embedded object and checks every name the agent uses.
    use clinicwatch_common::names::{global, map, prog};
    use object::{Object as _, ObjectSymbol as _};

    use super::EBPF_OBJECT;

    fn object_or_skip(test: &str) -> Option<aya_obj::Object> {
        if EBPF_OBJECT.is_empty() {
            clinicwatch_testkit::skip(test, "built without bpf-linker, so there is no eBPF object to check (run `cargo xtask setup`)");
            return None;
        }
        Some(aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded eBPF object parses"))
    }

    #[test]
    fn every_program_and_map_the_agent_expects_is_in_the_object() {
        let Some(obj) =
            object_or_skip("sensor::every_program_and_map_the_agent_expects_is_in_the_object")
        else {
            return;
        };
        for name in prog::ALL {
            assert!(
                obj.programs.contains_key(name),
                "program `{name}` missing; object has {:?}",
                obj.programs.keys()
            );
        }
        for name in map::ALL {
            assert!(
                obj.maps.contains_key(name),
                "map `{name}` missing; object has {:?}",
                obj.maps.keys()
            );
        }
        // The probes' log ring buffer (aya-log), which `klog` reads.
        assert!(
            obj.maps.contains_key("AYA_LOGS"),
            "no `AYA_LOGS` map: {:?}",
            obj.maps.keys()
        );
        assert_eq!(obj.license.to_str().unwrap(), "GPL");
    }

    #[test]
    fn load_time_globals_are_in_the_object() {
        if EBPF_OBJECT.is_empty() {
            clinicwatch_testkit::skip(
                "sensor::load_time_globals_are_in_the_object",
                "no eBPF object",
            );
            return;
        }
        let file = object::File::parse(EBPF_OBJECT).expect("an ELF object");
        let symbols: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        for name in [global::OFFSETS, global::AGENT_TGID, global::PROTECT_ENABLED] {
            assert!(symbols.contains(&name), "global `{name}` missing");
        }
    }
}
