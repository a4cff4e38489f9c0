//! Map keys and values, and the sizes the kernel programs declare.

use core::mem::size_of;

/// The application index of a followed protected reader (a process outside the watched apps
/// that opened a protected file, and its children): its processes and flows are held under
/// quotas ([`quota`]) and its file counters in a map of their own, so that a local user
/// cannot push the watched apps out of the maps.
pub const READER_APP: u32 = u32::MAX;

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
/// TCP/UDP headers excluded), counted in the cgroup socket-buffer hooks. For TCP they are
/// the bytes of the stream, each counted once: a retransmitted segment counts as a packet
/// but adds no bytes (tracked by sequence number). For UDP every datagram counts.
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
    /// TCP: the sequence number after the highest byte sent so far.
    pub snd_next: u32,
    /// TCP: the sequence number after the highest byte received so far.
    pub rcv_next: u32,
    /// TCP: which of `snd_next` ([`FLOW_SEQ_SENT`]) and `rcv_next` ([`FLOW_SEQ_RECV`]) hold
    /// a sequence number yet.
    pub seq_seen: u32,
    pub _pad: u32,
}

/// [`FlowStats::seq_seen`] bits.
pub const FLOW_SEQ_SENT: u32 = 1;
pub const FLOW_SEQ_RECV: u32 = 2;

impl FlowStats {
    /// Counts a TCP segment of `len` payload bytes starting at sequence number `seq` and
    /// returns how many of its bytes extend the stream past the highest byte counted so far
    /// in that direction (also added to `bytes_sent`/`bytes_recv`). A retransmission adds
    /// nothing; a segment that arrives ahead of a missing one counts the gap, which the late
    /// segment then does not count again. A SYN (or the first segment seen, for a flow whose
    /// SYN was missed) sets where the stream starts. Sequence numbers wrap.
    #[inline(always)]
    pub fn count_segment(&mut self, egress: bool, seq: u32, flags: TcpFlags, len: u32) -> u64 {
        let (next, bit) = if egress {
            (&mut self.snd_next, FLOW_SEQ_SENT)
        } else {
            (&mut self.rcv_next, FLOW_SEQ_RECV)
        };
        let mut start = seq;
        if flags.syn {
            start = seq.wrapping_add(1); // the SYN takes one sequence number
            *next = start;
            self.seq_seen |= bit;
        } else if self.seq_seen & bit == 0 {
            *next = start;
            self.seq_seen |= bit;
        }
        let end = start.wrapping_add(len);
        let ahead = end.wrapping_sub(*next) as i32;
        let mut added = 0;
        if ahead > 0 {
            *next = end;
            added = ahead as u64;
        }
        // The FIN takes the sequence number after the payload: not a byte, and the segments
        // after it (the last ACK of a half-closed flow) start past it.
        if flags.fin && end.wrapping_sub(*next) as i32 >= 0 {
            *next = end.wrapping_add(1);
        }
        if egress {
            self.bytes_sent += added;
        } else {
            self.bytes_recv += added;
        }
        added
    }
}

/// The TCP flags [`FlowStats::count_segment`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub fin: bool,
}

impl TcpFlags {
    /// From the flags byte of a TCP header (FIN is bit 0, SYN bit 1).
    #[inline(always)]
    pub fn from_byte(b: u8) -> Self {
        TcpFlags {
            syn: b & 0x02 != 0,
            fin: b & 0x01 != 0,
        }
    }
}

/// A TLS read in progress: where the plaintext goes, and for `SSL_read_ex` where the byte
/// count goes (0 for `SSL_read`, whose return value is the count).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsReadArgs {
    pub buf: u64,
    pub readbytes: u64,
    pub ssl: u64,
    pub app: u32,
    pub _pad: u32,
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
    /// Protected-reader entries refused because the reader quota ([`quota`]) was reached.
    pub quota_refused: u64,
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
    pub const TLS: u32 = 9;
    pub const COUNT: u32 = 10;
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
        "tls",
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
    /// TLS reads in progress (between a read's entry and its return), by thread.
    pub const TLS_READS: u32 = 1_024;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// How many ancestors of an opened file are checked against the protected set.
    pub const PROTECTED_DEPTH: u32 = 8;
    /// Followed protected readers' per-(process, file) counters (their own LRU map).
    pub const READER_FILES: u32 = 2_048;
}

/// Quotas of followed protected readers in the shared maps: slots of the `QUOTAS` array
/// (entries in use), and their limits. The kernel counts its own inserts and removals
/// atomically; the agent counts the entries it adds or removes and recounts at each
/// snapshot, which heals any drift (an LRU eviction, a race).
pub mod quota {
    /// Reader processes in `WATCHED`.
    pub const PROCESSES: u32 = 0;
    /// Reader flows in `FLOWS`.
    pub const FLOWS: u32 = 1;
    pub const COUNT: u32 = 2;
    /// At most an eighth of `WATCHED` for readers: the apps keep 14,336 entries.
    pub const MAX_PROCESSES: u64 = (super::capacity::WATCHED / 8) as u64;
    /// At most an eighth of `FLOWS` for readers.
    pub const MAX_FLOWS: u64 = (super::capacity::FLOWS / 8) as u64;
}

const _: () = assert!(size_of::<WatchedProc>() == 16);
const _: () = assert!(size_of::<InodeKey>() == 16);
const _: () = assert!(size_of::<FileKey>() == 16);
const _: () = assert!(size_of::<FileStats>() == 32);
const _: () = assert!(size_of::<FlowStats>() == 80);
const _: () = assert!(size_of::<HookCounters>() == 40);
const _: () = assert!(size_of::<TlsReadArgs>() == 32);

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
    unsafe impl aya::Pod for TlsReadArgs {}
    unsafe impl aya::Pod for crate::offsets::KernelOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: TcpFlags = TcpFlags {
        syn: true,
        fin: false,
    };
    const FIN: TcpFlags = TcpFlags {
        syn: false,
        fin: true,
    };
    const NONE: TcpFlags = TcpFlags {
        syn: false,
        fin: false,
    };

    #[test]
    fn retransmitted_and_reordered_segments_count_once() {
        let mut f = FlowStats::default();
        assert_eq!(f.count_segment(true, 1000, SYN, 0), 0, "SYN");
        assert_eq!(f.count_segment(true, 1001, NONE, 100), 100);
        assert_eq!(f.count_segment(true, 1101, NONE, 50), 50);
        assert_eq!(f.count_segment(true, 1001, NONE, 100), 0, "retransmission");
        assert_eq!(
            f.count_segment(true, 1101, NONE, 80),
            30,
            "overlap counts the new part"
        );
        assert_eq!(f.count_segment(true, 1181, FIN, 0), 0, "FIN");
        assert_eq!(f.count_segment(true, 1181, FIN, 0), 0, "FIN again");
        assert_eq!(
            f.count_segment(true, 1182, NONE, 0),
            0,
            "the last ACK of a half-closed flow, one past the FIN"
        );
        assert_eq!(f.bytes_sent, 180);
        // Receive side: a gap is counted when the later segment arrives, not again after.
        assert_eq!(f.count_segment(false, 7, SYN, 0), 0);
        assert_eq!(f.count_segment(false, 18, NONE, 10), 20);
        assert_eq!(f.count_segment(false, 8, NONE, 10), 0);
        assert_eq!(f.count_segment(false, 28, FIN, 5), 5, "data with the FIN");
        assert_eq!(f.count_segment(false, 34, NONE, 0), 0, "after the FIN");
        assert_eq!(
            (f.bytes_recv, f.bytes_sent),
            (25, 180),
            "directions are apart"
        );
        assert_eq!(TcpFlags::from_byte(0x11), FIN, "FIN|ACK");
        assert_eq!(TcpFlags::from_byte(0x12), SYN, "SYN|ACK");
    }

    #[test]
    fn sequence_numbers_wrap_and_a_missed_syn_starts_at_the_first_segment() {
        let mut f = FlowStats::default();
        assert_eq!(f.count_segment(true, u32::MAX - 10, SYN, 0), 0);
        assert_eq!(f.count_segment(true, u32::MAX - 9, NONE, 30), 30);
        assert_eq!(f.count_segment(true, 20, NONE, 5), 5, "past the wrap");
        assert_eq!(f.count_segment(true, u32::MAX - 9, NONE, 30), 0);
        let mut g = FlowStats::default();
        assert_eq!(g.count_segment(false, 500, NONE, 40), 40);
        assert_eq!(g.count_segment(false, 500, NONE, 40), 0);
    }
}
