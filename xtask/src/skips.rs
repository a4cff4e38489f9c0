//! Tests allowed to skip in CI, each with its reason. Every other skip a test reports (see
//! `clinicwatch-testkit`: `skip` writes `test<TAB>reason` to `CLINICWATCH_SKIP_LOG`) fails
//! `cargo xtask test` when it runs as root, which is how CI runs it: there the machine has
//! root, the packages `setup` installs and this kernel's hooks, so a skip means a test did
//! not test.

use std::path::Path;

use anyhow::{bail, Context as _};

/// (test, why it may skip in CI).
pub const ALLOWED: &[(&str, &str)] = &[(
    "procfs::kernel_and_stat_keys_agree_on_this_root_filesystem/device",
    "on a btrfs root the kernel's and stat's devices differ by design; the inode is still checked",
)];

/// The skips logged in `log` as (test, reason), in order; none when the file is absent.
pub fn read(log: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", log.display())),
    };
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('\t') {
            Some((t, w)) => (t.to_string(), w.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect())
}

/// Prints the skips; when `enforce`, fails for those not on [`ALLOWED`].
pub fn check(skips: &[(String, String)], enforce: bool) -> anyhow::Result<()> {
    let refused: Vec<&(String, String)> = skips
        .iter()
        .filter(|(t, _)| !ALLOWED.iter().any(|(a, _)| a == t))
        .collect();
    for (test, why) in skips {
        let allowed = ALLOWED.iter().find(|(a, _)| a == test);
        match allowed {
            Some((_, reason)) => println!("skipped (allowed: {reason}): {test}: {why}"),
            None => println!("skipped: {test}: {why}"),
        }
    }
    if enforce && !refused.is_empty() {
        bail!(
            "{} test(s) skipped that may not skip here (root, as CI runs): {}; fix the \
             machine or the test, or add it to xtask/src/skips.rs with its reason",
            refused.len(),
            refused
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_off_the_list_fails_only_when_enforced() {
        let dir = std::env::temp_dir().join(format!("cw-skips-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        assert!(read(&log).unwrap().is_empty(), "no log, no skips");
        std::fs::write(
            &log,
            format!(
                "{}\tbtrfs\nloopback/::1\tno ::1 on this host\n",
                ALLOWED[0].0
            ),
        )
        .unwrap();
        let skips = read(&log).unwrap();
        assert_eq!(skips.len(), 2);
        assert!(check(&skips, false).is_ok());
        let e = check(&skips, true).unwrap_err().to_string();
        assert!(e.contains("1 test(s)") && e.contains("loopback/::1"), "{e}");
        assert!(check(&skips[..1], true).is_ok(), "an allowed skip passes");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
