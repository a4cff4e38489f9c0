//! Map keys and values, and the sizes the kernel programs declare.

use core::mem::size_of;

/// A watched process (key: thread-group id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchedProc {
    /// Index of the application in the agent's config.
    pub app: u32,
    /// Thread-group id of the first watched process of this tree.
    pub root_tgid: u32,
    /// Generations below the root (the root is 0).
    pub depth: u32,
    pub _pad: u32,
}

/// A file or executable by device and inode. `dev` is the kernel's encoding
/// (`major << 20 | minor`), not the one `stat(2)` returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Per (process, file) counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub tgid: u32,
    pub dev: u32,
    pub ino: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Bytes returned by read, pread64, readv, preadv and preadv2.
    pub bytes_read: u64,
    /// Successful read operations (calls that returned more than 0 bytes).
    pub reads: u64,
    pub opens: u64,
    pub mmaps: u64,
}

/// Per-flow counters (key: socket cookie). Bytes are transport payload bytes (IP and
/// TCP/UDP headers excluded), counted per packet in the cgroup socket-buffer hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub tgid: u32,
    pub app: u32,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    pub remote: crate::event::FlowAddr,
}

/// Per-hook health counters (per-CPU array indexed by [`hook`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookCounters {
    /// Events written to the ring buffer.
    pub events: u64,
    /// Events lost because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Kernel reads that failed (a struct moved, a page was not present).
    pub read_errors: u64,
    /// Map inserts that failed (a non-LRU map full).
    pub map_full: u64,
}

/// Indexes into the `HOOK_COUNTERS` map: one per capability the kernel serves.
pub mod hook {
    pub const PROC_EXEC: u32 = 0;
    pub const PROC_FORK: u32 = 1;
    pub const PROC_EXIT: u32 = 2;
    pub const FILE_OPEN: u32 = 3;
    pub const FILE_READ: u32 = 4;
    pub const FILE_MMAP: u32 = 5;
    pub const NET_CONNECT: u32 = 6;
    pub const NET_BYTES: u32 = 7;
    pub const NET_CLOSE: u32 = 8;
    pub const COUNT: u32 = 9;
    /// Names, in index order, for reports.
    pub const NAMES: [&str; COUNT as usize] = [
        "proc_exec",
        "proc_fork",
        "proc_exit",
        "file_open",
        "file_read",
        "file_mmap",
        "net_connect",
        "net_bytes",
        "net_close",
    ];
}

/// Map capacities. Together with the ring buffer they come to about 7.4 MiB of kernel
/// memory (`memlock` in fdinfo), under the 8 MB budget; the LRU maps evict their oldest
/// entries when full, and the agent counts what was evicted before it was reported.
pub mod capacity {
    pub const WATCHED: u32 = 16_384;
    pub const WATCHED_EXES: u32 = 256;
    pub const PROTECTED: u32 = 1_024;
    pub const FILE_STATS: u32 = 32_768;
    pub const FLOWS: u32 = 8_192;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// How many ancestors of an opened file are checked against the protected set.
    pub const PROTECTED_DEPTH: u32 = 8;
}

const _: () = assert!(size_of::<WatchedProc>() == 16);
const _: () = assert!(size_of::<InodeKey>() == 16);
const _: () = assert!(size_of::<FileKey>() == 16);
const _: () = assert!(size_of::<FileStats>() == 32);
const _: () = assert!(size_of::<FlowStats>() == 64);
const _: () = assert!(size_of::<HookCounters>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]` plain integers and arrays with explicit padding.
    unsafe impl aya::Pod for WatchedProc {}
    unsafe impl aya::Pod for InodeKey {}
    unsafe impl aya::Pod for FileKey {}
    unsafe impl aya::Pod for FileStats {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for HookCounters {}
    unsafe impl aya::Pod for crate::offsets::KernelOffsets {}
}
