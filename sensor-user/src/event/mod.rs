//! What the agent reports: one JSON object per line, tagged by `type`. The vocabulary
//! every stage after the kernel shares: file classes ([`class`]), window summaries
//! ([`summary`]) and findings ([`finding`]) are defined here, below the stages that make them.

pub(crate) mod class;
pub mod finding;
pub mod summary;

use std::net::IpAddr;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::kernel::capabilities::CapabilityReport;

/// Counts of records dropped by the decoder, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeStats {
    pub decoded: u64,
    pub truncated: u64,
    pub bad_size: u64,
    pub unknown_kind: u64,
}

impl DecodeStats {
    pub fn dropped(&self) -> u64 {
        self.truncated + self.bad_size + self.unknown_kind
    }
}

/// A process of a watched tree, as seen in an ancestry chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ancestor {
    pub pid: u32,
    /// Executable path (or the command name where only that is known).
    pub exe: String,
}

/// A file as first seen by a watched process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRef {
    pub path: String,
    /// Open flags (`O_*`).
    pub flags: String,
    /// `major:minor` of the file's device.
    pub dev: String,
    pub ino: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileCounters {
    pub path: String,
    pub dev: String,
    pub ino: u64,
    pub bytes_read: u64,
    pub reads: u64,
    pub opens: u64,
    pub mmaps: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowCounters {
    /// The kernel's socket cookie: names the flow across events.
    pub flow: u64,
    pub protocol: String,
    pub dst: IpAddr,
    pub port: u16,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessCounters {
    pub pid: u32,
    pub app: String,
    pub exe: String,
    pub files: Vec<FileCounters>,
    pub flows: Vec<FlowCounters>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookHealth {
    pub hook: Cow<'static, str>,
    pub events: u64,
    pub ringbuf_drops: u64,
    pub read_errors: u64,
    pub map_full: u64,
    #[serde(default)]
    pub quota_refused: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub hooks: Vec<HookHealth>,
    pub ringbuf_drops: u64,
    pub decode: DecodeStats,
    /// Records that named a process the agent did not know (raced with its exit).
    pub unknown_process: u64,
    /// Watched processes found gone without an exit record (counters dropped with them).
    pub exits_missed: u64,
    /// Per-(process, file) counters evicted from the LRU map before they were reported.
    pub file_counters_evicted: u64,
    /// Events that could not be written to the output (disk full, closed pipe).
    pub output_write_errors: u64,
    pub watched_processes: usize,
    /// Map pressure: what a local user trying to blind the sensor would cause.
    #[serde(default)]
    pub watched_capacity: usize,
    /// Map inserts refused because a map was full, all hooks.
    #[serde(default)]
    pub map_full: u64,
    /// Protected-reader entries the kernel refused over the readers' quota, all hooks.
    #[serde(default)]
    pub quota_refused: u64,
    /// Protected readers the agent did not follow (quota used up).
    #[serde(default)]
    pub readers_not_followed: u64,
    /// Followed protected readers' processes in the watched map, and their flows.
    #[serde(default)]
    pub reader_processes: u64,
    #[serde(default)]
    pub reader_flows: u64,
    /// Open flows of watched processes whose counters were evicted before they closed.
    #[serde(default)]
    pub flows_evicted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Once at start: which hook serves each capability.
    Startup {
        time: f64,
        agent_pid: u32,
        kernel: String,
        capabilities: Vec<CapabilityReport>,
    },
    /// A process found running at start-up that belongs to a watched tree.
    Seed {
        time: f64,
        pid: u32,
        ppid: u32,
        app: String,
        exe: String,
        root_pid: u32,
    },
    Exec {
        time: f64,
        pid: u32,
        ppid: u32,
        uid: u32,
        gid: u32,
        app: String,
        exe: String,
        argv: Vec<String>,
        argv_truncated: bool,
        cgroup_id: u64,
        cgroup: String,
        /// From the parent up to the first watched process of the tree.
        ancestry: Vec<Ancestor>,
    },
    Fork {
        time: f64,
        pid: u32,
        ppid: u32,
        app: String,
    },
    Exit {
        time: f64,
        pid: u32,
        app: String,
        exe: String,
        exit_code: i32,
        signal: i32,
        /// Final counters of the process' files and open flows.
        files: Vec<FileCounters>,
        /// Files whose counters were evicted from the kernel's LRU map before the exit.
        files_evicted: u64,
        flows: Vec<FlowCounters>,
    },
    /// First open of a file by a watched process (or first read, when the open was not seen).
    FileOpen {
        time: f64,
        pid: u32,
        app: String,
        #[serde(flatten)]
        file: FileRef,
        /// `open`, or `read` when the open was not seen.
        origin: String,
    },
    /// First memory mapping of a file by a watched process.
    FileMmap {
        time: f64,
        pid: u32,
        app: String,
        #[serde(flatten)]
        file: FileRef,
    },
    /// A process outside every watched application opened a protected file.
    ProtectedOpen {
        time: f64,
        pid: u32,
        ppid: u32,
        uid: u32,
        comm: String,
        exe: String,
        path: String,
        rule: String,
        flags: String,
        /// Parent first; command names from the kernel, executables where still readable.
        ancestry: Vec<Ancestor>,
    },
    NetConnect {
        time: f64,
        pid: u32,
        app: String,
        flow: u64,
        protocol: String,
        dst: IpAddr,
        port: u16,
        /// The name the app resolved this address from (its DNS answers), when seen.
        #[serde(default)]
        name: Option<String>,
    },
    NetClose {
        time: f64,
        pid: u32,
        app: String,
        counters: FlowCounters,
    },
    /// Periodic counters of every watched process, and the sensor's health.
    Snapshot {
        time: f64,
        processes: Vec<ProcessCounters>,
        health: Health,
    },
    /// A request a watched process made through its TLS library, reduced to a template
    /// (see `query.rs`). Counted into the window; not written to the output file (one per
    /// request would be too many), only given to in-process subscribers.
    Query {
        time: f64,
        pid: u32,
        app: String,
        /// `http/1.1` or `h2`.
        protocol: String,
        method: String,
        host: String,
        path: String,
        /// Requests this write started (HTTP/2 may start several).
        requests: u32,
        /// Bytes the write carried.
        bytes: u64,
        /// Keyed hashes of the identifiers the request carried: for distinct counts only.
        #[serde(skip)]
        ids: Vec<u64>,
    },
    /// The status of the response to a request of `path` (HTTP/1.1).
    QueryResponse {
        time: f64,
        pid: u32,
        app: String,
        method: String,
        host: String,
        path: String,
        status: u16,
    },
    /// One app's aggregation window (counts by file class, destinations, children).
    Summary(summary::WindowSummary),
    /// Something a rule found.
    Finding(crate::event::finding::Finding),
}

impl Event {
    /// When it happened, for the events that record it (not summaries and findings, which
    /// are conclusions drawn later).
    pub fn time(&self) -> Option<f64> {
        Some(match self {
            Event::Startup { time, .. }
            | Event::Seed { time, .. }
            | Event::Exec { time, .. }
            | Event::Fork { time, .. }
            | Event::Exit { time, .. }
            | Event::FileOpen { time, .. }
            | Event::FileMmap { time, .. }
            | Event::ProtectedOpen { time, .. }
            | Event::NetConnect { time, .. }
            | Event::NetClose { time, .. }
            | Event::Query { time, .. }
            | Event::QueryResponse { time, .. }
            | Event::Snapshot { time, .. } => *time,
            Event::Summary(_) | Event::Finding(_) => return None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Event::Seed { pid, .. }
            | Event::Exec { pid, .. }
            | Event::Fork { pid, .. }
            | Event::Exit { pid, .. }
            | Event::FileOpen { pid, .. }
            | Event::FileMmap { pid, .. }
            | Event::ProtectedOpen { pid, .. }
            | Event::NetConnect { pid, .. }
            | Event::NetClose { pid, .. }
            | Event::Query { pid, .. }
            | Event::QueryResponse { pid, .. } => Some(*pid),
            Event::Startup { .. }
            | Event::Snapshot { .. }
            | Event::Summary(_)
            | Event::Finding(_) => None,
        }
    }
}
