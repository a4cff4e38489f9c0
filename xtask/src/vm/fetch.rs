//! QEMU and Debian kernels, fetched as Debian packages into a private cache and unpacked
//! there: the machine's own packages are never installed, upgraded or removed.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// The cache folder: `$CLINICWATCH_VM_CACHE`, else `~/.cache/clinicwatch/vm`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CLINICWATCH_VM_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/clinicwatch/vm")
}

fn stdout(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// First alternative of each `Depends`/`PreDepends` of a package.
fn depends(package: &str) -> anyhow::Result<Vec<String>> {
    let text = stdout(Command::new("apt-cache").args([
        "depends",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
        package,
    ]))?;
    let mut out = Vec::new();
    let mut in_alternatives = false;
    for line in text.lines().skip(1) {
        let line = line.trim();
        let (alt, rest) = match line.strip_prefix('|') {
            Some(r) => (true, r),
            None => (false, line),
        };
        let Some(name) = rest
            .strip_prefix("Depends: ")
            .or_else(|| rest.strip_prefix("PreDepends: "))
        else {
            continue;
        };
        if !in_alternatives && !name.starts_with('<') {
            out.push(name.to_string());
        }
        in_alternatives = alt;
    }
    Ok(out)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Downloads packages into `debs` (after `apt-get update` if the lists are stale).
fn download(debs: &Path, packages: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(debs).with_context(|| format!("cannot create `{}`", debs.display()))?;
    crate::apt::fresh("apt-get download", || {
        let status = Command::new("apt-get")
            .current_dir(debs)
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .args(packages)
            .status()
            .context(
                "cannot run apt-get (vm-test fetches QEMU and kernels from Debian's packages)",
            )?;
        if !status.success() {
            bail!("apt-get download {} failed: {status}", packages.join(" "));
        }
        Ok(())
    })
}

fn unpack(debs: &Path, into: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(into)?;
    for entry in std::fs::read_dir(debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            crate::util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(into))?;
        }
    }
    Ok(())
}

/// An unpacked QEMU that runs from the cache.
pub struct Qemu {
    pub binary: PathBuf,
    /// Where its firmware lives (`-L`).
    pub firmware: Vec<PathBuf>,
    pub library_path: String,
}

impl Qemu {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env("LD_LIBRARY_PATH", &self.library_path);
        for dir in &self.firmware {
            cmd.arg("-L").arg(dir);
        }
        cmd
    }
}

/// QEMU for x86_64 and every library it needs that the machine lacks.
pub fn qemu() -> anyhow::Result<Qemu> {
    let dir = cache_dir().join("qemu");
    let root = dir.join("root");
    let done = dir.join("complete");
    if !done.exists() {
        eprintln!("vm-test: fetching QEMU into {}", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        let mut seen = HashSet::new();
        let mut todo = vec!["qemu-system-x86".to_string()];
        let mut need = Vec::new();
        while let Some(p) = todo.pop() {
            if !seen.insert(p.clone()) || installed(&p) {
                continue;
            }
            todo.extend(crate::apt::fresh("apt-cache depends", || depends(&p))?);
            need.push(p);
        }
        let debs = dir.join("debs");
        download(&debs, &need)?;
        unpack(&debs, &root)?;
        std::fs::remove_dir_all(&debs)?;
        std::fs::write(&done, need.join("\n"))?;
    }
    let libs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
        .iter()
        .map(|l| root.join(l).display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let qemu = Qemu {
        binary: root.join("usr/bin/qemu-system-x86_64"),
        firmware: vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")],
        library_path: libs,
    };
    let version = qemu.command().arg("--version").output();
    match version {
        Ok(o) if o.status.success() => Ok(qemu),
        Ok(o) => bail!(
            "the cached QEMU does not run (delete `{}` to fetch it again): {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!("cannot run `{}`: {e}", qemu.binary.display()),
    }
}

/// A kernel image unpacked from a Debian package, with the modules the tests need.
pub struct Kernel {
    /// Its release (`6.1.0-56-cloud-amd64`).
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Module files to load in this order (dependencies first).
    pub modules: Vec<PathBuf>,
}

/// Modules the kernel tests use when the kernel has them as modules: a btrfs filesystem on
/// a loop device (the btrfs subvolume test).
const WANTED_MODULES: &[&str] = &["loop", "btrfs"];

/// The Debian package a `--kernel` value names: `6.1` and `6.12` follow Debian's cloud
/// meta-packages to their current version; a full release (`6.1.0-56-cloud-amd64`) or a
/// package name is taken as it is.
fn kernel_package(spec: &str) -> anyhow::Result<String> {
    let meta = match spec {
        "6.1" => Some("linux-image-cloud-amd64"),
        "6.12" => Some("linux-image-6.12-cloud-amd64"),
        _ => None,
    };
    if let Some(meta) = meta {
        return depends(meta)?
            .into_iter()
            .find(|d| d.starts_with("linux-image-"))
            .with_context(|| format!("`{meta}` depends on no kernel image"));
    }
    if spec.starts_with("linux-image-") {
        return Ok(spec.to_string());
    }
    if spec.chars().next().is_some_and(|c| c.is_ascii_digit()) && spec.contains('-') {
        return Ok(format!("linux-image-{spec}"));
    }
    bail!("`--kernel {spec}`: expected 6.1, 6.12, a release such as 6.1.0-56-cloud-amd64, or a linux-image package name")
}

/// A complete cached kernel whose release starts with `prefix` (newest name first), for
/// when apt cannot say which build `6.1`/`6.12` means.
fn cached_kernel(prefix: &str) -> Option<String> {
    let mut found: Vec<String> = std::fs::read_dir(cache_dir().join("kernels"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("complete").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|r| r.starts_with(prefix))
        .collect();
    found.sort();
    found.pop().map(|r| format!("linux-image-{r}"))
}

/// The package `spec` names, asking apt again with fresh lists when it cannot say; a
/// cached build of the same series when even that fails (offline).
fn resolve_kernel(spec: &str) -> anyhow::Result<String> {
    match crate::apt::fresh("resolving the kernel", || kernel_package(spec)) {
        Ok(p) => Ok(p),
        Err(e) => {
            let prefix = match spec {
                "6.1" => "6.1.",
                "6.12" => "6.12.",
                _ => return Err(e),
            };
            let cached = cached_kernel(prefix).ok_or(e)?;
            eprintln!("vm-test: apt cannot resolve `{spec}`; using the cached {cached}");
            Ok(cached)
        }
    }
}

/// The kernel `spec` names, fetched into the cache if it is not there. Stale lists can name
/// a build the archive no longer has: then the lists are refreshed and `spec` resolved again.
pub fn kernel(spec: &str) -> anyhow::Result<Kernel> {
    crate::apt::fresh("fetching the kernel", || {
        fetch_kernel(&resolve_kernel(spec)?)
    })
}

fn fetch_kernel(package: &str) -> anyhow::Result<Kernel> {
    let package = package.to_string();
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_string();
    let dir = cache_dir().join("kernels").join(&release);
    let vmlinuz = dir.join(format!("vmlinuz-{release}"));
    let order = dir.join("modules/order");
    // Written last: an interrupted fetch is fetched again.
    let complete = dir.join("complete");
    if !complete.exists() {
        eprintln!("vm-test: fetching {package} into {}", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        let debs = dir.join("debs");
        download(&debs, std::slice::from_ref(&package))?;
        let root = dir.join("root");
        unpack(&debs, &root)?;
        // Only the image, its config and the wanted modules are kept.
        let boot = root.join("boot");
        std::fs::copy(
            boot.join(format!("config-{release}")),
            dir.join(format!("config-{release}")),
        )
        .with_context(|| format!("{package} has no config for `{release}`"))?;
        let modules = root.join("lib/modules").join(&release);
        keep_modules(&modules, &dir.join("modules"))?;
        std::fs::copy(boot.join(format!("vmlinuz-{release}")), &vmlinuz)
            .with_context(|| format!("{package} has no image for `{release}`"))?;
        std::fs::remove_dir_all(&root)?;
        std::fs::remove_dir_all(&debs)?;
        std::fs::write(&complete, &package)?;
    }
    let modules = std::fs::read_to_string(&order)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| dir.join("modules").join(l))
        .collect();
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}

/// The `depends=` field of a module's `.modinfo` (decompressing `.ko.xz` with `xz`).
fn module_depends(path: &Path) -> anyhow::Result<Vec<String>> {
    let data = if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz").arg("-dc").arg(path).output()?;
        if !out.status.success() {
            bail!("xz -dc `{}` failed", path.display());
        }
        out.stdout
    } else {
        std::fs::read(path)?
    };
    let key = b"\0depends=";
    let Some(at) = data.windows(key.len()).position(|w| w == key) else {
        return Ok(Vec::new());
    };
    let rest = &data[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Ok(String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect())
}

/// Copies [`WANTED_MODULES`] and their dependencies from `tree` (`lib/modules/RELEASE`) to
/// `to`, numbered in load order, and writes `to/order`. Modules built into the kernel are
/// skipped.
fn keep_modules(tree: &Path, to: &Path) -> anyhow::Result<()> {
    fn index(dir: &Path, into: &mut std::collections::HashMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                index(&p, into);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name
                    .strip_suffix(".ko")
                    .or_else(|| name.strip_suffix(".ko.xz"))
                {
                    into.insert(stem.replace('-', "_"), p.clone());
                }
            }
        }
    }
    fn visit(
        name: &str,
        files: &std::collections::HashMap<String, PathBuf>,
        seen: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> anyhow::Result<()> {
        let name = name.replace('-', "_");
        if !seen.insert(name.clone()) {
            return Ok(());
        }
        let Some(path) = files.get(&name) else {
            return Ok(()); // built in
        };
        for dep in module_depends(path)? {
            visit(&dep, files, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    let mut files = std::collections::HashMap::new();
    index(&tree.join("kernel"), &mut files);
    let (mut seen, mut order) = (HashSet::new(), Vec::new());
    for m in WANTED_MODULES {
        visit(m, &files, &mut seen, &mut order)?;
    }
    std::fs::create_dir_all(to)?;
    let mut names = Vec::new();
    for (i, path) in order.iter().enumerate() {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module");
        let name = format!("{i:02}-{file}");
        std::fs::copy(path, to.join(&name))?;
        names.push(name);
    }
    std::fs::write(to.join("order"), names.join("\n") + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_specs_name_packages() {
        assert_eq!(
            kernel_package("6.1.0-56-cloud-amd64").unwrap(),
            "linux-image-6.1.0-56-cloud-amd64"
        );
        assert_eq!(
            kernel_package("linux-image-6.12.117+deb12-cloud-amd64").unwrap(),
            "linux-image-6.12.117+deb12-cloud-amd64"
        );
        assert!(kernel_package("latest").is_err());
    }
}
