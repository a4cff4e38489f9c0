//! The test VM's initramfs: an uncompressed `newc` cpio archive holding `/init`, the test
//! binaries at the same absolute paths as on the host (the tests find their helpers by the
//! paths the build baked in), the shared libraries `ldd` lists for them, and `/bin/sh`.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

#[derive(Clone)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    CharDev { major: u32, minor: u32 },
}

/// Files by absolute path; parents are added as directories.
#[derive(Default, Clone)]
pub struct Archive {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Archive {
    pub fn dir(&mut self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        for a in path.ancestors() {
            if a.as_os_str().is_empty() || a == Path::new("/") {
                break;
            }
            self.entries.entry(a.to_path_buf()).or_insert(Entry::Dir);
        }
    }

    pub fn file(&mut self, path: impl AsRef<Path>, data: Vec<u8>, mode: u32) {
        let path = path.as_ref();
        if let Some(parent) = path.parent() {
            self.dir(parent);
        }
        self.entries
            .insert(path.to_path_buf(), Entry::File { data, mode });
    }

    pub fn char_dev(&mut self, path: impl AsRef<Path>, major: u32, minor: u32) {
        let path = path.as_ref();
        if let Some(parent) = path.parent() {
            self.dir(parent);
        }
        self.entries
            .insert(path.to_path_buf(), Entry::CharDev { major, minor });
    }

    /// Copies a host file (following symlinks) to `at`, keeping its permission bits.
    pub fn copy(&mut self, host: &Path, at: impl AsRef<Path>) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data =
            std::fs::read(host).with_context(|| format!("cannot read `{}`", host.display()))?;
        let mode = std::fs::metadata(host)?.permissions().mode() & 0o7777;
        self.file(at, data, mode);
        Ok(())
    }

    /// Copies an executable to the same path, stripped of debug info (tests run unchanged;
    /// the archive shrinks several-fold), with every library `ldd` names for it.
    pub fn executable(&mut self, host: &Path, scratch: &Path) -> anyhow::Result<()> {
        let stripped = scratch.join(
            host.file_name()
                .with_context(|| format!("`{}` has no file name", host.display()))?,
        );
        crate::util::run(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&stripped)
                .arg(host),
        )?;
        self.copy(&stripped, host)?;
        self.libraries(host)
    }

    /// The shared libraries of a host executable, at the paths `ldd` prints.
    pub fn libraries(&mut self, host: &Path) -> anyhow::Result<()> {
        let out = Command::new("ldd")
            .arg(host)
            .output()
            .context("failed to run ldd")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(());
        }
        for line in text.lines() {
            if line.contains("not found") {
                bail!(
                    "`{}` needs a library the host lacks: {}",
                    host.display(),
                    line.trim()
                );
            }
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                let p = Path::new(p);
                if !self.entries.contains_key(p) {
                    self.copy(p, p)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the archive in the `newc` format the kernel unpacks.
    pub fn write(&self, to: &Path) -> anyhow::Result<u64> {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(to)
                .with_context(|| format!("cannot create `{}`", to.display()))?,
        );
        let mut written = 0u64;
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let name = path
                .strip_prefix("/")
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040755, &[], (0, 0)),
                Entry::File { data, mode } => (0o100000 | mode, data, (0, 0)),
                Entry::CharDev { major, minor } => (0o020600, &[], (*major, *minor)),
            };
            written += record(&mut out, &name, ino, mode, data, rdev)?;
        }
        written += record(&mut out, "TRAILER!!!", 0, 0, &[], (0, 0))?;
        out.flush()?;
        Ok(written)
    }
}

fn pad(out: &mut impl Write, len: u64) -> std::io::Result<u64> {
    let fill = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..fill as usize])?;
    Ok(fill)
}

fn record(
    out: &mut impl Write,
    name: &str,
    ino: u32,
    mode: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> anyhow::Result<u64> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let size = u32::try_from(data.len()).context("file too large for a newc archive")?;
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, name.len() + 1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let head = (header.len() + name.len() + 1) as u64;
    let mut n = head + pad(out, head)?;
    out.write_all(data)?;
    n += data.len() as u64 + pad(out, data.len() as u64)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_records_are_aligned_and_parents_come_first() {
        let dir = std::env::temp_dir().join(format!("cw-initramfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut a = Archive::default();
        a.file("/a/b/init", b"hello".to_vec(), 0o755);
        a.char_dev("/dev/console", 5, 1);
        let path = dir.join("x.cpio");
        let n = a.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(n as usize, bytes.len());
        assert_eq!(bytes.len() % 4, 0);
        // Records in path order: a, a/b, a/b/init, dev, dev/console, trailer.
        let names: Vec<String> = {
            let mut names = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let h = std::str::from_utf8(&bytes[at..at + 110]).unwrap();
                assert!(h.starts_with("070701"), "{h}");
                let field = |i: usize| u32::from_str_radix(&h[6 + i * 8..14 + i * 8], 16).unwrap();
                let (size, namesize) = (field(6) as usize, field(11) as usize);
                let name = &bytes[at + 110..at + 110 + namesize - 1];
                names.push(String::from_utf8(name.to_vec()).unwrap());
                at += (110 + namesize).div_ceil(4) * 4;
                at += size.div_ceil(4) * 4;
            }
            names
        };
        assert_eq!(
            names,
            ["a", "a/b", "a/b/init", "dev", "dev/console", "TRAILER!!!"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
