//! `cw-ingest-bench fleet` (`cargo xtask bench fleet`): a simulated fleet through the real
//! collector (child process, SQLite, mutual TLS, a certificate per agent).
//!
//! 1. **A normal day**: every agent delivers a day of 10-minute window summaries (the
//!    vendor, whose CDN gains a new edge at noon; a clinic-local server; now and then a
//!    destination of that clinic alone; a few findings: new destinations, an isolated
//!    surge), `concurrency` agents at a time, as agents do after a night offline.
//! 2. **False positives**: correlation passes over the day every 2 hours (event time).
//! 3. **A campaign**: `campaign` clinics start, staggered over `campaign_hours` of simulated
//!    time compressed `accel` times, sending to a new destination with a surge finding at
//!    night. Measured: time from the 5th clinic's ack to the incident at the collector (its
//!    own passes, every 5 s).
//!
//! Reported in one run: records per second sustained, collector CPU and peak RSS, the
//! false-positive incidents, and the time to the incident.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clinicwatch_collector::{
    correlate::{rules, Engine},
    store,
};
use clinicwatch_proto::v1::{record::Body, Destination, Finding, WindowSummary};

use super::load::{
    agents_with_certificates, bench_root, cpu_of_children, deliver, start_server_with,
};
use clinicwatch_collector::calls::now as wall;

pub struct FleetOptions {
    pub clinics: usize,
    pub agents_per_clinic: usize,
    pub campaign: usize,
    pub campaign_hours: f64,
    pub accel: f64,
    pub concurrency: usize,
}

const WINDOW: f64 = 600.0;
const VENDOR: &str = "vendor.example";

fn summary(app: &str, end: f64, dests: Vec<Destination>) -> Body {
    let hour = ((end / 3600.0) as u64 % 24) as u32;
    Body::Summary(WindowSummary {
        app: app.into(),
        start: end - WINDOW,
        end,
        hour_of_week: hour,
        in_practice_hours: (7..20).contains(&hour),
        destinations: dests,
        processes: 2,
        ..Default::default()
    })
}

fn dest(ip: String, name: &str, sent: u64) -> Destination {
    Destination {
        ip,
        port: 443,
        protocol: "tcp".into(),
        name: name.into(),
        bytes_sent: sent,
        bytes_recv: sent * 8,
        connects: 3,
    }
}

/// Agent `a` of clinic `c`: its day of windows ending at `day_end`.
fn day(c: usize, a: usize, day_end: f64) -> Vec<Body> {
    let mut out = Vec::new();
    let start = day_end - 86_400.0;
    let mut end = start + WINDOW;
    let mut n = 0;
    while end <= day_end {
        let hour = ((end - start) / 3600.0) as usize;
        // The vendor: api.vendor.example on edge 1-4, and from noon a new edge (.9).
        let edge = if hour >= 12 && (c + a + n).is_multiple_of(2) {
            9
        } else {
            1 + (c + n) % 4
        };
        let mut d = vec![
            dest(format!("198.51.100.{edge}"), "api.vendor.example", 20_000),
            dest(
                format!("10.{}.{}.5", c / 250, c % 250),
                "pm-server.lan",
                200_000,
            ),
        ];
        // Now and then a destination of this clinic alone.
        if (c * 7 + n).is_multiple_of(97) {
            d.push(dest(format!("198.18.{}.{}", c / 250, c % 250), "", 5_000));
        }
        out.push(summary("pm-client", end, d));
        // A few findings: a new destination here and there, an isolated surge.
        if (c * 13 + a * 5 + n).is_multiple_of(2000) {
            out.push(Body::Finding(Finding {
                rule: "CW-NEW-DESTINATION".into(),
                severity: 3,
                app: "pm-client".into(),
                time: end,
                subject: format!("198.18.{}.{}:443", c / 250, c % 250),
                summary: "new".into(),
                ..Default::default()
            }));
        }
        if a == 0 && (c * 31 + n).is_multiple_of(5000) {
            out.push(Body::Finding(Finding {
                rule: "CW-EGRESS-SURGE".into(),
                severity: 4,
                app: "pm-client".into(),
                time: end,
                subject: "api.vendor.example".into(),
                summary: "surge".into(),
                ..Default::default()
            }));
        }
        end += WINDOW;
        n += 1;
    }
    out
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn run(o: &FleetOptions) -> anyhow::Result<()> {
    let (root, ca) = bench_root("cw-fleet")?;
    let t = Instant::now();
    let agents =
        agents_with_certificates(&ca, o.clinics * o.agents_per_clinic, o.agents_per_clinic)?;
    eprintln!(
        "fleet: {} clinics, {} agents, certificates in {:.1?}",
        o.clinics,
        agents.len(),
        t.elapsed()
    );
    let agents = Arc::new(agents);
    // The simulated agents deliver and disconnect, where real ones stay connected and send
    // heartbeats: the silence rule would take the delivery order for sensors going quiet.
    let rules = root.join("fleet-rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"CW-FLEET-SENSORS-SILENT\"\nenabled = false\n",
    )?;
    let config = format!(
        "[correlation]\nevery_secs = 5\nvendor_domains = [\"{VENDOR}\"]\nrules_file = \"{}\"\n[retention]\nsummaries_days = 30\n",
        rules.display()
    );
    let srv = start_server_with(&root, "collector", true, &config, None)?;
    let (port, pid, db) = (srv.port, srv.child.id(), srv.dir.join("collector.db"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let day_end = wall();

    // 1. The normal day, `concurrency` agents at a time.
    let started = Instant::now();
    let records: u64 = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(o.concurrency));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..agents.len() {
            let (agents, sem) = (agents.clone(), sem.clone());
            let per = o.agents_per_clinic;
            set.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let a = &agents[i];
                let bodies = day(i / per, i % per, day_end);
                let mut tries = 0;
                loop {
                    match deliver(a, port, bodies.clone(), 2000).await {
                        Ok(n) => return anyhow::Ok(n),
                        Err(e) if tries < 5 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                            let _ = e;
                        }
                        Err(e) => return Err(e),
                    }
                }
            });
        }
        let mut total = 0;
        while let Some(r) = set.join_next().await {
            total += r??;
        }
        anyhow::Ok(total)
    })?;
    let day_secs = started.elapsed().as_secs_f64();
    eprintln!("fleet: day delivered: {records} records in {day_secs:.1} s");

    // 2. False positives: passes over the day, every 30 minutes of event time.
    let engine = Engine {
        rules: rules::load(&rules.display().to_string())?,
        lateness_secs: 7200.0,
        vendor_domains: vec![VENDOR.into()],
    };
    let st = store::open(&db.display().to_string())?;
    let t = Instant::now();
    // Every 2 hours: each pass looks back 1 hour (the shortest destination rule) plus
    // 2 hours of lateness, so together they cover the whole day.
    let mut at = day_end - 86_400.0 + 7200.0;
    let mut passes = 0;
    while at <= day_end + 1.0 {
        engine.pass(st.as_ref(), at)?;
        at += 7200.0;
        passes += 1;
    }
    let fp = st.incidents(None)?;
    let pass_secs = t.elapsed().as_secs_f64() / passes as f64;
    eprintln!(
        "fleet: {passes} passes over the day, {} incidents",
        fp.len()
    );

    // 3. The campaign, in (compressed) real time; the collector's own passes find it.
    let step = o.campaign_hours * 3600.0 / o.campaign as f64 / o.accel;
    let campaign_start = Instant::now();
    let fifth_acked: f64 = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for k in 0..o.campaign {
            let agents = agents.clone();
            // Spread over the fleet, each clinic once.
            let clinic = k * o.clinics / o.campaign;
            let idx = clinic * o.agents_per_clinic;
            set.spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(step * k as f64)).await;
                let now = wall();
                let bodies = vec![
                    summary(
                        "pm-client",
                        now,
                        vec![dest("203.0.113.66".into(), "sync.exfil.example", 40 << 20)],
                    ),
                    Body::Finding(Finding {
                        rule: "CW-EGRESS-SURGE".into(),
                        severity: 4,
                        app: "pm-client".into(),
                        time: now,
                        subject: "203.0.113.66:443".into(),
                        summary: "40 MiB to a new destination".into(),
                        evidence: [("in_practice_hours".to_string(), "false".to_string())].into(),
                    }),
                ];
                // A second session of this agent: its epoch goes on after the day's records.
                deliver(&agents[idx], port, bodies, 2000).await?;
                anyhow::Ok((k, wall()))
            });
        }
        let mut acks = Vec::new();
        while let Some(r) = set.join_next().await {
            acks.push(r??);
        }
        acks.sort_by_key(|(k, _)| *k);
        anyhow::Ok(acks.get(4).map_or(0.0, |(_, t)| *t))
    })?;
    let campaign_secs = campaign_start.elapsed().as_secs_f64();
    // The incident, as the collector's passes write it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (incident_at, incidents) = loop {
        let all = st.incidents(None)?;
        let found: Vec<_> = all
            .iter()
            .filter(|i| i.key == "dest_name:sync.exfil.example" || i.key == "dest_ip:203.0.113.66")
            .map(|i| i.created)
            .collect();
        if let Some(t) = found.iter().copied().reduce(f64::min) {
            break (t, all);
        }
        anyhow::ensure!(Instant::now() < deadline, "no incident for the campaign");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Let the passes see the whole campaign (up to a minute).
    let deadline = Instant::now() + Duration::from_secs(60);
    let incidents_after = loop {
        let all = st.incidents(None)?;
        let seen = all
            .iter()
            .filter(|i| i.key == "dest_name:sync.exfil.example")
            .map(|i| i.clinics.len())
            .max()
            .unwrap_or(0);
        if seen >= o.campaign || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let rss = peak_rss_kib(pid);
    let before = cpu_of_children();
    drop(st);
    let mut child = srv.child;
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let cpu = cpu_of_children() - before;
    let db_mib = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64;
    let _ = incidents;

    println!("\nfleet: {} clinics, {} agents, through the real collector (mutual TLS, SQLite, correlation every 5 s; the silence rule off: simulated agents do not stay connected)", o.clinics, agents.len());
    println!(
        "normal day: {records} records (10-minute windows, findings) in {day_secs:.1} s = {:.0} records/s sustained, {} agents at a time",
        records as f64 / day_secs,
        o.concurrency
    );
    println!(
        "false positives: {} incidents over the normal day ({passes} passes, every 2 h of event time, {:.2} s per pass)",
        fp.len(),
        pass_secs
    );
    for i in &fp {
        println!(
            "  false positive: #{} {} {} ({} clinics)",
            i.id,
            i.rule,
            i.key,
            i.clinics.len()
        );
    }
    println!(
        "campaign: {} clinics over {:.1} h of event time compressed {}x ({campaign_secs:.0} s); incident {:.1} s after the 5th clinic's ack",
        o.campaign,
        o.campaign_hours,
        o.accel,
        incident_at - fifth_acked
    );
    for i in incidents_after
        .iter()
        .filter(|i| !fp.iter().any(|f| f.id == i.id))
    {
        println!(
            "  incident #{} {} [{}] {}: {} clinics",
            i.id,
            i.rule,
            i.severity,
            i.key,
            i.clinics.len()
        );
    }
    println!(
        "collector: {:.1} s CPU over the run, peak RSS {:.0} MiB, database {db_mib:.0} MiB",
        cpu.as_secs_f64(),
        rss as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&root).context("cleanup");
    Ok(())
}
