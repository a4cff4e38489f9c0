//! File activity: opens, reads and mmaps of watched processes, and opens of protected files
//! by everyone else.
//!
//! - open, preferred: LSM `file_open(struct file *file)` (5.7+, `bpf` in the LSM list).
//!   Fallback: `syscalls:sys_exit_{open,openat,openat2,creat}` (fires for every process' opens).
//! - read, preferred: fexit `vfs_read(file, buf, count, pos)` and
//!   `vfs_readv(file, vec, vlen, pos, flags)` (5.5+). Fallback: `syscalls:sys_exit_`
//!   `{read,pread64,readv,preadv,preadv2}` (5.15+ for `bpf_task_pt_regs`; fires for every
//!   process' reads).
//! - mmap, preferred: LSM `mmap_file(file, reqprot, prot, flags)`.
//!   Fallback: `syscalls:sys_enter_mmap`.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_uid_gid,
        generated::{bpf_get_current_task, bpf_get_current_task_btf},
    },
    macros::{fexit, lsm, tracepoint},
    programs::{FExitContext, LsmContext, TracePointContext},
};
use clinicwatch_common::{
    capacity, hook, kind, origin, Ancestor, FileEvent, FileKey, FileStats, InodeKey,
    ProtectedOpenEvent, WatchedProc, ANCESTORS, READER_APP,
};

use crate::{
    emit::{add, current_ids, finish, reserve, submit, Counter, HookResult},
    kernel::{self, agent_tgid, protect_enabled},
    maps::{FILE_STATS, PROTECTED, READER_FILES, WATCHED},
};
use aya_ebpf::maps::LruHashMap;

/// Offsets in the syscall tracepoint records (after the 8-byte common header and the
/// 8-byte `__syscall_nr` slot).
const SYSCALL_ARG0: usize = 16;
const SYSCALL_RET: usize = 16;
/// `fd` is the fifth argument of mmap.
const MMAP_ARG_FD: usize = SYSCALL_ARG0 + 4 * 8;
/// `flags` is the fourth argument of mmap.
const MMAP_ARG_FLAGS: usize = SYSCALL_ARG0 + 3 * 8;
const MAP_ANONYMOUS: u64 = 0x20;

#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    if let Some(who) = opener() {
        finish(&ctx, hook::FILE_OPEN, on_open(who, ctx.arg::<u64>(0)));
    }
    0
}

/// Attached to `sys_exit_open`, `sys_exit_openat`, `sys_exit_openat2` and `sys_exit_creat`.
#[tracepoint]
pub fn tp_open_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: `ret` is a `long` at this offset in every sys_exit record.
    let ret = unsafe { ctx.read_at::<i64>(SYSCALL_RET) }.unwrap_or(-1);
    if ret < 0 {
        return 0;
    }
    // The cheap checks first: most opens on the host are neither watched nor checked.
    let Some(who) = opener() else {
        return 0;
    };
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    finish(
        &ctx,
        hook::FILE_OPEN,
        kernel::task_fd_file(task, ret as u64).and_then(|file| on_open(who, file)),
    );
    0
}

#[fexit(function = "vfs_read")]
pub fn fexit_vfs_read(ctx: FExitContext) -> i32 {
    finish(
        &ctx,
        hook::FILE_READ,
        on_read_done(ctx.arg::<u64>(0), ctx.arg::<i64>(4)),
    );
    0
}

#[fexit(function = "vfs_readv")]
pub fn fexit_vfs_readv(ctx: FExitContext) -> i32 {
    finish(
        &ctx,
        hook::FILE_READ,
        on_read_done(ctx.arg::<u64>(0), ctx.arg::<i64>(5)),
    );
    0
}

/// Attached to `sys_exit_{read,pread64,readv,preadv,preadv2}`. The descriptor is the first
/// syscall argument, still in the task's saved registers at exit, so no entry hook (and no
/// map write per read) is needed.
#[tracepoint]
pub fn tp_read_exit(ctx: TracePointContext) -> u32 {
    let (pid, tgid) = current_ids();
    let Some(w) = watched(tgid) else {
        return 0;
    };
    // SAFETY: `ret` is a `long` at this offset in every sys_exit record.
    let ret = unsafe { ctx.read_at::<i64>(SYSCALL_RET) }.unwrap_or(-1);
    if ret > 0 {
        // SAFETY: helper without arguments; the BTF task pointer is also a plain address.
        let task = unsafe { bpf_get_current_task_btf() };
        let r = kernel::syscall_arg0(task)
            // Descriptors are C `int`s: keep the low 32 bits.
            .and_then(|fd| kernel::task_fd_file(task as u64, fd as u32 as u64))
            .and_then(|file| account_read(file, ret as u64, pid, tgid, w.app));
        finish(&ctx, hook::FILE_READ, r);
    }
    0
}

#[lsm(hook = "mmap_file")]
pub fn lsm_mmap_file(ctx: LsmContext) -> i32 {
    let file = ctx.arg::<u64>(0);
    if file != 0 {
        finish(&ctx, hook::FILE_MMAP, on_mmap(file));
    }
    0
}

/// Attached to `sys_enter_mmap`.
#[tracepoint]
pub fn tp_mmap_enter(ctx: TracePointContext) -> u32 {
    let (_, tgid) = current_ids();
    if WATCHED.get_ptr(tgid).is_none() {
        return 0;
    }
    // SAFETY: `fd` is at this offset in sys_enter_mmap records.
    // SAFETY: `flags` is at this offset in sys_enter_mmap records.
    let flags = unsafe { ctx.read_at::<u64>(MMAP_ARG_FLAGS) }.unwrap_or(MAP_ANONYMOUS);
    if flags & MAP_ANONYMOUS != 0 {
        return 0; // the descriptor is ignored by the kernel
    }
    // The register holds a C `int`: only its low 32 bits are the descriptor.
    let fd = unsafe { ctx.read_at::<u64>(MMAP_ARG_FD) }
        .map(|v| v as i32)
        .unwrap_or(-1);
    if fd >= 0 {
        // SAFETY: helper without arguments.
        let task = unsafe { bpf_get_current_task() };
        finish(
            &ctx,
            hook::FILE_MMAP,
            kernel::task_fd_file(task, fd as u64).and_then(on_mmap),
        );
    }
    0
}

/// The file counters of `app`: a followed protected reader's are kept apart, so that its
/// opens evict only its own.
#[inline(always)]
fn files(app: u32) -> &'static LruHashMap<FileKey, FileStats> {
    if app == READER_APP {
        &READER_FILES
    } else {
        &FILE_STATS
    }
}

#[inline(always)]
fn watched(tgid: u32) -> Option<WatchedProc> {
    // SAFETY: a map value pointer from a successful lookup.
    WATCHED.get_ptr(tgid).map(|w| unsafe { *w })
}

/// The current task as an opener: (pid, tgid, its watched entry), or `None` when its opens
/// are of no interest (it is the agent, or neither watched nor checked for protected files).
#[inline(always)]
fn opener() -> Option<(u32, u32, Option<WatchedProc>)> {
    let (pid, tgid) = current_ids();
    if tgid == agent_tgid() {
        return None;
    }
    let w = watched(tgid);
    if w.is_none() && !protect_enabled() {
        return None;
    }
    Some((pid, tgid, w))
}

#[inline(always)]
fn on_open((pid, tgid, w): (u32, u32, Option<WatchedProc>), file: u64) -> HookResult {
    match w {
        Some(w) => {
            let fk = file_key(tgid, file)?;
            if let Some(s) = files(w.app).get_ptr_mut(fk) {
                // SAFETY: a map value pointer; the add is atomic.
                unsafe { add(&mut (*s).opens, 1) };
                return Ok(());
            }
            let stats = FileStats {
                opens: 1,
                ..FileStats::default()
            };
            first_seen(fk, &stats, w.app, file, pid, &SEEN_OPEN)
        }
        None => on_protected_open(file, pid, tgid),
    }
}

/// How a file was first seen: which hook counts it, which event reports it.
struct Seen {
    hook: u32,
    kind: u32,
    origin: u32,
}

const SEEN_OPEN: Seen = Seen {
    hook: hook::FILE_OPEN,
    kind: kind::FILE_OPEN,
    origin: origin::OPEN,
};
const SEEN_READ: Seen = Seen {
    hook: hook::FILE_READ,
    kind: kind::FILE_OPEN,
    origin: origin::READ,
};
const SEEN_MMAP: Seen = Seen {
    hook: hook::FILE_MMAP,
    kind: kind::FILE_MMAP,
    origin: origin::MMAP,
};

/// Inserts the first counters of (process, file) and, if this call created them, reports the
/// file. A racing insert loses quietly: the other one reported it.
#[inline(always)]
fn first_seen(
    fk: FileKey,
    stats: &FileStats,
    app: u32,
    file: u64,
    pid: u32,
    seen: &Seen,
) -> HookResult {
    let map = files(app);
    if map.insert(fk, stats, BPF_NOEXIST as u64).is_ok() {
        return report_file(fk, app, file, pid, seen);
    }
    // Another thread inserted it first: add to its counters instead.
    if let Some(s) = map.get_ptr_mut(fk) {
        // SAFETY: a map value pointer; the adds are atomic.
        unsafe {
            add(&mut (*s).bytes_read, stats.bytes_read);
            add(&mut (*s).reads, stats.reads);
            add(&mut (*s).opens, stats.opens);
            add(&mut (*s).mmaps, stats.mmaps);
        }
    }
    Ok(())
}

#[inline(always)]
fn report_file(fk: FileKey, app: u32, file: u64, pid: u32, seen: &Seen) -> HookResult {
    let mut entry = reserve::<FileEvent>(seen.hook, seen.kind, pid, fk.tgid)?;
    // SAFETY: the entry is reserved for a `FileEvent`; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.app = app;
    ev.flags = kernel::file_flags(file).unwrap_or(0);
    ev.dev = fk.dev;
    ev.origin = seen.origin;
    ev.ino = fk.ino;
    kernel::fill_path(file, &mut ev.path);
    submit(entry);
    Ok(())
}

/// The counters key of `file` for process `tgid`, if it is a regular file.
#[inline(always)]
fn regular_file_key(tgid: u32, file: u64) -> Result<Option<FileKey>, Counter> {
    Ok(kernel::regular_file_key(file)?.map(|key| FileKey {
        tgid,
        dev: key.dev,
        ino: key.ino,
    }))
}

/// The counters key of `file` for process `tgid`.
#[inline(always)]
fn file_key(tgid: u32, file: u64) -> Result<FileKey, Counter> {
    let key = kernel::file_inode_key(file)?;
    Ok(FileKey {
        tgid,
        dev: key.dev,
        ino: key.ino,
    })
}

#[inline(always)]
fn on_read_done(file: u64, ret: i64) -> HookResult {
    if ret <= 0 {
        return Ok(());
    }
    let (pid, tgid) = current_ids();
    match watched(tgid) {
        Some(w) => account_read(file, ret as u64, pid, tgid, w.app),
        None => Ok(()),
    }
}

/// Adds a read of `bytes` to (watched process `tgid`, `file`).
#[inline(always)]
fn account_read(file: u64, bytes: u64, pid: u32, tgid: u32, app: u32) -> HookResult {
    // Files only: reads of pipes, sockets and devices are not file activity.
    let Some(fk) = regular_file_key(tgid, file)? else {
        return Ok(());
    };
    if let Some(s) = files(app).get_ptr_mut(fk) {
        // SAFETY: a map value pointer; the adds are atomic.
        unsafe {
            add(&mut (*s).bytes_read, bytes);
            add(&mut (*s).reads, 1);
        }
        return Ok(());
    }
    let stats = FileStats {
        bytes_read: bytes,
        reads: 1,
        ..FileStats::default()
    };
    first_seen(fk, &stats, app, file, pid, &SEEN_READ)
}

#[inline(always)]
fn on_mmap(file: u64) -> HookResult {
    let (pid, tgid) = current_ids();
    let Some(w) = watched(tgid) else {
        return Ok(());
    };
    let Some(fk) = regular_file_key(tgid, file)? else {
        return Ok(());
    };
    if let Some(s) = files(w.app).get_ptr_mut(fk) {
        // SAFETY: a map value pointer; the add is atomic.
        let first = unsafe { (*s).mmaps } == 0;
        unsafe { add(&mut (*s).mmaps, 1) };
        // The first mapping of a file already opened is reported as a mapping.
        return if first {
            report_file(fk, w.app, file, pid, &SEEN_MMAP)
        } else {
            Ok(())
        };
    }
    let stats = FileStats {
        mmaps: 1,
        ..FileStats::default()
    };
    first_seen(fk, &stats, w.app, file, pid, &SEEN_MMAP)
}

#[inline(always)]
fn on_protected_open(file: u64, pid: u32, tgid: u32) -> HookResult {
    let key = kernel::file_inode_key(file)?;
    let lookup = |k: &InodeKey| {
        // SAFETY: a map value pointer from a successful lookup.
        PROTECTED.get_ptr(k).map(|r| unsafe { *r })
    };
    let Some(rule) = kernel::find_protected(file, key, capacity::PROTECTED_DEPTH, lookup)? else {
        return Ok(());
    };
    let mut entry =
        reserve::<ProtectedOpenEvent>(hook::FILE_OPEN, kind::PROTECTED_OPEN, pid, tgid)?;
    // SAFETY: the entry is reserved for a `ProtectedOpenEvent`; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.flags = kernel::file_flags(file).unwrap_or(0);
    ev.dev = key.dev;
    ev.rule = rule;
    ev.ino = key.ino;
    ev._pad = 0;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: helper without arguments.
    let mut task = unsafe { bpf_get_current_task() };
    ev.ppid = 0;
    for i in 0..ANCESTORS {
        let parent = kernel::task_parent(task).unwrap_or(0);
        let a: &mut Ancestor = &mut ev.ancestors[i];
        a._pad = 0;
        if parent == 0 || parent == task {
            a.pid = 0;
            a.comm = [0; 16];
            task = 0;
            continue;
        }
        a.pid = kernel::task_tgid(parent).unwrap_or(0);
        a.comm = kernel::task_comm(parent).unwrap_or([0; 16]);
        if i == 0 {
            ev.ppid = a.pid;
        }
        task = parent;
    }
    kernel::fill_path(file, &mut ev.path);
    // SAFETY: helper without arguments.
    let me = unsafe { bpf_get_current_task() };
    kernel::fill_path(kernel::task_exe_file(me).unwrap_or(0), &mut ev.exe);
    submit(entry);
    Ok(())
}
