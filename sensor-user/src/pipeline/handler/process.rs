//! The process family: exec (with the command-line filter), fork, and exit with the final
//! counters of the process's files and open flows.

use clinicwatch_common::{ExecEvent, ExitEvent, ForkEvent, ARGV_LEN};

use super::{
    convert::{file_counters, flow_counters, path_string},
    Handler,
};
use crate::{
    event::{Event, FileCounters},
    kernel::{procfs, sensor::Sensor},
    pipeline::proctable::ProcInfo,
};

impl Handler {
    pub(super) fn on_exec(&mut self, e: &ExecEvent, sensor: &mut Sensor) -> Option<Event> {
        let pid = e.hdr.tgid;
        let len = (e.argv_len as usize).min(ARGV_LEN);
        let argv = procfs::split_args(&e.argv[..len]);
        let is_root = e.root_tgid == pid;
        // Judged once, on the exec that started the tree (a launcher that re-execs stays in);
        // on the whole command line, not the 256 bytes the kernel copied.
        if is_root && self.table.get(pid).is_none() {
            let full_argv = if len == ARGV_LEN {
                procfs::read_cmdline(pid)
            } else {
                Vec::new()
            };
            let filter_argv = if full_argv.is_empty() {
                &argv
            } else {
                &full_argv
            };
            if !self.cmdline_matches(e.app, filter_argv) {
                // Right executable, wrong command line: not this application.
                let _ = sensor.unwatch(pid);
                self.table.remove(pid);
                self.rejected.insert(pid);
                return None;
            }
        }
        let exe = path_string(&e.exe);
        // An exec keeps the files the process had already seen.
        let files = self.table.remove(pid).map(|p| p.files).unwrap_or_default();
        let info = ProcInfo {
            files,
            ..ProcInfo::new(e.ppid, e.app, e.root_tgid, exe.clone())
        };
        self.table.insert(pid, info);
        let ancestry = if is_root {
            Vec::new()
        } else {
            self.table.ancestry(e.ppid)
        };
        Some(Event::Exec {
            time: self.clock.unix(e.hdr.time_ns),
            pid,
            ppid: e.ppid,
            uid: e.uid,
            gid: e.gid,
            app: self.app_name(e.app),
            exe,
            argv,
            argv_truncated: len == ARGV_LEN,
            cgroup_id: e.cgroup_id,
            cgroup: procfs::cgroup_path(pid),
            ancestry,
        })
    }

    pub(super) fn on_fork(&mut self, e: &ForkEvent) -> Event {
        let pid = e.hdr.tgid;
        let exe = self.exe_of(e.ppid);
        self.table
            .insert(pid, ProcInfo::new(e.ppid, e.app, e.root_tgid, exe));
        Event::Fork {
            time: self.clock.unix(e.hdr.time_ns),
            pid,
            ppid: e.ppid,
            app: self.app_name(e.app),
        }
    }

    pub(super) fn on_exit(&mut self, e: &ExitEvent, sensor: &mut Sensor) -> Event {
        let pid = e.hdr.tgid;
        let info = self.table.remove(pid).unwrap_or_default();
        // Files whose counters the LRU map evicted before the exit.
        let mut evicted = 0u64;
        let mut files: Vec<FileCounters> = info
            .files
            .iter()
            .filter_map(|(key, path)| {
                let s = sensor.take_file_stats(key);
                if s.is_none() {
                    evicted += 1;
                }
                Some(file_counters(key, path, &s?))
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let flows = self
            .open_flows
            .iter()
            .filter(|(_, p)| **p == pid)
            .filter_map(|(c, _)| sensor.flow_stats(*c).map(|s| flow_counters(*c, &s)))
            .collect();
        self.evicted += evicted;
        let status = e.exit_code as i32;
        Event::Exit {
            time: self.clock.unix(e.hdr.time_ns),
            pid,
            app: self.app_name(e.app),
            exe: info.exe,
            exit_code: (status >> 8) & 0xff,
            signal: status & 0x7f,
            files,
            files_evicted: evicted,
            flows,
        }
    }
}
