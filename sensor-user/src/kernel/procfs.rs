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

/// (device, inode) of a path as `stat(2)` reports them, following symlinks: an identity for
/// comparisons made in userspace (`/proc/<pid>/exe` against a configured executable).
pub fn stat_key(path: &Path) -> std::io::Result<InodeKey> {
    let md = std::fs::metadata(path)?;
    Ok(InodeKey {
        dev: kernel_dev(md.dev()),
        _pad: 0,
        ino: md.ino(),
    })
}

/// (device, inode) of a path as the kernel programs see them: the device of the file's
/// superblock (`i_sb->s_dev`). `stat(2)` can report another device (btrfs gives each
/// subvolume its own), so the device comes from the mount holding the path in
/// `/proc/self/mountinfo`, which shows the superblock's.
pub fn kernel_key(path: &Path) -> std::io::Result<InodeKey> {
    let mut key = stat_key(path)?;
    let canonical = std::fs::canonicalize(path)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(dev) = mount_dev_for(&canonical, &info) {
        key.dev = dev;
    }
    Ok(key)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|c| u8::from_str_radix(c, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The kernel device (`major << 20 | minor`) of the mount holding `path`: the longest mount
/// point that contains it, the last listed where several are stacked on one point.
pub fn mount_dev_for(path: &Path, mountinfo: &str) -> Option<u32> {
    let mut best: Option<(usize, u32)> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(devno), Some(point)) = (f.get(2), f.get(4)) else {
            continue;
        };
        let point = unescape(point);
        if !path.starts_with(&point) {
            continue;
        }
        let Some((major, minor)) = devno.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
            continue;
        };
        let depth = Path::new(&point).components().count();
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, (major << 20) | (minor & 0xfffff)));
        }
    }
    best.map(|(_, dev)| dev)
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
        let exe_key = stat_key(Path::new(&format!("/proc/{pid}/exe"))).ok();
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

/// mount(2) of a pseudo filesystem (no device, no options).
fn mount_pseudo(fstype: &std::ffi::CStr, target: &std::ffi::CStr) -> Result<(), std::io::Error> {
    // SAFETY: valid NUL-terminated strings; a plain mount(2).
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    tracing::info!(fstype = ?fstype, target = ?target, "mounted");
    Ok(())
}

/// The tracefs mount (`/sys/kernel/tracing`, or the older debugfs path). Mounts tracefs at
/// `/sys/kernel/tracing` when the host has not (tracepoints cannot be attached without it).
pub fn ensure_tracefs() -> Result<PathBuf, std::io::Error> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    mount_pseudo(c"tracefs", c"/sys/kernel/tracing")?;
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// The kernel's active LSMs, comma-separated, from securityfs (mounted if it is not). A
/// BPF-LSM program loads and attaches even when `bpf` is not active, and then never runs:
/// this list is the only way to know.
pub fn active_lsms() -> Result<String, std::io::Error> {
    if !Path::new(LSM_LIST).exists() {
        mount_pseudo(c"securityfs", c"/sys/kernel/security")?;
    }
    Ok(std::fs::read_to_string(LSM_LIST)?.trim().to_string())
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
    fn the_mount_holding_a_path_gives_its_device() {
        let info = "22 27 0:21 / /proc rw - proc proc rw\n\
                    27 1 254:0 / / rw - ext4 /dev/vda rw\n\
                    40 27 0:45 /@home /home rw - btrfs /dev/vdb rw\n\
                    41 40 0:46 / /home/a\\040b rw - tmpfs tmpfs rw\n\
                    42 40 0:47 / /home/a\\040b rw - tmpfs tmpfs rw\n";
        let dev = |p: &str| mount_dev_for(Path::new(p), info);
        assert_eq!(dev("/usr/bin/ls"), Some(254 << 20));
        assert_eq!(dev("/home/u/.mozilla/cookies.sqlite"), Some(45));
        assert_eq!(
            dev("/homework"),
            Some(254 << 20),
            "a prefix of a name is not a parent"
        );
        assert_eq!(
            dev("/home/a b/x"),
            Some(47),
            "escaped spaces; the last of stacked mounts"
        );
        assert_eq!(dev("/proc/1/exe"), Some(21));
    }

    #[test]
    fn kernel_and_stat_keys_agree_on_this_root_filesystem() {
        let exe = std::env::current_exe().unwrap();
        let (k, s) = (kernel_key(&exe).unwrap(), stat_key(&exe).unwrap());
        assert_eq!(k.ino, s.ino);
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if mounts.contains(" btrfs ") {
            clinicwatch_testkit::skip(
                "procfs::kernel_and_stat_keys_agree_on_this_root_filesystem/device",
                "btrfs here, where the two differ by design",
            );
        } else {
            assert_eq!(k.dev, s.dev);
        }
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
