//! Debian package look-ups that survive stale package lists.
//!
//! A fresh machine of this kind comes with apt lists months old: packages and versions
//! published since (a newer kernel build, a meta-package of a new series) are missing, and
//! old versions the lists still name are gone from the archive. Every step that resolves or
//! fetches packages goes through [`fresh`]: it tries once, and when that fails it runs
//! `apt-get update` (at most once per xtask run) and tries again with the new lists.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;

static REFRESHED: AtomicBool = AtomicBool::new(false);

/// Runs `apt-get update` unless this run already did. Returns whether it ran now.
pub fn refresh(why: &str) -> anyhow::Result<bool> {
    if REFRESHED.swap(true, Ordering::SeqCst) {
        return Ok(false);
    }
    eprintln!("apt: {why}; refreshing the package lists (apt-get update)");
    let status = Command::new("apt-get")
        .args(["-q", "update"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get update")?;
    if !status.success() {
        anyhow::bail!("apt-get update failed: {status}");
    }
    Ok(true)
}

/// `attempt()`, and once more after `apt-get update` if it failed and the lists were not
/// refreshed yet in this run. The error of the last attempt is returned.
pub fn fresh<T>(what: &str, mut attempt: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match attempt() {
        Ok(v) => Ok(v),
        Err(first) => match refresh(&format!("{what} failed ({first:#})")) {
            Ok(true) => attempt(),
            Ok(false) => Err(first),
            Err(e) => Err(first.context(format!("and refreshing the package lists failed: {e:#}"))),
        },
    }
}
