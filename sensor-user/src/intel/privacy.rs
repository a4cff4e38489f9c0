//! The privacy edge: paths leave the agent as class + keyed hash + (known) extension.
//!
//! The key is per clinic (`privacy.key_file`, hex) so that the same file hashes alike on
//! every host of the clinic, and differently in every other clinic; without one, a random key
//! is made once per host. A file's extension is kept only when it is on a short list of
//! common ones: a free-form "extension" (`dupont.jean`) could carry a name.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::classes::extension;
use crate::event::class::FileClass;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the privacy key `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("privacy key `{path}`: {why}")]
    Invalid { path: String, why: String },
    #[error("cannot create a privacy key in `{path}`")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

const KEPT_EXTENSIONS: &[&str] = &[
    "db", "sqlite", "sqlite3", "mdb", "accdb", "dbf", "fdb", "gdb", "ib", "myd", "ibd", "frm",
    "ldf", "mdf", "wal", "shm", "journal", "log", "xml", "json", "csv", "txt", "pdf", "doc",
    "docx", "odt", "rtf", "xls", "xlsx", "ods", "jpg", "jpeg", "png", "tif", "tiff", "dcm", "hl7",
    "hpr", "zip", "7z", "gz", "tar", "bak", "tmp", "ini", "conf", "cfg", "key", "pem", "so", "dll",
    "exe",
];

pub struct Privacy {
    key: Vec<u8>,
    pub keep_argv: bool,
}

impl Privacy {
    pub fn new(key: Vec<u8>, keep_argv: bool) -> Self {
        Self { key, keep_argv }
    }

    /// The configured key file, or the host's own key in `state_dir` (made on first use).
    pub fn load(key_file: &str, state_dir: &Path, keep_argv: bool) -> Result<Self, KeyError> {
        let key = if key_file.is_empty() {
            host_key(&state_dir.join("privacy.key"))?
        } else {
            read_key(Path::new(key_file))?
        };
        Ok(Self::new(key, keep_argv))
    }

    /// Hex HMAC-SHA-256 of `data`, cut to 128 bits.
    pub fn hash(&self, data: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(data.as_bytes());
        let out = mac.finalize().into_bytes();
        out[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A keyed 64-bit hash function under this key (for distinct counts and template
    /// tokens), usable apart from `self`.
    pub fn hasher(&self) -> impl Fn(&str) -> u64 + Send + 'static {
        let key = self.key.clone();
        move |data: &str| {
            let mut mac =
                <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
            mac.update(data.as_bytes());
            let out = mac.finalize().into_bytes();
            u64::from_be_bytes([
                out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7],
            ])
        }
    }

    /// `class:hash[.ext]`.
    pub fn path_token(&self, class: FileClass, path: &str) -> String {
        let mut t = format!("{class}:{}", self.hash(path));
        if let Some(ext) = extension(path).filter(|e| KEPT_EXTENSIONS.contains(&e.as_str())) {
            t.push('.');
            t.push_str(&ext);
        }
        t
    }

    /// The argument vector as it may leave: the executable only, unless configured.
    pub fn argv(&self, argv: Vec<String>) -> (Vec<String>, bool) {
        if self.keep_argv || argv.len() <= 1 {
            return (argv, false);
        }
        (argv.into_iter().take(1).collect(), true)
    }
}

/// Folders whose first component below is a user's name (or uid).
const USER_FOLDERS: &[&str] = &[
    "/home/",
    "/var/home/",
    "/run/user/",
    "/media/",
    "/run/media/",
];

/// An executable's path as it may leave the host: without the user's name
/// (`/home/dupont/bin/x` → `/home/~/bin/x`; also `/var/home/`, `/run/user/UID/`, `/media/`),
/// the rest kept, since a program's path is what the SOC compares across clinics (the same
/// dropper in `/tmp/.x/` on many hosts). `/root/` names no one.
pub fn exe_path(path: &str) -> String {
    for prefix in USER_FOLDERS {
        if let Some(rest) = path.strip_prefix(prefix) {
            return match rest.split_once('/') {
                Some((_, tail)) => format!("{prefix}~/{tail}"),
                None => format!("{prefix}~"),
            };
        }
    }
    path.to_string()
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if !t.len().is_multiple_of(2) {
        return None;
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect()
}

fn read_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let key = parse_hex(&text).ok_or_else(|| KeyError::Invalid {
        path: path.display().to_string(),
        why: "expected the key as hexadecimal".into(),
    })?;
    if key.len() < 32 {
        return Err(KeyError::Invalid {
            path: path.display().to_string(),
            why: format!("{} bytes; at least 32 are needed", key.len()),
        });
    }
    Ok(key)
}

fn host_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    if path.exists() {
        return read_key(path);
    }
    let create = |source| KeyError::Create {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| create(std::io::Error::other(e.to_string())))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create)?;
    f.write_all(format!("{hex}\n").as_bytes()).map_err(create)?;
    f.sync_all().map_err(create)?;
    tracing::warn!(
        key = %path.display(),
        "no privacy.key_file: made a key for this host; path hashes will not match other hosts of the clinic"
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executables_path_leaves_without_the_users_name() {
        assert_eq!(
            exe_path("/home/dupont/.cache/x/run"),
            "/home/~/.cache/x/run"
        );
        assert_eq!(exe_path("/run/user/1000/tool"), "/run/user/~/tool");
        assert_eq!(exe_path("/var/home/jean/bin/a"), "/var/home/~/bin/a");
        assert_eq!(exe_path("/home/dupont"), "/home/~");
        assert_eq!(exe_path("/usr/bin/python3.11"), "/usr/bin/python3.11");
        assert_eq!(exe_path("/tmp/.x/stealer"), "/tmp/.x/stealer");
    }

    #[test]
    fn tokens_are_keyed_and_keep_only_known_extensions() {
        let a = Privacy::new(vec![1; 32], false);
        let b = Privacy::new(vec![2; 32], false);
        let p = "/var/lib/pm/patients/DUPONT Jean/notes.db";
        let t = a.path_token(FileClass::PmData, p);
        assert!(t.starts_with("pm_data:") && t.ends_with(".db"), "{t}");
        assert_eq!(t.len(), "pm_data:".len() + 32 + 3);
        assert_eq!(t, a.path_token(FileClass::PmData, p), "stable");
        assert_ne!(t, b.path_token(FileClass::PmData, p), "keyed");
        let odd = a.path_token(FileClass::Other, "/home/x/dupont.jean");
        assert!(!odd.contains("jean"), "{odd}");
        let (argv, cut) = a.argv(vec!["/bin/sh".into(), "-c".into(), "cat DUPONT".into()]);
        assert_eq!((argv, cut), (vec!["/bin/sh".to_string()], true));
    }

    #[test]
    fn keys_are_checked_and_made_once() {
        let dir = std::env::temp_dir().join(format!("cw-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = Privacy::load("", &dir, false).unwrap();
        let again = Privacy::load("", &dir, false).unwrap();
        assert_eq!(made.hash("x"), again.hash("x"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("privacy.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let short = dir.join("short.key");
        std::fs::write(&short, "abcd").unwrap();
        let e = Privacy::load(short.to_str().unwrap(), &dir, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("short.key") && e.contains("at least 32"), "{e}");
        let missing = Privacy::load("/nonexistent/k", &dir, false)
            .err()
            .unwrap()
            .to_string();
        assert!(missing.contains("/nonexistent/k"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
