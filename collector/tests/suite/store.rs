//! The same behaviour from both store backends: SQLite always, PostgreSQL on a real server
//! (a private one from the Debian packages; see `support/pg.rs`).

use clinicwatch_testkit::TempDir;

use crate::support::raw_batch as batch;
use clinicwatch_collector::store::{self, HostKey, Ingested, Pruned, Store, MAX_BATCH_RECORDS};
use clinicwatch_proto::v1::{record::Body, Batch, Heartbeat, Hello, Record};

fn host(c: &str) -> HostKey {
    HostKey {
        clinic: c.into(),
        host: "ws1".into(),
    }
}

/// Dedup, resume, findings, heartbeats, retention; `reopen` gives the same store again (a
/// collector restart).
fn conformance(s: Box<dyn Store>, reopen: &dyn Fn() -> Box<dyn Store>) {
    let a = host("clinic-a");
    let hello = Hello {
        epoch: 7,
        hostname: "ws1".into(),
        agent_version: "0.1.0".into(),
        ..Default::default()
    };
    assert_eq!(s.hello(&a, &hello, 1.0).unwrap(), 0);
    let got = s
        .ingest(&a, &batch(7, 1, 30), 2.0, store::TimeWindow::UNBOUNDED)
        .unwrap();
    assert_eq!(
        got,
        Ingested {
            stored: 30,
            duplicates: 0,
            up_to_seq: 30,
            new_seqs: (1..=30).collect(),
            out_of_window: 0,
        }
    );
    // The ack was lost: the agent resends an overlapping batch.
    let again = s
        .ingest(&a, &batch(7, 21, 20), 3.0, store::TimeWindow::UNBOUNDED)
        .unwrap();
    assert_eq!(
        again,
        Ingested {
            stored: 10,
            duplicates: 10,
            up_to_seq: 40,
            new_seqs: (31..=40).collect(),
            out_of_window: 0,
        }
    );
    // Another clinic's host with the same name and seqs is its own.
    let b = host("clinic-b");
    s.hello(&b, &hello, 3.0).unwrap();
    assert_eq!(
        s.ingest(&b, &batch(7, 1, 5), 3.0, store::TimeWindow::UNBOUNDED)
            .unwrap()
            .stored,
        5
    );
    s.heartbeat(
        &a,
        &Heartbeat {
            time: 3.5,
            spooled: 12,
            dropped: 2,
        },
        3.5,
    )
    .unwrap();
    drop(s);
    let s = reopen();
    assert_eq!(s.record_count().unwrap(), 45);
    assert_eq!(
        s.hello(&a, &hello, 4.0).unwrap(),
        40,
        "resume after the stored records"
    );
    let other_epoch = Hello {
        epoch: 8,
        ..hello.clone()
    };
    assert_eq!(
        s.hello(&a, &other_epoch, 4.0).unwrap(),
        0,
        "a new epoch starts from 0"
    );
    let f = s.findings_since(0.0).unwrap();
    assert_eq!(f.iter().filter(|f| f.clinic == "clinic-a").count(), 13);
    assert_eq!(f.iter().filter(|f| f.clinic == "clinic-b").count(), 1);
    assert!(
        f.windows(2).all(|w| w[0].time <= w[1].time),
        "ordered by time"
    );
    let hosts = s.hosts().unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(
        (hosts[0].clinic.as_str(), hosts[0].spooled, hosts[0].dropped),
        ("clinic-a", 12, 2)
    );
    assert_eq!(hosts[0].agent_version, "0.1.0");
    // Retention: summaries received before 10 go, findings (time < 0) stay.
    assert_eq!(
        s.prune(10.0, 0.0).unwrap(),
        Pruned {
            records: 45 - 14,
            findings: 0
        }
    );
    // Findings received before 2.5 go, from both tables: by when the collector received
    // them, not by the agent's clock (these findings say they were raised in 1970).
    let p = s.prune(0.0, 2.5).unwrap();
    assert_eq!(p.findings, 10, "clinic-a's first batch");
    assert_eq!(s.findings_since(0.0).unwrap().len(), 14 - 10);
    // A batch with gaps (summaries the agent's full spool dropped) is fine.
    let mut gaps = batch(7, 41, 6);
    gaps.records.retain(|r| r.seq % 2 == 1);
    assert_eq!(
        s.ingest(&a, &gaps, 5.0, store::TimeWindow::UNBOUNDED)
            .unwrap()
            .up_to_seq,
        45
    );

    // Malformed batches are refused whole.
    let mut back = batch(1, 1, 5);
    back.records[3].seq = 2;
    let mut wrong_first = batch(1, 1, 5);
    wrong_first.first_seq = 2;
    let mut no_body = batch(1, 1, 5);
    no_body.records[2].body = None;
    let mut huge_text = batch(1, 1, 3);
    if let Some(clinicwatch_proto::v1::record::Body::Summary(w)) = &mut huge_text.records[0].body {
        w.app = "x".repeat(5000);
    }
    // A NUL byte (PostgreSQL's text cannot hold one) is refused by name, never a storage
    // failure that the agent would retry for ever.
    let mut nul = batch(1, 1, 3);
    if let Some(clinicwatch_proto::v1::record::Body::Finding(f)) = &mut nul.records[2].body {
        f.evidence.insert("exe".into(), "/tmp/a\0b".into());
    }
    let before = s.record_count().unwrap();
    for (b, why) in [
        (nul, "NUL byte"),
        (back, "must increase"),
        (wrong_first, "first_seq"),
        (no_body, "no body"),
        (huge_text, "(at most 4096)"),
        (Batch::default(), "no records"),
        (batch(1, 1, MAX_BATCH_RECORDS as u64 + 1), "at most"),
    ] {
        let e = s
            .ingest(&a, &b, 1.0, store::TimeWindow::UNBOUNDED)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{e}");
    }
    assert_eq!(
        s.record_count().unwrap(),
        before,
        "nothing of a bad batch is stored"
    );
}

/// A summary from `clinic` at time `t` with one destination.
fn contact(s: &dyn Store, clinic: &str, seq: u64, ip: &str, t: f64) {
    let b = Batch {
        epoch: 1,
        first_seq: seq,
        records: vec![Record {
            seq,
            body: Some(Body::Summary(crate::support::contact_summary(
                "pm-client",
                ip,
                "",
                0,
                t,
            ))),
        }],
    };
    assert_eq!(
        s.ingest(&host(clinic), &b, t, store::TimeWindow::UNBOUNDED)
            .unwrap()
            .stored,
        1
    );
}

fn clinics_ever(s: &dyn Store, ip: &str) -> (u64, bool) {
    let st = s.indicator_stats(&[("dest_ip".into(), ip.into())]).unwrap();
    (st[0].clinics, st[0].clinics_estimated)
}

/// Fleet prevalence: exact up to `EXACT_CLINICS`, then a sketch; `stores` take turns (one
/// store, or several collectors on one database).
fn prevalence(stores: &mut [Box<dyn Store>], ip: &str) {
    let exact = store::prevalence::EXACT_CLINICS as u64;
    let n = stores.len();
    for i in 0..exact {
        contact(
            stores[i as usize % n].as_ref(),
            &format!("pc-{ip}-{i}"),
            1,
            ip,
            100.0,
        );
    }
    contact(stores[0].as_ref(), &format!("pc-{ip}-0"), 2, ip, 150.0);
    assert_eq!(
        clinics_ever(stores[0].as_ref(), ip),
        (exact, false),
        "exact"
    );
    for i in exact..1_000 {
        contact(
            stores[i as usize % n].as_ref(),
            &format!("pc-{ip}-{i}"),
            1,
            ip,
            200.0,
        );
    }
    // Clinics seen again, through either collector, are not counted again.
    for i in 0..300 {
        contact(
            stores[(i + 1) % n].as_ref(),
            &format!("pc-{ip}-{i}"),
            3,
            ip,
            300.0,
        );
    }
    for s in stores.iter_mut() {
        let (clinics, estimated) = clinics_ever(s.as_ref(), ip);
        assert!(
            estimated && (970..=1_030).contains(&clinics),
            "1,000 clinics estimated as {clinics} (estimated: {estimated})"
        );
    }
    let st = stores[0]
        .indicator_stats(&[("dest_ip".into(), ip.into())])
        .unwrap();
    assert_eq!((st[0].first_seen, st[0].last_seen), (100.0, 300.0));
}

#[test]
fn sqlite_store() {
    let dir = TempDir::new("store-sqlite");
    let path = dir.join("collector.db");
    let open = || store::open(&path.display().to_string()).unwrap();
    conformance(open(), &open);
    prevalence(&mut [open()], "203.0.113.9");
}

#[test]
fn postgres_store() {
    let Some(url) = crate::support::pg::database("postgres_store") else {
        return;
    };
    let open = || store::open(&url).unwrap();
    conformance(open(), &open);
    // Two collectors on one database: a batch stored through one is a duplicate through the
    // other, and either tells the agent where to resume.
    let (c1, c2) = (open(), open());
    let h = host("clinic-z");
    let hello = Hello {
        epoch: 1,
        ..Default::default()
    };
    c1.hello(&h, &hello, 1.0).unwrap();
    c1.ingest(&h, &batch(1, 1, 10), 1.0, store::TimeWindow::UNBOUNDED)
        .unwrap();
    assert_eq!(c2.hello(&h, &hello, 2.0).unwrap(), 10);
    assert_eq!(
        c2.ingest(&h, &batch(1, 5, 10), 2.0, store::TimeWindow::UNBOUNDED)
            .unwrap()
            .duplicates,
        6
    );
    prevalence(&mut [open()], "203.0.113.9");
    // Three collectors share the count; each caches sketches of its own.
    prevalence(&mut [open(), open(), open()], "203.0.113.10");
}

#[test]
fn postgres_errors_name_the_server_not_the_password() {
    let e = match store::open("postgres://cw:s3cret@127.0.0.1:1/cw") {
        Ok(_) => panic!("connected to port 1"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("127.0.0.1:1") && !e.contains("s3cret"), "{e}");
}

fn open_err(spec: &str) -> String {
    match store::open(spec) {
        Ok(_) => panic!("`{spec}` opened"),
        Err(e) => e.to_string(),
    }
}

/// The store reaches PostgreSQL over TLS `verify-full`: the right CA and name connect; a
/// name the certificate does not carry, another CA, or plaintext (which this server's
/// `pg_hba.conf` refuses over TCP) do not, and each says why.
#[test]
fn postgres_tls_is_verified_and_required() {
    let Some((db, server)) =
        crate::support::pg::new_database("postgres_tls_is_verified_and_required")
    else {
        return;
    };
    store::open(&server.url("localhost", &db))
        .unwrap()
        .ping()
        .unwrap();
    let e = open_err(&server.url("127.0.0.1", &db));
    assert!(e.contains("certificate") && e.contains("127.0.0.1"), "{e}");
    let dir = TempDir::new("pg-other-ca");
    let other = dir.join("other-ca.pem");
    let ca = clinicwatch_collector::auth::pki::new_ca("another CA").unwrap();
    std::fs::write(&other, ca.cert).unwrap();
    let e = open_err(&format!(
        "postgres://cw@localhost:{}/{db}?sslrootcert={}",
        server.port,
        other.display()
    ));
    assert!(e.contains("certificate"), "{e}");
    let e = open_err(&format!(
        "postgres://cw@localhost:{}/{db}?sslmode=disable",
        server.port
    ));
    assert!(
        e.contains("no encryption"),
        "plaintext refused by the server: {e}"
    );
}

/// Streams of different hosts commit in parallel on PostgreSQL: while another session
/// holds host A's row (so A's batch waits at its last statement), host B's batch commits.
/// One connection behind a lock would make B wait behind A.
#[test]
fn postgres_commits_the_batches_of_different_hosts_in_parallel() {
    let Some((db, server)) = crate::support::pg::new_database("postgres_commits_in_parallel")
    else {
        return;
    };
    let st: std::sync::Arc<dyn Store> =
        std::sync::Arc::from(store::open(&server.url("localhost", &db)).unwrap());
    let (a, b) = (host("clinic-a"), host("clinic-b"));
    let hello = Hello {
        epoch: 1,
        ..Default::default()
    };
    st.hello(&a, &hello, 1.0).unwrap();
    st.hello(&b, &hello, 1.0).unwrap();
    let mut other = crate::support::pg::admin_client(&server, &db);
    let mut holding = other.transaction().unwrap();
    holding
        .execute(
            "SELECT 1 FROM hosts WHERE clinic = 'clinic-a' FOR UPDATE",
            &[],
        )
        .unwrap();
    let st_a = st.clone();
    let waiting = std::thread::spawn(move || {
        st_a.ingest(&a, &batch(1, 1, 10), 2.0, store::TimeWindow::UNBOUNDED)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!waiting.is_finished(), "A's batch waits on its row");
    let got = st
        .ingest(&b, &batch(1, 1, 10), 2.0, store::TimeWindow::UNBOUNDED)
        .unwrap();
    assert_eq!(got.stored, 10);
    assert!(!waiting.is_finished(), "B committed while A still waited");
    holding.rollback().unwrap();
    assert_eq!(waiting.join().unwrap().unwrap().stored, 10);
    assert_eq!(st.record_count().unwrap(), 20);
}

/// What a 0.1 database holds before migrations existed.
const OLD_ROWS: &str = "
INSERT INTO hosts (clinic, host, hostname, agent_version, kernel, epoch, last_seen)
  VALUES ('clinic-old', 'ws1', 'ws1', '0.1.0', '6.1', 3, 100);
INSERT INTO records (clinic, host, epoch, seq, kind, received, body)
  VALUES ('clinic-old', 'ws1', 3, 41, 'health', 100, 'x');
INSERT INTO tokens (id, clinic, host, expires, uses_left, revoked, created)
  VALUES ('t1', 'clinic-old', '', 1e12, 2, FALSE, 50);
INSERT INTO incidents (rule, key, state, severity, title, first_seen, last_seen, clinics,
  hosts, evidence, created, updated)
  VALUES ('CW-FLEET-X', 'k', 'new', 'high', 'old one', 1, 2, '[\"clinic-old\"]',
  '[\"clinic-old/ws1\"]', '{}', 3, 4);
";

/// The database as a 0.1 collector left it still reads, and takes new batches, once the
/// store's migrations ran on it; a second open applies nothing.
fn upgraded(st: &dyn Store) {
    let old = HostKey {
        clinic: "clinic-old".into(),
        host: "ws1".into(),
    };
    assert_eq!(st.stored_up_to(&old, 3).unwrap(), 41);
    assert_eq!(st.tokens().unwrap()[0].uses_left, 2);
    assert_eq!(st.incidents(None).unwrap()[0].title, "old one");
    assert_eq!(st.incidents(None).unwrap()[0].clinics, ["clinic-old"]);
    let b = batch(3, 42, 5);
    assert_eq!(
        st.ingest(&old, &b, 200.0, store::TimeWindow::UNBOUNDED)
            .unwrap()
            .stored,
        5
    );
    assert!(st.use_token("t1", "ws1", 60.0).unwrap().is_ok());
    // Enrollments (a column 0.1 added late) read and write.
    assert_eq!(st.enrollment(&old).unwrap(), None);
    let e = store::Enrollment {
        key_sha256: "k1".into(),
        pending_key_sha256: "k2".into(),
        updated: 5.0,
        ..Default::default()
    };
    st.set_enrollment(&old, &e).unwrap();
    assert_eq!(st.enrollment(&old).unwrap(), Some(e));
}

#[test]
fn sqlite_store_upgrades_a_database_of_the_0_1_schema() {
    let dir = TempDir::new("store-upgrade");
    let path = dir.join("collector.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(include_str!("fixtures/schema-0.1-sqlite.sql"))
        .unwrap();
    db.execute_batch(OLD_ROWS).unwrap();
    drop(db);
    let st = store::open(&path.display().to_string()).unwrap();
    upgraded(st.as_ref());
    drop(st);
    let db = rusqlite::Connection::open(&path).unwrap();
    let versions: i64 = db
        .query_row("SELECT COUNT(*) FROM refinery_schema_history", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(versions, 1);
    store::open(&path.display().to_string()).unwrap();
}

#[test]
fn postgres_store_upgrades_a_database_of_the_0_1_schema() {
    let Some((db, server)) = crate::support::pg::new_database("postgres_store_upgrades") else {
        return;
    };
    crate::support::pg::admin(
        &server,
        &db,
        include_str!("fixtures/schema-0.1-postgres.sql"),
    )
    .unwrap();
    crate::support::pg::admin(&server, &db, OLD_ROWS).unwrap();
    let url = server.url("localhost", &db);
    upgraded(store::open(&url).unwrap().as_ref());
    store::open(&url).unwrap();
    let mut c = crate::support::pg::admin_client(&server, &db);
    let versions: i64 = c
        .query_one("SELECT COUNT(*) FROM refinery_schema_history", &[])
        .unwrap()
        .get(0);
    assert_eq!(versions, 1);
}
