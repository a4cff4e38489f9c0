//! What the agent reads from `/proc` and `stat(2)`: running processes at start-up, the
//! kernel's device encoding, cgroup paths.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use clinicwatch_common::InodeKey;

/// The kernel's `dev_t` (`major << 20 | minor`) from a `stat(2)` device number.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xfffff)
}

/// `major:minor` of a kernel device number.
pub fn dev_string(kdev: u32) -> String {
    format!("{}:{}", kdev >> 20, kdev & 0xfffff)
}

/// (device, inode) of a path as the kernel sees it, following symlinks.
pub fn inode_key(path: &Path) -> std::io::Result<InodeKey> {
    let md = std::fs::metadata(path)?;
    Ok(InodeKey {
        dev: kernel_dev(md.dev()),
        _pad: 0,
        ino: md.ino(),
    })
}

/// A process found in `/proc`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    pub exe: Option<PathBuf>,
    pub exe_key: Option<InodeKey>,
    pub cmdline: Vec<String>,
}

/// Parses the parent pid from `/proc/<pid>/stat` (the command name may hold spaces and
/// parentheses, so read after the last `)`).
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

pub fn read_ppid(pid: u32) -> Option<u32> {
    parse_stat_ppid(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn read_cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| split_args(&b))
        .unwrap_or_default()
}

/// NUL-separated arguments to strings (lossy).
pub fn split_args(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Every process of the host, by pid. Processes that vanish while reading are skipped.
pub fn scan() -> HashMap<u32, ProcEntry> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(ppid) = read_ppid(pid) else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let exe_key = inode_key(Path::new(&format!("/proc/{pid}/exe"))).ok();
        out.insert(
            pid,
            ProcEntry {
                pid,
                ppid,
                exe,
                exe_key,
                cmdline: read_cmdline(pid),
            },
        );
    }
    out
}

/// The cgroup v2 path of a process (`0::/...` line), if it is still alive.
pub fn cgroup_path(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_default()
}

/// The cgroup v2 mount point: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones.
pub fn find_cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next()
}

/// The tracefs mount (`/sys/kernel/tracing`, or the older debugfs path). Mounts tracefs at
/// `/sys/kernel/tracing` when the host has not (tracepoints cannot be attached without it).
pub fn ensure_tracefs() -> Result<PathBuf, std::io::Error> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; a plain mount(2).
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    tracing::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// Open flags (`O_*`) as text, e.g. `O_RDONLY|O_CLOEXEC`.
pub fn open_flags(flags: u32) -> String {
    let f = flags as i32;
    let mut parts = vec![match f & libc::O_ACCMODE {
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_RDONLY",
    }];
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
        (libc::O_DIRECT, "O_DIRECT"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_PATH, "O_PATH"),
    ] {
        if f & bit == bit {
            parts.push(name);
        }
    }
    parts.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        assert_eq!(parse_stat_ppid("42 (a) b) S 17 42 42 0"), Some(17));
        assert_eq!(parse_stat_ppid("42 (plain) R 1 42"), Some(1));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn device_encoding_matches_the_kernel() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(dev_string((259 << 20) | 3), "259:3");
    }

    #[test]
    fn flags_read_as_text() {
        assert_eq!(open_flags(libc::O_RDONLY as u32), "O_RDONLY");
        assert_eq!(
            open_flags((libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC) as u32),
            "O_WRONLY|O_CREAT|O_CLOEXEC"
        );
    }

    #[test]
    fn scan_finds_this_process() {
        let me = std::process::id();
        let all = scan();
        let entry = all.get(&me).expect("this process in /proc");
        assert_eq!(
            entry.exe.as_deref(),
            std::env::current_exe().ok().as_deref()
        );
    }
}
