//! Finding the TLS library a watched process uses, from its mappings, so that the uprobes
//! go on that very file (a system `libssl.so.3`, or one the application ships). A library is
//! attached once, by device and inode, whichever process showed it; a process is looked at
//! again until its library is found, since most load it late (Python on `import ssl`).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// File names of the libraries whose functions are probed.
pub fn is_tls_library(file_name: &str) -> bool {
    file_name.starts_with("libssl.so")
}

/// The TLS libraries mapped by process `pid`, as paths the agent can open (through
/// `/proc/PID/root`, so a library inside a container is the container's file).
pub fn libraries_of(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        if !path.starts_with('/') || line.ends_with("(deleted)") {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or("");
        if is_tls_library(name) {
            let p = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// What has been attached, and which processes still need a look.
#[derive(Default)]
pub struct Discovery {
    /// (device, inode) of each library attached, with the path it was attached through.
    attached: HashMap<(u64, u64), PathBuf>,
    /// Libraries that could not be attached (logged once).
    failed: HashSet<(u64, u64)>,
    /// Processes whose library is attached: not looked at again.
    done: HashSet<u32>,
    /// How often each other process was looked at: every scan for its first
    /// [`EAGER_LOOKS`], then one scan in [`EAGER_LOOKS`] (an app that never loads libssl
    /// costs little, however many processes it has).
    looks: HashMap<u32, u32>,
}

const EAGER_LOOKS: u32 = 30;

/// A library attached or refused, for the agent's log and health.
#[derive(Debug, Clone, PartialEq)]
pub struct Attached {
    pub path: PathBuf,
    pub error: Option<String>,
}

impl Discovery {
    /// Looks at the processes not yet settled and attaches each new library with `attach`.
    pub fn scan(
        &mut self,
        pids: impl Iterator<Item = u32>,
        mut attach: impl FnMut(&Path) -> Result<(), String>,
    ) -> Vec<Attached> {
        let mut out = Vec::new();
        let pids: HashSet<u32> = pids.collect();
        self.done.retain(|p| pids.contains(p));
        self.looks.retain(|p, _| pids.contains(p));
        for pid in pids {
            if self.done.contains(&pid) {
                continue;
            }
            let n = self.looks.entry(pid).or_default();
            *n += 1;
            if *n > EAGER_LOOKS && !(*n).is_multiple_of(EAGER_LOOKS) {
                continue;
            }
            for lib in libraries_of(pid) {
                let Ok(meta) = std::fs::metadata(&lib) else {
                    continue;
                };
                let key = (meta.dev(), meta.ino());
                if self.attached.contains_key(&key) {
                    self.done.insert(pid);
                    continue;
                }
                if self.failed.contains(&key) {
                    continue;
                }
                match attach(&lib) {
                    Ok(()) => {
                        self.attached.insert(key, lib.clone());
                        self.done.insert(pid);
                        out.push(Attached {
                            path: lib,
                            error: None,
                        });
                    }
                    Err(e) => {
                        self.failed.insert(key);
                        out.push(Attached {
                            path: lib,
                            error: Some(e),
                        });
                    }
                }
            }
        }
        out
    }

    /// Libraries attached so far.
    pub fn libraries(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.attached.values().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_is_attached_once_and_its_processes_are_settled() {
        // This test's own process maps no libssl (Rust's TLS here is rustls).
        let me = std::process::id();
        let mut d = Discovery::default();
        let mut calls = 0;
        let got = d.scan([me].into_iter(), |_| {
            calls += 1;
            Ok(())
        });
        assert!(got.is_empty() && calls == 0);
        assert!(is_tls_library("libssl.so.3") && !is_tls_library("libcrypto.so.3"));
    }

    #[test]
    fn a_process_that_loaded_libssl_has_it_attached_once() {
        let Ok(mut child) = std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import ssl, sys; print(1, flush=True); sys.stdin.read()",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            clinicwatch_testkit::skip(
                "tls::a_process_that_loaded_libssl_has_it_attached_once",
                "no /usr/bin/python3",
            );
            return;
        };
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let pid = child.id();
        let libs = libraries_of(pid);
        assert_eq!(libs.len(), 1, "{libs:?}");
        assert!(libs[0].starts_with(format!("/proc/{pid}/root/")));
        let mut d = Discovery::default();
        let mut attached = Vec::new();
        let got = d.scan([pid].into_iter(), |lib| {
            attached.push(lib.to_path_buf());
            Ok(())
        });
        assert_eq!(got.len(), 1);
        // Settled: the next scans neither look again nor attach again.
        let again = d.scan([pid, pid].into_iter(), |_| Err("attached twice".into()));
        assert!(again.is_empty());
        assert_eq!(d.libraries(), attached);
        drop(child.stdin.take());
        child.wait().unwrap();
    }
}
