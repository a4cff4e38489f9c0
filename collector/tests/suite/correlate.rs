//! Correlation across clinics, on both stores: each shipped rule opens one incident on its
//! campaign and none on the near misses; passes are idempotent (updated, never doubled);
//! late data within the lateness is still correlated; acknowledged incidents keep their
//! state, closed ones make way for a new one; on one PostgreSQL only one collector leads.

use clinicwatch_testkit::TempDir;

use clinicwatch_collector::{
    correlate::{rules, Engine},
    store::{self, HostKey, Incident, Store},
};
use clinicwatch_proto::v1::{record::Body, Batch, ChildCount, Finding, Hello, Record};

/// Now, for the scenarios: a fixed time (2026-11-18 11:06 UTC).
const NOW: f64 = 1_795_000_000.0;

struct Fleet {
    st: Box<dyn Store>,
    seq: std::collections::HashMap<HostKey, u64>,
}

impl Fleet {
    fn new(st: Box<dyn Store>) -> Fleet {
        Fleet {
            st,
            seq: Default::default(),
        }
    }

    fn send(&mut self, clinic: &str, host: &str, body: Body, received: f64) {
        let key = HostKey {
            clinic: clinic.into(),
            host: host.into(),
        };
        let seq = self.seq.entry(key.clone()).or_insert(0);
        if *seq == 0 {
            self.st
                .hello(
                    &key,
                    &Hello {
                        epoch: 1,
                        ..Default::default()
                    },
                    received,
                )
                .unwrap();
        }
        *seq += 1;
        self.st
            .ingest(
                &key,
                &Batch {
                    epoch: 1,
                    first_seq: *seq,
                    records: vec![Record {
                        seq: *seq,
                        body: Some(body),
                    }],
                },
                received,
                clinicwatch_collector::config::LimitsConfig::default().window(received),
            )
            .unwrap();
    }

    /// The PM app's window ending at `t`, with a connection to `ip` (`name`).
    fn contact(&mut self, clinic: &str, app: &str, ip: &str, name: &str, t: f64) {
        let mut w = crate::support::contact_summary(app, ip, name, 1000, t);
        w.children = vec![ChildCount {
            exe: "/usr/bin/pm-helper".into(),
            count: 1,
        }];
        self.send(clinic, "ws1", Body::Summary(w), t);
    }

    fn finding(&mut self, clinic: &str, rule: &str, t: f64, evidence: &[(&str, &str)]) {
        self.finding_on(clinic, "ws1", rule, t, evidence);
    }

    fn finding_on(
        &mut self,
        clinic: &str,
        host: &str,
        rule: &str,
        t: f64,
        evidence: &[(&str, &str)],
    ) {
        let body = Body::Finding(Finding {
            rule: rule.into(),
            severity: 4,
            app: "pm-client".into(),
            time: t,
            subject: "s".into(),
            summary: "x".into(),
            evidence: evidence
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::to_string(v).unwrap()))
                .collect(),
        });
        self.send(clinic, host, body, t);
    }
}

/// One host cannot switch fleet detection off: a summary backdated to 1970 (outside the
/// plausible window) or by eight days (inside it) does not make a destination old, because
/// fleet-wide first seen is when the collector heard of it; and a host claiming that an IP
/// is the vendor's only hides that IP in its own clinic.
#[test]
fn one_host_cannot_switch_off_fleet_detection() {
    let mut f = Fleet::new(store::open(":memory:").unwrap());
    let heard = NOW - 3600.0;
    for t in [0.0, NOW - 8.0 * 86_400.0] {
        let w = crate::support::contact_summary("pm-client", "203.0.113.66", "", 10, t);
        f.send("mal", "ws1", Body::Summary(w), heard);
    }
    let w = crate::support::contact_summary(
        "pm-client",
        "203.0.113.99",
        "api.vendor.example",
        10,
        heard,
    );
    f.send("mal", "ws1", Body::Summary(w), heard);
    for c in 0..6 {
        for ip in ["203.0.113.66", "203.0.113.99"] {
            f.contact(&format!("c{c}"), "pm-client", ip, "", NOW - 600.0);
        }
    }
    engine().pass(f.st.as_ref(), NOW).unwrap();
    let keys: Vec<String> = open(f.st.as_ref(), "CW-FLEET-RARE-DESTINATION")
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(
        keys,
        vec!["dest_ip:203.0.113.66", "dest_ip:203.0.113.99"],
        "both destinations are new to the fleet and shared by six clinics"
    );
}

fn engine() -> Engine {
    Engine {
        rules: rules::load("").unwrap(),
        lateness_secs: 7200.0,
        vendor_domains: vec!["vendor.example".into()],
    }
}

fn open(st: &dyn Store, rule: &str) -> Vec<Incident> {
    let mut v: Vec<Incident> = st
        .incidents(None)
        .unwrap()
        .into_iter()
        .filter(|i| i.rule == rule)
        .collect();
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v
}

fn scenarios(st: Box<dyn Store>) {
    let mut f = Fleet::new(st);
    let e = engine();
    // The vendor, contacted by 40 clinics for a month: known, never an incident.
    for c in 0..40 {
        f.contact(
            &format!("c{c:02}"),
            "pm-client",
            "198.51.100.20",
            "api.vendor.example",
            NOW - 30.0 * 86_400.0,
        );
        f.contact(
            &format!("c{c:02}"),
            "pm-client",
            "198.51.100.20",
            "api.vendor.example",
            NOW - 100.0,
        );
    }
    // A new edge of the vendor's CDN, new today, in 10 clinics: the vendor, not a campaign.
    for c in 0..10 {
        f.contact(
            &format!("c{c:02}"),
            "pm-client",
            "198.51.100.99",
            "cdn2.vendor.example",
            NOW - 150.0,
        );
    }
    // Every clinic's own server under the same local name: private, not shared.
    for c in 0..10 {
        f.contact(
            &format!("c{c:02}"),
            "pm-client",
            &format!("10.0.{c}.5"),
            "pm-server.lan",
            NOW - 140.0,
        );
    }
    // A new destination: 6 clinics within 40 minutes.
    for c in 0..6 {
        f.contact(
            &format!("c{c:02}"),
            "pm-client",
            "203.0.113.9",
            "exfil.example",
            NOW - 3000.0 + c as f64 * 400.0,
        );
    }
    // Near misses: 4 clinics at once; 5 clinics spread over 4 hours.
    for c in 10..14 {
        f.contact(
            &format!("c{c:02}"),
            "pm-client",
            "203.0.113.50",
            "",
            NOW - 1000.0,
        );
    }
    for c in 20..25 {
        f.contact(
            &format!("c{c:02}"),
            "pm-client",
            "203.0.113.60",
            "",
            NOW - 3.0 * 3600.0 + (c - 20) as f64 * 3000.0,
        );
    }
    // An infostealer precursor: the same executable in 3 clinics over a day; another in 2.
    for (c, t) in [("c30", 20_000.0), ("c31", 9_000.0), ("c32", 100.0)] {
        f.finding(
            c,
            "CW-INFOSTEALER-PRECURSOR",
            NOW - t,
            &[
                ("exe", "/tmp/.cache/upd"),
                ("destination", "203.0.113.77:443"),
            ],
        );
    }
    for c in ["c33", "c34"] {
        f.finding(
            c,
            "CW-INFOSTEALER-PRECURSOR",
            NOW - 200.0,
            &[("exe", "/home/u/x"), ("destination", "192.0.2.1:80")],
        );
    }
    // A surge: 10 clinics within 30 minutes, at night (outside practice hours).
    for c in 0..10 {
        f.finding(
            &format!("s{c}"),
            "CW-EGRESS-SURGE",
            NOW - 1500.0 + c as f64 * 60.0,
            &[("in_practice_hours", "false")],
        );
    }
    // The vendor's domain from a process outside the app, in 2 clinics.
    for c in ["c40", "c41"] {
        f.contact(
            c,
            "protected-reader",
            "198.51.100.20",
            "login.vendor.example",
            NOW - 250.0,
        );
    }
    // A shell under the app, then a new destination, on one host: in clinics t0 (ws1) and
    // t1 (ws2, hours later). Near misses: the wrong order (t2); the two on different hosts
    // (t3); more than an hour apart (t4); the shell alone (t5).
    let (shell, new_dest) = ("CW-SUSPICIOUS-CHILD", "CW-NEW-DESTINATION");
    for (clinic, host, rule, t) in [
        ("t0", "ws1", shell, NOW - 30_000.0),
        ("t0", "ws1", new_dest, NOW - 29_000.0),
        ("t1", "ws2", shell, NOW - 5_000.0),
        ("t1", "ws2", new_dest, NOW - 4_000.0),
        ("t2", "ws1", new_dest, NOW - 5_000.0),
        ("t2", "ws1", shell, NOW - 4_000.0),
        ("t3", "ws1", shell, NOW - 5_000.0),
        ("t3", "ws2", new_dest, NOW - 4_000.0),
        ("t4", "ws1", shell, NOW - 9_000.0),
        ("t4", "ws1", new_dest, NOW - 4_000.0),
        ("t5", "ws1", shell, NOW - 4_000.0),
    ] {
        f.finding_on(clinic, host, rule, t, &[]);
    }

    let r = e.pass(f.st.as_ref(), NOW).unwrap();
    assert!(r.led);
    let staged = open(f.st.as_ref(), "CW-FLEET-SHELL-THEN-NEW-DESTINATION");
    assert_eq!(staged.len(), 1, "{staged:#?}");
    assert_eq!(staged[0].clinics, ["t0", "t1"]);
    assert_eq!(staged[0].hosts, ["t0/ws1", "t1/ws2"]);
    assert_eq!(
        staged[0].evidence["sequence"],
        "CW-SUSPICIOUS-CHILD then CW-NEW-DESTINATION"
    );
    assert_eq!(
        staged[0].first_seen,
        NOW - 29_000.0,
        "when t0's sequence completed"
    );
    let rare = open(f.st.as_ref(), "CW-FLEET-RARE-DESTINATION");
    let keys: Vec<&str> = rare.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["dest_ip:203.0.113.9", "dest_name:exfil.example"],
        "{rare:#?}"
    );
    assert_eq!(rare[1].clinics.len(), 6);
    assert_eq!(rare[1].state, "new");
    assert_eq!(rare[1].severity, "critical");
    assert_eq!(rare[1].evidence["clinics_ever"], "6");
    let steal = open(f.st.as_ref(), "CW-FLEET-INFOSTEALER");
    let keys: Vec<&str> = steal.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["destination:203.0.113.77:443", "exe:/tmp/.cache/upd"]
    );
    assert_eq!(steal[1].clinics, ["c30", "c31", "c32"]);
    let surge = open(f.st.as_ref(), "CW-FLEET-SURGE");
    assert_eq!(surge.len(), 1);
    assert_eq!(surge[0].clinics.len(), 10);
    assert_eq!(surge[0].severity, "critical", "outside practice hours");
    let vendor = open(f.st.as_ref(), "CW-FLEET-VENDOR-FROM-OTHER-PROCESS");
    assert_eq!(vendor.len(), 1);
    assert_eq!(vendor[0].key, "dest_name:login.vendor.example");
    let total = f.st.incidents(None).unwrap().len();
    assert_eq!(total, 7, "{:#?}", f.st.incidents(None).unwrap());

    // Idempotent: the same pass again changes nothing.
    let again = e.pass(f.st.as_ref(), NOW).unwrap();
    assert!(
        again.opened.is_empty() && again.updated.is_empty(),
        "{again:?}"
    );

    // Late data: a 5th clinic's window from 30 minutes ago arrives an hour later; the near
    // miss becomes a campaign, still within the lateness.
    f.st.set_incident_state(rare[1].id, "acknowledged", NOW)
        .unwrap();
    f.contact("c14", "pm-client", "203.0.113.50", "", NOW - 1000.0);
    f.contact(
        "c06",
        "pm-client",
        "203.0.113.9",
        "exfil.example",
        NOW - 200.0,
    );
    let later = e.pass(f.st.as_ref(), NOW + 3600.0).unwrap();
    let rare = open(f.st.as_ref(), "CW-FLEET-RARE-DESTINATION");
    let keys: Vec<&str> = rare.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "dest_ip:203.0.113.50",
            "dest_ip:203.0.113.9",
            "dest_name:exfil.example"
        ]
    );
    assert_eq!(later.opened.len(), 1);
    let exfil = &rare[2];
    assert_eq!(
        exfil.clinics.len(),
        7,
        "the 7th clinic joined the open incident"
    );
    assert_eq!(
        exfil.state, "acknowledged",
        "an update keeps the analyst's state"
    );

    // Closed: the next sighting is a new incident.
    f.st.set_incident_state(exfil.id, "closed", NOW).unwrap();
    f.contact(
        "c07",
        "pm-client",
        "203.0.113.9",
        "exfil.example",
        NOW + 3500.0,
    );
    let r = e.pass(f.st.as_ref(), NOW + 3600.0).unwrap();
    assert!(!r.opened.is_empty());
    assert_eq!(
        f.st.incidents(Some("new"))
            .unwrap()
            .iter()
            .filter(|i| i.key == "dest_name:exfil.example")
            .count(),
        1
    );

    // Silence: of 40 active clinics' hosts, 3 stop reporting 6 minutes ago.
    let g = Fleet::new(std::mem::replace(
        &mut f.st,
        store::open(":memory:").unwrap(),
    ));
    let t = NOW + 7200.0;
    for c in 0..40 {
        let key = HostKey {
            clinic: format!("c{c:02}"),
            host: "ws1".into(),
        };
        let last = if c < 3 { t - 360.0 } else { t - 10.0 };
        g.st.heartbeat(&key, &Default::default(), last).unwrap();
    }
    let r = e.pass(g.st.as_ref(), t).unwrap();
    let silent = open(g.st.as_ref(), "CW-FLEET-SENSORS-SILENT");
    assert_eq!(silent.len(), 1, "{r:?}");
    assert_eq!(silent[0].hosts, ["c00/ws1", "c01/ws1", "c02/ws1"]);
}

#[test]
fn sqlite_campaigns_become_incidents() {
    let dir = TempDir::new("correlate-sqlite");
    scenarios(store::open(&dir.join("c.db").display().to_string()).unwrap());
}

#[test]
fn postgres_campaigns_become_incidents_and_one_collector_leads() {
    let Some(url) =
        crate::support::pg::database("postgres_campaigns_become_incidents_and_one_collector_leads")
    else {
        return;
    };
    scenarios(store::open(&url).unwrap());
    // Two collectors: one leads; when its connection ends, the other takes over, and its
    // pass finds the incidents already there.
    let (a, b) = (store::open(&url).unwrap(), store::open(&url).unwrap());
    let e = engine();
    assert!(e.pass(a.as_ref(), NOW + 3600.0).unwrap().led);
    assert!(!e.pass(b.as_ref(), NOW + 3600.0).unwrap().led, "a leads");
    let before = b.incidents(None).unwrap().len();
    drop(a);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = e.pass(b.as_ref(), NOW + 3600.0).unwrap();
    assert!(r.led, "b took over");
    assert!(r.opened.is_empty(), "no incident doubled: {r:?}");
    assert_eq!(b.incidents(None).unwrap().len(), before);
}
