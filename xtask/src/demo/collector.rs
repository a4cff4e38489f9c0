//! The demo's collector: its CA, its configuration, `serve` as a child process, enrollment
//! tokens, and the incidents it opens (read from its page's `/api/incidents`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::procs::{self, Children};

pub struct Collector {
    /// `clinicwatch-collector` (release).
    pub bin: PathBuf,
    /// Its folder: CA, server certificate, enrollment key, collector.toml, the database.
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Where agents connect (gRPC, mutual TLS).
    pub agents: SocketAddr,
    /// Its page, `/metrics`, `/healthz` and `/api/...` (plain HTTP).
    pub web: SocketAddr,
    /// The CA's SHA-256, as `ca init` prints it: agents enroll with it.
    pub ca_sha256: String,
}

/// An incident as `/api/incidents` shows it (the fields the demo tells).
pub struct Incident {
    pub id: i64,
    pub rule: String,
    pub severity: String,
    pub key: String,
    pub clinics: usize,
    pub hosts: Vec<String>,
}

/// Its stdout; its stderr (advice for people) only if it fails.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Collector {
    /// `ca init` in `dir` (a server certificate for `localhost` and 127.0.0.1), and a
    /// collector.toml: SQLite in `dir`, loopback listeners on free ports, a correlation pass
    /// every 2 s so that an incident opens at once.
    pub fn init(bin: PathBuf, dir: PathBuf) -> anyhow::Result<Collector> {
        let said = output(Command::new(&bin).arg("--dir").arg(&dir).args([
            "ca",
            "init",
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
        ]))?;
        let ca_sha256 = said
            .lines()
            .find_map(|l| l.strip_prefix("CA SHA-256 (agents enroll with it): "))
            .map(|h| h.trim().to_string())
            .with_context(|| format!("`ca init` printed no CA SHA-256: {said:?}"))?;
        let agents = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
        let web = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
        let config = dir.join("collector.toml");
        procs::write_private(
            &config,
            &format!(
                "[server]\nlisten = \"{agents}\"\nmetrics_listen = \"{web}\"\n\n\
                 [store]\nurl = \"{db}\"\n\n\
                 # A pass every 2 s (30 by default): the incident opens while you watch.\n\
                 # The simulated clinics' vendor, so that its CDN is not a destination new to the fleet.\n\
                 [correlation]\nevery_secs = 2\nvendor_domains = [\"vendor.example\"]\n",
                db = dir.join("collector.db").display()
            ),
        )?;
        Ok(Collector {
            bin,
            dir,
            config,
            agents,
            web,
            ca_sha256,
        })
    }

    /// `serve` as a child (its log in `log`), then waits until its page answers `/healthz`
    /// and its agent port accepts connections.
    pub fn serve(&self, children: &mut Children, log: &Path) -> anyhow::Result<()> {
        let log = std::fs::File::create(log)
            .with_context(|| format!("cannot create `{}`", log.display()))?;
        children.spawn(
            "the collector",
            Command::new(&self.bin)
                .arg("--dir")
                .arg(&self.dir)
                .arg("serve")
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
            libc::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            procs::check_stop()?;
            children.check()?;
            let page = procs::http_get(self.web, "/healthz").is_ok_and(|(code, _)| code == 200);
            if page
                && std::net::TcpStream::connect_timeout(&self.agents, Duration::from_secs(1))
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the collector was not ready within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A token for `clinic`'s agents. The output may say more than the token (the CA's
    /// fingerprint): the token is the line of five dot-separated fields.
    pub fn enroll_token(&self, clinic: &str) -> anyhow::Result<String> {
        let out = output(Command::new(&self.bin).arg("--dir").arg(&self.dir).args([
            "enroll-token",
            "--clinic",
            clinic,
        ]))?;
        out.lines()
            .map(str::trim)
            .find(|l| !l.contains(char::is_whitespace) && l.split('.').count() == 5)
            .map(str::to_string)
            .with_context(|| format!("no token in the output of `enroll-token`: {out:?}"))
    }

    pub fn incidents(&self) -> anyhow::Result<Vec<Incident>> {
        let (code, body) = procs::http_get(self.web, "/api/incidents")?;
        if code != 200 {
            bail!("`/api/incidents` answered {code}: {body}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).context("`/api/incidents` is not JSON")?;
        let strings = |i: &serde_json::Value, k: &str| -> Vec<String> {
            i[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(v.as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|i| Incident {
                id: i["id"].as_i64().unwrap_or(0),
                rule: i["rule"].as_str().unwrap_or("").to_string(),
                severity: i["severity"].as_str().unwrap_or("").to_string(),
                key: i["key"].as_str().unwrap_or("").to_string(),
                clinics: strings(i, "clinics").len(),
                hosts: strings(i, "hosts"),
            })
            .collect())
    }

    /// `clinic/host` of every host it has heard from.
    pub fn hosts(&self) -> anyhow::Result<Vec<String>> {
        let (code, body) = procs::http_get(self.web, "/api/hosts")?;
        if code != 200 {
            bail!("`/api/hosts` answered {code}: {body}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).context("`/api/hosts` is not JSON")?;
        Ok(v.as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|h| {
                format!(
                    "{}/{}",
                    h["clinic"].as_str().unwrap_or(""),
                    h["host"].as_str().unwrap_or("")
                )
            })
            .collect())
    }

    /// The SOC's command for one incident, as the demo prints it and runs it.
    pub fn show_command(&self, id: i64) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("incidents")
            .arg("--config")
            .arg(&self.config)
            .args(["show", &id.to_string()]);
        cmd
    }
}
