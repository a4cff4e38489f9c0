//! Struct field offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the agent reads the offsets the programs need here
//! and passes them as a load-time global. Only the parts of the BTF format needed for that
//! are parsed: the type table, struct and union members (anonymous ones are searched
//! through), and the string table.

use std::{collections::HashMap, path::Path};

use clinicwatch_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
/// Members looked at by one field search, at most. Anonymous members may name one composite
/// many times, or (in a malformed blob) their own: without a bound, `depth` levels of `n`
/// such members cost `n^depth`. A real kernel's search looks at a few hundred.
const SEARCH_BUDGET: u32 = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF `{path}` (kernel built without CONFIG_DEBUG_INFO_BTF?)")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no `struct {0}`")]
    MissingStruct(String),
    #[error("kernel BTF has no field `{field}` in `struct {strukt}`")]
    MissingField { strukt: String, field: String },
}

#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset within the enclosing struct.
    bit_offset: u32,
}

struct Composite {
    name_off: u32,
    members: Vec<Member>,
}

/// The struct and union types of a BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Composite types by type id.
    composites: HashMap<u32, Composite>,
    /// Struct type ids by name (the first with members wins).
    by_name: HashMap<String, u32>,
    /// For each type id, the id it refers to (typedef, const, volatile...), to see through them.
    refs: HashMap<u32, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let mut btf = Btf {
            strings,
            composites: HashMap::new(),
            by_name: HashMap::new(),
            refs: HashMap::new(),
        };
        let mut pos = 0usize;
        let mut id = 1u32;
        while pos < types.len() {
            let name_off = u32_at(types, pos)?;
            let info = u32_at(types, pos + 4)?;
            let size_or_type = u32_at(types, pos + 8)?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let extra = match kind {
                1 => 4,  // int
                3 => 12, // array
                KIND_STRUCT | KIND_UNION => 12 * vlen,
                6 => 8 * vlen,   // enum
                13 => 8 * vlen,  // func_proto
                14 => 4,         // var
                15 => 12 * vlen, // datasec
                17 => 4,         // decl_tag
                19 => 12 * vlen, // enum64
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            let body = types
                .get(pos..pos + extra)
                .ok_or(BtfError::Malformed("truncated type"))?;
            match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for m in 0..vlen {
                        let off = u32_at(body, m * 12 + 8)?;
                        members.push(Member {
                            name_off: u32_at(body, m * 12)?,
                            type_id: u32_at(body, m * 12 + 4)?,
                            bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
                        });
                    }
                    if kind == KIND_STRUCT && vlen > 0 {
                        let name = btf.string(name_off).to_string();
                        if !name.is_empty() {
                            btf.by_name.entry(name).or_insert(id);
                        }
                    }
                    btf.composites.insert(id, Composite { name_off, members });
                }
                8..=11 | 18 => {
                    btf.refs.insert(id, size_or_type);
                }
                _ => {}
            }
            pos += extra;
            id += 1;
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.refs.get(&id) {
                Some(&next) => id = next,
                None => break,
            }
        }
        id
    }

    /// Byte offset of `field` in the composite `id`, looking inside anonymous members, within
    /// `budget` members looked at.
    fn find(&self, id: u32, field: &str, depth: u32, budget: &mut u32) -> Option<u32> {
        let c = self.composites.get(&self.resolve(id))?;
        for m in &c.members {
            *budget = budget.checked_sub(1)?;
            let name = self.string(m.name_off);
            if name == field {
                return Some(m.bit_offset / 8);
            }
            if name.is_empty() && depth < 4 {
                if let Some(inner) = self.find(m.type_id, field, depth + 1, budget) {
                    return Some(m.bit_offset / 8 + inner);
                }
            }
        }
        let _ = c.name_off;
        None
    }

    /// Byte offset of `strukt.field`.
    pub fn offset_of(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(strukt)
            .ok_or_else(|| BtfError::MissingStruct(strukt.into()))?;
        let mut budget = SEARCH_BUDGET;
        self.find(id, field, 0, &mut budget)
            .ok_or_else(|| BtfError::MissingField {
                strukt: strukt.into(),
                field: field.into(),
            })
    }

    /// Every offset the kernel programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let o = |s: &str, f: &str| self.offset_of(s, f);
        Ok(KernelOffsets {
            task_pid: o("task_struct", "pid")?,
            task_tgid: o("task_struct", "tgid")?,
            task_real_parent: o("task_struct", "real_parent")?,
            task_mm: o("task_struct", "mm")?,
            task_files: o("task_struct", "files")?,
            task_comm: o("task_struct", "comm")?,
            task_exit_code: o("task_struct", "exit_code")?,
            task_signal: o("task_struct", "signal")?,
            signal_struct_live: o("signal_struct", "live")?,
            mm_exe_file: o("mm_struct", "exe_file")?,
            mm_arg_start: o("mm_struct", "arg_start")?,
            mm_arg_end: o("mm_struct", "arg_end")?,
            file_f_path: o("file", "f_path")?,
            file_f_inode: o("file", "f_inode")?,
            file_f_flags: o("file", "f_flags")?,
            path_mnt: o("path", "mnt")?,
            path_dentry: o("path", "dentry")?,
            dentry_d_parent: o("dentry", "d_parent")?,
            dentry_d_name: o("dentry", "d_name")?,
            dentry_d_inode: o("dentry", "d_inode")?,
            qstr_name: o("qstr", "name")?,
            inode_i_ino: o("inode", "i_ino")?,
            inode_i_mode: o("inode", "i_mode")?,
            inode_i_sb: o("inode", "i_sb")?,
            super_block_s_dev: o("super_block", "s_dev")?,
            files_struct_fdt: o("files_struct", "fdt")?,
            fdtable_max_fds: o("fdtable", "max_fds")?,
            fdtable_fd: o("fdtable", "fd")?,
            mount_mnt: o("mount", "mnt")?,
            mount_mnt_parent: o("mount", "mnt_parent")?,
            mount_mnt_mountpoint: o("mount", "mnt_mountpoint")?,
            vfsmount_mnt_root: o("vfsmount", "mnt_root")?,
            pt_regs_arg0: o("pt_regs", "di")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(b"not btf at all, not btf at all"),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(Btf::parse(&[]), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn a_struct_made_of_itself_is_searched_in_bounded_time() {
        // `struct task_struct` made of 40 anonymous members of its own type (kept in the fuzz
        // corpus as `fuzz/corpus/btf/crash-anonymous-self-members`): without the budget, each
        // of the 33 searches looked at 40^5 members.
        let mut types = Vec::new();
        for w in [1u32, 4 << 24 | 40, 8] {
            types.extend_from_slice(&w.to_le_bytes());
        }
        for _ in 0..40 {
            types.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        }
        let strings = b"\0task_struct\0";
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for w in [24, 0, types.len(), types.len(), strings.len()] {
            b.extend_from_slice(&(w as u32).to_le_bytes());
        }
        b.extend_from_slice(&types);
        b.extend_from_slice(strings);
        let btf = Btf::parse(&b).unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(
            btf.kernel_offsets(),
            Err(BtfError::MissingField { .. })
        ));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn reads_this_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            clinicwatch_testkit::skip(
                "btf::reads_this_kernel",
                &format!("no readable {VMLINUX_BTF}"),
            );
            return;
        };
        let off = btf
            .kernel_offsets()
            .expect("every offset the programs need");
        // `pid` and `tgid` are adjacent `pid_t`s in every kernel.
        assert_eq!(off.task_tgid, off.task_pid + 4);
        assert!(off.task_pid > 0 && off.file_f_inode > 0);
    }
}
