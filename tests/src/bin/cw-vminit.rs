//! `/init` of the test VMs that `cargo xtask vm-test` boots: mounts what the agent needs
//! (proc, sys, dev, tracefs, bpffs, cgroup2, securityfs), brings loopback up, runs the
//! steps listed in `/cw-vm/plan`, prints one line per step and a final verdict, and powers
//! off. The host reads the console, so every line it parses starts with `cw-vm: `.
//!
//! Plan format: one step per line, `NAME [KEY=VALUE...] PROGRAM ARGS...` (whitespace-
//! separated; `#` starts a comment; `KEY=VALUE` words before the program are set in its
//! environment). Each step's output goes straight to the console.

use std::{ffi::CString, process::Command, time::Instant};

const PLAN: &str = "/cw-vm/plan";
/// Kernel modules to load before the steps, in name order (`NN-name.ko[.xz]`).
const MODULES: &str = "/cw-vm/modules";
/// `finit_module` flag: the kernel decompresses the file itself.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// (source, target, type): mounted in this order; a failure fails the run.
const MOUNTS: &[(&str, &str, &str)] = &[
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("devtmpfs", "/dev", "devtmpfs"),
    ("tracefs", "/sys/kernel/tracing", "tracefs"),
    ("bpffs", "/sys/fs/bpf", "bpf"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
    ("securityfs", "/sys/kernel/security", "securityfs"),
];

fn mount(source: &str, target: &str, fstype: &str) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (src, tgt, ty) = (c(source)?, c(target)?, c(fstype)?);
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir `{target}`: {e}"))?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(format!(
            "mount {fstype} on `{target}`: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `ip link set lo up`, with the ioctls it uses.
fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; the name fits with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a socket and req a valid ifreq for both calls.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            Err(format!(
                "SIOCGIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ))
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                Err(format!(
                    "SIOCSIFFLAGS lo: {}",
                    std::io::Error::last_os_error()
                ))
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    result
}

/// Loads the modules the host packed; a failure is reported, not fatal (the tests that need
/// the module skip).
fn load_modules() {
    let Ok(dir) = std::fs::read_dir(MODULES) else {
        return;
    };
    let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let name = path.display().to_string();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                println!("cw-vm: module {name}: {e}");
                continue;
            }
        };
        let flags = if name.ends_with(".xz") {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: a valid fd and an empty NUL-terminated parameter string.
        let rc = unsafe { libc::syscall(libc::SYS_finit_module, fd, c"".as_ptr(), flags) };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
            println!("cw-vm: module {name}: {err}");
        }
    }
}

fn power_off() -> ! {
    // SAFETY: plain syscalls; as PID 1 we own the machine.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Returning from PID 1 panics the kernel, which the host also reports.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// `/tmp` stays on the initramfs (already in RAM): the test binaries sit at their host
/// paths, which may be under `/tmp`, and a tmpfs mounted there would hide them.
fn setup() -> Result<(), String> {
    for (src, tgt, ty) in MOUNTS {
        mount(src, tgt, ty)?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all("/tmp").map_err(|e| format!("mkdir `/tmp`: {e}"))?;
    std::fs::set_permissions("/tmp", std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod `/tmp`: {e}"))?;
    loopback_up()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

fn main() {
    // SAFETY: plain call; sets the default mode for the files the tests create.
    unsafe { libc::umask(0o022) };
    std::env::set_var("PATH", "/bin:/usr/bin:/sbin:/usr/sbin");
    std::env::set_var("HOME", "/root");
    if let Err(e) = setup() {
        println!("cw-vm: setup failed: {e}");
        println!("cw-vm: result fail");
        power_off();
    }
    println!(
        "cw-vm: kernel {} lsm {}",
        read("/proc/sys/kernel/osrelease"),
        read("/sys/kernel/security/lsm")
    );
    load_modules();
    let plan = match std::fs::read_to_string(PLAN) {
        Ok(p) => p,
        Err(e) => {
            println!("cw-vm: cannot read `{PLAN}`: {e}");
            println!("cw-vm: result fail");
            power_off();
        }
    };
    let mut ok = true;
    for line in plan.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        let Some(name) = words.next() else {
            continue;
        };
        let mut env = Vec::new();
        while let Some((k, v)) = words.peek().and_then(|w| w.split_once('=')) {
            env.push((k, v));
            words.next();
        }
        let Some(program) = words.next() else {
            println!("cw-vm: step {name} has no program");
            ok = false;
            continue;
        };
        println!("cw-vm: step {name} begin");
        let started = Instant::now();
        let rc = match Command::new(program)
            .args(words)
            .envs(env)
            .current_dir("/tmp")
            .status()
        {
            Ok(s) => s
                .code()
                .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)),
            Err(e) => {
                println!("cw-vm: cannot run `{program}`: {e}");
                127
            }
        };
        ok &= rc == 0;
        println!(
            "cw-vm: step {name} rc={rc} secs={:.1}",
            started.elapsed().as_secs_f64()
        );
    }
    println!("cw-vm: result {}", if ok { "pass" } else { "fail" });
    power_off();
}
