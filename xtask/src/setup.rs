//! Installs what a fresh machine lacks to build the eBPF programs (the toolchain's rust-src
//! and bpf-linker linked against the toolchain's own libLLVM, ../shared/BUILD.md) and the
//! Debian packages the tests use. Quick and silent when everything is already there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::util::{root, run};

/// The toolchain in `rust-toolchain.toml`.
pub const TOOLCHAIN: &str = "1.95.0";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker's LLVM feature must match rustc's LLVM major.
const LLVM_FEATURE: &str = "llvm-22";

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn sysroot() -> anyhow::Result<PathBuf> {
    output(Command::new("rustc").args([&format!("+{TOOLCHAIN}"), "--print", "sysroot"]))
        .map(PathBuf::from)
        .with_context(|| format!("toolchain {TOOLCHAIN} is not installed (rustup toolchain list)"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
        .join("bin")
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let library = sysroot()?.join("lib/rustlib/src/rust/library");
    if library.join("core").is_dir() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to {TOOLCHAIN}");
    let added = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN])
        .status()
        .is_ok_and(|s| s.success());
    if added && library.join("core").is_dir() {
        return Ok(());
    }
    // Offline fallback: the same `library/` tree shipped beside the project.
    let tarball = root().join("../shared/toolchain/rust-src-1.95.0-library.tar.xz");
    if !tarball.is_file() {
        bail!(
            "cannot install rust-src: `rustup component add` failed and {} is absent",
            tarball.display()
        );
    }
    let dest = library
        .parent()
        .expect("library has a parent")
        .to_path_buf();
    std::fs::create_dir_all(&dest)?;
    run(Command::new("tar")
        .arg("-xJf")
        .arg(&tarball)
        .arg("-C")
        .arg(&dest))
}

fn bpf_linker_ok() -> bool {
    let bin = cargo_bin().join("bpf-linker");
    output(Command::new(&bin).arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against {TOOLCHAIN}'s LLVM (about a minute)");
    let sysroot = sysroot()?;
    let lib = sysroot.join("lib");
    let so = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .with_context(|| format!("no libLLVM.so in {}", lib.display()))?;
    // Kept for good: the installed binary's RUNPATH points here.
    let prefix = cargo_bin()
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("bpf-linker-llvm-{TOOLCHAIN}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [
        "libLLVM.so".to_string(),
        so.file_name().unwrap().to_string_lossy().into_owned(),
    ] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&so, &link)?;
    }
    run(Command::new("cargo")
        .arg(format!("+{TOOLCHAIN}"))
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", LLVM_FEATURE])
        .env("LLVM_PREFIX", &prefix)
        .current_dir(std::env::temp_dir()))?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker was installed but `{} --version` does not work",
            cargo_bin().join("bpf-linker").display()
        );
    }
    Ok(())
}

/// Debian packages the tests use: btrfs-progs, to test matching on a btrfs subvolume;
/// postgresql, for the collector's PostgreSQL backend (the tests start a private server from
/// its binaries; the system service is not used); chromium, to load the SOC page headless;
/// Debian's python3 (linked to the system's libssl.so.3), the stand-in HTTPS client and
/// server of the query-profiling test.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("mkfs.btrfs", "btrfs-progs"),
    ("/usr/lib/postgresql/*/bin/initdb", "postgresql"),
    ("chromium", "chromium"),
    ("/usr/bin/python3", "python3"),
];

/// Whether `bin` is on the PATH (or in an sbin), or, given as a glob, matches a file.
fn present(bin: &str) -> bool {
    if bin.starts_with('/') {
        let Some((dir, rest)) = bin.split_once("/*/") else {
            return Path::new(bin).exists();
        };
        return std::fs::read_dir(dir)
            .map(|rd| rd.flatten().any(|e| e.path().join(rest).is_file()))
            .unwrap_or(false);
    }
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(bin).is_file())
        })
        .unwrap_or(false)
}

fn ensure_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(bin, _)| !present(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("setup: not root, so not installing {missing:?} (the tests that need them will say they skipped)");
        return Ok(());
    }
    eprintln!("setup: installing {missing:?} from Debian");
    crate::apt::fresh(&format!("apt-get install {}", missing.join(" ")), || {
        let status = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get could not install {missing:?}: {status}");
        }
        Ok(())
    })
}

pub fn setup() -> anyhow::Result<()> {
    ensure_rust_src().context("setup: rust-src")?;
    ensure_bpf_linker().context("setup: bpf-linker")?;
    ensure_debian_packages().context("setup: Debian packages")?;
    Ok(())
}
