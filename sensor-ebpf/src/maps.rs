//! Every map of the object, in one place. Names and sizes come from the shared contract.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use clinicwatch_common::{
    capacity, hook, quota, FileKey, FileStats, FlowStats, HookCounters, InodeKey, TlsReadArgs,
    WatchedProc,
};

/// Rare events for the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Watched processes by thread-group id. Not LRU: a watched process must never be forgotten
/// silently; a full map is counted in `map_full`.
#[map]
pub static WATCHED: HashMap<u32, WatchedProc> = HashMap::with_max_entries(capacity::WATCHED, 0);

/// Executables that start a watched tree, by (device, inode) → application index.
#[map]
pub static WATCHED_EXES: HashMap<InodeKey, u32> =
    HashMap::with_max_entries(capacity::WATCHED_EXES, 0);

/// Protected files and directories by (device, inode) → index of the config entry.
#[map]
pub static PROTECTED: HashMap<InodeKey, u32> = HashMap::with_max_entries(capacity::PROTECTED, 0);

/// Read, open and mmap counters per (watched process, file).
#[map]
pub static FILE_STATS: LruHashMap<FileKey, FileStats> =
    LruHashMap::with_max_entries(capacity::FILE_STATS, 0);

/// Read, open and mmap counters per (followed protected reader, file): apart from
/// `FILE_STATS`, so that a reader opening many files evicts only its own counters.
#[map]
pub static READER_FILES: LruHashMap<FileKey, FileStats> =
    LruHashMap::with_max_entries(capacity::READER_FILES, 0);

/// Entries of followed protected readers in `WATCHED` and `FLOWS` (see `quota`).
#[map]
pub static QUOTAS: Array<u64> = Array::with_max_entries(quota::COUNT, 0);

/// Byte counters per flow of a watched process, by socket cookie.
#[map]
pub static FLOWS: LruHashMap<u64, FlowStats> = LruHashMap::with_max_entries(capacity::FLOWS, 0);

#[map]
pub static HOOK_COUNTERS: PerCpuArray<HookCounters> = PerCpuArray::with_max_entries(hook::COUNT, 0);

/// TLS reads in progress, by thread (`pid_tgid`): entry to return.
#[map]
pub static TLS_READS: LruHashMap<u64, TlsReadArgs> =
    LruHashMap::with_max_entries(capacity::TLS_READS, 0);
