//! The corpus files made by code (`fuzz/corpus/<target>/seed-*`): valid inputs of each
//! parser, so that the fuzzer starts from the shapes the parsers accept rather than finding
//! them byte by byte. `tests/corpus.rs` checks that the files on disk are these bytes (so a
//! layout change in `clinicwatch-common` cannot leave stale records behind) and rewrites them
//! with `CLINICWATCH_WRITE_SEEDS=1`. Other corpus files (captured inputs, `real-*`, and kept
//! crashes, `crash-*`) are files only.

use std::net::IpAddr;

use clinicwatch_agent::pipeline::dns;
use clinicwatch_common::{
    kind, ConnectEvent, DnsEvent, EventHeader, ExecEvent, ExitEvent, FileEvent, FlowAddr,
    FlowCloseEvent, ForkEvent, PathBuf as KPath, ProtectedOpenEvent, TlsReadEvent, TlsWriteEvent,
    COMPONENT_LEN, PATH_COMPONENTS,
};
use clinicwatch_proto::v1::{
    agent_frame::Frame, record::Body, AgentFrame, Batch, ChildCount, ClassStats, Destination,
    Finding, Health, Heartbeat, Hello, HookChoice, QueryStats, Record, Severity, WindowSummary,
};
use prost::Message as _;

/// One seed: its target, its file name (`seed-…`) and its bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push(Seed {
            target,
            name: format!("seed-{name}"),
            bytes,
        })
    };
    for (name, bytes) in ring_buffer() {
        add("ring_buffer", name, bytes);
    }
    for (name, bytes) in dns_answers() {
        add("dns", name, bytes);
    }
    for (name, bytes) in tls_plaintext() {
        add("tls_plaintext", name, bytes.to_vec());
    }
    add("btf", "vmlinux-subset", vmlinux_subset());
    for (name, frame) in frames() {
        add("frames", name, frame.encode_to_vec());
    }
    out
}

// ---- ring buffer -------------------------------------------------------------------------

/// The bytes of a record as the kernel writes it.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the event types are `#[repr(C)]` integers and arrays with explicit padding
    // (asserted in clinicwatch-common), and each was made from `zeroed`, so every byte is
    // initialised.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
}

/// A zeroed event of kind `k`, its header filled for process 4242.
fn event<T: Copy>(k: u32, fill: impl FnOnce(&mut T)) -> Vec<u8> {
    // SAFETY: as above, all-zero is a valid `T`.
    let mut v: T = unsafe { std::mem::zeroed() };
    fill(&mut v);
    let mut b = bytes_of(&v);
    let hdr = EventHeader {
        kind: k,
        size: size_of::<T>() as u32,
        time_ns: 3_600_000_000_000,
        pid: 4242,
        tgid: 4242,
    };
    b[..size_of::<EventHeader>()].copy_from_slice(&bytes_of(&hdr));
    b
}

fn copy(dst: &mut [u8], src: &[u8]) {
    dst[..src.len()].copy_from_slice(src);
}

/// `/a/b/c` as the kernel walks it: the file name first.
fn kpath(path: &str) -> KPath {
    // SAFETY: as above.
    let mut p: KPath = unsafe { std::mem::zeroed() };
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).rev().collect();
    assert!(comps.len() <= PATH_COMPONENTS);
    for (slot, c) in p.comps.iter_mut().zip(&comps) {
        assert!(c.len() < COMPONENT_LEN);
        copy(slot, c.as_bytes());
    }
    p.depth = comps.len() as u32;
    p
}

fn v4(a: [u8; 4], port: u16, protocol: u16) -> FlowAddr {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&a);
    FlowAddr {
        family: 2, // AF_INET
        protocol,
        port,
        _pad: 0,
        addr,
    }
}

const REQUEST: &[u8] = b"GET /api/v1/patients/123456/documents?page=2&sort=date HTTP/1.1\r\n\
Host: pm.vendor.example\r\nUser-Agent: PMClient/4.2\r\nAccept: application/json\r\n\r\n";

fn ring_buffer() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "exec",
            event(kind::EXEC, |e: &mut ExecEvent| {
                e.ppid = 1;
                e.uid = 1000;
                e.gid = 1000;
                e.root_tgid = 4242;
                e.exe_dev = 0x801;
                e.exe_ino = 131_077;
                e.cgroup_id = 7;
                let argv = b"python3\0-m\0http.server\0";
                copy(&mut e.argv, argv);
                e.argv_len = argv.len() as u32;
                copy(&mut e.comm, b"python3");
                e.exe = kpath("/usr/bin/python3.11");
            }),
        ),
        (
            "fork",
            event(kind::FORK, |e: &mut ForkEvent| {
                e.ppid = 4241;
                e.root_tgid = 4241;
            }),
        ),
        (
            "exit",
            event(kind::EXIT, |e: &mut ExitEvent| e.exit_code = 1 << 8),
        ),
        (
            "file-open",
            event(kind::FILE_OPEN, |e: &mut FileEvent| {
                e.flags = 0o2_000_000; // O_RDONLY|O_CLOEXEC
                e.dev = 0x801;
                e.ino = 262_145;
                e.path = kpath("/srv/pm/data/patients.db");
            }),
        ),
        (
            "file-mmap",
            event(kind::FILE_MMAP, |e: &mut FileEvent| {
                e.origin = 2;
                e.dev = 0x801;
                e.ino = 262_146;
                e.path = kpath("/srv/pm/data/patients.db-shm");
            }),
        ),
        (
            "protected-open",
            event(kind::PROTECTED_OPEN, |e: &mut ProtectedOpenEvent| {
                e.uid = 1000;
                e.dev = 0x802;
                e.ino = 393_217;
                e.ppid = 4100;
                copy(&mut e.comm, b"cat");
                for (a, (pid, comm)) in e.ancestors.iter_mut().zip([
                    (4100, &b"bash"[..]),
                    (4000, b"sshd"),
                    (1, b"systemd"),
                ]) {
                    a.pid = pid;
                    copy(&mut a.comm, comm);
                }
                e.path = kpath("/home/alice/.ssh/id_ed25519");
                e.exe = kpath("/usr/bin/cat");
            }),
        ),
        (
            "connect",
            event(kind::NET_CONNECT, |e: &mut ConnectEvent| {
                e.cookie = 0x1234;
                e.remote = v4([203, 0, 113, 7], 443, 6);
            }),
        ),
        (
            "flow-close",
            event(kind::NET_CLOSE, |e: &mut FlowCloseEvent| {
                e.cookie = 0x1234;
                e.stats.tgid = 4242;
                e.stats.bytes_sent = 1_200;
                e.stats.bytes_recv = 48_000;
                e.stats.packets_sent = 9;
                e.stats.packets_recv = 40;
                e.stats.remote = FlowAddr {
                    family: 10, // AF_INET6
                    protocol: 6,
                    port: 443,
                    _pad: 0,
                    addr: "2001:db8::7"
                        .parse::<std::net::Ipv6Addr>()
                        .unwrap()
                        .octets(),
                };
            }),
        ),
        (
            "dns",
            event(kind::DNS_ANSWER, |e: &mut DnsEvent| {
                e.cookie = 0x99;
                let answer = cname_chain();
                copy(&mut e.data, &answer);
                e.len = answer.len() as u32;
            }),
        ),
        (
            "tls-write",
            event(kind::TLS_WRITE, |e: &mut TlsWriteEvent| {
                e.ssl = 0x5555_0000_1000;
                copy(&mut e.data, REQUEST);
                e.captured = REQUEST.len() as u32;
                e.len = REQUEST.len() as u64;
            }),
        ),
        (
            "tls-read",
            event(kind::TLS_READ, |e: &mut TlsReadEvent| {
                e.ssl = 0x5555_0000_1000;
                let line = b"HTTP/1.1 200 OK\r";
                copy(&mut e.status, line);
                e.captured = line.len() as u32;
                e.len = 1_460;
            }),
        ),
    ]
}

// ---- DNS ---------------------------------------------------------------------------------

fn name(n: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for label in n.split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.push(0);
    b
}

/// A record: owner (bytes, often a pointer), type, class IN, TTL 300, data.
fn rr(owner: &[u8], rtype: u16, data: &[u8]) -> Vec<u8> {
    let mut b = owner.to_vec();
    b.extend_from_slice(&rtype.to_be_bytes());
    b.extend_from_slice(&[0, 1, 0, 0, 1, 0x2c]);
    b.extend_from_slice(&(data.len() as u16).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The EDNS OPT record a resolver adds (UDP size 1232).
const OPT: &[u8] = &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];

/// `www.vendor.example` A, answered the way recursive resolvers do: two CNAMEs, compressed
/// names, two addresses, an OPT record.
fn cname_chain() -> Vec<u8> {
    let mut b = vec![0x1f, 0x2e, 0x81, 0x80, 0, 1, 0, 4, 0, 0, 0, 1];
    b.extend_from_slice(&name("www.vendor.example")); // 12..32; `example` at 23
    b.extend_from_slice(&[0, 1, 0, 1]);
    // 36: www.vendor.example CNAME vendor.edge.<example> (its data at 48, `edge` at 55)
    b.extend_from_slice(&rr(
        &[0xc0, 12],
        5,
        &[&[6][..], b"vendor", &[4], b"edge", &[0xc0, 23]].concat(),
    ));
    // 62: vendor.edge.example CNAME lb.<edge.example> (its data at 74)
    b.extend_from_slice(&rr(
        &[0xc0, 48],
        5,
        &[&[2][..], b"lb", &[0xc0, 55]].concat(),
    ));
    for ip in [[203, 0, 113, 10], [203, 0, 113, 11]] {
        b.extend_from_slice(&rr(&[0xc0, 74], 1, &ip));
    }
    b.extend_from_slice(OPT);
    b
}

fn dns_answers() -> Vec<(&'static str, Vec<u8>)> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut nxdomain = vec![0x40, 0x01, 0x81, 0x83, 0, 1, 0, 0, 0, 1, 0, 0];
    nxdomain.extend_from_slice(&name("nope.vendor.example"));
    nxdomain.extend_from_slice(&[0, 1, 0, 1]);
    // SOA of vendor.example (pointer past `nope.`) in the authority section.
    let mut soa = name("ns1.vendor.example");
    soa.extend_from_slice(&name("hostmaster.vendor.example"));
    for v in [2026120201u32, 7200, 3600, 1209600, 300] {
        soa.extend_from_slice(&v.to_be_bytes());
    }
    nxdomain.extend_from_slice(&rr(&[0xc0, 17], 6, &soa));
    vec![
        (
            "a-aaaa",
            dns::response(
                7,
                "api.vendor.example",
                &[ip("203.0.113.7"), ip("2001:db8::7")],
            ),
        ),
        ("cname-chain", cname_chain()),
        ("nxdomain-soa", nxdomain),
    ]
}

// ---- TLS plaintext -----------------------------------------------------------------------

fn h2_request() -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS (max concurrent streams 100, initial window 65535), WINDOW_UPDATE
    b.extend_from_slice(&[0, 0, 12, 4, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&[0, 3, 0, 0, 0, 100, 0, 4, 0, 0, 0xff, 0xff]);
    b.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0x0f, 0, 1]);
    // HEADERS on streams 1 and 3 (END_HEADERS|END_STREAM): :method GET, :scheme https,
    // :path /, then a literal :authority.
    for stream in [1u8, 3] {
        let block = [&[0x82, 0x87, 0x84, 0x41, 0x0b][..], b"pm.vendor.e"].concat();
        b.extend_from_slice(&[0, 0, block.len() as u8, 1, 5, 0, 0, 0, stream]);
        b.extend_from_slice(&block);
    }
    b
}

fn tls_plaintext() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("get-api", REQUEST.to_vec()),
        (
            "post-json",
            b"POST /api/v2/appointments HTTP/1.1\r\nHost: agenda.vendor.example:443\r\n\
Content-Type: application/json\r\nContent-Length: 41\r\n\r\n{\"patient\":\"0b6f3a52\",\"at\":\"2026-12-03\"}"
                .to_vec(),
        ),
        (
            "search-names",
            b"GET /api/search/dupont%20jean/results?nom=DUPONT&prenom=Jean&dupont&martin&bernard&petit&durand&leroy&moreau&simon&laurent HTTP/1.1\r\n\
host: PM.Vendor.Example\r\n\r\n"
                .to_vec(),
        ),
        (
            "absolute-form",
            b"GET http://proxy.example/v1/records/0b6f3a52-1c1e-4b7e-9a51-3d2c9b0f7e11/jean.dupont@example.org/2026-12-03/deadbeefcafe1234#top HTTP/1.0\r\n\r\n"
                .to_vec(),
        ),
        ("cut-before-host", b"PUT /api/v1/files/AB12CD34 HTTP/1.1\r\nUser-Ag".to_vec()),
        ("h2-preface-headers", h2_request()),
        ("h2-data", vec![0, 0, 5, 0, 1, 0, 0, 0, 1, b'h', b'e', b'l', b'l', b'o']),
        ("status-404", b"HTTP/1.1 404 Not Found\r\n".to_vec()),
    ]
}

// ---- BTF ---------------------------------------------------------------------------------

/// A BTF blob written type by type (kinds and layout as in the kernel's `btf.h`).
struct BtfWriter {
    types: Vec<u8>,
    strings: Vec<u8>,
    next: u32,
}

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const CONST: u32 = 10;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;

impl BtfWriter {
    fn new() -> Self {
        BtfWriter {
            types: Vec::new(),
            strings: vec![0],
            next: 1,
        }
    }

    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    /// A type: its common header, then `extra` words; returns its id.
    fn ty(
        &mut self,
        name: &str,
        kind: u32,
        vlen: usize,
        flag: bool,
        size: u32,
        extra: &[u32],
    ) -> u32 {
        let name = self.string(name);
        let info = (flag as u32) << 31 | kind << 24 | vlen as u32;
        for w in [name, info, size].iter().chain(extra) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.next += 1;
        self.next - 1
    }

    fn int(&mut self, name: &str, bytes: u32, signed: bool) -> u32 {
        self.ty(
            name,
            INT,
            0,
            false,
            bytes,
            &[((signed as u32) << 24) | (bytes * 8)],
        )
    }

    /// A struct or union of `(name, type, byte offset)` members (bit offsets when `flag`:
    /// bitfield size in the top 8 bits).
    fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        let mut extra = Vec::new();
        for &(m, ty, off) in members {
            extra.extend([self.string(m), ty, off * 8]);
        }
        self.ty(name, kind, members.len(), false, size, &extra)
    }

    fn finish(self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xeb9fu16.to_le_bytes());
        b.extend_from_slice(&[1, 0]); // version 1, no flags
        let (tl, sl) = (self.types.len() as u32, self.strings.len() as u32);
        for w in [24u32, 0, tl, tl, sl] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strings);
        b
    }
}

/// The fields `Btf::kernel_offsets` reads, with the offsets they have in the seed.
pub const VMLINUX_SUBSET_OFFSETS: clinicwatch_common::KernelOffsets =
    clinicwatch_common::KernelOffsets {
        task_pid: 1264,
        task_tgid: 1268,
        task_real_parent: 1280,
        task_mm: 1176,
        task_files: 1864,
        task_comm: 1816,
        task_exit_code: 1212,
        task_signal: 1880,
        signal_struct_live: 4,
        mm_exe_file: 952,
        mm_arg_start: 296,
        mm_arg_end: 304,
        file_f_path: 64,
        file_f_inode: 80,
        file_f_flags: 12,
        path_mnt: 0,
        path_dentry: 8,
        dentry_d_parent: 24,
        dentry_d_name: 32,
        dentry_d_inode: 48,
        qstr_name: 8,
        inode_i_ino: 64,
        inode_i_mode: 0,
        inode_i_sb: 40,
        super_block_s_dev: 16,
        files_struct_fdt: 32,
        fdtable_max_fds: 0,
        fdtable_fd: 8,
        mount_mnt: 32,
        mount_mnt_parent: 16,
        mount_mnt_mountpoint: 24,
        vfsmount_mnt_root: 0,
        pt_regs_arg0: 112,
    };

/// The part of a kernel's BTF the agent reads, shaped as the kernel's is: typedefs, const,
/// pointers, arrays, an enum, a function, a bitfield, and fields found through anonymous
/// structs and unions (`task_struct.exit_code`, `mm_struct`'s fields, `qstr.hash_len`).
fn vmlinux_subset() -> Vec<u8> {
    let o = VMLINUX_SUBSET_OFFSETS;
    let mut w = BtfWriter::new();
    let int = w.int("int", 4, true);
    let uint = w.int("unsigned int", 4, false);
    let ulong = w.int("long unsigned int", 8, false);
    let ushort = w.int("short unsigned int", 2, false);
    let char_ = w.int("char", 1, true);
    let pid_t = w.ty("pid_t", TYPEDEF, 0, false, int, &[]);
    let dev_t = w.ty("dev_t", TYPEDEF, 0, false, uint, &[]);
    let void_ptr = w.ty("", PTR, 0, false, 0, &[]);
    let comm = w.ty("", ARRAY, 0, false, 0, &[char_, int, 16]);
    let const_char = w.ty("", CONST, 0, false, char_, &[]);
    let name_ptr = w.ty("", PTR, 0, false, const_char, &[]);
    let fwd = w.ty("cred", FWD, 0, false, 0, &[]);
    let cred_ptr = w.ty("", PTR, 0, false, fwd, &[]);
    let (pid, tgid) = (w.string("PIDTYPE_PID"), w.string("PIDTYPE_TGID"));
    w.ty("pid_type", ENUM, 2, false, 4, &[pid, 0, tgid, 1]);
    let proto = w.ty("", FUNC_PROTO, 1, false, int, &[0, void_ptr]);
    w.ty("do_exit", FUNC, 0, false, proto, &[]);

    // task_struct: `exit_code` inside an anonymous union at 1200, a 1-bit bitfield
    // (`kind_flag` set: bit offsets with the bitfield size in the top byte).
    let exit_union = w.composite(
        UNION,
        "",
        16,
        &[("exit_code", int, o.task_exit_code - 1200)],
    );
    let const_exit_union = w.ty("", CONST, 0, false, exit_union, &[]);
    let task_members: Vec<(&str, u32, u32)> = vec![
        ("__state", uint, 24),
        ("mm", void_ptr, o.task_mm),
        ("", const_exit_union, 1200),
        ("pid", pid_t, o.task_pid),
        ("tgid", pid_t, o.task_tgid),
        ("real_parent", void_ptr, o.task_real_parent),
        ("cred", cred_ptr, 1800),
        ("comm", comm, o.task_comm),
        ("files", void_ptr, o.task_files),
        ("signal", void_ptr, o.task_signal),
    ];
    let mut extra = Vec::new();
    for &(m, ty, off) in &task_members {
        extra.extend([w.string(m), ty, off * 8]);
    }
    let (ie, ty) = (w.string("in_execve"), uint);
    extra.extend([ie, ty, 1 << 24 | (1272 * 8 + 3)]);
    w.ty(
        "task_struct",
        STRUCT,
        task_members.len() + 1,
        true,
        9792,
        &extra,
    );
    let atomic = w.composite(STRUCT, "", 4, &[("counter", int, 0)]);
    let atomic_t = w.ty("atomic_t", TYPEDEF, 0, false, atomic, &[]);
    w.composite(
        STRUCT,
        "signal_struct",
        1024,
        &[
            ("sigcnt", atomic_t, 0),
            ("live", atomic_t, o.signal_struct_live),
        ],
    );
    let mm_inner = w.composite(
        STRUCT,
        "",
        1088,
        &[
            ("arg_start", ulong, o.mm_arg_start),
            ("arg_end", ulong, o.mm_arg_end),
            ("exe_file", void_ptr, o.mm_exe_file),
        ],
    );
    w.composite(
        STRUCT,
        "mm_struct",
        1096,
        &[("", mm_inner, 0), ("cpu_bitmap", comm, 1088)],
    );
    let path = w.composite(
        STRUCT,
        "path",
        16,
        &[
            ("mnt", void_ptr, o.path_mnt),
            ("dentry", void_ptr, o.path_dentry),
        ],
    );
    w.composite(
        STRUCT,
        "file",
        232,
        &[
            ("f_flags", uint, o.file_f_flags),
            ("f_path", path, o.file_f_path),
            ("f_inode", void_ptr, o.file_f_inode),
        ],
    );
    let hash_len = w.composite(STRUCT, "", 8, &[("hash", uint, 0), ("len", uint, 4)]);
    let hash_union = w.composite(UNION, "", 8, &[("", hash_len, 0), ("hash_len", ulong, 0)]);
    let qstr = w.composite(
        STRUCT,
        "qstr",
        16,
        &[("", hash_union, 0), ("name", name_ptr, o.qstr_name)],
    );
    w.composite(
        STRUCT,
        "dentry",
        192,
        &[
            ("d_parent", void_ptr, o.dentry_d_parent),
            ("d_name", qstr, o.dentry_d_name),
            ("d_inode", void_ptr, o.dentry_d_inode),
        ],
    );
    w.composite(
        STRUCT,
        "inode",
        600,
        &[
            ("i_mode", ushort, o.inode_i_mode),
            ("i_sb", void_ptr, o.inode_i_sb),
            ("i_ino", ulong, o.inode_i_ino),
        ],
    );
    w.composite(
        STRUCT,
        "super_block",
        1400,
        &[("s_dev", dev_t, o.super_block_s_dev)],
    );
    w.composite(
        STRUCT,
        "files_struct",
        704,
        &[("fdt", void_ptr, o.files_struct_fdt)],
    );
    w.composite(
        STRUCT,
        "fdtable",
        56,
        &[
            ("max_fds", uint, o.fdtable_max_fds),
            ("fd", void_ptr, o.fdtable_fd),
        ],
    );
    let vfsmount = w.composite(
        STRUCT,
        "vfsmount",
        32,
        &[("mnt_root", void_ptr, o.vfsmount_mnt_root)],
    );
    w.composite(
        STRUCT,
        "mount",
        320,
        &[
            ("mnt_parent", void_ptr, o.mount_mnt_parent),
            ("mnt_mountpoint", void_ptr, o.mount_mnt_mountpoint),
            ("mnt", vfsmount, o.mount_mnt),
        ],
    );
    w.composite(
        STRUCT,
        "pt_regs",
        168,
        &[("si", ulong, 104), ("di", ulong, o.pt_regs_arg0)],
    );
    w.finish()
}

// ---- frames ------------------------------------------------------------------------------

const T0: f64 = 1_796_000_000.0;

fn frames() -> Vec<(&'static str, AgentFrame)> {
    let hello = Hello {
        clinic_id: "clinic-a".into(),
        host_id: "ws1".into(),
        hostname: "reception-1".into(),
        agent_version: "0.1.0".into(),
        kernel: "6.18.0".into(),
        capabilities: vec![HookChoice {
            capability: "file_open".into(),
            hook: "lsm/file_open".into(),
            scope: "targeted".into(),
        }],
        epoch: 3,
        last_acked_seq: 41,
    };
    let summary = WindowSummary {
        app: "pm".into(),
        start: T0,
        end: T0 + 60.0,
        hour_of_week: 33,
        in_practice_hours: true,
        classes: vec![ClassStats {
            class: "pm_data".into(),
            bytes: 524_288,
            reads: 128,
            opens: 2,
            mmaps: 1,
            files: 2,
        }],
        destinations: vec![Destination {
            ip: "203.0.113.7".into(),
            port: 443,
            protocol: "tcp".into(),
            name: "api.vendor.example".into(),
            bytes_sent: 1_200,
            bytes_recv: 48_000,
            connects: 1,
        }],
        children: vec![ChildCount {
            exe: "/usr/bin/python3.11".into(),
            count: 1,
        }],
        processes: 3,
        queries: vec![QueryStats {
            protocol: "http/1.1".into(),
            method: "GET".into(),
            host: "pm.vendor.example".into(),
            path: "/api/v1/patients/{n}/documents?page&sort".into(),
            requests: 12,
            bytes_sent: 2_400,
            distinct_ids: 12,
            responses: vec![0, 12, 0, 0, 0],
        }],
    };
    let finding = Finding {
        rule: "CW-PM-BULK-READ".into(),
        severity: Severity::High as i32,
        app: "pm".into(),
        time: T0 + 61.0,
        subject: "pm_data".into(),
        summary: "read 500 MiB of pm_data in 60 s".into(),
        // One entry: a map of several is encoded in a random order (prost's HashMap), and
        // the seed file must be the same bytes at every run.
        evidence: [("bytes".to_string(), "524288000".to_string())]
            .into_iter()
            .collect(),
    };
    let health = Health {
        time: T0 + 62.0,
        ringbuf_drops: 1,
        decode_dropped: 2,
        watched_processes: 3,
        ..Default::default()
    };
    let batch = Batch {
        epoch: 3,
        first_seq: 42,
        records: vec![
            Record {
                seq: 42,
                body: Some(Body::Summary(summary)),
            },
            Record {
                seq: 43,
                body: Some(Body::Finding(finding)),
            },
            Record {
                seq: 45,
                body: Some(Body::Health(health)),
            },
        ],
    };
    let heartbeat = Heartbeat {
        time: T0 + 90.0,
        spooled: 4,
        dropped: 0,
    };
    vec![
        (
            "hello",
            AgentFrame {
                frame: Some(Frame::Hello(hello)),
            },
        ),
        (
            "batch",
            AgentFrame {
                frame: Some(Frame::Batch(batch)),
            },
        ),
        (
            "heartbeat",
            AgentFrame {
                frame: Some(Frame::Heartbeat(heartbeat)),
            },
        ),
    ]
}
