//! The real agent on this host: its configuration, its one-step enrollment with the demo's
//! collector, the running agent, and the findings it writes to its event file.

use std::{
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{collector::Collector, procs::Children};

pub struct Agent {
    /// `clinicwatch-agent` (release).
    pub bin: PathBuf,
    pub config: PathBuf,
    /// Its JSON events (`agent.output`).
    pub events: PathBuf,
}

/// What the agent watches and protects.
pub struct Watch<'a> {
    pub app: &'a Path,
    pub data: &'a Path,
    pub protected: &'a Path,
    /// The stand-in vendor API the app talks to.
    pub vendor: &'a str,
}

impl Agent {
    /// Writes the agent's configuration in `dir`: short windows, no learning period, practice
    /// hours all day, the stand-in app and its data, the protected cookie store. `[export]`
    /// comes from enrollment.
    pub fn configure(bin: PathBuf, dir: &Path, w: &Watch) -> anyhow::Result<Agent> {
        let config = dir.join("agent.toml");
        let events = dir.join("agent-events.jsonl");
        let text = format!(
            "[agent]\noutput = \"{events}\"\nsnapshot_interval_secs = 5\nstate_dir = \"{state}\"\n\n\
             # Five-second windows and no learning period: the demo is over in a minute, and\n\
             # everything in it is new to this host's baseline. Practice hours all day.\n\
             [intel]\nwindow_secs = 5\nlearning_days = 0\npractice_hours = [\"daily 00:00-24:00\"]\n\
             vendor_allow = [\"{vendor}\"]\n\n\
             [[app]]\nname = \"pm-client\"\nexe = \"{app}\"\ndata = [\"{data}\"]\n\n\
             # The doctor's browser cookie store: no process outside the apps should open it.\n\
             [[protected]]\nname = \"browser-cookies\"\npath = \"{protected}\"\n",
            events = events.display(),
            state = dir.join("agent-state").display(),
            vendor = w.vendor,
            app = w.app.display(),
            data = w.data.display(),
            protected = w.protected.display(),
        );
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write `{}`", config.display()))?;
        Ok(Agent {
            bin,
            config,
            events,
        })
    }

    /// Enrolls this host with the token, in one step: with the collector's CA pin, the
    /// agent fetches and checks the CA, makes its key and CSR, gets its certificate and writes `[export]` into its
    /// config. Returns what `enroll` said.
    pub fn enroll(&self, c: &Collector, token: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("enroll")
            .args(["--collector", &format!("https://{}", c.agents)])
            // The pin, as a clinic's IT person gets it: the CA comes from the collector.
            .args(["--ca-sha256", &c.ca_sha256])
            // On stdin: out of the process list.
            .args(["--token", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
        child
            .stdin
            .take()
            .context("piped stdin")?
            .write_all(format!("{token}\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts the agent (its log in `log`) and waits for its start-up event: every probe
    /// attached.
    pub fn start(&self, children: &mut Children, log: &Path) -> anyhow::Result<Events> {
        let log = std::fs::File::create(log)
            .with_context(|| format!("cannot create `{}`", log.display()))?;
        children.spawn(
            "the agent",
            Command::new(&self.bin)
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
            libc::SIGINT,
        )?;
        let mut events = Events {
            path: self.events.clone(),
            offset: 0,
            partial: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            super::procs::check_stop()?;
            children.check()?;
            if events.next()?.iter().any(|e| e["type"] == "startup") {
                return Ok(events);
            }
            if Instant::now() > deadline {
                bail!("the agent did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The agent's event file, read as it grows.
pub struct Events {
    path: PathBuf,
    offset: u64,
    /// The end of the file after its last newline: a line being written.
    partial: Vec<u8>,
}

impl Events {
    /// The events written since the last call.
    pub fn next(&mut self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("`{}`", self.path.display())),
        };
        f.seek(SeekFrom::Start(self.offset))?;
        self.offset += f.read_to_end(&mut self.partial)? as u64;
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let lines: Vec<u8> = self.partial.drain(..=end).collect();
        Ok(lines
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect())
    }
}
