//! Private, durable state files: the agent's spool, its quarantine and its key are opened
//! only with `O_NOFOLLOW` (a symbolic link planted in the state folder is refused, never
//! followed), files are created 0600 and folders 0700 whatever the umask, and a folder is
//! fsynced after a file in it is created, renamed or removed, so that the change survives a
//! power loss.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// The mode of the agent's state files.
pub const FILE_MODE: u32 = 0o600;
/// The mode of the agent's state folders.
pub const DIR_MODE: u32 = 0o700;

/// Whether an error is the kernel refusing to follow a symbolic link (`O_NOFOLLOW`).
pub fn is_symlink_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Opens `path` for reading, refusing a symbolic link.
pub fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Reads a whole file, refusing a symbolic link.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    io::Read::read_to_end(&mut open_read(path)?, &mut data)?;
    Ok(data)
}

/// Opens `path` for writing, creating it 0600 when missing (an existing file is made 0600
/// too), refusing a symbolic link. `append` writes at the end; otherwise the file is
/// truncated.
pub fn open_write(path: &Path, append: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // The umask may have narrowed the mode, and an older file may be wider: set it on the
    // open file, never by path.
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Opens `path` for writing without creating it, refusing a symbolic link.
pub fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// An error and the file it is about (the temporary file or the destination).
#[derive(Debug)]
pub struct PathError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Writes `data` to `path` through `<path>.tmp`, an fsync, a rename and an fsync of the
/// folder: after a crash, `path` holds the old data or the new, and the new survives a
/// power loss once this returns.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), PathError> {
    let tmp = path.with_extension("tmp");
    let at = |p: &Path| {
        let path = p.to_path_buf();
        move |source| PathError { path, source }
    };
    let mut f = open_write(&tmp, false).map_err(at(&tmp))?;
    io::Write::write_all(&mut f, data)
        .and_then(|()| f.sync_all())
        .map_err(at(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(at(path))?;
    sync_parent(path).map_err(at(path))
}

/// Creates `dir` (and its parents) 0700, or makes an existing one 0700; refuses a symbolic
/// link at `dir` itself, and a folder another user owns.
pub fn make_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)?;
    let meta = d.metadata()?;
    // A folder someone else owns (made ahead to watch or swap the agent's files) is refused.
    // SAFETY: plain syscall.
    let me = unsafe { libc::geteuid() };
    if std::os::unix::fs::MetadataExt::uid(&meta) != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "`{}` is owned by uid {}, not by the agent (uid {me}): remove it or chown it",
                dir.display(),
                std::os::unix::fs::MetadataExt::uid(&meta)
            ),
        ));
    }
    if meta.permissions().mode() & 0o7777 != DIR_MODE {
        d.set_permissions(std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Fsyncs a folder: the creations, renames and removals of its entries become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?
        .sync_all()
}

/// Fsyncs the folder that holds `path`.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => sync_dir(d),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cw-statefile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn files_are_0600_folders_0700_and_links_are_refused() {
        let d = dir("modes");
        make_dir(&d.join("a/b")).unwrap();
        assert_eq!((mode(&d.join("a")), mode(&d.join("a/b"))), (0o700, 0o700));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700, "an existing folder is narrowed");
        let f = d.join("state");
        write_atomic(&f, b"1\n").unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_write(&f, true).unwrap());
        assert_eq!(mode(&f), 0o600, "an existing file is narrowed");

        let target = d.join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for e in [
            open_write(&link, true).unwrap_err(),
            open_write(&link, false).unwrap_err(),
            open_read(&link).unwrap_err(),
            open_existing(&link).unwrap_err(),
        ] {
            assert!(is_symlink_refusal(&e), "{e}");
        }
        // The temporary file of an atomic write is a link: refused too.
        std::os::unix::fs::symlink(&target, d.join("other.tmp")).unwrap();
        let e = write_atomic(&d.join("other"), b"x").unwrap_err();
        assert!(
            is_symlink_refusal(&e.source) && e.path == d.join("other.tmp"),
            "{e:?}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let dlink = d.join("dlink");
        std::os::unix::fs::symlink(d.join("a"), &dlink).unwrap();
        assert!(make_dir(&dlink).is_err(), "a linked folder is refused");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
