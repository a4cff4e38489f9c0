//! The kernel's raw forms made readable: boot-time clock to Unix time, leaf-first path
//! buffers to paths, addresses, protocol numbers, and the counters' report form.

use std::net::IpAddr;

use clinicwatch_common::{path_flags, FileKey, FileStats, FlowAddr, FlowStats, PathBuf as KPath};

use crate::{
    event::{FileCounters, FlowCounters},
    kernel::procfs,
};

/// Converts the kernel's boot-time clock to Unix time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    /// Unix time in seconds of a `bpf_ktime_get_boot_ns` value.
    pub fn unix(&self, boot_ns: u64) -> f64 {
        (boot_ns as i128 + self.offset_ns) as f64 / 1e9
    }

    /// Now, on the same clock as event times (boot time plus the offset taken at start), so
    /// a step of the wall clock cannot split the agent's notion of time.
    pub fn now(&self) -> f64 {
        (clock_ns(libc::CLOCK_BOOTTIME) + self.offset_ns) as f64 / 1e9
    }

    /// How far the wall clock has moved from this clock since it was made (a step of NTP or
    /// of an administrator; suspend does not count, boot time runs through it).
    pub fn wall_drift(&self) -> f64 {
        (clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME) - self.offset_ns) as f64
            / 1e9
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A kernel path buffer (leaf first) as an absolute path.
pub fn path_string(p: &KPath) -> String {
    let depth = (p.depth as usize).min(p.comps.len());
    let mut s = String::new();
    if p.flags & path_flags::TRUNCATED != 0 {
        s.push_str("/...");
    }
    for comp in p.comps[..depth].iter().rev() {
        let end = comp.iter().position(|&b| b == 0).unwrap_or(comp.len());
        s.push('/');
        s.push_str(&String::from_utf8_lossy(&comp[..end]));
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// The status code of a captured HTTP/1 status line (`HTTP/1.1 200 OK`), if it is one.
pub fn http_status(line: &[u8]) -> Option<u16> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
}

pub(super) fn comm_string(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

pub(super) fn protocol_name(p: u16) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        other => format!("ip:{other}"),
    }
}

pub(super) fn remote_ip(r: &FlowAddr) -> IpAddr {
    if r.family == libc::AF_INET6 as u16 {
        IpAddr::from(r.addr)
    } else {
        IpAddr::from([r.addr[0], r.addr[1], r.addr[2], r.addr[3]])
    }
}

pub fn flow_counters(cookie: u64, s: &FlowStats) -> FlowCounters {
    FlowCounters {
        flow: cookie,
        protocol: protocol_name(s.remote.protocol),
        dst: remote_ip(&s.remote),
        port: s.remote.port,
        bytes_sent: s.bytes_sent,
        bytes_recv: s.bytes_recv,
        packets_sent: s.packets_sent,
        packets_recv: s.packets_recv,
    }
}

pub(super) fn file_counters(key: &FileKey, path: &str, s: &FileStats) -> FileCounters {
    FileCounters {
        path: path.to_string(),
        dev: procfs::dev_string(key.dev),
        ino: key.ino,
        bytes_read: s.bytes_read,
        reads: s.reads,
        opens: s.opens,
        mmaps: s.mmaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clinicwatch_common::{COMPONENT_LEN, PATH_COMPONENTS};

    fn kpath(comps: &[&str], flags: u32) -> KPath {
        let mut p = KPath {
            depth: comps.len() as u32,
            flags,
            comps: [[0; COMPONENT_LEN]; PATH_COMPONENTS],
        };
        for (i, c) in comps.iter().enumerate() {
            p.comps[i][..c.len()].copy_from_slice(c.as_bytes());
        }
        p
    }

    #[test]
    fn kernel_paths_read_leaf_first() {
        assert_eq!(path_string(&kpath(&["passwd", "etc"], 0)), "/etc/passwd");
        assert_eq!(path_string(&kpath(&[], 0)), "/");
        assert_eq!(
            path_string(&kpath(&["b", "a"], path_flags::TRUNCATED)),
            "/.../a/b"
        );
        // A depth larger than the buffer is clamped, not a panic.
        let mut p = kpath(&["x"], 0);
        p.depth = 1000;
        assert!(path_string(&p).ends_with("/x"));
    }

    #[test]
    fn addresses_by_family() {
        let mut r = FlowAddr {
            family: libc::AF_INET as u16,
            protocol: 6,
            port: 80,
            _pad: 0,
            addr: [0; 16],
        };
        r.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(remote_ip(&r).to_string(), "127.0.0.1");
        r.family = libc::AF_INET6 as u16;
        r.addr = std::net::Ipv6Addr::LOCALHOST.octets();
        assert_eq!(remote_ip(&r).to_string(), "::1");
    }
}
