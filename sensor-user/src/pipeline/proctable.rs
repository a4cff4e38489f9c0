//! The agent's view of the watched process trees: who is whose parent, which executable,
//! which files and flows each process has, so events can carry ancestry and counters can
//! carry paths.

use std::collections::HashMap;

use clinicwatch_common::FileKey;

use crate::event::Ancestor;

/// How far an ancestry chain is followed at most (guards against a pid-reuse cycle).
const MAX_ANCESTRY: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct ProcInfo {
    pub ppid: u32,
    pub app: u32,
    pub root: u32,
    pub exe: String,
    /// Files first seen by this process, with their paths.
    pub files: HashMap<FileKey, String>,
}

impl ProcInfo {
    /// A process with no files seen yet.
    pub fn new(ppid: u32, app: u32, root: u32, exe: String) -> Self {
        ProcInfo {
            ppid,
            app,
            root,
            exe,
            files: HashMap::new(),
        }
    }
}

#[derive(Debug, Default)]
pub struct ProcTable {
    procs: HashMap<u32, ProcInfo>,
}

impl ProcTable {
    pub fn get(&self, pid: u32) -> Option<&ProcInfo> {
        self.procs.get(&pid)
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut ProcInfo> {
        self.procs.get_mut(&pid)
    }

    pub fn insert(&mut self, pid: u32, info: ProcInfo) {
        self.procs.insert(pid, info);
    }

    pub fn remove(&mut self, pid: u32) -> Option<ProcInfo> {
        self.procs.remove(&pid)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.keys().copied()
    }

    /// The chain from `ppid` up to the first watched process of the tree (inclusive).
    pub fn ancestry(&self, ppid: u32) -> Vec<Ancestor> {
        let mut out = Vec::new();
        let mut pid = ppid;
        while let Some(p) = self.procs.get(&pid) {
            out.push(Ancestor {
                pid,
                exe: p.exe.clone(),
            });
            if pid == p.root || out.len() >= MAX_ANCESTRY {
                break;
            }
            pid = p.ppid;
        }
        out
    }

    /// Path of a file a process has seen, if known.
    pub fn file_path(&self, key: &FileKey) -> Option<&str> {
        self.procs
            .get(&key.tgid)?
            .files
            .get(key)
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ppid: u32, root: u32, exe: &str) -> ProcInfo {
        ProcInfo::new(ppid, 0, root, exe.into())
    }

    #[test]
    fn ancestry_stops_at_the_root() {
        let mut t = ProcTable::default();
        t.insert(10, info(1, 10, "/opt/pm"));
        t.insert(11, info(10, 10, "/opt/pm"));
        t.insert(12, info(11, 10, "/bin/sh"));
        let chain: Vec<u32> = t.ancestry(12).iter().map(|a| a.pid).collect();
        assert_eq!(chain, vec![12, 11, 10]);
        assert!(t.ancestry(99).is_empty());
    }

    #[test]
    fn ancestry_survives_a_cycle() {
        let mut t = ProcTable::default();
        t.insert(5, info(6, 1, "a"));
        t.insert(6, info(5, 1, "b"));
        assert_eq!(t.ancestry(5).len(), MAX_ANCESTRY);
    }
}
