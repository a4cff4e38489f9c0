//! `cw-ingest-bench demo-fleet` (run by `cargo xtask demo`): a few dozen simulated clinics
//! streaming to a running collector, one agent each with its own client certificate (signed
//! with the collector's CA, as enrollment would) on its own long-lived mutual-TLS stream.
//!
//! Every `--every` seconds each clinic sends a normal window summary (its vendor, its local
//! server). A line `campaign` on stdin makes the first `--campaign` clinics report, a few
//! hundred milliseconds apart, what an agent reports when an infostealer hits its host: a
//! protected read, then the precursor finding toward `--destination`. Stdout says `ready N`
//! once every clinic's first window is acked and `campaign K` once every report is; the
//! fleet stops when stdin closes.

use std::{
    io::{BufRead as _, Write as _},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use clinicwatch_collector::{auth::pki, calls::now as wall};
use clinicwatch_proto::v1::{record::Body, Destination, Finding, Hello, Severity, WindowSummary};
use tokio::sync::{mpsc, watch};

use super::load::{agents_with_certificates, Agent, Session};

/// A simulated clinic's Hello: it names its host, as an agent does.
fn hello(a: &Agent) -> Hello {
    Hello {
        clinic_id: a.clinic.clone(),
        host_id: a.host.clone(),
        hostname: format!("{}-{}", a.clinic, a.host),
        agent_version: "simulated".into(),
        epoch: 1,
        ..Default::default()
    }
}

pub struct DemoFleetOptions {
    /// The collector's agent port on localhost (its certificate names `localhost`).
    pub port: u16,
    /// The collector's folder: `ca.pem` and `ca.key`.
    pub ca_dir: PathBuf,
    /// `IP:PORT/PROTOCOL`, as agents write a destination.
    pub destination: String,
    pub clinics: usize,
    pub campaign: usize,
    pub every: Duration,
}

/// What the clinics do now.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Normal,
    Campaign,
    Stop,
}

fn dest(ip: &str, port: u32, protocol: &str, name: &str, sent: u64) -> Destination {
    Destination {
        ip: ip.into(),
        port,
        protocol: protocol.into(),
        name: name.into(),
        bytes_sent: sent,
        bytes_recv: sent * 8,
        connects: 2,
    }
}

fn window(app: &str, end: f64, secs: f64, destinations: Vec<Destination>) -> Body {
    Body::Summary(WindowSummary {
        app: app.into(),
        start: end - secs,
        end,
        in_practice_hours: true,
        destinations,
        processes: 2,
        ..Default::default()
    })
}

/// Clinic `c`'s practice-management client at work: its vendor and its local server.
fn normal(c: usize, end: f64, secs: f64) -> Body {
    window(
        "pm-client",
        end,
        secs,
        vec![
            dest(
                &format!("198.51.100.{}", 1 + c % 4),
                443,
                "tcp",
                "api.vendor.example",
                20_000,
            ),
            dest(
                &format!("10.{}.{}.5", c / 250, c % 250),
                443,
                "tcp",
                "pm-server.lan",
                200_000,
            ),
        ],
    )
}

/// JSON text, as agents write evidence values.
fn json(v: impl Into<serde_json::Value>) -> String {
    v.into().to_string()
}

/// What clinic `c`'s agent reports when the infostealer runs there: the read of the
/// browser's cookie store by a dropped executable (its path differs from clinic to clinic),
/// then its connect to `destination` (`IP:PORT/PROTOCOL`).
fn stolen(c: usize, now: f64, secs: f64, destination: &str) -> anyhow::Result<Vec<Body>> {
    let (addr, protocol) = destination
        .split_once('/')
        .context("--destination must be IP:PORT/PROTOCOL")?;
    let sock: std::net::SocketAddr = addr
        .parse()
        .context("--destination must be IP:PORT/PROTOCOL")?;
    let exe = format!(
        "/home/dr-{c:03}/.cache/sync-{:04x}/chrome-sync",
        c * 7919 % 65_536
    );
    let finding = |rule: &str, severity: Severity, time: f64, subject: String| Finding {
        rule: rule.into(),
        severity: severity as i32,
        app: "-".into(),
        time,
        subject,
        ..Default::default()
    };
    let mut read = finding(
        "CW-PROTECTED-READ",
        Severity::Medium,
        now - 2.0,
        format!("{exe} browser-cookies"),
    );
    read.summary = format!("{exe} (outside the watched apps) opened protected `browser-cookies`");
    read.evidence = [
        ("exe".to_string(), json(exe.clone())),
        ("protected".to_string(), json("browser-cookies")),
    ]
    .into();
    let mut precursor = finding(
        "CW-INFOSTEALER-PRECURSOR",
        Severity::Critical,
        now,
        format!("{exe} {destination}"),
    );
    precursor.summary = format!(
        "{exe} opened protected `browser-cookies` and connected to {destination} 2 s later"
    );
    precursor.evidence = [
        ("exe".to_string(), json(exe.clone())),
        ("protected".to_string(), json("browser-cookies")),
        ("destination".to_string(), json(destination)),
        ("seconds_after_read".to_string(), json(2.0)),
    ]
    .into();
    Ok(vec![
        Body::Finding(read),
        Body::Finding(precursor),
        window(
            "protected-reader",
            now,
            secs,
            vec![dest(
                &sock.ip().to_string(),
                u32::from(sock.port()),
                protocol,
                "",
                24_576,
            )],
        ),
    ])
}

/// Sends on the clinic's session, opening it (again) first if need be: a few tries.
async fn send(
    s: &mut Option<Session>,
    a: &Agent,
    port: u16,
    bodies: Vec<Body>,
) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        let r = async {
            if s.is_none() {
                *s = Some(Session::open(a, port, hello(a)).await?);
            }
            match s.as_mut() {
                Some(live) => live.send(bodies.clone()).await,
                None => bail!("no session"),
            }
        }
        .await;
        match r {
            Ok(()) => return Ok(()),
            Err(e) if tries < 4 => {
                *s = None;
                tries += 1;
                eprintln!("demo-fleet: {}/{}: {e:#}; again", a.clinic, a.host);
                tokio::time::sleep(Duration::from_millis(300 * tries)).await;
            }
            Err(e) => return Err(e.context(format!("{}/{}", a.clinic, a.host))),
        }
    }
}

/// One clinic until the fleet stops; `ready` and `reported` get its index.
async fn clinic(
    c: usize,
    a: Arc<Agent>,
    o: Arc<DemoFleetOptions>,
    mut phase: watch::Receiver<Phase>,
    ready: mpsc::UnboundedSender<usize>,
    reported: mpsc::UnboundedSender<usize>,
) -> anyhow::Result<()> {
    let secs = o.every.as_secs_f64();
    let mut s = None;
    send(&mut s, &a, o.port, vec![normal(c, wall(), secs)]).await?;
    let _ = ready.send(c);
    let mut tick = tokio::time::interval(o.every);
    tick.tick().await;
    let mut done = false;
    loop {
        tokio::select! {
            _ = tick.tick() => send(&mut s, &a, o.port, vec![normal(c, wall(), secs)]).await?,
            changed = phase.changed() => {
                let now = *phase.borrow_and_update();
                if changed.is_err() || now == Phase::Stop {
                    return Ok(());
                }
                if now == Phase::Campaign && c < o.campaign && !done {
                    // Spread over a few seconds, as the campaign reaches one clinic after
                    // another.
                    tokio::time::sleep(Duration::from_millis(250 * c as u64)).await;
                    send(&mut s, &a, o.port, stolen(c, wall(), secs, &o.destination)?).await?;
                    done = true;
                    let _ = reported.send(c);
                }
            }
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

pub fn run(o: DemoFleetOptions) -> anyhow::Result<()> {
    let read = |f: &str| {
        let p = o.ca_dir.join(f);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read `{}`", p.display()))
    };
    let ca = pki::Pem {
        cert: read("ca.pem")?,
        key: read("ca.key")?,
    };
    stolen(0, 0.0, 1.0, &o.destination)?;
    let agents = agents_with_certificates(&ca, o.clinics, 1)?;
    let o = Arc::new(o);
    let (phase_tx, phase) = watch::channel(Phase::Normal);
    // Stdin: `campaign` starts it; its end stops the fleet (the demo went away).
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line.trim() == "campaign" {
                let _ = phase_tx.send(Phase::Campaign);
            }
        }
        let _ = phase_tx.send(Phase::Stop);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let (reported_tx, mut reported) = mpsc::unbounded_channel();
        let mut set = tokio::task::JoinSet::new();
        for (c, a) in agents.into_iter().enumerate() {
            set.spawn(clinic(
                c,
                Arc::new(a),
                o.clone(),
                phase.clone(),
                ready_tx.clone(),
                reported_tx.clone(),
            ));
        }
        drop((ready_tx, reported_tx));
        let (mut up, mut hit) = (0, 0);
        loop {
            tokio::select! {
                Some(_) = ready.recv() => {
                    up += 1;
                    if up == o.clinics {
                        say(&format!("ready {up}"));
                    }
                }
                Some(_) = reported.recv() => {
                    hit += 1;
                    if hit == o.campaign.min(o.clinics) {
                        say(&format!("campaign {hit}"));
                    }
                }
                r = set.join_next() => match r {
                    None => return anyhow::Ok(()),
                    Some(r) => r??,
                },
            }
        }
    })
}
