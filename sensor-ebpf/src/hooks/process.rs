//! Process tree membership: exec, fork and exit.
//!
//! Preferred: BTF tracepoints (`tp_btf`, 5.5+). Fallback: raw tracepoints (4.17+); both get
//! the same raw arguments:
//! - `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
//! - `sched_process_fork(struct task_struct *parent, struct task_struct *child)`
//! - `sched_process_exit(struct task_struct *p[, bool group_dead])`

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_user},
    },
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use clinicwatch_common::{
    hook, kind, quota, ExecEvent, ExitEvent, ForkEvent, WatchedProc, ARGV_LEN, READER_APP,
};

use crate::{
    emit::{current_ids, finish, quota_give, quota_take, reserve, submit, Counter, HookResult},
    kernel::{self, agent_tgid},
    maps::{WATCHED, WATCHED_EXES},
};

#[btf_tracepoint(function = "sched_process_exec")]
pub fn tp_btf_exec(ctx: BtfTracePointContext) -> i32 {
    finish(&ctx, hook::PROC_EXEC, on_exec());
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn raw_tp_exec(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, hook::PROC_EXEC, on_exec());
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn tp_btf_fork(ctx: BtfTracePointContext) -> i32 {
    finish(
        &ctx,
        hook::PROC_FORK,
        on_fork(ctx.arg::<u64>(0), ctx.arg::<u64>(1)),
    );
    0
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn raw_tp_fork(ctx: RawTracePointContext) -> i32 {
    finish(
        &ctx,
        hook::PROC_FORK,
        on_fork(ctx.arg::<u64>(0), ctx.arg::<u64>(1)),
    );
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn tp_btf_exit(ctx: BtfTracePointContext) -> i32 {
    finish(&ctx, hook::PROC_EXIT, on_exit(ctx.arg::<u64>(0)));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn raw_tp_exit(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, hook::PROC_EXIT, on_exit(ctx.arg::<u64>(0)));
    0
}

/// An exec keeps a watched process watched; an exec of a listed executable starts a tree.
#[inline(always)]
fn on_exec() -> HookResult {
    let (pid, tgid) = current_ids();
    if tgid == agent_tgid() {
        return Ok(());
    }
    // SAFETY: the helper returns the current task pointer.
    let task = unsafe { bpf_get_current_task() };
    let exe = kernel::task_exe_file(task)?;
    let exe_key = kernel::file_inode_key(exe)?;
    let watched = match WATCHED.get_ptr(tgid) {
        // SAFETY: a map value pointer from a successful lookup.
        Some(w) => unsafe { *w },
        None => {
            // SAFETY: as above.
            let Some(app) = WATCHED_EXES.get_ptr(exe_key).map(|a| unsafe { *a }) else {
                return Ok(());
            };
            let w = WatchedProc {
                app,
                root_tgid: tgid,
                depth: 0,
                _pad: 0,
            };
            if WATCHED.insert(tgid, w, 0).is_err() {
                return Err(Counter::MapFull);
            }
            w
        }
    };
    let mut entry = reserve::<ExecEvent>(hook::PROC_EXEC, kind::EXEC, pid, tgid)?;
    // SAFETY: the entry is reserved for an `ExecEvent`; every field is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let parent = kernel::task_parent(task).unwrap_or(0);
    ev.ppid = kernel::task_tgid(parent).unwrap_or(0);
    let ids = bpf_get_current_uid_gid();
    ev.uid = ids as u32;
    ev.gid = (ids >> 32) as u32;
    ev.app = watched.app;
    ev.root_tgid = watched.root_tgid;
    ev.exe_dev = exe_key.dev;
    ev._pad = 0;
    ev.exe_ino = exe_key.ino;
    // SAFETY: helper without arguments.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.argv_len = read_args(task, &mut ev.argv);
    kernel::fill_path(exe, &mut ev.exe);
    submit(entry);
    Ok(())
}

/// Copies up to `ARGV_LEN` bytes of the command line; returns how many.
#[inline(always)]
fn read_args(task: u64, out: &mut [u8; ARGV_LEN]) -> u32 {
    let Ok((start, end)) = kernel::task_args(task) else {
        return 0;
    };
    if end <= start {
        return 0;
    }
    let mut len = end - start;
    if len > ARGV_LEN as u64 {
        len = ARGV_LEN as u64;
    }
    // SAFETY: `len` is at most the buffer size; the helper checks the user address.
    let rc =
        unsafe { bpf_probe_read_user(out.as_mut_ptr() as *mut _, len as u32, start as *const _) };
    if rc == 0 {
        len as u32
    } else {
        0
    }
}

#[inline(always)]
fn on_fork(parent: u64, child: u64) -> HookResult {
    let ptgid = kernel::task_tgid(parent)?;
    let Some(w) = WATCHED.get_ptr(ptgid) else {
        return Ok(());
    };
    // SAFETY: a map value pointer from a successful lookup.
    let w = unsafe { *w };
    let ctgid = kernel::task_tgid(child)?;
    if ctgid == ptgid {
        return Ok(()); // a new thread, not a new process
    }
    let cw = WatchedProc {
        app: w.app,
        root_tgid: w.root_tgid,
        depth: w.depth + 1,
        _pad: 0,
    };
    // A protected reader's children are followed within its quota: a local user forking
    // without end fills an eighth of the map, never the watched apps' part.
    let reader = w.app == READER_APP;
    if reader {
        quota_take(quota::PROCESSES, quota::MAX_PROCESSES)?;
    }
    if WATCHED.insert(ctgid, cw, 0).is_err() {
        if reader {
            quota_give(quota::PROCESSES);
        }
        return Err(Counter::MapFull);
    }
    let mut entry = reserve::<ForkEvent>(hook::PROC_FORK, kind::FORK, ctgid, ctgid)?;
    // SAFETY: the entry is reserved for a `ForkEvent`; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.ppid = ptgid;
    ev.app = w.app;
    ev.root_tgid = w.root_tgid;
    ev._pad = 0;
    submit(entry);
    Ok(())
}

#[inline(always)]
fn on_exit(task: u64) -> HookResult {
    let tgid = kernel::task_tgid(task)?;
    let Some(w) = WATCHED.get_ptr(tgid) else {
        return Ok(());
    };
    // Only the last thread's exit ends the process: the main thread may go first (a thread
    // that execs kills it, for one), and the process lives on.
    if !kernel::task_group_dead(task)? {
        return Ok(());
    }
    // SAFETY: a map value pointer from a successful lookup.
    let app = unsafe { (*w).app };
    if WATCHED.remove(tgid).is_ok() && app == READER_APP {
        quota_give(quota::PROCESSES);
    }
    let mut entry = reserve::<ExitEvent>(hook::PROC_EXIT, kind::EXIT, tgid, tgid)?;
    // SAFETY: the entry is reserved for an `ExitEvent`; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.exit_code = kernel::task_exit_code(task).unwrap_or(u32::MAX);
    ev.app = app;
    submit(entry);
    Ok(())
}
