//! Who may connect: `ca init`, `enroll-token`, `tokens`, `issue` and `unenroll`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clinicwatch_collector::{api::enroll, auth::identity::SOC_ORG, auth::pki, store};

use super::{
    args::{StoreArgs, TokensCmd},
    dir::{ca, load_config, open_store, read, token_key, write, write_secret},
    utc,
};

/// `ca init`: the CA, the server certificate for `name` and the enrollment key, in a
/// folder that has no CA yet.
pub(super) fn ca_init(dir: &Path, name: &[String], days: u32) -> anyhow::Result<()> {
    if days == 0 || days > 7300 {
        anyhow::bail!("--days must be between 1 and 7300");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make `{}`", dir.display()))?;
    if dir.join("ca.pem").exists() {
        anyhow::bail!("`{}` already has a CA", dir.display());
    }
    let ca = pki::new_ca_for("clinicwatch CA", days)?;
    let server = pki::server_cert_for(&ca, name, days)?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    write_secret(&dir.join("ca.key"), ca.key.as_bytes())?;
    write_secret(&dir.join("server.key"), server.key.as_bytes())?;
    write_secret(&dir.join("enroll.key"), &key)?;
    write(&dir.join("ca.pem"), &ca.cert)?;
    write(&dir.join("server.pem"), &server.cert)?;
    println!(
        "CA, server certificate ({}) and enrollment key in {}\nCA SHA-256 (agents enroll with it): {}\nNext: `enroll-token --clinic ID` for each clinic.",
        name.join(", "),
        dir.display(),
        pki::cert_sha256(&ca.cert)?
    );
    Ok(())
}

pub(super) async fn enroll_token(
    dir: &Path,
    clinic: String,
    days: u32,
    uses: u32,
    host: Option<String>,
    sa: StoreArgs,
) -> anyhow::Result<()> {
    if !enroll::valid_id(&clinic) {
        anyhow::bail!("clinic id `{clinic}` must be 1 to 64 letters, digits, `.`, `_` or `-`");
    }
    if clinic == SOC_ORG {
        anyhow::bail!("`{clinic}` is reserved for analysts' certificates (`issue --soc`)");
    }
    if days == 0 || days > 30 {
        anyhow::bail!("--days must be between 1 and 30");
    }
    if uses == 0 || uses > 1000 {
        anyhow::bail!("--uses must be between 1 and 1000");
    }
    if let Some(h) = host.as_deref().filter(|h| !enroll::valid_id(h)) {
        anyhow::bail!("host id `{h}` must be 1 to 64 letters, digits, `.`, `_` or `-`");
    }
    let key = token_key(dir)?;
    let now = clinicwatch_collector::calls::now();
    let exp = now as u64 + days as u64 * 86_400;
    let st = open_store(dir, sa).await?;
    let (c, h) = (clinic.clone(), host.clone().unwrap_or_default());
    let (token, row) = tokio::task::spawn_blocking(move || {
        enroll::issue_token(st.as_ref(), &key, &c, &h, uses, exp)
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let id = row.id;
    println!("{token}");
    // The token alone on stdout (for scripts); how to use it on stderr.
    let pin = pki::cert_sha256(&read(&dir.join("ca.pem"))?)?;
    let bound = host.map_or(String::new(), |h| format!(", host `{h}` only"));
    eprintln!(
        "token {id} for clinic `{clinic}`: {uses} use(s), valid {days} day(s){bound}; revoke it with `tokens revoke {id}`. On each of the clinic's workstations, after installing the agent:\n  clinicwatch-agent enroll --collector https://COLLECTOR:7443 --token TOKEN --ca-sha256 {pin}"
    );
    Ok(())
}

pub(super) async fn tokens(dir: &Path, cmd: TokensCmd, sa: StoreArgs) -> anyhow::Result<()> {
    let st = open_store(dir, sa).await?;
    tokio::task::spawn_blocking(move || match cmd {
        TokensCmd::List { json } => list_tokens(st.as_ref(), json),
        TokensCmd::Revoke { id } => revoke_token(st.as_ref(), &id),
    })
    .await?
}

fn list_tokens(st: &dyn store::Store, json: bool) -> anyhow::Result<()> {
    for t in st.tokens()? {
        if json {
            println!("{}", serde_json::to_string(&t)?);
        } else {
            let host = if t.host.is_empty() {
                "any host"
            } else {
                &t.host
            };
            println!(
                "{}  {:<20} {:<16} {:>4} use(s) left  expires {}{}",
                t.id,
                t.clinic,
                host,
                t.uses_left,
                utc(t.expires),
                if t.revoked { "  revoked" } else { "" }
            );
        }
    }
    Ok(())
}

fn revoke_token(st: &dyn store::Store, id: &str) -> anyhow::Result<()> {
    if !st.revoke_token(id)? {
        anyhow::bail!("no token `{}`", id.escape_debug());
    }
    println!("token {id} revoked");
    Ok(())
}

/// What `issue` was asked for (its options but the store's).
pub(super) struct Issue {
    pub(super) clinic: Option<String>,
    pub(super) host: Option<String>,
    pub(super) soc: bool,
    pub(super) name: Option<String>,
    pub(super) days: i64,
    pub(super) out: PathBuf,
}

/// `issue`: a certificate (and its key) into `out`, its key recorded as the holder's.
pub(super) async fn issue(dir: &Path, req: Issue, sa: StoreArgs) -> anyhow::Result<()> {
    let (clinic, host) = holder(&req)?;
    let ca = ca(dir)?;
    let c = pki::client_cert(&ca, &clinic, &host, req.days)?;
    // Its key becomes the holder's: an earlier certificate of the same name is
    // refused from now on, and `unenroll` can revoke this one.
    let key = pki::key_fingerprint(&pki::pem_to_der(&c.cert)?)?;
    let st = open_store(dir, sa).await?;
    let hk = store::HostKey {
        clinic: clinic.clone(),
        host: host.clone(),
    };
    tokio::task::spawn_blocking(move || {
        st.set_enrollment(
            &hk,
            &store::Enrollment {
                key_sha256: key,
                revoked: false,
                updated: clinicwatch_collector::calls::now(),
                pending_key_sha256: String::new(),
            },
        )
    })
    .await??;
    let out = &req.out;
    std::fs::create_dir_all(out)?;
    write(&out.join("cert.pem"), &c.cert)?;
    write_secret(&out.join("key.pem"), c.key.as_bytes())?;
    write(&out.join("ca.pem"), &ca.cert)?;
    println!("certificate for {clinic}/{host} in {}", out.display());
    Ok(())
}

/// The (clinic, host) a certificate of `issue` names, once its lifetime and names are
/// checked: an analyst's under the SOC's organisation, a host's under its clinic.
fn holder(req: &Issue) -> anyhow::Result<(String, String)> {
    let days = req.days;
    let max = if req.soc { 90 } else { 825 };
    if !(1..=max).contains(&days) {
        anyhow::bail!("--days must be between 1 and {max}");
    }
    let (clinic, host) = if req.soc {
        (SOC_ORG.to_string(), req.name.clone().unwrap_or_default())
    } else {
        let clinic = req.clinic.clone().unwrap_or_default();
        if clinic == SOC_ORG {
            anyhow::bail!("`{clinic}` is reserved for analysts' certificates (`--soc`)");
        }
        (clinic, req.host.clone().unwrap_or_default())
    };
    for id in [&clinic, &host] {
        if !enroll::valid_id(id) {
            anyhow::bail!("`{id}` must be 1 to 64 letters, digits, `.`, `_` or `-`");
        }
    }
    Ok((clinic, host))
}

/// `unenroll`: every certificate of a known host refused until it enrolls again.
pub(super) async fn unenroll(
    dir: &Path,
    clinic: String,
    host: String,
    config: Option<PathBuf>,
    db: Option<String>,
) -> anyhow::Result<()> {
    let cfg = load_config(dir, config.as_deref(), db)?;
    let url = cfg.store.url.clone();
    let key = store::HostKey {
        clinic: clinic.clone(),
        host: host.clone(),
    };
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let st = store::open(&url)?;
        let known = st.enrollment(&key)?.is_some()
            || st
                .hosts()?
                .iter()
                .any(|h| h.clinic == key.clinic && h.host == key.host);
        if !known {
            anyhow::bail!(
                "no host {}/{} is known here (never enrolled, issued or connected): nothing was changed",
                key.clinic,
                key.host
            );
        }
        st.set_enrollment(
            &key,
            &store::Enrollment {
                key_sha256: String::new(),
                revoked: true,
                updated: clinicwatch_collector::calls::now(),
                pending_key_sha256: String::new(),
            },
        )?;
        Ok(())
    })
    .await??;
    println!(
        "{clinic}/{host} unenrolled: its certificates are refused until it enrolls again with a token"
    );
    Ok(())
}
