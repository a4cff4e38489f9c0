//! The `clinicwatch-collector` binary: `ca init` makes the CA, server certificate and
//! enrollment key (keys 0600) and refuses to run twice; `enroll-token` makes tokens the
//! collector accepts, recorded with their uses (listed, revoked one by one), and refuses
//! bad clinic ids and long lives; `issue` records the key it certifies and bounds the
//! lifetime; `unenroll` marks a known host revoked and refuses an unknown one; the database
//! is 0600; `serve` refuses a bad configuration with an error naming the key.

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use clinicwatch_collector::store::{self, HostKey};

const BIN: &str = env!("CARGO_BIN_EXE_clinicwatch-collector");

fn run(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ca_init_tokens_unenroll_and_config_errors() {
    let dir = std::env::temp_dir().join(format!("cw-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, out, err) = run(&dir, &["ca", "init", "--name", "collector.example"]);
    assert!(ok, "{err}");
    assert!(out.contains("collector.example"), "{out}");
    for key in ["ca.key", "server.key", "enroll.key"] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let (ok, _, err) = run(&dir, &["ca", "init"]);
    assert!(!ok && err.contains("already has a CA"), "{err}");

    let (ok, token, err) = run(&dir, &["enroll-token", "--clinic", "cab-dupont"]);
    assert!(ok, "{err}");
    let key = std::fs::read(dir.join("enroll.key")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        clinicwatch_collector::api::enroll::check_token(&key, token.trim(), now).unwrap(),
        "cab-dupont"
    );
    assert!(
        clinicwatch_collector::api::enroll::check_token(&key, token.trim(), now + 8 * 86_400)
            .is_err(),
        "valid 7 days by default"
    );
    let (ok, _, err) = run(&dir, &["enroll-token", "--clinic", "bad clinic/.."]);
    assert!(!ok && err.contains("clinic id"), "{err}");
    for (args, says) in [
        (&["--days", "365"][..], "--days"),
        (&["--uses", "0"][..], "--uses"),
    ] {
        let mut a = vec!["enroll-token", "--clinic", "cab-dupont"];
        a.extend_from_slice(args);
        let (ok, _, err) = run(&dir, &a);
        assert!(!ok && err.contains(says), "{err}");
    }
    // Recorded, one use, revocable by its id.
    let (ok, list, err) = run(&dir, &["tokens", "list", "--json"]);
    assert!(ok, "{err}");
    let row: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!(row["clinic"], "cab-dupont");
    assert_eq!(row["uses_left"], 1);
    let id = row["id"].as_str().unwrap().to_string();
    assert_eq!(
        clinicwatch_collector::api::enroll::token_id(token.trim()),
        Some(id.as_str())
    );
    let (ok, out, err) = run(&dir, &["tokens", "revoke", &id]);
    assert!(ok && out.contains("revoked"), "{err}");
    let (ok, _, err) = run(&dir, &["tokens", "revoke", "feedface"]);
    assert!(!ok && err.contains("no token"), "{err}");
    let (_, list, _) = run(&dir, &["tokens", "list"]);
    assert!(list.contains("revoked"), "{list}");
    let db_mode = std::fs::metadata(dir.join("collector.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        db_mode & 0o777,
        0o600,
        "the database is the collector's alone"
    );

    // Unenrolling a host nobody knows changes nothing and says so.
    let (ok, _, err) = run(
        &dir,
        &["unenroll", "--clinic", "cab-dupont", "--host", "ws1"],
    );
    assert!(!ok && err.contains("nothing was changed"), "{err}");
    // A certificate made by hand is recorded; its lifetime is bounded.
    let out_dir = dir.join("ws1");
    let out_s = out_dir.display().to_string();
    let (ok, _, err) = run(
        &dir,
        &[
            "issue",
            "--clinic",
            "cab-dupont",
            "--host",
            "ws1",
            "--days",
            "36500",
            "--out",
            &out_s,
        ],
    );
    assert!(!ok && err.contains("--days"), "{err}");
    let (ok, _, err) = run(
        &dir,
        &[
            "issue", "--soc", "--name", "alice", "--days", "365", "--out", &out_s,
        ],
    );
    assert!(!ok && err.contains("between 1 and 90"), "{err}");
    let (ok, _, err) = run(
        &dir,
        &[
            "issue",
            "--clinic",
            "cab-dupont",
            "--host",
            "ws1",
            "--out",
            &out_s,
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = run(
        &dir,
        &["unenroll", "--clinic", "cab-dupont", "--host", "ws1"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("unenrolled"), "{out}");
    let st = store::open(&dir.join("collector.db").display().to_string()).unwrap();
    let e = st
        .enrollment(&HostKey {
            clinic: "cab-dupont".into(),
            host: "ws1".into(),
        })
        .unwrap()
        .unwrap();
    assert!(e.revoked);

    // Incidents through the CLI: one as a correlation pass would save it.
    let inc = clinicwatch_collector::store::Incident {
        rule: "CW-FLEET-RARE-DESTINATION".into(),
        key: "dest_name:exfil.example".into(),
        state: "new".into(),
        severity: "critical".into(),
        title: "t".into(),
        first_seen: 1_795_000_000.0,
        last_seen: 1_795_000_600.0,
        clinics: vec!["c1".into(), "c2".into()],
        hosts: vec!["c1/ws1".into(), "c2/ws1".into()],
        ..Default::default()
    };
    let id = st.save_incident(&inc).unwrap();
    drop(st);
    let (ok, out, err) = run(&dir, &["incidents", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("#{id}"))
            && out.contains("dest_name:exfil.example")
            && out.contains("2026-11-18 11:06:40"),
        "{out}"
    );
    let (ok, out, _) = run(&dir, &["incidents", "show", &id.to_string()]);
    assert!(ok && out.contains("c1/ws1, c2/ws1"), "{out}");
    let (ok, out, _) = run(&dir, &["incidents", "ack", &id.to_string()]);
    assert!(ok && out.contains("acknowledged"), "{out}");
    let (ok, out, _) = run(
        &dir,
        &["incidents", "list", "--state", "acknowledged", "--json"],
    );
    assert!(ok && out.contains("\"state\":\"acknowledged\""), "{out}");
    let (ok, _, err) = run(&dir, &["incidents", "show", "999"]);
    assert!(!ok && err.contains("no incident #999"), "{err}");
    let (ok, out, err) = run(&dir, &["hosts"]);
    assert!(ok, "{err}{out}");

    std::fs::write(
        dir.join("collector.toml"),
        "[limits]\nrecords_per_sec = 0\n",
    )
    .unwrap();
    let (ok, _, err) = run(&dir, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!ok && err.contains("limits.records_per_sec"), "{err}");
    std::fs::write(
        dir.join("collector.toml"),
        "[store]\nurl = \"postgres://cw:pw@127.0.0.1:1/cw\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(&dir, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(
        !ok && err.contains("127.0.0.1:1") && !err.contains("pw@"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
