//! End-to-end, as root: a stand-in PM client is learned for a few seconds of normal work,
//! then exfiltrates its data file to a new loopback port. Within one window the agent must
//! raise bulk-read, new-destination and read-then-send; its output must not name the file;
//! its baseline and findings must be on disk; and `replay` of its own recording must find
//! the same.

use std::{
    io::Read,
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use clinicwatch_agent::{intel::baseline::Baseline, Agent, Config, Event};
use clinicwatch_tests::*;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_cw-workload");

/// A TCP sink on loopback: accepts connections and discards what they send.
fn sink() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; 1 << 16];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn agent_binary() -> std::path::PathBuf {
    let me = std::env::current_exe().unwrap();
    me.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("clinicwatch-agent")
}

#[test]
fn exfiltration_after_learning_raises_bulk_read_new_destination_and_read_then_send() {
    if !require_root(
        "exfiltration_after_learning_raises_bulk_read_new_destination_and_read_then_send",
    ) {
        return;
    }
    let fx = Fixture::new(WORKLOAD, "exfil");
    let data = fx.data_file("pmdata/patients.db", 32 * MIB);
    let (vendor, exfil) = (sink(), sink());
    let rules = fx.dir.join("site-rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"CW-PM-BULK-READ\"\nfloor_bytes = 4194304\n",
    )
    .unwrap();
    let output = fx.dir.join("events.jsonl");
    const LEARN_SECS: f64 = 8.0;
    let text = format!(
        "[agent]\nsnapshot_interval_secs = 0\nstate_dir = \"{state}\"\noutput = \"{out}\"\n\
         [intel]\nwindow_secs = 2\nlearning_days = {days}\npractice_hours = [\"daily 00:00-24:00\"]\n\
         utc_offset_minutes = 0\nrules_file = \"{rules}\"\n\
         [[app]]\nname = \"pm-client\"\nexe = \"{exe}\"\ndata = [\"{dir}/pmdata/**\"]\n",
        state = fx.state_dir().display(),
        out = output.display(),
        days = LEARN_SECS / 86_400.0,
        rules = rules.display(),
        exe = fx.app.display(),
        dir = fx.dir.display(),
    );
    let config_path = fx.dir.join("agent.toml");
    std::fs::write(&config_path, &text).unwrap();
    let cfg = Config::from_toml(&text).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let agent = Agent::start(&cfg, true, Some(tx)).expect("agent starts");
    let started = Instant::now();

    // Normal work through the learning period and two windows past it (the window that
    // straddles its end is still learned).
    let (_, out) = run(
        &fx.app,
        &["pm-normal", data.to_str().unwrap(), &vendor, "12.5"],
    );
    assert!(out.trim().parse::<u64>().unwrap() > 0);
    let mut seen: Vec<Event> = rx.try_iter().collect();
    let during: Vec<&Event> = seen
        .iter()
        .filter(|e| matches!(e, Event::Finding(_)))
        .collect();
    assert!(
        during.is_empty(),
        "findings during normal work: {during:#?}"
    );
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        elapsed > LEARN_SECS + 4.0,
        "normal work ended after {elapsed:.1} s: {out}"
    );

    // Exfiltration, just after a window starts (windows are aligned to 2 s of wall time):
    // the whole data file to a port the app never used.
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    std::thread::sleep(Duration::from_secs_f64(2.0 - unix() % 2.0 + 0.05));
    let (_, out) = run(&fx.app, &["pm-exfil", data.to_str().unwrap(), &exfil]);
    assert_eq!(out.trim(), (32 * MIB).to_string());
    let wanted = ["CW-PM-BULK-READ", "CW-NEW-DESTINATION", "CW-READ-THEN-SEND"];
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let found: Vec<clinicwatch_agent::event::finding::Finding> = seen
            .iter()
            .filter_map(|e| match e {
                Event::Finding(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        if wanted.iter().all(|w| found.iter().any(|f| f.rule == *w)) || Instant::now() > deadline {
            break found;
        }
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(e);
        }
    };
    let rules: Vec<&str> = found.iter().map(|f| f.rule.as_str()).collect();
    for w in wanted {
        assert!(rules.contains(&w), "{w} not raised; findings: {found:#?}");
    }
    let window = |rule: &str| {
        found.iter().find(|f| f.rule == rule).unwrap().evidence["window_start"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        window("CW-PM-BULK-READ"),
        window("CW-READ-THEN-SEND"),
        "one window"
    );
    assert_eq!(
        window("CW-PM-BULK-READ"),
        window("CW-NEW-DESTINATION"),
        "one window"
    );
    let nd = found
        .iter()
        .find(|f| f.rule == "CW-NEW-DESTINATION")
        .unwrap();
    assert_eq!(nd.subject, format!("{exfil}/tcp"));
    let bulk = found.iter().find(|f| f.rule == "CW-PM-BULK-READ").unwrap();
    assert!(
        bulk.evidence["bytes"].as_u64().unwrap() >= 16 * MIB as u64,
        "{bulk:?}"
    );
    agent.stop();

    // What left the agent names no file: the data file is `patients.db`.
    let recorded = std::fs::read_to_string(&output).unwrap();
    assert!(recorded.contains("\"type\":\"finding\""));
    assert!(!recorded.contains("patients"), "a path left the agent");
    assert!(recorded.contains("pm_data:"));

    // The baseline and the findings log are on disk.
    let b = Baseline::load(&fx.state_dir().join("baselines/pm-client.json")).unwrap();
    assert!(b.windows >= 3, "{} windows learned", b.windows);
    assert!(b.knows_dest(&format!("{vendor}/tcp")));
    let agent_bin = agent_binary();
    if !agent_bin.is_file() {
        clinicwatch_testkit::skip(
            "exfiltration_after_learning_raises_bulk_read_new_destination_and_read_then_send/cli",
            &format!("{} not built", agent_bin.display()),
        );
        return;
    }
    let cli = |args: &[&str]| {
        let out = Command::new(&agent_bin)
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = cli(&["findings", "--since", "10m"]);
    for w in wanted {
        assert!(listed.contains(w), "`findings` lacks {w}:\n{listed}");
    }
    let shown = cli(&["baseline", "show"]);
    assert!(
        shown.contains("app pm-client (learned") && shown.contains(&format!("{vendor}/tcp")),
        "{shown}"
    );

    // Dry run: the recording (paths already hashed) through fresh detectors.
    let replayed = cli(&["replay", output.to_str().unwrap()]);
    for w in wanted {
        assert!(replayed.contains(w), "`replay` lacks {w}:\n{replayed}");
    }
}
