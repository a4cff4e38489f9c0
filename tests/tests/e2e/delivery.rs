//! End-to-end delivery, as root: the agent's findings and summaries reach a real collector
//! over mutual TLS, through an outage (collector down: the agent spools) and an agent
//! restart, each stored exactly once.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use clinicwatch_agent::{Config, Event};
use clinicwatch_collector::store::{self, HostKey, Store};
use clinicwatch_tests::{delivery::*, *};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_cw-workload");

#[test]
fn findings_reach_the_collector_once_through_an_outage_and_a_restart() {
    if !require_root("findings_reach_the_collector_once_through_an_outage_and_a_restart") {
        return;
    }
    let fx = Fixture::new(WORKLOAD, "delivery");
    let pki = host_pki(&fx.dir, "clinic-a", "ws1");
    // A port for the collector, not listening yet.
    let port = free_port();
    let text = format!(
        "[agent]\nsnapshot_interval_secs = 0\nstate_dir = \"{state}\"\n\
         [intel]\nwindow_secs = 2\nlearning_days = 0\npractice_hours = [\"daily 00:00-24:00\"]\n\
         [export]\ncollector = \"https://localhost:{port}\"\nclinic = \"clinic-a\"\nhost = \"ws1\"\n\
         ca_file = \"{dir}/ca.pem\"\ncert_file = \"{dir}/cert.pem\"\nkey_file = \"{dir}/key.pem\"\n\
         [[app]]\nname = \"pm-client\"\nexe = \"{exe}\"\n",
        state = fx.state_dir().display(),
        dir = fx.dir.display(),
        exe = fx.app.display(),
    );
    let cfg = Config::from_toml(&text).unwrap();

    // Collector down: the agent finds (a shell under the app) and spools.
    let (agent, rx) = start_agent(&cfg);
    run(&fx.app, &["shell"]);
    let finding = expect_event(
        &rx,
        Duration::from_secs(10),
        "the shell finding",
        |e| matches!(e, Event::Finding(f) if f.rule == "CW-SUSPICIOUS-CHILD"),
    );
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();
    let findings_of = |rx: &Events| -> Vec<Event> {
        collect(rx, Duration::from_millis(300))
            .into_iter()
            .filter(|e| matches!(e, Event::Finding(_)))
            .collect()
    };
    let mut raised = findings_of(&rx);
    assert!(raised.contains(&finding));

    // Restarted, still without a collector; then the collector comes up.
    let (agent, rx2) = start_agent(&cfg);
    std::thread::sleep(Duration::from_secs(1));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = collector(&rt, port, &pki, &fx.dir.join("collector.db"));
    let store = up.store.clone();
    let stored_findings = || store.findings_since(0.0).unwrap();
    wait_until(
        "the findings at the collector",
        Duration::from_secs(40),
        || stored_findings().len() > raised.len(),
    );
    // Give the exporter time to send anything more (summaries) and resend nothing.
    std::thread::sleep(Duration::from_secs(3));
    agent.stop();
    // The second run raised its own finding: the agent restarted.
    let second = findings_of(&rx2);
    assert!(second
        .iter()
        .any(|e| matches!(e, Event::Finding(f) if f.rule == "CW-AGENT-RESTART")));
    raised.extend(second);
    let got = stored_findings();
    assert_eq!(got.len(), raised.len(), "each finding once: {got:?}");
    assert!(got
        .iter()
        .all(|f| f.clinic == "clinic-a" && f.host == "ws1"));
    assert!(got.iter().any(|f| f.rule == "CW-SUSPICIOUS-CHILD"));
    let records = store.record_count().unwrap();
    assert!(
        records > got.len() as u64,
        "summaries arrived too ({records} records)"
    );

    // A third start resends nothing already stored.
    let (agent, rx3) = start_agent(&cfg);
    let expected = raised.len() + 1; // its own restart finding
    wait_until("the third run's finding", Duration::from_secs(20), || {
        stored_findings().len() >= expected
    });
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();
    // `collect` returns everything the run emitted.
    raised.extend(findings_of(&rx3));
    assert_eq!(
        stored_findings().len(),
        raised.len(),
        "no duplicate after a restart"
    );
}

/// A built binary of the workspace, beside this test's folder (`cargo xtask test` builds all).
fn binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let p = me.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        p.is_file(),
        "`{}` is missing: build the workspace's binaries first (`cargo xtask build`)",
        p.display()
    );
    p
}

/// A child process killed (SIGKILL) if the test ends early.
struct Proc(Child);

impl Proc {
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.0.wait();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.0.try_wait() {
                return st;
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One value of the collector's Prometheus page.
fn metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return -1.0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn agent_kill_9_mid_stream_and_collector_kill_9_mid_batch_lose_and_duplicate_nothing() {
    let name = "agent_kill_9_mid_stream_and_collector_kill_9_mid_batch_lose_and_duplicate_nothing";
    if !require_root(name) {
        return;
    }
    let fx = Fixture::new(WORKLOAD, "delivery-kill");
    let (port, metrics_port) = (free_port(), free_port());
    // The collector's folder: CA, server certificate, enrollment key, config.
    let cdir = fx.dir.join("collector");
    let collector_bin = binary("clinicwatch-collector");
    output(Command::new(&collector_bin).arg("--dir").arg(&cdir).args([
        "ca",
        "init",
        "--name",
        "localhost",
    ]));
    std::fs::write(
        cdir.join("collector.toml"),
        format!("[server]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .unwrap();
    let token = output(Command::new(&collector_bin).arg("--dir").arg(&cdir).args([
        "enroll-token",
        "--clinic",
        "clinic-k",
    ]));
    let start_collector = || {
        let c = Proc(
            Command::new(&collector_bin)
                .arg("--dir")
                .arg(&cdir)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(fx.dir.join("collector.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_until("the collector's metrics", Duration::from_secs(20), || {
            metric(metrics_port, "clinicwatch_collector_streams_total") >= 0.0
        });
        c
    };
    let collector1 = start_collector();

    // The agent's config has no collector, clinic or CA: it enrolls in one step with the
    // token and the CA's pin, and `enroll` writes them into `[export]`.
    let pin = clinicwatch_collector::auth::pki::cert_sha256(
        &std::fs::read_to_string(cdir.join("ca.pem")).unwrap(),
    )
    .unwrap();
    let cfg_path = fx.dir.join("agent.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[agent]\noutput = \"{dir}/events.jsonl\"\nsnapshot_interval_secs = 1\nstate_dir = \"{state}\"\n\
             [intel]\nwindow_secs = 1\nlearning_days = 0\npractice_hours = [\"daily 00:00-24:00\"]\n\
             [export]\ncert_file = \"{dir}/tls/cert.pem\"\nkey_file = \"{dir}/tls/key.pem\"\n\
             batch_records = 3\nheartbeat_secs = 1\n\
             [[app]]\nname = \"pm-client\"\nexe = \"{exe}\"\n",
            state = fx.state_dir().display(),
            dir = fx.dir.display(),
            exe = fx.app.display(),
        ),
    )
    .unwrap();
    let agent_bin = binary("clinicwatch-agent");
    let said = output(
        Command::new(&agent_bin)
            .arg("--config")
            .arg(&cfg_path)
            .args(["enroll", "--token", token.trim(), "--host", "ws9"])
            .args(["--collector", &format!("https://localhost:{port}")])
            .args(["--ca-sha256", &pin]),
    );
    assert!(said.contains("enrolled clinic-k/ws9"), "{said}");
    let written = clinicwatch_agent::Config::from_file(&cfg_path).unwrap();
    assert_eq!(
        written.export.clinic, "clinic-k",
        "the clinic comes from the certificate"
    );
    assert_eq!(
        written.export.collector,
        format!("https://localhost:{port}")
    );
    assert_eq!(
        std::fs::read_to_string(&written.export.ca_file).unwrap(),
        std::fs::read_to_string(cdir.join("ca.pem"))
            .unwrap()
            .replace("\r\n", "\n"),
        "the pinned CA is the collector's"
    );
    // A wrong pin is refused before any token is sent.
    let wrong = Command::new(&agent_bin)
        .arg("--config")
        .arg(&cfg_path)
        .args([
            "enroll",
            "--force",
            "--token",
            token.trim(),
            "--host",
            "ws9",
        ])
        .args(["--ca-sha256", &"0".repeat(64)])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("presented no certificate with SHA-256"),
        "{err}"
    );
    // Enrolling again without --force is refused before anything is fetched or written.
    let ca_mtime = || {
        std::fs::metadata(&written.export.ca_file)
            .unwrap()
            .modified()
            .unwrap()
    };
    let ca_before = ca_mtime();
    let again = Command::new(&agent_bin)
        .arg("--config")
        .arg(&cfg_path)
        .args(["enroll", "--token", token.trim(), "--ca-sha256", &pin])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("this host is enrolled"), "{err}");
    assert_eq!(ca_before, ca_mtime(), "the CA was left as it was");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(fx.dir.join("tls/key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600, "the key is the host's alone");
    let start_agent = |n: u32| {
        Proc(
            Command::new(&agent_bin)
                .arg("--config")
                .arg(&cfg_path)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(fx.dir.join(format!("agent{n}.log"))).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let accepted = || metric(metrics_port, "clinicwatch_collector_records_accepted_total");
    let data = fx.data_file("records.db", 256 << 10);
    let busy = |secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            run(&fx.app, &["read", data.to_str().unwrap(), "65536"]);
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // 1. The agent streams; a shell under the app is found and delivered.
    let agent1 = start_agent(1);
    std::thread::sleep(Duration::from_secs(2));
    run(&fx.app, &["shell"]);
    busy(2);
    wait_until("records at the collector", Duration::from_secs(30), || {
        accepted() > 0.0
    });

    // 2. The collector freezes with a batch in flight; the agent is killed -9 meanwhile.
    collector1.signal(libc::SIGSTOP);
    busy(3);
    agent1.kill9();
    let killed_with = {
        let s = open_spool(&fx);
        s.pending()
    };
    assert!(killed_with > 0, "the agent died with records not yet acked");
    collector1.signal(libc::SIGCONT);

    // 3. The agent restarts from its spool and resends what was not acked.
    let heartbeats = || metric(metrics_port, "clinicwatch_collector_heartbeats_total");
    let beats_before_restart = heartbeats();
    let agent2 = start_agent(2);
    busy(2);
    let host = HostKey {
        clinic: "clinic-k".into(),
        host: "ws9".into(),
    };
    let db = cdir.join("collector.db");
    let open = || store::open(&db.display().to_string()).unwrap();
    // Drained: heartbeats (sent only when the exporter has nothing to send) arrived after
    // `since`, and the last one says the spool is empty.
    let drained = |s: &mut Box<dyn Store>, since: f64| {
        heartbeats() >= since + 2.0
            && s.hosts()
                .unwrap()
                .iter()
                .any(|h| h.host == "ws9" && h.spooled == 0)
    };
    {
        let mut s = open();
        wait_until(
            "the spool drained after the agent's restart",
            Duration::from_secs(40),
            || drained(&mut s, beats_before_restart),
        );
    }
    let dups_after_agent_kill = metric(
        metrics_port,
        "clinicwatch_collector_records_duplicate_total",
    );

    // 4. The collector freezes with a batch in flight and is killed -9; a new one starts.
    collector1.signal(libc::SIGSTOP);
    busy(3);
    collector1.kill9();
    let stored_at_collector_kill = open().stored_up_to(&host, open_spool_epoch(&fx)).unwrap();
    let collector2 = start_collector();
    busy(1);
    {
        let mut s = open();
        wait_until(
            "the spool drained after the collector's restart",
            Duration::from_secs(60),
            // A new collector process: its counters start at 0.
            || drained(&mut s, 0.0),
        );
    }
    let dups_after_collector_kill = metric(
        metrics_port,
        "clinicwatch_collector_records_duplicate_total",
    );
    assert!(agent2.terminate().success());
    collector2.terminate();

    // Every record the agent spooled is stored once or still waits in its spool; every
    // finding it raised is stored once or waits.
    let s = open();
    let d = assert_each_once(&fx, s.as_ref(), &host, findings_log(&fx));
    let stored_to = s.stored_up_to(&host, open_spool_epoch(&fx)).unwrap();
    assert!(
        stored_to > stored_at_collector_kill,
        "records made while the collector was frozen arrived after its restart"
    );
    let (stored, raised) = (d.stored, d.raised);
    assert!(raised.iter().any(|(r, _)| r == "CW-SUSPICIOUS-CHILD"));
    assert!(
        raised
            .iter()
            .filter(|(r, _)| r == "CW-AGENT-RESTART")
            .count()
            >= 1
    );
    eprintln!(
        "{name}: agent killed with {killed_with} records unacked; {stored_at_collector_kill} stored when the collector was killed; at the end {stored} records stored up to seq {stored_to}, {} findings; duplicates refused: {dups_after_agent_kill} after the agent's kill, {dups_after_collector_kill} in total",
        raised.len()
    );
}

/// The epoch of the agent's spool, from its file (the agent may be running).
fn open_spool_epoch(fx: &Fixture) -> u64 {
    std::fs::read_to_string(fx.state_dir().join("spool").join("epoch"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no epoch file in the spool"))
}
