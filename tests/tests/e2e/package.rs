//! The Debian packages of `cargo xtask package`, installed into a scratch root (root only).
//!
//! `dpkg --root=DIR --force-script-chrootless` needs no Debian system in DIR: it unpacks
//! there and runs the maintainer scripts on this host with `DPKG_ROOT=DIR`, which they
//! prefix to every path (and they leave this host's systemd alone). DIR starts with an
//! empty dpkg database and this host's passwd and group files, so that the postinsts can
//! add the services' users there (`useradd --prefix`); libc6 is not in that database, hence
//! `--force-depends`. The test checks every file's mode and owner, the conffiles, that
//! an edited config survives a reinstall, that the units verify and the configs load, and
//! that a purge removes the state. This host's users and systemd are not touched.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const AGENT: &str = "clinicwatch-agent";
const COLLECTOR: &str = "clinicwatch-collector";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, panics with its output unless it succeeds; returns stdout and stderr.
fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        text(&out)
    );
    text(&out)
}

#[test]
fn packaged_configs_load() {
    let dir = workspace().join("packaging");
    check_agent_config(&std::fs::read_to_string(dir.join("agent/agent.toml")).unwrap());
    check_collector_config(&std::fs::read_to_string(dir.join("collector/collector.toml")).unwrap());
}

/// Parses and validates with the agent's own loader; the service may write only below
/// /var/lib/clinicwatch.
fn check_agent_config(toml: &str) {
    let cfg = clinicwatch_agent::Config::from_toml(toml).expect("agent.toml loads");
    assert_eq!(cfg.agent.state_dir, Path::new("/var/lib/clinicwatch"));
    assert_eq!(cfg.agent.output, "/var/lib/clinicwatch/events.jsonl");
    let exes: Vec<_> = cfg
        .apps
        .iter()
        .map(|a| a.exe.display().to_string())
        .collect();
    assert_eq!(
        exes,
        [
            "/usr/lib/chromium/chromium",
            "/opt/google/chrome/chrome",
            "/usr/lib/firefox-esr/firefox-esr"
        ]
    );
    for store in [
        "Cookies",
        "Login Data",
        "cookies.sqlite",
        "logins.json",
        "key4.db",
    ] {
        assert!(
            cfg.protected
                .iter()
                .any(|p| p.path.ends_with(store) && p.path.starts_with("/home/*/")),
            "no protected entry for `{store}`"
        );
    }
    assert!(
        cfg.export.collector.is_empty(),
        "export is left to `enroll`"
    );
}

fn check_collector_config(toml: &str) {
    let cfg = clinicwatch_collector::config::Config::parse(toml, "collector.toml")
        .expect("collector.toml loads");
    assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:7443");
    assert_eq!(cfg.server.metrics_listen, "127.0.0.1:9464");
    assert_eq!(cfg.store.url, "/var/lib/clinicwatch-collector/collector.db");
}

/// A scratch installation root with an empty dpkg database; removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("clinicwatch-package-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let admin = dir.join("var/lib/dpkg");
        for d in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(admin.join(d)).unwrap();
        }
        for f in ["status", "available"] {
            std::fs::write(admin.join(f), "").unwrap();
        }
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        for f in ["passwd", "group"] {
            std::fs::copy(Path::new("/etc").join(f), dir.join("etc").join(f)).unwrap();
        }
        Scratch { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    fn dpkg(&self, args: &[&str]) -> String {
        ok(Command::new("dpkg")
            .arg(format!("--root={}", self.dir.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
            ])
            .args(args))
    }

    fn install(&self, deb: &Path) -> String {
        self.dpkg(&["--install", deb.to_str().unwrap()])
    }

    /// uid and gid of NAME in this root's passwd and group.
    fn ids(&self, name: &str) -> (u32, u32) {
        let field = |file: &str| -> u32 {
            let text = std::fs::read_to_string(self.path(file)).unwrap();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{name}:")))
                .collect();
            assert_eq!(lines.len(), 1, "one `{name}` in {file}: {lines:?}");
            lines[0].split(':').nth(2).unwrap().parse().unwrap()
        };
        (field("/etc/passwd"), field("/etc/group"))
    }

    /// Panics unless `path` exists with this mode and owner.
    fn expect(&self, path: &str, mode: u32, uid: u32, gid: u32) {
        let meta = std::fs::symlink_metadata(self.path(path))
            .unwrap_or_else(|e| panic!("`{path}` not installed: {e}"));
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (mode, uid, gid),
            "`{path}`: (mode, uid, gid)"
        );
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `cargo xtask package`: the release build (a no-op when current), then both packages.
fn build_packages() -> (PathBuf, PathBuf) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = ok(Command::new(cargo)
        .current_dir(workspace())
        .args(["run", "--quiet", "-p", "xtask", "--", "package"]));
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let deb = |name: &str| {
        let p = target
            .join("debian")
            .join(format!("{name}_{VERSION}_{}.deb", arch.trim()));
        assert!(
            out.contains(&p.display().to_string()),
            "xtask did not print {}: {out}",
            p.display()
        );
        p
    };
    (deb(AGENT), deb(COLLECTOR))
}

/// `getent passwd` of the services' users on this host, to see that the test leaves them
/// alone.
fn host_users() -> String {
    text(
        &Command::new("getent")
            .args(["passwd", "clinicwatch-agent", "clinicwatch"])
            .output()
            .unwrap(),
    )
}

#[test]
fn packages_install_into_a_scratch_root() {
    if !clinicwatch_testkit::require_root(
        "packages_install_into_a_scratch_root",
        "dpkg --root, chown",
    ) {
        return;
    }
    // Root on Debian: dpkg is there; its absence fails the test rather than skipping it.
    let dpkg_deb = Command::new("dpkg-deb").arg("--version").output();
    assert!(
        dpkg_deb.is_ok_and(|o| o.status.success()),
        "dpkg-deb does not run on this machine"
    );
    let host_users_before = host_users();
    let (agent, collector) = build_packages();
    let root = Scratch::new();
    for (deb, hint) in [
        (&agent, "next, run clinicwatch-agent enroll"),
        (
            &collector,
            "next, run runuser -u clinicwatch -- clinicwatch-collector ca init",
        ),
    ] {
        let out = root.install(deb);
        assert!(
            out.contains(hint),
            "no hint `{hint}` from the postinst: {out}"
        );
    }
    let (agent_uid, agent_gid) = root.ids("clinicwatch-agent");
    let (uid, gid) = root.ids("clinicwatch");
    assert!(agent_uid > 0 && agent_gid > 0 && uid > 0 && gid > 0);
    for (path, mode, owner, group) in [
        ("/usr/bin/clinicwatch-agent", 0o755, 0, 0),
        ("/lib/systemd/system/clinicwatch-agent.service", 0o644, 0, 0),
        ("/etc/clinicwatch", 0o755, 0, 0),
        ("/etc/clinicwatch/agent.toml", 0o644, 0, 0),
        ("/usr/share/clinicwatch-agent/agent.toml", 0o644, 0, 0),
        ("/usr/share/doc/clinicwatch-agent/copyright", 0o644, 0, 0),
        ("/var/lib/clinicwatch", 0o700, agent_uid, agent_gid),
        ("/usr/bin/clinicwatch-collector", 0o755, 0, 0),
        (
            "/lib/systemd/system/clinicwatch-collector.service",
            0o644,
            0,
            0,
        ),
        ("/etc/clinicwatch-collector", 0o750, 0, gid),
        ("/etc/clinicwatch-collector/collector.toml", 0o640, 0, gid),
        (
            "/usr/share/doc/clinicwatch-collector/copyright",
            0o644,
            0,
            0,
        ),
        ("/var/lib/clinicwatch-collector", 0o700, uid, gid),
    ] {
        root.expect(path, mode, owner, group);
    }
    check_binaries(&root);
    check_database(&root);
    check_configs(&root);
    check_units(&root);

    // An edited config survives a reinstall of the same package; no user is made twice.
    let config = root.path("/etc/clinicwatch/agent.toml");
    let edited = format!(
        "{}\n# edited by the IT person\n",
        std::fs::read_to_string(&config).unwrap()
    );
    std::fs::write(&config, &edited).unwrap();
    let out = root.install(&agent);
    assert!(
        !out.contains("next, run"),
        "a reinstall gives no first-install hint: {out}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    root.install(&collector);
    assert_eq!(root.ids("clinicwatch-agent"), (agent_uid, agent_gid));
    assert_eq!(root.ids("clinicwatch"), (uid, gid));
    root.expect("/var/lib/clinicwatch", 0o700, agent_uid, agent_gid);
    root.expect("/etc/clinicwatch-collector/collector.toml", 0o640, 0, gid);
    root.expect("/var/lib/clinicwatch-collector", 0o700, uid, gid);

    // A purge removes the files, the configs and the state; the users stay.
    std::fs::write(root.path("/var/lib/clinicwatch/events.jsonl"), "{}\n").unwrap();
    root.dpkg(&["--purge", AGENT, COLLECTOR]);
    for gone in [
        "/usr/bin/clinicwatch-agent",
        "/etc/clinicwatch/agent.toml",
        "/var/lib/clinicwatch",
        "/usr/bin/clinicwatch-collector",
        "/etc/clinicwatch-collector",
        "/var/lib/clinicwatch-collector",
    ] {
        assert!(!root.path(gone).exists(), "`{gone}` is left after a purge");
    }
    assert_eq!(root.ids("clinicwatch-agent"), (agent_uid, agent_gid));
    assert_eq!(root.ids("clinicwatch"), (uid, gid));
    assert_eq!(host_users(), host_users_before, "this host's users changed");
}

/// The binaries run, and the stripped agent still holds its eBPF object (an ELF for
/// EM_BPF, 247, embedded in its read-only data).
fn check_binaries(root: &Scratch) {
    for name in [AGENT, COLLECTOR] {
        let bin = root.path(&format!("/usr/bin/{name}"));
        let out = ok(Command::new(&bin).arg("--version"));
        assert!(out.contains(VERSION), "{name} --version: {out}");
    }
    let agent = std::fs::read(root.path("/usr/bin/clinicwatch-agent")).unwrap();
    let embedded = agent
        .windows(20)
        .any(|w| w.starts_with(b"\x7fELF") && w[18] == 247 && w[19] == 0);
    assert!(
        embedded,
        "no eBPF object in the packaged agent (stripped too much?)"
    );
}

/// dpkg knows the collector's conffile with its sum; the agent has none (its config is
/// made by the postinst, so that `enroll` editing it never stops an upgrade at a prompt);
/// every other file matches its md5sums.
fn check_database(root: &Scratch) {
    let admin = root.path("/var/lib/dpkg");
    let conffiles = |pkg: &str| {
        ok(Command::new("dpkg-query")
            .arg(format!("--admindir={}", admin.display()))
            .args(["-W", "-f=${Conffiles}", pkg]))
    };
    assert_eq!(conffiles(AGENT).trim(), "", "the agent has no conffile");
    let line = conffiles(COLLECTOR);
    let conffile = "/etc/clinicwatch-collector/collector.toml";
    let sum = line
        .trim()
        .strip_prefix(&format!("{conffile} "))
        .unwrap_or_else(|| panic!("conffiles `{line}`, expected {conffile}"));
    assert!(
        sum.len() == 32 && sum.chars().all(|c| c.is_ascii_hexdigit()),
        "{line}"
    );
    for pkg in [AGENT, COLLECTOR] {
        let verify = root.dpkg(&["--verify", pkg]);
        assert!(verify.trim().is_empty(), "dpkg --verify {pkg}: {verify}");
    }
}

/// The installed configs are the ones in `packaging/`, and load.
fn check_configs(root: &Scratch) {
    for (installed, source) in [
        ("/etc/clinicwatch/agent.toml", "agent/agent.toml"),
        (
            "/etc/clinicwatch-collector/collector.toml",
            "collector/collector.toml",
        ),
    ] {
        let text = std::fs::read_to_string(root.path(installed)).unwrap();
        let src = std::fs::read_to_string(workspace().join("packaging").join(source)).unwrap();
        assert_eq!(text, src, "{installed} differs from packaging/{source}");
    }
    check_agent_config(&std::fs::read_to_string(root.path("/etc/clinicwatch/agent.toml")).unwrap());
    check_collector_config(
        &std::fs::read_to_string(root.path("/etc/clinicwatch-collector/collector.toml")).unwrap(),
    );
}

/// `systemd-analyze verify --root=DIR` on both units, clean (no warning at all: systemd 252
/// exits 0 on an unknown key or a bad value, printing only a warning).
///
/// DIR is a copy of the units of the scratch root, with this host's units beside them (the
/// scratch root has no sysinit.target, and verify refuses a unit whose default dependencies
/// it cannot load), and hard links to the packaged binaries: verify checks that ExecStart's
/// command exists and is executable below --root.
fn check_units(root: &Scratch) {
    let dir = root.path("/verify");
    let units = dir.join("lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    ok(Command::new("cp").args(["-r", "/lib/systemd/system/.", units.to_str().unwrap()]));
    for name in [AGENT, COLLECTOR] {
        let unit = format!("/lib/systemd/system/{name}.service");
        std::fs::copy(root.path(&unit), dir.join(unit.trim_start_matches('/'))).unwrap();
        std::fs::hard_link(
            root.path(&format!("/usr/bin/{name}")),
            dir.join(format!("usr/bin/{name}")),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", dir.display()))
        .args([
            "/lib/systemd/system/clinicwatch-agent.service",
            "/lib/systemd/system/clinicwatch-collector.service",
        ])
        .output();
    // systemd is on every machine of this kind: no systemd-analyze fails, never skips.
    let out = out.unwrap_or_else(|e| panic!("cannot run systemd-analyze: {e}"));
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify: {}\n{}",
        out.status,
        text(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
