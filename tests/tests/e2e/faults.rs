//! Faults end to end, as root: the collector down for minutes while the agent keeps finding,
//! and the agent's state folder full. Every finding is stored exactly once; nothing else is
//! lost beyond what is counted and reported.

use std::time::{Duration, Instant};

use clinicwatch_agent::{Config, Event};
use clinicwatch_collector::store::HostKey;
use clinicwatch_tests::{delivery::*, *};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_cw-workload");

/// How long the collector stays down (past the exporter's 30 s backoff cap, several times).
const OUTAGE: Duration = Duration::from_secs(150);

/// The agent's config: exporting to `localhost:port`, windows of 2 s, snapshots each second,
/// every shell under the app a finding (no cooldown).
fn config(fx: &Fixture, port: u16) -> Config {
    let text = format!(
        "[agent]\nsnapshot_interval_secs = 1\nstate_dir = \"{state}\"\n\
         [intel]\nwindow_secs = 2\nlearning_days = 0\npractice_hours = [\"daily 00:00-24:00\"]\n\
         finding_cooldown_secs = 0\n\
         [export]\ncollector = \"https://localhost:{port}\"\nclinic = \"clinic-f\"\nhost = \"ws1\"\n\
         ca_file = \"{dir}/ca.pem\"\ncert_file = \"{dir}/cert.pem\"\nkey_file = \"{dir}/key.pem\"\n\
         batch_records = 50\nheartbeat_secs = 1\n\
         [[app]]\nname = \"pm-client\"\nexe = \"{exe}\"\n",
        state = fx.state_dir().display(),
        dir = fx.dir.display(),
        exe = fx.app.display(),
    );
    Config::from_toml(&text).unwrap()
}

fn host() -> HostKey {
    HostKey {
        clinic: "clinic-f".into(),
        host: "ws1".into(),
    }
}

fn findings(rx: &Events) -> usize {
    rx.seen()
        .iter()
        .filter(|e| matches!(e, Event::Finding(f) if f.rule == "CW-SUSPICIOUS-CHILD"))
        .count()
}

/// Findings of `rule` the collector stored.
fn stored(store: &clinicwatch_collector::calls::SharedStore, rule: &str) -> usize {
    store
        .findings_since(0.0)
        .unwrap()
        .iter()
        .filter(|f| f.rule == rule)
        .count()
}

/// The test's folder and the PKI of host `clinic-f/ws1` in it; `None` (skipped) without root.
fn setup(test: &str, name: &str) -> Option<(Fixture, Pki)> {
    if !require_root(test) {
        return None;
    }
    let fx = Fixture::new(WORKLOAD, name);
    let pki = host_pki(&fx.dir, "clinic-f", "ws1");
    Some((fx, pki))
}

#[test]
fn collector_down_for_minutes_under_continuous_findings_loses_and_duplicates_nothing() {
    let name = "collector_down_for_minutes_under_continuous_findings_loses_and_duplicates_nothing";
    let Some((fx, pki)) = setup(name, "outage") else {
        return;
    };
    let port = free_port();
    let (agent, rx) = start_agent(&config(&fx, port));
    // Down: a shell under the app every 2 s (a finding each), summaries and health besides.
    let started = Instant::now();
    while started.elapsed() < OUTAGE {
        run(&fx.app, &["shell"]);
        std::thread::sleep(Duration::from_secs(2));
    }
    let _ = collect(&rx, Duration::from_millis(500));
    let raised_down = findings(&rx);
    assert!(raised_down >= 50, "{raised_down} findings while down");

    // Up: findings go on; the spool drains.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = collector(&rt, port, &pki, &fx.dir.join("collector.db"));
    let store = up.store.clone();
    let up = Instant::now();
    for _ in 0..5 {
        run(&fx.app, &["shell"]);
        std::thread::sleep(Duration::from_secs(1));
    }
    let shells = || stored(&store, "CW-SUSPICIOUS-CHILD");
    let _ = collect(&rx, Duration::from_millis(500));
    let raised = findings(&rx);
    wait_until(
        "every finding at the collector",
        Duration::from_secs(90),
        || shells() >= raised,
    );
    let caught_up = up.elapsed();
    agent.stop();
    let d = assert_each_once(&fx, store.as_ref(), &host(), findings_log(&fx));
    assert_eq!(shells(), raised, "each finding once");
    eprintln!(
        "{name}: down {OUTAGE:?}: {raised_down} findings made meanwhile; {raised} in all stored \
         {caught_up:.0?} after the collector came up; {} records stored, {} still spooled",
        d.stored, d.waiting
    );
}

/// A tmpfs of `mib` MiB mounted on `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` with `dir/filler` until a write fails.
fn fill(dir: &std::path::Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_state_folder_holds_findings_in_memory_and_delivers_them_once_with_a_report() {
    let name = "a_full_state_folder_holds_findings_in_memory_and_delivers_them_once_with_a_report";
    let Some((fx, pki)) = setup(name, "diskfull") else {
        return;
    };
    let Some(_tmpfs) = Tmpfs::mount(&fx.state_dir(), 8) else {
        panic!("{name}: cannot mount a tmpfs (root without mount?)");
    };
    let port = free_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = collector(&rt, port, &pki, &fx.dir.join("collector.db"));
    let store = up.store.clone();
    let (agent, rx) = start_agent(&config(&fx, port));
    run(&fx.app, &["shell"]);
    let stored = |rule: &str| stored(&store, rule);
    wait_until("the first finding", Duration::from_secs(20), || {
        stored("CW-SUSPICIOUS-CHILD") == 1
    });

    // Full: findings made now cannot be spooled.
    fill(&fx.state_dir());
    // A shell in each of three windows (one finding per window).
    for _ in 0..3 {
        run(&fx.app, &["shell"]);
        std::thread::sleep(Duration::from_millis(2200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        stored("CW-SUSPICIOUS-CHILD"),
        1,
        "nothing new reached the collector while the disk was full"
    );

    // Room again: what waited is spooled and delivered, and the episode reported.
    std::fs::remove_file(fx.state_dir().join("filler")).unwrap();
    let _ = collect(&rx, Duration::from_millis(300));
    let raised = findings(&rx);
    assert!(
        raised >= 3,
        "{raised} shell findings: one before, some while full"
    );
    wait_until(
        "the findings made while full, and the report",
        Duration::from_secs(30),
        || stored("CW-SUSPICIOUS-CHILD") >= raised && stored("CW-SENSOR-SPOOL-WRITE") == 1,
    );
    let report = rx
        .seen()
        .into_iter()
        .find_map(|e| match e {
            Event::Finding(f) if f.rule == "CW-SENSOR-SPOOL-WRITE" => Some(f),
            _ => None,
        })
        .expect("the report is an event too");
    assert!(
        report.evidence["records_held"].as_u64().unwrap_or(0) >= 2,
        "{report:?}"
    );
    assert_eq!(report.evidence["records_lost"], serde_json::json!(0));
    agent.stop();
    // The findings log was on the full disk too: what was raised is what the events say.
    let _ = collect(&rx, Duration::from_millis(300));
    let events: Vec<(String, i64)> = rx
        .seen()
        .iter()
        .filter_map(|e| match e {
            Event::Finding(f) => Some(finding_key(&f.rule, f.time)),
            _ => None,
        })
        .collect();
    let d = assert_each_once(&fx, store.as_ref(), &host(), events);
    assert_eq!(stored("CW-SUSPICIOUS-CHILD"), raised, "each finding once");
    eprintln!(
        "{name}: {} records stored, {} still spooled; the report: {}",
        d.stored, d.waiting, report.summary
    );
}
