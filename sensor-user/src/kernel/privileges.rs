//! The capabilities the agent needs, checked before anything is loaded, so that a missing
//! one is named instead of surfacing later as an EPERM from a probe or an empty `/proc`.
//!
//! Measured on this project's 6.18 host (2026-12-02): the agent as uid 65534 under
//! `setpriv --ambient-caps` with exactly this set gives the exact byte counts, connections
//! and seeded trees that root gives (tests/tests/e2e/service.rs checks it); with the check
//! bypassed and one capability removed at a time:
//! - `CAP_BPF`: without it nothing loads (maps, programs, BTF).
//! - `CAP_PERFMON`: without it nothing loads (tracing program types: tracepoint, tp_btf,
//!   fentry/fexit, LSM, uprobes, and their kernel-memory reads).
//! - `CAP_NET_ADMIN`: without it `net_connect`, `net_bytes` and `net_close` are unavailable
//!   (cgroup socket and skb programs, and their attachment to the cgroup v2 root).
//! - `CAP_SYS_PTRACE`: without it a PM client already running as another user is not
//!   seeded (`/proc/PID/exe`, `maps`, `root/` of other users' processes), and its TLS
//!   library is not found.
//! - `CAP_DAC_READ_SEARCH`: without it tracefs (mode 0700) cannot be read, so the tracepoint
//!   fallbacks of `file_open`/`file_read` are unavailable; protected files in users' homes
//!   (0700 on Debian 12) cannot be found either.
//!
//! Not needed: `CAP_SYS_ADMIN` (on kernels from 5.8, which have CAP_BPF and CAP_PERFMON; on
//! older ones it stands in for both), `CAP_SYS_RESOURCE` (kernels from 5.11 charge BPF memory
//! to the cgroup; older ones need `LimitMEMLOCK=infinity`, which the unit sets).

/// Capability numbers (linux/capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// (number, name, what it is needed for).
pub const REQUIRED: &[(u32, &str, &str)] = &[
    (CAP_BPF, "CAP_BPF", "load eBPF programs and maps"),
    (
        CAP_PERFMON,
        "CAP_PERFMON",
        "attach tracing programs: tracepoints, uprobes, fentry, LSM",
    ),
    (
        CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "attach the cgroup socket hooks: connections, flow bytes",
    ),
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "read other users' /proc/PID/exe, maps and root: the watched trees, their TLS library",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "find protected files in users' homes, read tracefs",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read the agent's capabilities from `/proc/self/status`")]
    Read(#[source] std::io::Error),
    #[error("missing {}: run the agent as root, or grant them (the packaged unit's AmbientCapabilities= does)", list(.0))]
    Missing(Vec<(&'static str, &'static str)>),
}

fn list(missing: &[(&str, &str)]) -> String {
    missing
        .iter()
        .map(|(name, why)| format!("{name} (to {why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The effective set, from a `/proc/PID/status` text.
fn effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The required capabilities missing from `eff`. CAP_SYS_ADMIN stands in for CAP_BPF,
/// CAP_PERFMON and CAP_NET_ADMIN (as the kernel's `bpf_capable()`, `perfmon_capable()` and
/// `bpf_net_capable()` do).
fn missing(eff: u64) -> Vec<(&'static str, &'static str)> {
    let has = |cap: u32| eff & (1 << cap) != 0;
    let stands_in = |cap: u32| matches!(cap, CAP_BPF | CAP_PERFMON | CAP_NET_ADMIN);
    REQUIRED
        .iter()
        .filter(|(cap, _, _)| !(has(*cap) || (stands_in(*cap) && has(CAP_SYS_ADMIN))))
        .map(|(_, name, why)| (*name, *why))
        .collect()
}

/// Fails naming every required capability the agent does not hold.
pub fn check() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(PrivilegeError::Read)?;
    let eff = effective(&status).unwrap_or(0);
    let missing = missing(eff);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[u32]) -> u64 {
        caps.iter().fold(0, |a, c| a | 1 << c)
    }

    #[test]
    fn the_effective_set_is_read_from_status() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective(s), Some(0x1ff_ffff_ffff));
    }

    #[test]
    fn each_missing_capability_is_named_with_its_reason() {
        let all = set(&[
            CAP_BPF,
            CAP_PERFMON,
            CAP_NET_ADMIN,
            CAP_SYS_PTRACE,
            CAP_DAC_READ_SEARCH,
        ]);
        assert!(missing(all).is_empty());
        let m = missing(all & !(1 << CAP_NET_ADMIN));
        assert_eq!(m.len(), 1);
        let e = PrivilegeError::Missing(m).to_string();
        assert!(
            e.contains("CAP_NET_ADMIN (to attach the cgroup socket hooks"),
            "{e}"
        );
        assert_eq!(missing(0).len(), REQUIRED.len());
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_perfmon_and_net_admin() {
        let old_kernel = set(&[
            CAP_SYS_ADMIN,
            CAP_NET_ADMIN,
            CAP_SYS_PTRACE,
            CAP_DAC_READ_SEARCH,
        ]);
        assert!(missing(old_kernel).is_empty());
    }
}
