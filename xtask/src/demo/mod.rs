//! `cargo xtask demo`: the whole pipeline on this machine (release builds, as root), telling
//! the story this project exists for.
//!
//! 1. A collector (its own CA, SQLite, correlation every 2 s) runs as a child process.
//! 2. The real agent on this host enrolls in `demo-clinic` with a token from the collector.
//! 3. The agent watches a stand-in practice-management client at work, with the doctor's
//!    browser cookie store protected, and exports to the collector.
//! 4. A simulated fleet of 30 clinics streams window summaries over mutual TLS.
//! 5. An infostealer on this host reads the cookies and sends them to a server new to the
//!    clinic (127.77.0.1: loopback, nothing leaves the machine), while the same destination
//!    shows up in a dozen other clinics: the agent's findings reach the collector, and
//!    correlation opens a fleet incident (`CW-FLEET-INFOSTEALER`).
//! 6. It prints what to look at, then leaves everything running until Ctrl-C
//!    (`--until-incident`: exits once the incident is seen).
//!
//! Everything lives in a private temporary folder, removed at the end (kept after a
//! failure, to look at its logs).

mod agent;
mod attack;
mod collector;
mod fleet;
mod procs;

use std::{
    fmt::Display,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use self::{agent::Agent, collector::Collector, fleet::Fleet, procs::Children};
use crate::util::target_dir;

pub struct Options {
    /// Exit once the incident is seen (for CI), instead of running until Ctrl-C.
    pub until_incident: bool,
    /// Fail when the incident has not opened this long after the start.
    pub timeout: Duration,
}

const CLINIC: &str = "demo-clinic";
const FLEET_CLINICS: usize = 30;
/// Other clinics the infostealer reaches (the rule wants 3).
const CAMPAIGN: usize = 12;
const RULE: &str = "CW-FLEET-INFOSTEALER";

pub fn demo(o: &Options) -> anyhow::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs: run it as root (sudo -E cargo xtask demo)");
    }
    procs::catch_signals();
    let mut dir = procs::PrivateDir::new("clinicwatch-demo")?;
    let r = story(o, &target_dir().join("release"), &dir.path);
    match &r {
        Err(_) if procs::stopped() => {
            eprintln!("demo: interrupted");
            return Ok(());
        }
        Err(_) => dir.keep = true,
        Ok(()) => {}
    }
    r
}

/// Seconds since the start, and the deadline of the whole story.
#[derive(Clone, Copy)]
struct Clock {
    t0: Instant,
    deadline: Instant,
}

impl Clock {
    fn say(&self, who: &str, what: impl Display) {
        println!(
            "[{:>4.1} s] {who:<9} {what}",
            self.t0.elapsed().as_secs_f64()
        );
    }

    /// Polls `poll` every 100 ms until it gives a value; fails past the deadline, on
    /// Ctrl-C, or when a child process exits.
    fn wait<T>(
        &self,
        children: &mut Children,
        what: &str,
        mut poll: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        loop {
            procs::check_stop()?;
            children.check()?;
            if let Some(v) = poll()? {
                return Ok(v);
            }
            if Instant::now() > self.deadline {
                bail!(
                    "no {what} within {:.0} s of the start",
                    (self.deadline - self.t0).as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What the agent, the infostealer, its server and the fleet say, told as it comes.
struct Feed {
    clock: Clock,
    events: agent::Events,
    fleet: Fleet,
    stealer: Option<procs::Piped>,
    loot: mpsc::Receiver<u64>,
    /// This host's findings so far: rule, subject.
    findings: Vec<(String, String)>,
    /// Bytes read and sent in the app's first window with activity.
    app_window: Option<(u64, u64)>,
    fleet_ready: bool,
    campaign_done: bool,
}

impl Feed {
    fn poll(&mut self) -> anyhow::Result<()> {
        for e in self.events.next()? {
            match e["type"].as_str() {
                Some("finding") => self.on_finding(&e),
                Some("summary") if e["app"] == "pm-client" && self.app_window.is_none() => {
                    self.on_app_window(&e)
                }
                _ => {}
            }
        }
        while let Some(line) = self.fleet.line() {
            self.on_fleet(&line);
        }
        while let Some(line) = self.stealer.as_ref().and_then(|s| s.line()) {
            if let Some(n) = line.strip_prefix("read ") {
                self.clock
                    .say("attack", format!("it read {n} bytes of cookies"));
            }
        }
        while let Ok(n) = self.loot.try_recv() {
            self.clock
                .say("attack", format!("its server received {n} bytes"));
        }
        Ok(())
    }

    fn on_finding(&mut self, f: &serde_json::Value) {
        let text = |k: &str| f[k].as_str().unwrap_or("").to_string();
        let (rule, subject) = (text("rule"), text("subject"));
        self.clock.say(
            "agent",
            format!("finding {rule} ({}): {subject}", text("severity")),
        );
        self.findings.push((rule, subject));
    }

    fn on_app_window(&mut self, w: &serde_json::Value) {
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let read: u64 = w["classes"]
            .as_object()
            .map_or(0, |c| c.values().map(|s| n(&s["bytes"])).sum());
        let sent: u64 = w["destinations"]
            .as_array()
            .map_or(0, |d| d.iter().map(|d| n(&d["bytes_sent"])).sum());
        if read + sent == 0 {
            return;
        }
        self.app_window = Some((read, sent));
        self.clock.say(
            "agent",
            format!(
                "pm-client's first window: {} KiB of its data read, {} KiB sent to its vendor; to the collector",
                read / 1024,
                sent / 1024
            ),
        );
    }

    fn on_fleet(&mut self, line: &str) {
        if line.starts_with("ready ") {
            self.fleet_ready = true;
            self.clock.say(
                "fleet",
                format!(
                    "{} other clinics (clinic-00000 .. clinic-{:05}) stream window summaries, a certificate each",
                    self.fleet.clinics,
                    self.fleet.clinics - 1
                ),
            );
        } else if line.starts_with("campaign ") {
            self.campaign_done = true;
            self.clock.say(
                "fleet",
                format!(
                    "{} of them report the same: a program outside the app read the browser's cookies, then connected to that server",
                    self.fleet.campaign
                ),
            );
        }
    }

    fn finding(&self, rule: &str) -> Option<String> {
        self.findings
            .iter()
            .find(|(r, _)| r == rule)
            .map(|(_, s)| s.clone())
    }
}

fn start_collector(
    clock: &Clock,
    children: &mut Children,
    bin: &Path,
    dir: &Path,
) -> anyhow::Result<Collector> {
    let c = Collector::init(bin.join("clinicwatch-collector"), dir.join("collector"))?;
    c.serve(children, &dir.join("collector.log"))?;
    clock.say(
        "collector",
        format!(
            "up: agents on {} (mutual TLS), its page on http://{}/, a correlation pass every 2 s",
            c.agents, c.web
        ),
    );
    Ok(c)
}

fn start_agent(
    clock: &Clock,
    children: &mut Children,
    bin: &Path,
    dir: &Path,
    c: &Collector,
    scene: &attack::Scene,
) -> anyhow::Result<(agent::Events, String)> {
    let a = Agent::configure(
        bin.join("clinicwatch-agent"),
        dir,
        &agent::Watch {
            app: &scene.app,
            data: &scene.patients,
            protected: &scene.cookies,
            vendor: "127.0.0.1",
        },
    )?;
    let token = c.enroll_token(CLINIC)?;
    let said = a.enroll(c, &token)?;
    // Its first line says who enrolled (`enrolled CLINIC/HOST with ...`), where, until when.
    let said = said.lines().next().unwrap_or_default();
    let host = said
        .strip_prefix(&format!("enrolled {CLINIC}/"))
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("`enroll` did not say which host it enrolled: {said:?}"))?
        .to_string();
    clock.say("agent", format!("this host enrolled with a token: {said}"));
    let events = a.start(children, &dir.join("agent.log"))?;
    clock.say(
        "agent",
        format!(
            "watching pm-client; `{}` protected; events in {}",
            scene.cookies.display(),
            a.events.display()
        ),
    );
    Ok((events, host))
}

/// `cmd` as one would type it.
fn shell_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-=:".contains(c))
            {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn story(o: &Options, bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let clock = Clock {
        t0,
        deadline: t0 + o.timeout,
    };
    let mut children = Children::default();
    clock.say(
        "demo",
        format!("files in {} (private; removed at the end)", dir.display()),
    );
    let mut stage = normal_day(&clock, &mut children, bin, dir)?;
    let incident = attack(&clock, &mut children, &mut stage)?;
    let elapsed = t0.elapsed();
    tell_what_to_look_at(&stage, &incident)?;
    println!("story told in {:.1} s", elapsed.as_secs_f64());
    if o.until_incident {
        return Ok(());
    }
    println!("\nthe collector, the agent and the fleet keep running: Ctrl-C to stop");
    while !procs::stopped() {
        procs::nap(Duration::from_millis(500));
        stage.feed.poll()?;
        children.check()?;
    }
    println!("stopping");
    Ok(())
}

/// Everything the story runs on.
struct Stage {
    c: Collector,
    scene: attack::Scene,
    feed: Feed,
    /// This host's id at the collector.
    host: String,
    /// The infostealer's server, and the destination as agents write it.
    server: SocketAddr,
    destination: String,
}

/// The collector, this host's agent watching the app at work, the fleet: until this host
/// and the simulated clinics report to the collector.
fn normal_day(
    clock: &Clock,
    children: &mut Children,
    bin: &Path,
    dir: &Path,
) -> anyhow::Result<Stage> {
    let c = start_collector(clock, children, bin, dir)?;
    let scene = attack::Scene::stage(dir, &bin.join("cw-workload"))?;
    let (events, host) = start_agent(clock, children, bin, dir, &c, &scene)?;
    let vendor = attack::vendor_api()?;
    scene.start_app(children, vendor)?;
    clock.say(
        "pm-client",
        format!(
            "the practice-management client at work: its patient database, its vendor at {vendor}"
        ),
    );
    let (server, loot) = attack::stealer_server()?;
    let destination = format!("{server}/tcp");
    let fleet = Fleet::start(
        children,
        &bin.join("cw-ingest-bench"),
        &c,
        &destination,
        FLEET_CLINICS,
        CAMPAIGN,
        &dir.join("fleet.log"),
    )?;
    let mut feed = Feed {
        clock: *clock,
        events,
        fleet,
        stealer: None,
        loot,
        findings: Vec::new(),
        app_window: None,
        fleet_ready: false,
        campaign_done: false,
    };
    clock.wait(children, "simulated fleet", || {
        feed.poll()?;
        Ok(feed.fleet_ready.then_some(()))
    })?;
    clock.wait(children, "window summary from the agent", || {
        feed.poll()?;
        Ok(feed.app_window)
    })?;
    let me = format!("{CLINIC}/{host}");
    let hosts = clock.wait(children, "word from this host at the collector", || {
        feed.poll()?;
        let hosts = c.hosts()?;
        Ok(hosts.contains(&me).then_some(hosts.len()))
    })?;
    clock.say(
        "collector",
        format!("{hosts} hosts reporting: this one ({me}) and the simulated clinics'"),
    );
    Ok(Stage {
        c,
        scene,
        feed,
        host,
        server,
        destination,
    })
}

/// The infostealer here and in a dozen other clinics, until the fleet incident.
fn attack(
    clock: &Clock,
    children: &mut Children,
    st: &mut Stage,
) -> anyhow::Result<collector::Incident> {
    clock.say(
        "attack",
        "an infostealer, `chrome-sync`, dropped in the doctor's ~/.cache, opens the browser's cookie store",
    );
    let feed = &mut st.feed;
    feed.stealer = Some(st.scene.start_stealer(children, st.server)?);
    clock.wait(children, "CW-PROTECTED-READ from the agent", || {
        feed.poll()?;
        Ok(feed.finding("CW-PROTECTED-READ"))
    })?;
    clock.say(
        "attack",
        format!(
            "it connects to {}, new to this clinic, and sends them; at the same time it reaches {CAMPAIGN} other clinics",
            st.server
        ),
    );
    feed.stealer
        .as_mut()
        .context("the infostealer")?
        .send("go")?;
    feed.fleet.campaign()?;
    let incident = wait_incident(clock, children, feed, &st.c, &st.destination, &st.host)?;
    clock.wait(children, "CW-INFOSTEALER-PRECURSOR from the agent", || {
        feed.poll()?;
        Ok(feed.finding("CW-INFOSTEALER-PRECURSOR"))
    })?;
    Ok(incident)
}

/// Until the collector has the fleet incident for `destination` with this host in it (its
/// precursor finding stored and correlated) and every clinic the infostealer reached, or
/// for 10 s more once this host is in it.
fn wait_incident(
    clock: &Clock,
    children: &mut Children,
    feed: &mut Feed,
    c: &Collector,
    destination: &str,
    host: &str,
) -> anyhow::Result<collector::Incident> {
    let key = format!("destination:{destination}");
    let me = format!("{CLINIC}/{host}");
    // What was last told: clinics, this host in it.
    let mut told: Option<(usize, bool)> = None;
    let mut with_me_since: Option<Instant> = None;
    let mut asked = Instant::now() - Duration::from_secs(1);
    clock.wait(children, &format!("{RULE} incident for `{key}`"), || {
        feed.poll()?;
        if asked.elapsed() < Duration::from_millis(500) {
            return Ok(None);
        }
        asked = Instant::now();
        let Some(i) = c
            .incidents()?
            .into_iter()
            .find(|i| i.rule == RULE && i.key == key)
        else {
            return Ok(None);
        };
        let with_me = i.hosts.contains(&me);
        if told != Some((i.clinics, with_me)) {
            clock.say(
                "collector",
                format!(
                    "incident #{} {} ({}) {}: {} clinics{}",
                    i.id,
                    i.rule,
                    i.severity,
                    if told.is_none() { "opened" } else { "updated" },
                    i.clinics,
                    if with_me {
                        ", this host among them"
                    } else {
                        " (this host's finding not in it yet)"
                    }
                ),
            );
            told = Some((i.clinics, with_me));
        }
        if !with_me {
            return Ok(None);
        }
        let since = *with_me_since.get_or_insert_with(Instant::now);
        let all = feed.campaign_done && i.clinics > CAMPAIGN;
        Ok((all || since.elapsed() > Duration::from_secs(10)).then_some(i))
    })
}

fn tell_what_to_look_at(st: &Stage, i: &collector::Incident) -> anyhow::Result<()> {
    let (feed, c, destination) = (&st.feed, &st.c, &st.destination);
    println!("\nWhat to look at");
    for rule in ["CW-PROTECTED-READ", "CW-INFOSTEALER-PRECURSOR"] {
        if let Some(subject) = feed.finding(rule) {
            println!("  finding on this host:  {rule}  {subject}");
        }
    }
    println!(
        "  fleet incident:        #{} {} ({}), {} clinics sending to {destination}",
        i.id, i.rule, i.severity, i.clinics
    );
    let mut show = c.show_command(i.id);
    println!("  its details:           {}", shell_line(&show));
    let out = show
        .output()
        .with_context(|| format!("cannot run {show:?}"))?;
    if !out.status.success() {
        bail!(
            "`incidents show {}` failed: {}\n{}",
            i.id,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    println!("  the SOC page:          http://{}/", c.web);
    Ok(())
}
