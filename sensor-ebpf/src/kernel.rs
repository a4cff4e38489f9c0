//! Reading kernel structures through offsets found in the running kernel's BTF.
//!
//! The agent fills `OFFSETS` at load time (`EbpfLoader::override_global`); the verifier then
//! sees constants. Pointers are carried as `u64` and every read goes through
//! `bpf_probe_read_kernel`, so a wrong offset yields a counted read error, never a crash.

use aya_ebpf::bindings::task_struct;
use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_probe_read_kernel_str, bpf_task_pt_regs},
};
use clinicwatch_common::{
    path_flags, InodeKey, KernelOffsets, PathBuf, COMPONENT_LEN, PATH_COMPONENTS,
};

use crate::emit::Counter;

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_mm: 0,
    task_files: 0,
    task_comm: 0,
    task_exit_code: 0,
    task_signal: 0,
    signal_struct_live: 0,
    mm_exe_file: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    file_f_path: 0,
    file_f_inode: 0,
    file_f_flags: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    dentry_d_inode: 0,
    qstr_name: 0,
    inode_i_ino: 0,
    inode_i_mode: 0,
    inode_i_sb: 0,
    super_block_s_dev: 0,
    files_struct_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    vfsmount_mnt_root: 0,
    pt_regs_arg0: 0,
};

/// Thread-group id of the agent itself: its own activity is never reported.
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;

/// Non-zero when `PROTECTED` holds entries.
#[unsafe(no_mangle)]
static PROTECT_ENABLED: u32 = 0;

/// Reads one field of `OFFSETS` without letting the compiler fold the zero initialiser.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: reading a static; volatile keeps the load-time value.
        unsafe { core::ptr::read_volatile(&OFFSETS.$field) } as u64
    };
}

#[inline(always)]
pub fn agent_tgid() -> u32 {
    // SAFETY: reading a static.
    unsafe { core::ptr::read_volatile(&AGENT_TGID) }
}

#[inline(always)]
pub fn protect_enabled() -> bool {
    // SAFETY: reading a static.
    unsafe { core::ptr::read_volatile(&PROTECT_ENABLED) != 0 }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u64) -> Result<T, Counter> {
    if base == 0 {
        return Err(Counter::ReadError);
    }
    // SAFETY: a probe read; a bad address returns an error.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T) }.map_err(|_| Counter::ReadError)
}

pub fn task_tgid(task: u64) -> Result<u32, Counter> {
    read(task, off!(task_tgid))
}

pub fn task_parent(task: u64) -> Result<u64, Counter> {
    read(task, off!(task_real_parent))
}

pub fn task_comm(task: u64) -> Result<[u8; 16], Counter> {
    read(task, off!(task_comm))
}

pub fn task_exit_code(task: u64) -> Result<u32, Counter> {
    read(task, off!(task_exit_code))
}

/// Whether every thread of the task's group has exited (`signal->live == 0`): at
/// `sched_process_exit` the exiting thread has already been taken off the count.
pub fn task_group_dead(task: u64) -> Result<bool, Counter> {
    let signal: u64 = read(task, off!(task_signal))?;
    Ok(read::<u32>(signal, off!(signal_struct_live))? == 0)
}

/// The executable `struct file *` of a task (`task->mm->exe_file`).
pub fn task_exe_file(task: u64) -> Result<u64, Counter> {
    let mm: u64 = read(task, off!(task_mm))?;
    read(mm, off!(mm_exe_file))
}

/// `[arg_start, arg_end)` of a task's command line in its user memory.
pub fn task_args(task: u64) -> Result<(u64, u64), Counter> {
    let mm: u64 = read(task, off!(task_mm))?;
    Ok((read(mm, off!(mm_arg_start))?, read(mm, off!(mm_arg_end))?))
}

/// The first argument of the syscall `task` is in, from its saved user registers. `task`
/// must come from `bpf_get_current_task_btf`.
#[inline(always)]
pub fn syscall_arg0(task: *mut task_struct) -> Result<u64, Counter> {
    // SAFETY: a BTF task pointer; the result is only used as an address to probe.
    let regs = unsafe { bpf_task_pt_regs(task) } as u64;
    read(regs, off!(pt_regs_arg0))
}

/// The `struct file *` behind descriptor `fd` of `task`.
pub fn task_fd_file(task: u64, fd: u64) -> Result<u64, Counter> {
    let files: u64 = read(task, off!(task_files))?;
    let fdt: u64 = read(files, off!(files_struct_fdt))?;
    let max_fds: u32 = read(fdt, off!(fdtable_max_fds))?;
    if fd >= max_fds as u64 {
        return Err(Counter::ReadError);
    }
    let fds: u64 = read(fdt, off!(fdtable_fd))?;
    read(fds, fd * 8)
}

pub fn file_flags(file: u64) -> Result<u32, Counter> {
    read(file, off!(file_f_flags))
}

fn inode_key_of(inode: u64) -> Result<InodeKey, Counter> {
    let ino: u64 = read(inode, off!(inode_i_ino))?;
    let sb: u64 = read(inode, off!(inode_i_sb))?;
    let dev: u32 = read(sb, off!(super_block_s_dev))?;
    Ok(InodeKey { dev, _pad: 0, ino })
}

/// (device, inode) of an open file.
pub fn file_inode_key(file: u64) -> Result<InodeKey, Counter> {
    inode_key_of(read(file, off!(file_f_inode))?)
}

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

/// (device, inode) of an open file if it is a regular file (not a pipe, socket, device...).
pub fn regular_file_key(file: u64) -> Result<Option<InodeKey>, Counter> {
    let inode: u64 = read(file, off!(file_f_inode))?;
    let mode: u16 = read(inode, off!(inode_i_mode))?;
    if mode & S_IFMT != S_IFREG {
        return Ok(None);
    }
    inode_key_of(inode).map(Some)
}

fn file_dentry(file: u64) -> Result<u64, Counter> {
    read(file, off!(file_f_path) + off!(path_dentry))
}

/// Looks the file and up to `depth` of its parent directories up in `matches`, which returns
/// the config index of a protected inode. Parents share the file's device (same mount).
#[inline(always)]
pub fn find_protected(
    file: u64,
    key: InodeKey,
    depth: u32,
    matches: impl Fn(&InodeKey) -> Option<u32>,
) -> Result<Option<u32>, Counter> {
    if let Some(rule) = matches(&key) {
        return Ok(Some(rule));
    }
    let mut dentry = file_dentry(file)?;
    for _ in 0..depth {
        let parent: u64 = read(dentry, off!(dentry_d_parent))?;
        if parent == dentry || parent == 0 {
            break;
        }
        dentry = parent;
        let inode: u64 = read(dentry, off!(dentry_d_inode))?;
        let ino: u64 = read(inode, off!(inode_i_ino))?;
        let k = InodeKey {
            dev: key.dev,
            _pad: 0,
            ino,
        };
        if let Some(rule) = matches(&k) {
            return Ok(Some(rule));
        }
    }
    Ok(None)
}

/// Where a path walk stands: the dentry, and the mount it is in.
struct Cursor {
    dentry: u64,
    mnt: u64,
    vfsmnt: u64,
}

impl Cursor {
    /// If the cursor is at the root of its mount, moves it to the mountpoint in the parent
    /// mount. Returns `true` at the root of the whole tree.
    #[inline(always)]
    fn climb_mount(&mut self) -> Result<bool, Counter> {
        let mnt_root: u64 = read(self.vfsmnt, off!(vfsmount_mnt_root))?;
        let parent: u64 = read(self.dentry, off!(dentry_d_parent))?;
        if self.dentry != mnt_root && self.dentry != parent {
            return Ok(false);
        }
        let mnt_parent: u64 = read(self.mnt, off!(mount_mnt_parent))?;
        if mnt_parent == self.mnt || mnt_parent == 0 {
            return Ok(true);
        }
        self.dentry = read(self.mnt, off!(mount_mnt_mountpoint))?;
        self.mnt = mnt_parent;
        self.vfsmnt = mnt_parent + off!(mount_mnt);
        Ok(false)
    }
}

/// Fills `out` with the path of `file`; a failed walk leaves an empty path flagged
/// `READ_ERROR` (the event is still worth sending).
#[inline(always)]
pub fn fill_path(file: u64, out: &mut PathBuf) {
    if file_path(file, out).is_err() {
        out.depth = 0;
        out.flags = path_flags::READ_ERROR;
    }
}

/// Walks the path of an open file up to the root, crossing mounts, into `out` (leaf first).
///
/// Kept simple for the verifier: one component per iteration, the loop index is the only
/// counter, and at most two mount crossings between components.
#[inline(always)]
pub fn file_path(file: u64, out: &mut PathBuf) -> Result<(), Counter> {
    out.depth = 0;
    out.flags = 0;
    let mut at_root = false;
    let path = file + off!(file_f_path);
    let vfsmnt: u64 = read(path, off!(path_mnt))?;
    let mut cur = Cursor {
        dentry: read(path, off!(path_dentry))?,
        mnt: vfsmnt.wrapping_sub(off!(mount_mnt)),
        vfsmnt,
    };
    for i in 0..PATH_COMPONENTS {
        if cur.climb_mount()? || cur.climb_mount()? {
            at_root = true;
            break;
        }
        let name: u64 = read(cur.dentry, off!(dentry_d_name) + off!(qstr_name))?;
        let slot = &mut out.comps[i];
        // SAFETY: a probe read into a fixed-size buffer; on failure the kernel zeroes it.
        let rc = unsafe {
            bpf_probe_read_kernel_str(
                slot.as_mut_ptr() as *mut _,
                COMPONENT_LEN as u32,
                name as *const _,
            )
        };
        if rc < 0 {
            out.flags |= path_flags::READ_ERROR;
        }
        out.depth = i as u32 + 1;
        cur.dentry = read(cur.dentry, off!(dentry_d_parent))?;
    }
    if !at_root && !cur.climb_mount()? {
        out.flags |= path_flags::TRUNCATED;
    }
    Ok(())
}
