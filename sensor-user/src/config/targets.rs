//! The config's targets resolved on this host: each `[[app]]` executable as the kernel and
//! `stat(2)` see it, and the `[[protected]]` globs expanded to (device, inode) entries for
//! the sensor's maps. Done once at start; a missing executable is skipped with a warning.

use std::path::PathBuf;

use clinicwatch_common::InodeKey;
use tracing::warn;

use super::Config;
use crate::kernel::procfs;

/// A configured executable: its identity for the kernel, and for `stat(2)` (seeding).
#[derive(Clone, Copy)]
pub(crate) struct AppExe {
    pub kernel: InodeKey,
    pub stat: InodeKey,
    pub app: u32,
}

/// Resolves the configured executables; missing ones are skipped with a warning, but at
/// least one must exist, and one file cannot start two applications.
pub(crate) fn resolve_apps(cfg: &Config) -> anyhow::Result<Vec<AppExe>> {
    let mut out: Vec<AppExe> = Vec::new();
    for (i, app) in cfg.apps.iter().enumerate() {
        let keys = procfs::kernel_key(&app.exe).and_then(|k| Ok((k, procfs::stat_key(&app.exe)?)));
        match keys {
            Ok((kernel, stat)) => {
                if let Some(other) = out.iter().find(|a| a.kernel == kernel).map(|a| a.app) {
                    anyhow::bail!(
                        "invalid config: `app[{i}].exe` is the same file as `app[{other}].exe` ({}); one executable can start only one application (use `cmdline` on one entry)",
                        app.exe.display()
                    );
                }
                out.push(AppExe {
                    kernel,
                    stat,
                    app: i as u32,
                });
            }
            Err(e) => {
                warn!(app = %app.name, exe = %app.exe.display(), error = %e, "watched executable not found; skipping")
            }
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "none of the configured `[[app]]` executables exist on this host"
    );
    Ok(out)
}

/// Expands the protected globs to (device, inode) entries.
pub(crate) fn resolve_protected(cfg: &Config) -> anyhow::Result<Vec<(InodeKey, u32)>> {
    let mut out = Vec::new();
    for (i, p) in cfg.protected.iter().enumerate() {
        let paths: Vec<PathBuf> = glob::glob(&p.path)
            .map(|g| g.flatten().collect())
            .unwrap_or_default();
        if paths.is_empty() {
            warn!(name = %p.name, path = %p.path, "protected path matches nothing yet");
        }
        for path in paths {
            match procfs::kernel_key(&path) {
                Ok(key) => out.push((key, i as u32)),
                Err(e) => warn!(path = %path.display(), error = %e, "cannot stat protected path"),
            }
        }
    }
    let limit = clinicwatch_common::capacity::PROTECTED as usize;
    anyhow::ensure!(
        out.len() <= limit,
        "invalid config: `protected` expands to {} files and folders, more than the {limit} the sensor can hold; narrow the globs or protect folders instead of files",
        out.len()
    );
    Ok(out)
}
