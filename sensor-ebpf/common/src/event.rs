//! Ring-buffer records. Every record starts with [`EventHeader`]; `kind` says which struct
//! follows and `size` is the size of the whole record.

use core::mem::{offset_of, size_of};

/// Event kinds, grouped by family (process 1.., file 10.., network 20.., TLS plaintext 30..).
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const FILE_OPEN: u32 = 10;
    pub const FILE_MMAP: u32 = 11;
    pub const PROTECTED_OPEN: u32 = 12;
    pub const NET_CONNECT: u32 = 20;
    pub const NET_CLOSE: u32 = 21;
    pub const DNS_ANSWER: u32 = 22;
    /// A DNS query sent (a [`super::DnsEvent`] too): answers are matched to the questions
    /// their flow asked.
    pub const DNS_QUERY: u32 = 23;
    pub const TLS_WRITE: u32 = 30;
    pub const TLS_READ: u32 = 31;
}

/// How a file first became known for a process (`FileEvent::origin`).
pub mod origin {
    /// An open of the file by the process.
    pub const OPEN: u32 = 0;
    /// A read through a descriptor whose open was not seen (opened before the agent started,
    /// or inherited).
    pub const READ: u32 = 1;
    /// A mapping of the file into memory.
    pub const MMAP: u32 = 2;
}

/// Bits of [`PathBuf::flags`].
pub mod path_flags {
    /// The path had more components than fit; the top ones are missing.
    pub const TRUNCATED: u32 = 1;
    /// A kernel read failed part way; the path is incomplete.
    pub const READ_ERROR: u32 = 2;
}

pub const COMM_LEN: usize = 16;
pub const PATH_COMPONENTS: usize = 16;
pub const COMPONENT_LEN: usize = 64;
pub const ARGV_LEN: usize = 256;
pub const ANCESTORS: usize = 4;
/// Bytes of a DNS answer's UDP payload kept (answers are parsed in userspace for names).
pub const DNS_LEN: usize = 512;
/// Bytes of a TLS plaintext write kept: enough for a request line and its `Host` header, or
/// the first HTTP/2 frame headers. The agent reduces them to a query template at once.
pub const TLS_CAPTURE: usize = 512;
/// Bytes of a TLS plaintext read kept: a response's status line (`HTTP/1.1 200 `), and only
/// when the read starts with `HTTP/`.
pub const TLS_STATUS_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// Size in bytes of the whole record, header included.
    pub size: u32,
    /// `bpf_ktime_get_boot_ns` at the time of the event.
    pub time_ns: u64,
    /// Thread id of the task the event is about.
    pub pid: u32,
    /// Process (thread-group) id of the task the event is about.
    pub tgid: u32,
}

/// A path walked up from a dentry in the kernel: `comps[0]` is the last component (the file
/// name), `comps[depth - 1]` the first below `/`. Each component is NUL-terminated or
/// truncated to `COMPONENT_LEN` bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathBuf {
    pub depth: u32,
    pub flags: u32,
    pub comps: [[u8; COMPONENT_LEN]; PATH_COMPONENTS],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Index of the watched application in the agent's config.
    pub app: u32,
    /// Thread-group id of the first watched process of this tree.
    pub root_tgid: u32,
    pub exe_dev: u32,
    pub exe_ino: u64,
    pub cgroup_id: u64,
    /// Bytes of `argv` captured (NUL-separated arguments).
    pub argv_len: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    pub exe: PathBuf,
    pub argv: [u8; ARGV_LEN],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForkEvent {
    /// `pid`/`tgid` are the child's.
    pub hdr: EventHeader,
    pub ppid: u32,
    pub app: u32,
    pub root_tgid: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExitEvent {
    pub hdr: EventHeader,
    /// The task's `exit_code`: wait status (exit status << 8, or the signal number).
    pub exit_code: u32,
    pub app: u32,
}

/// First open (or first read / first mmap) of a file by a watched process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileEvent {
    pub hdr: EventHeader,
    pub app: u32,
    /// `file->f_flags` (O_* open flags).
    pub flags: u32,
    pub dev: u32,
    /// One of [`origin`].
    pub origin: u32,
    pub ino: u64,
    pub path: PathBuf,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ancestor {
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// An open of a protected file by a process outside every watched application.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProtectedOpenEvent {
    pub hdr: EventHeader,
    pub uid: u32,
    pub flags: u32,
    pub dev: u32,
    /// Index of the protected path in the agent's config that matched.
    pub rule: u32,
    pub ino: u64,
    pub ppid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    pub ancestors: [Ancestor; ANCESTORS],
    pub path: PathBuf,
    pub exe: PathBuf,
}

/// Address of a flow's remote end. IPv4 addresses use the first 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowAddr {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, ...
    pub protocol: u16,
    /// Remote port, host byte order.
    pub port: u16,
    pub _pad: u16,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectEvent {
    pub hdr: EventHeader,
    pub app: u32,
    pub _pad: u32,
    pub cookie: u64,
    pub remote: FlowAddr,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowCloseEvent {
    pub hdr: EventHeader,
    pub cookie: u64,
    pub stats: crate::maps::FlowStats,
}

const _: () = assert!(size_of::<EventHeader>() == 24);
const _: () = assert!(size_of::<PathBuf>() == 8 + COMPONENT_LEN * PATH_COMPONENTS);
const _: () = assert!(size_of::<ExecEvent>() == 88 + size_of::<PathBuf>() + ARGV_LEN);
const _: () = assert!(offset_of!(ExecEvent, exe) == 88);
const _: () = assert!(size_of::<ForkEvent>() == 40);
const _: () = assert!(size_of::<ExitEvent>() == 32);
const _: () = assert!(size_of::<FileEvent>() == 48 + size_of::<PathBuf>());
const _: () = assert!(size_of::<Ancestor>() == 24);
const _: () = assert!(offset_of!(ProtectedOpenEvent, path) == 168);
const _: () = assert!(size_of::<ProtectedOpenEvent>() == 168 + 2 * size_of::<PathBuf>());
const _: () = assert!(size_of::<FlowAddr>() == 24);
const _: () = assert!(size_of::<ConnectEvent>() == 64);
const _: () = assert!(size_of::<FlowCloseEvent>() == 32 + size_of::<crate::maps::FlowStats>());

/// The UDP payload of a DNS answer (remote port 53) received by a watched flow: its names
/// are matched to the addresses the app then connects to.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent {
    pub hdr: EventHeader,
    pub cookie: u64,
    /// Bytes of `data` filled.
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; DNS_LEN],
}

const _: () = assert!(size_of::<DnsEvent>() == 24 + 16 + DNS_LEN);

/// A plaintext write through the TLS library by a watched process (`SSL_write`,
/// `SSL_write_ex`): the first bytes of a request, or of part of one.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsWriteEvent {
    pub hdr: EventHeader,
    pub app: u32,
    /// Bytes of `data` filled (0 when the user memory could not be read).
    pub captured: u32,
    /// The library's connection object (`SSL *`): pairs requests with responses.
    pub ssl: u64,
    /// Bytes the call was asked to write.
    pub len: u64,
    pub data: [u8; TLS_CAPTURE],
}

/// A plaintext read (`SSL_read`, `SSL_read_ex`) by a watched process that starts with an
/// HTTP status line.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsReadEvent {
    pub hdr: EventHeader,
    pub app: u32,
    /// Bytes of `status` filled.
    pub captured: u32,
    pub ssl: u64,
    /// Bytes the call returned.
    pub len: u64,
    pub status: [u8; TLS_STATUS_LEN],
}

const _: () = assert!(size_of::<TlsWriteEvent>() == 48 + TLS_CAPTURE);
const _: () = assert!(size_of::<TlsReadEvent>() == 48 + TLS_STATUS_LEN);
