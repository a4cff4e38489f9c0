//! Kernel struct field offsets, read by the agent from `/sys/kernel/btf/vmlinux` at start-up
//! and handed to the programs as a load-time global (Rust eBPF has no CO-RE relocations).

use core::mem::size_of;

/// Byte offsets of the fields the programs read. Each is named `<struct>_<field>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_mm: u32,
    pub task_files: u32,
    pub task_comm: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    /// `signal_struct.live`: threads of the group still running (0 once the group is dead).
    pub signal_struct_live: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub file_f_flags: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub dentry_d_inode: u32,
    pub qstr_name: u32,
    pub inode_i_ino: u32,
    pub inode_i_mode: u32,
    pub inode_i_sb: u32,
    pub super_block_s_dev: u32,
    pub files_struct_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    /// Offset of the `struct vfsmount` embedded in `struct mount`.
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub vfsmount_mnt_root: u32,
    /// First syscall argument register in `struct pt_regs` (x86_64 `di`).
    pub pt_regs_arg0: u32,
}

const _: () = assert!(size_of::<KernelOffsets>() == 33 * 4);
