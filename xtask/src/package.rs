//! `cargo xtask package`: Debian packages of the agent and the collector, made with
//! `dpkg-deb` from the release binaries and the files in `packaging/` (units, default
//! configs, maintainer scripts, copyright).
//!
//! Each package is assembled as a tree in `target/debian/NAME_VERSION_ARCH/` (its files, and
//! `DEBIAN/` with control, conffiles, md5sums and the scripts), then built with
//! `dpkg-deb --root-owner-group --build` into `target/debian/NAME_VERSION_ARCH.deb`: every
//! file belongs to root in the archive. Each postinst makes its service's system user
//! (`packaging/system-user.sh`, put in place of its `#@system-user@` line) and gives it its
//! folders. State folders are not in the archives: the postinst makes them, the postrm
//! removes them on purge.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::util::{root, run, target_dir};

const MAINTAINER: &str = "clinicwatch developers <dev@clinicwatch.invalid>";
/// The workspace version (xtask inherits it, as every crate does).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a packaged file comes from.
enum Source {
    /// A binary of `target/release`, debug info stripped.
    Release(&'static str),
    /// A file under `packaging/`.
    Packaging(&'static str),
}

struct File {
    src: Source,
    /// Absolute path on the installed system.
    dest: &'static str,
    mode: u32,
    /// Listed in `DEBIAN/conffiles`: dpkg never overwrites an edited copy.
    conffile: bool,
}

const fn file(src: Source, dest: &'static str, mode: u32) -> File {
    File {
        src,
        dest,
        mode,
        conffile: false,
    }
}

const fn conffile(src: &'static str, dest: &'static str, mode: u32) -> File {
    File {
        src: Source::Packaging(src),
        dest,
        mode,
        conffile: true,
    }
}

struct Package {
    name: &'static str,
    /// The short description, then the long one (one paragraph).
    summary: &'static str,
    description: &'static str,
    /// Besides libc6 (whose version comes from the binary's symbols).
    depends: &'static [&'static str],
    files: &'static [File],
    /// Folders whose mode is not 0755.
    dirs: &'static [(&'static str, u32)],
    /// The folder under `packaging/` of its postinst, prerm and postrm.
    scripts: &'static str,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "clinicwatch-agent",
        summary: "eBPF sensor for the practice-management client of a medical practice",
        description: "Watches the practice-management client's process tree in the kernel \
            (files read, connections and bytes, children) and reports any other process \
            that opens the files it protects, such as the browsers' cookie and password \
            stores. Sends summaries and findings to a clinicwatch collector once enrolled.",
        // The postinst makes the `clinicwatch-agent` user with adduser, or useradd without.
        depends: &["adduser | passwd"],
        files: &[
            file(
                Source::Release("clinicwatch-agent"),
                "/usr/bin/clinicwatch-agent",
                0o755,
            ),
            file(
                Source::Packaging("agent/clinicwatch-agent.service"),
                "/lib/systemd/system/clinicwatch-agent.service",
                0o644,
            ),
            // Not a conffile: `enroll` writes `[export]` into /etc/clinicwatch/agent.toml,
            // and a conffile edited so would stop every upgrade at dpkg's prompt. The
            // postinst copies this one there when there is none, and never after.
            file(
                Source::Packaging("agent/agent.toml"),
                "/usr/share/clinicwatch-agent/agent.toml",
                0o644,
            ),
            file(
                Source::Packaging("copyright"),
                "/usr/share/doc/clinicwatch-agent/copyright",
                0o644,
            ),
        ],
        dirs: &[],
        scripts: "agent",
    },
    Package {
        name: "clinicwatch-collector",
        summary: "collector of clinicwatch agents: ingest, storage and correlation",
        description: "Receives the clinicwatch agents' summaries and findings over mutual \
            TLS, enrolls hosts with clinic tokens, stores them in SQLite or PostgreSQL, \
            correlates them across clinics into incidents and serves the SOC page, \
            metrics and SIEM exports.",
        // As the agent's, for the `clinicwatch` user.
        depends: &["adduser | passwd"],
        files: &[
            file(
                Source::Release("clinicwatch-collector"),
                "/usr/bin/clinicwatch-collector",
                0o755,
            ),
            file(
                Source::Packaging("collector/clinicwatch-collector.service"),
                "/lib/systemd/system/clinicwatch-collector.service",
                0o644,
            ),
            // Group clinicwatch (set by the postinst) reads it; it may hold a password.
            conffile(
                "collector/collector.toml",
                "/etc/clinicwatch-collector/collector.toml",
                0o640,
            ),
            file(
                Source::Packaging("copyright"),
                "/usr/share/doc/clinicwatch-collector/copyright",
                0o644,
            ),
        ],
        dirs: &[("/etc/clinicwatch-collector", 0o750)],
        scripts: "collector",
    },
];

/// Builds both packages (after setup and the release build, unless `build` is false: then
/// the binaries already in `target/release` are packaged) and prints their paths.
pub fn package(build: bool) -> anyhow::Result<()> {
    if !have("dpkg-deb") {
        bail!("`dpkg-deb` is not installed (Debian's dpkg package)");
    }
    if build {
        crate::setup::setup()?;
        crate::util::build(true)?;
    }
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .context("cannot get the architecture from `dpkg --print-architecture`")?;
    let out = target_dir().join("debian");
    fs::create_dir_all(&out).with_context(|| format!("cannot make `{}`", out.display()))?;
    let mut debs = Vec::new();
    for p in PACKAGES {
        debs.push(build_package(p, &out, &arch).with_context(|| format!("package `{}`", p.name))?);
    }
    for deb in &debs {
        println!("{}", deb.display());
    }
    Ok(())
}

fn build_package(p: &Package, out: &Path, arch: &str) -> anyhow::Result<PathBuf> {
    let stem = format!("{}_{VERSION}_{arch}", p.name);
    let tree = out.join(&stem);
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("cannot remove `{}`", tree.display()))?;
    }
    let libc = install_files(p, &tree)?;
    write_debian_dir(p, &tree, arch, libc)?;
    let deb = out.join(format!("{stem}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb))?;
    Ok(deb)
}

/// Puts the package's files in the tree with their modes. Returns the glibc version the
/// binaries need.
fn install_files(p: &Package, tree: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    let mut libc = None;
    for f in p.files {
        let dest = tree.join(f.dest.trim_start_matches('/'));
        make_dirs(tree, dest.parent().expect("a file has a folder"))?;
        match f.src {
            Source::Release(bin) => {
                let src = target_dir().join("release").join(bin);
                if !src.is_file() {
                    bail!(
                        "`{}` is missing: build it first (`cargo xtask build --release`, or `cargo xtask package` without --no-build)",
                        src.display()
                    );
                }
                install_binary(&src, &dest)?;
                libc = libc.max(glibc_needed(&dest)?);
            }
            Source::Packaging(name) => copy(&root().join("packaging").join(name), &dest)?,
        }
        chmod(&dest, f.mode)?;
    }
    for (dir, mode) in p.dirs {
        chmod(&tree.join(dir.trim_start_matches('/')), *mode)?;
    }
    Ok(libc)
}

/// `DEBIAN/`: the maintainer scripts, conffiles, md5sums and control.
fn write_debian_dir(
    p: &Package,
    tree: &Path,
    arch: &str,
    libc: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    let debian = tree.join("DEBIAN");
    make_dirs(tree, &debian)?;
    for name in ["postinst", "prerm", "postrm"] {
        let dest = debian.join(name);
        write(&dest, &script(p, name)?)?;
        chmod(&dest, 0o755)?;
    }
    let conffiles: String = p
        .files
        .iter()
        .filter(|f| f.conffile)
        .map(|f| format!("{}\n", f.dest))
        .collect();
    write(&debian.join("conffiles"), &conffiles)?;
    // Conffiles are left out, as dh_md5sums does: dpkg keeps their sums in its status.
    let plain: Vec<&str> = p
        .files
        .iter()
        .filter(|f| !f.conffile)
        .map(|f| f.dest.trim_start_matches('/'))
        .collect();
    let sums = Command::new("md5sum")
        .current_dir(tree)
        .args(&plain)
        .output()
        .context("cannot run md5sum")?;
    if !sums.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&sums.stderr));
    }
    write(
        &debian.join("md5sums"),
        std::str::from_utf8(&sums.stdout).context("md5sum output")?,
    )?;
    write(
        &debian.join("control"),
        &control(p, arch, libc, installed_size(tree)?),
    )
}

/// A maintainer script, with `packaging/system-user.sh` (making the service's user) in
/// place of its `#@system-user@` line.
fn script(p: &Package, name: &str) -> anyhow::Result<String> {
    let packaging = root().join("packaging");
    let text = read(&packaging.join(p.scripts).join(name))?;
    if !text.lines().any(|l| l == SYSTEM_USER) {
        return Ok(text);
    }
    let snippet = read(&packaging.join("system-user.sh"))?;
    Ok(text
        .lines()
        .map(|l| {
            if l == SYSTEM_USER {
                snippet.trim_end()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

/// The line of a maintainer script that `packaging/system-user.sh` replaces.
const SYSTEM_USER: &str = "#@system-user@";

fn control(p: &Package, arch: &str, libc: Option<(u32, u32)>, installed_kib: u64) -> String {
    let mut depends = vec![match libc {
        Some((major, minor)) => format!("libc6 (>= {major}.{minor})"),
        None => "libc6".to_string(),
    }];
    depends.extend(p.depends.iter().map(|d| d.to_string()));
    format!(
        "Package: {name}\nVersion: {VERSION}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\nDepends: {depends}\nSection: admin\nPriority: optional\n\
         Description: {summary}\n{long}\n",
        name = p.name,
        depends = depends.join(", "),
        summary = p.summary,
        long = fold(p.description),
    )
}

/// A long description as control-file lines: folded under 80 columns, each after a space.
fn fold(text: &str) -> String {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.len() + 1 + word.len() > 78 {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
        .iter()
        .map(|l| format!(" {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Copies a release binary without its debug info. Only `--strip-debug`: the symbol table
/// stays for backtraces, and the agent's embedded eBPF object (a read-only data section) is
/// untouched either way. Without `strip`, the binary goes as it is.
fn install_binary(src: &Path, dest: &Path) -> anyhow::Result<()> {
    if have("strip") {
        run(Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(dest)
            .arg(src))
    } else {
        eprintln!(
            "package: no `strip`: {} keeps its debug info",
            src.display()
        );
        copy(src, dest)
    }
}

/// Shared libraries the packages may need: all from libc6 (and libgcc-s1, which libc6
/// depends on).
const FROM_LIBC6: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
];

/// The newest glibc symbol version the binary uses (for `libc6 (>= X)`), after checking
/// that libc6 provides every library it links. `None` without objdump.
fn glibc_needed(bin: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    let Some(headers) = output(Command::new("objdump").arg("-p").arg(bin)) else {
        eprintln!("package: no `objdump`: `Depends: libc6` without a version");
        return Ok(None);
    };
    for line in headers.lines() {
        if let Some(lib) = line.trim().strip_prefix("NEEDED") {
            let lib = lib.trim();
            if !FROM_LIBC6.contains(&lib) {
                bail!(
                    "`{}` links `{lib}`, which is not from libc6: add its package to `depends`",
                    bin.display()
                );
            }
        }
    }
    let symbols = output(Command::new("objdump").arg("-T").arg(bin))
        .with_context(|| format!("`objdump -T {}` failed", bin.display()))?;
    Ok(symbols
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|n| n.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max())
}

/// `Installed-Size`: KiB, each file rounded up, each folder one (as dpkg-gencontrol counts).
fn installed_size(tree: &Path) -> anyhow::Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                *total += 1;
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(tree, &mut total).with_context(|| format!("cannot walk `{}`", tree.display()))?;
    Ok(total)
}

/// Makes `dir` and its parents up to `tree`, 0755 whatever the umask.
fn make_dirs(tree: &Path, dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot make `{}`", dir.display()))?;
    let mut d = dir;
    while d.starts_with(tree) {
        chmod(d, 0o755)?;
        d = d.parent().expect("below the tree");
    }
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod `{}`", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

fn copy(src: &Path, dest: &Path) -> anyhow::Result<()> {
    fs::copy(src, dest).with_context(|| format!("cannot copy `{}`", src.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
    chmod(path, 0o644)
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
