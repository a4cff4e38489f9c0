//! The agent as a service runs it (root): with only the capabilities its unit grants, as an
//! unprivileged uid; stopped by SIGTERM; logging to a file without colour codes; `check`
//! leaving nothing behind. Runs the real binary against real probes.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use clinicwatch_tests::{require_root, run, wait_until, Fixture};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_cw-workload");
/// The uid and gid the agent runs as here (`nobody`).
const NOBODY: &str = "65534";

/// The capability set of `packaging/agent/clinicwatch-agent.service`, as setpriv names them.
fn unit_capabilities() -> Vec<String> {
    let unit =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent/clinicwatch-agent.service");
    let text = std::fs::read_to_string(&unit)
        .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", unit.display()));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants ambient capabilities");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// The agent binary beside this test's `deps` folder, copied where uid 65534 can run it.
fn agent_copy(dir: &Path) -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let built = me
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("clinicwatch-agent");
    assert!(
        built.is_file(),
        "`{}` is missing: build the workspace's binaries first (`cargo xtask build`)",
        built.display()
    );
    let copy = dir.join("clinicwatch-agent");
    std::fs::copy(&built, &copy).unwrap();
    copy
}

/// The agent under `setpriv` as uid/gid 65534 holding exactly `caps` (ambient, so they
/// survive the uid change, as systemd's AmbientCapabilities= gives them).
fn as_nobody_with(agent: &Path, caps: &[String]) -> Command {
    let list = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    // As the unit: its own uid, no groups, NoNewPrivileges, the set as the bounding set too.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "--no-new-privs",
    ]);
    if list.is_empty() {
        cmd.arg("--bounding-set=-all");
    } else {
        cmd.arg(format!("--bounding-set=-all,{list}"))
            .arg(format!("--inh-caps={list}"))
            .arg(format!("--ambient-caps={list}"));
    }
    cmd.arg(agent);
    cmd
}

/// tracefs, as systemd mounts it at boot (`sys-kernel-tracing.mount`): the agent mounts it
/// itself only when it holds CAP_SYS_ADMIN, which the unit does not grant.
fn mount_tracefs() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    if !mounts
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("tracefs"))
    {
        let ok = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot mount tracefs at /sys/kernel/tracing");
    }
}

/// setpriv (util-linux) is on every Debian: its absence is a broken machine, not a skip.
fn have_setpriv() -> bool {
    let ok = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "setpriv (util-linux) is missing");
    ok
}

/// A fixture whose folder uid 65534 can enter, with its state folder owned by 65534.
fn fixture(name: &str) -> Fixture {
    let fx = Fixture::new(WORKLOAD, name);
    std::fs::set_permissions(&fx.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(fx.state_dir()).unwrap();
    let ok = Command::new("chown")
        .args([
            &format!("{NOBODY}:{NOBODY}"),
            fx.state_dir().to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot chown the state folder");
    fx
}

fn write_config(fx: &Fixture, extra: &str) -> PathBuf {
    let path = fx.dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\noutput = \"{out}\"\nsnapshot_interval_secs = 1\nstate_dir = \"{state}\"\n\
             [[app]]\nname = \"pm-client\"\nexe = \"{exe}\"\n{extra}",
            out = fx.state_dir().join("events.jsonl").display(),
            state = fx.state_dir().display(),
            exe = fx.app.display(),
        ),
    )
    .unwrap();
    path
}

/// A child killed (SIGKILL) if the test ends before it does: a failed assertion must not
/// leave an agent running with its probes attached.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn events(fx: &Fixture) -> Vec<serde_json::Value> {
    std::fs::read_to_string(fx.state_dir().join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A loopback server that reads `expect` bytes and answers `answer` bytes.
fn server(expect: usize, answer: usize) -> std::net::SocketAddr {
    use std::io::{Read as _, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = vec![0u8; expect];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&vec![b'r'; answer]);
            }
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    addr
}

#[test]
fn with_only_the_units_capabilities_as_nobody_the_agent_counts_exact_bytes() {
    if !require_root("with_only_the_units_capabilities_as_nobody") || !have_setpriv() {
        return;
    }
    mount_tracefs();
    let fx = fixture("least-privilege");
    let agent = agent_copy(&fx.dir);
    let caps = unit_capabilities();
    let config = write_config(&fx, "");
    let data = fx.data_file("patients.db", 300_000);
    let log = fx.dir.join("agent.log");
    let mut agent_proc = Reaped(
        as_nobody_with(&agent, &caps)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let child = &mut agent_proc.0;
    wait_until("the agent's startup event", Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the agent exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        events(&fx).iter().any(|e| e["type"] == "startup")
    });
    let (read_pid, _) = run(&fx.app, &["read", data.to_str().unwrap(), "65536"]);
    let addr = server(50_000, 7_000);
    let (net_pid, _) = run(&fx.app, &["connect", &addr.to_string(), "50000", "7000"]);
    wait_until("the exit and flow events", Duration::from_secs(20), || {
        let ev = events(&fx);
        let read = ev.iter().any(|e| {
            e["type"] == "exit"
                && e["pid"] == read_pid
                && e["files"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["bytes_read"] == 300_000))
        });
        let flow = ev.iter().any(|e| {
            e["type"] == "net_close"
                && e["pid"] == net_pid
                && e["counters"]["bytes_sent"] == 50_000
                && e["counters"]["bytes_recv"] == 7_000
        });
        read && flow
    });
    // SIGTERM, as `systemctl stop` sends: a clean stop.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the agent stopped with {status}: {text}");
    assert!(text.contains("every probe detached"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a log that is not a terminal: {text}"
    );
    let startup = events(&fx)
        .into_iter()
        .find(|e| e["type"] == "startup")
        .unwrap();
    for c in startup["capabilities"].as_array().unwrap() {
        assert!(
            c["hook"].is_string() && c["hook"] != "",
            "every capability is served with the unit's set: {c}"
        );
    }
}

#[test]
fn without_any_one_of_them_the_agent_refuses_to_start_and_names_it() {
    if !require_root("without_any_one_of_them_the_agent_refuses") || !have_setpriv() {
        return;
    }
    let fx = fixture("missing-capability");
    let agent = agent_copy(&fx.dir);
    let caps = unit_capabilities();
    let config = write_config(&fx, "");
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let out = as_nobody_with(&agent, &fewer)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(78),
            "started without {dropped}, or not with EX_CONFIG: {stderr}"
        );
        let name = format!("CAP_{}", dropped.to_ascii_uppercase());
        assert!(stderr.contains(&format!("missing {name} (to ")), "{stderr}");
        for other in &fewer {
            let other = format!("CAP_{} (to", other.to_ascii_uppercase());
            assert!(
                !stderr.contains(&other),
                "only what is missing is named: {stderr}"
            );
        }
    }
}

#[test]
fn check_writes_nothing() {
    if !require_root("check_writes_nothing") {
        return;
    }
    let fx = Fixture::new(WORKLOAD, "check-no-side-effects");
    let agent = agent_copy(&fx.dir);
    let state = fx.dir.join("never-made");
    let config = fx.dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{state}\"\noutput = \"{state}/events.jsonl\"\n\
             [export]\ncollector = \"https://127.0.0.1:9\"\nclinic = \"c\"\nhost = \"h\"\n\
             ca_file = \"{state}/ca.pem\"\ncert_file = \"{state}/h.pem\"\nkey_file = \"{state}/h.key\"\n\
             [[app]]\nname = \"pm-client\"\nexe = \"{exe}\"\n",
            state = state.display(),
            exe = fx.app.display()
        ),
    )
    .unwrap();
    let before: Vec<_> = std::fs::read_dir(&fx.dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let out = Command::new(&agent)
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("capability") && stdout.contains("process"),
        "{stdout}"
    );
    assert!(
        !state.exists(),
        "`check` made the state folder (key, spool or lock)"
    );
    let after: Vec<_> = std::fs::read_dir(&fx.dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(before, after, "`check` wrote beside its config");
}
