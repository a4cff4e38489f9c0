//! The per-request cost of the TLS uprobes: a Python loop writing HTTP requests through
//! OpenSSL (`SSLObject` on memory BIOs, so no network and no server: each write is one
//! `SSL_write_ex` and its encryption) in windows with the agent attached and detached,
//! alternating. Two attached cases: the writer watched (the probe captures the request and
//! the agent templates it) and not watched (the probe fires and leaves after one lookup).
//! Reported: writes per second, the extra microseconds per write, and what that costs a
//! client making 1,000 requests per second.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clinicwatch_agent::{Agent, Config};

use crate::scenarios::{median, Bench};

const LOOP: &str = r#"
import ssl, sys, time
secs = float(sys.argv[1])
ctx_s = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx_s.load_cert_chain(sys.argv[2], sys.argv[3])
ctx_c = ssl.create_default_context(cafile=sys.argv[4])
bios = [ssl.MemoryBIO() for _ in range(4)]
c = ctx_c.wrap_bio(bios[0], bios[1], server_hostname="localhost")
s = ctx_s.wrap_bio(bios[2], bios[3], server_side=True)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(50):
    for side in (c, s):
        try:
            side.do_handshake()
        except ssl.SSLWantReadError:
            pass
    bios[2].write(bios[1].read()); bios[0].write(bios[3].read())
req = b"GET /api/v1/patients/PX7Q123456?fields=all HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"
n = 0
t0 = time.perf_counter()
while True:
    for _ in range(200):
        c.write(req)
        bios[1].read()
    n += 200
    t = time.perf_counter() - t0
    if t >= secs:
        break
print(n, t, flush=True)
"#;

/// One window: writes per second of the loop run as `script`.
fn window(py: &Path, script: &Path, dir: &Path, secs: f64) -> anyhow::Result<f64> {
    let mut child = Command::new(py)
        .arg(script)
        .arg(secs.to_string())
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .arg(dir.join("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the TLS loop did not start: {line}");
    }
    drop(child.stdin.take()); // go
    line.clear();
    out.read_line(&mut line)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("the TLS loop failed: {status}");
    }
    let mut f = line.split_whitespace();
    let n: f64 = f.next().and_then(|v| v.parse().ok()).context("count")?;
    let t: f64 = f.next().and_then(|v| v.parse().ok()).context("seconds")?;
    Ok(n / t)
}

pub fn run(bench: &Bench, pairs: usize, secs: f64) -> anyhow::Result<Vec<String>> {
    let py = std::fs::canonicalize("/usr/bin/python3")
        .context("Debian's python3 is needed (`cargo xtask setup` installs it)")?;
    let dir = bench.dir.join("tls");
    std::fs::create_dir_all(&dir)?;
    let ca = clinicwatch_collector::auth::pki::new_ca("bench ca")?;
    let cert = clinicwatch_collector::auth::pki::server_cert(&ca, &["localhost".into()])?;
    std::fs::write(dir.join("ca.pem"), &ca.cert)?;
    std::fs::write(dir.join("server.pem"), &cert.cert)?;
    std::fs::write(dir.join("server.key"), &cert.key)?;
    let watched: PathBuf = dir.join("cw-tls-watched.py");
    let unwatched: PathBuf = dir.join("cw-tls-other.py");
    std::fs::write(&watched, LOOP)?;
    std::fs::write(&unwatched, LOOP)?;
    let text = format!(
        "[agent]\nsnapshot_interval_secs = 0\nstate_dir = \"{}\"\n[[app]]\nname = \"pm-client\"\nexe = \"{}\"\ncmdline = \"cw-tls-watched\"\n",
        dir.join("state").display(),
        py.display()
    );
    let cfg = Config::from_toml(&text)?;
    // The agent probes the library once a watched process has loaded it: a short watched
    // run first, then every window finds the probes in place.
    let attached = |script: &Path| -> anyhow::Result<f64> {
        let agent = Agent::start(&cfg, false, None)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.tls_libraries().is_empty() {
            window(&py, &watched, &dir, 0.05)?;
            if Instant::now() > deadline {
                bail!("the agent did not probe libssl");
            }
        }
        let r = window(&py, script, &dir, secs);
        agent.stop();
        r
    };
    let (mut off, mut on, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..pairs {
        // Alternate the order so that drift (CPU frequency, caches) favours neither.
        if pair % 2 == 0 {
            off.push(window(&py, &watched, &dir, secs)?);
            on.push(attached(&watched)?);
            other.push(attached(&unwatched)?);
        } else {
            other.push(attached(&unwatched)?);
            on.push(attached(&watched)?);
            off.push(window(&py, &watched, &dir, secs)?);
        }
    }
    let (off, on, other) = (median(&off), median(&on), median(&other));
    let cost = |r: f64| (1e6 / r - 1e6 / off).max(0.0);
    Ok(vec![
        format!(
            "TLS writes (Python `SSLObject.write`, one `SSL_write_ex` each), median of {pairs} pairs of {secs} s windows: detached {off:.0}/s; attached, writer watched {on:.0}/s (ratio {:.3}); attached, writer not watched {other:.0}/s (ratio {:.3})",
            on / off,
            other / off
        ),
        format!(
            "uprobe cost per request: {:.2} µs watched (capture, ring buffer, template), {:.2} µs not watched; for a client making 1,000 requests/s that is {:.2}% and {:.2}% of one CPU",
            cost(on),
            cost(other),
            cost(on) * 1000.0 / 1e4,
            cost(other) * 1000.0 / 1e4
        ),
    ])
}
