//! The file family: first opens, reads and mappings of a watched process's files, and
//! opens of protected files by any process (whose opener is then followed, if configured).

use clinicwatch_common::{origin, FileEvent, FileKey, ProtectedOpenEvent, WatchedProc};

use super::{
    convert::{comm_string, path_string},
    Handler, READER_APP,
};
use crate::{
    event::{Ancestor, Event, FileRef},
    kernel::{
        procfs,
        sensor::{Sensor, SensorError},
    },
    pipeline::proctable::ProcInfo,
};

impl Handler {
    /// A first open (or first read) of a file; `mmap` when it was a mapping.
    pub(super) fn on_file(&mut self, e: &FileEvent, mmap: bool) -> Event {
        let pid = e.hdr.tgid;
        let path = path_string(&e.path);
        let key = FileKey {
            tgid: pid,
            dev: e.dev,
            ino: e.ino,
        };
        match self.table.get_mut(pid) {
            Some(p) => {
                p.files.insert(key, path.clone());
            }
            None => self.unknown_process += 1,
        }
        let time = self.clock.unix(e.hdr.time_ns);
        let app = self.app_name(e.app);
        let file = FileRef {
            path,
            flags: procfs::open_flags(e.flags),
            dev: procfs::dev_string(e.dev),
            ino: e.ino,
        };
        if mmap {
            return Event::FileMmap {
                time,
                pid,
                app,
                file,
            };
        }
        let origin = if e.origin == origin::READ {
            "read"
        } else {
            "open"
        };
        Event::FileOpen {
            time,
            pid,
            app,
            file,
            origin: origin.into(),
        }
    }

    pub(super) fn on_protected_open(
        &mut self,
        e: &ProtectedOpenEvent,
        sensor: &mut Sensor,
    ) -> Event {
        let ancestry = e
            .ancestors
            .iter()
            .take_while(|a| a.pid != 0)
            .map(|a| {
                let exe = std::fs::read_link(format!("/proc/{}/exe", a.pid))
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| comm_string(&a.comm));
                Ancestor { pid: a.pid, exe }
            })
            .collect();
        let exe = path_string(&e.exe);
        if self.follow_readers && self.table.get(e.hdr.tgid).is_none() {
            self.follow_reader(e, &exe, sensor);
        }
        Event::ProtectedOpen {
            time: self.clock.unix(e.hdr.time_ns),
            pid: e.hdr.tgid,
            ppid: e.ppid,
            uid: e.uid,
            comm: comm_string(&e.comm),
            exe,
            path: path_string(&e.path),
            rule: self
                .protected
                .get(e.rule as usize)
                .cloned()
                .unwrap_or_else(|| format!("protected#{}", e.rule)),
            flags: procfs::open_flags(e.flags),
            ancestry,
        }
    }

    /// From now on the reader's connects, reads and children are seen (as the app
    /// `protected-reader`): the infostealer rule needs the connect.
    fn follow_reader(&mut self, e: &ProtectedOpenEvent, exe: &str, sensor: &mut Sensor) {
        let pid = e.hdr.tgid;
        let w = WatchedProc {
            app: READER_APP,
            root_tgid: pid,
            depth: 0,
            _pad: 0,
        };
        match sensor.watch(pid, w) {
            Ok(()) => self
                .table
                .insert(pid, ProcInfo::new(e.ppid, READER_APP, pid, exe.to_string())),
            Err(err) => {
                if matches!(err, SensorError::ReaderQuota { .. }) {
                    self.readers_not_followed += 1;
                }
                tracing::debug!(error = %err, "cannot follow a protected reader")
            }
        }
    }
}
