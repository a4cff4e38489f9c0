//! The collector's folder (`--dir`): its files (the CA, keys), its configuration and its
//! store.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::Context as _;
use clinicwatch_collector::{auth::pki, config::Config, store};

use super::args::StoreArgs;

/// The Debian package's layout: its state folder (the default `--dir`) and its config.
pub(super) const PACKAGED_DIR: &str = "/var/lib/clinicwatch-collector";
const PACKAGED_CONFIG: &str = "/etc/clinicwatch-collector/collector.toml";

pub(super) fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

/// Writes a file that only its owner can read (keys).
pub(super) fn write_secret(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write `{}`", path.display()))
}

pub(super) fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

/// The CA's certificate and key (`ca.pem`, `ca.key`).
pub(super) fn ca(dir: &Path) -> anyhow::Result<pki::Pem> {
    Ok(pki::Pem {
        cert: read(&dir.join("ca.pem"))?,
        key: read(&dir.join("ca.key"))?,
    })
}

/// The key enrollment tokens are signed with (`enroll.key`).
pub(super) fn token_key(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let p = dir.join("enroll.key");
    let key = std::fs::read(&p)
        .with_context(|| format!("cannot read `{}` (made by `ca init`)", p.display()))?;
    if key.len() < 32 {
        anyhow::bail!("`{}` is shorter than 32 bytes", p.display());
    }
    Ok(key)
}

/// The store that `sa` (or the configuration) names, for the offline commands.
pub(super) async fn open_store(dir: &Path, sa: StoreArgs) -> anyhow::Result<Box<dyn store::Store>> {
    let cfg = load_config(dir, sa.config.as_deref(), sa.db)?;
    let url = cfg.store.url;
    Ok(tokio::task::spawn_blocking(move || store::open(&url)).await??)
}

/// The configuration: `--config FILE`, else DIR/collector.toml if it exists, else (in the
/// package's folder only) the package's config; `--db` overrides the store, which defaults
/// to DIR/collector.db.
pub(super) fn load_config(
    dir: &Path,
    config: Option<&Path>,
    db: Option<String>,
) -> anyhow::Result<Config> {
    let packaged = Path::new(PACKAGED_CONFIG);
    let mut cfg = match config {
        Some(p) => Config::load(p, false)?,
        None if dir == Path::new(PACKAGED_DIR)
            && !dir.join("collector.toml").exists()
            && packaged.exists() =>
        {
            Config::load(packaged, false)?
        }
        None => Config::load(&dir.join("collector.toml"), true)?,
    };
    if let Some(db) = db {
        cfg.store.url = db;
    }
    if cfg.store.url.is_empty() {
        cfg.store.url = dir.join("collector.db").display().to_string();
    }
    Ok(cfg)
}
