//! The other clinics: `cw-ingest-bench demo-fleet`, a simulated fleet streaming to the
//! demo's collector over mutual TLS (a certificate per clinic, signed with its CA).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context as _;

use super::{
    collector::Collector,
    procs::{Children, Piped},
};

pub struct Fleet {
    pub clinics: usize,
    /// How many of them the infostealer reaches.
    pub campaign: usize,
    io: Piped,
}

impl Fleet {
    /// Starts it (its log in `log`): `clinics` clinics, a window summary every 5 s each.
    pub fn start(
        children: &mut Children,
        bin: &Path,
        c: &Collector,
        destination: &str,
        clinics: usize,
        campaign: usize,
        log: &Path,
    ) -> anyhow::Result<Fleet> {
        let log = std::fs::File::create(log)
            .with_context(|| format!("cannot create `{}`", log.display()))?;
        let child = children.spawn(
            "the simulated fleet",
            Command::new(bin)
                .args([
                    "demo-fleet",
                    "--port",
                    &c.agents.port().to_string(),
                    "--ca-dir",
                ])
                .arg(&c.dir)
                .args(["--destination", destination])
                .args(["--clinics", &clinics.to_string()])
                .args(["--campaign", &campaign.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log),
            libc::SIGTERM,
        )?;
        Ok(Fleet {
            clinics,
            campaign,
            io: Piped::new(child)?,
        })
    }

    /// `ready N` (every clinic's first window acked) or `campaign K` (every report acked).
    pub fn line(&self) -> Option<String> {
        self.io.line()
    }

    /// The infostealer reaches `campaign` of the clinics.
    pub fn campaign(&mut self) -> anyhow::Result<()> {
        self.io.send("campaign")
    }
}
