//! End-to-end, as root: application query profiling through uprobes on the system's
//! `libssl.so.3`. A stand-in PM client (Debian's Python, `http.client` over `ssl`) talks
//! HTTPS to a local server with a test certificate: a normal pattern while the baseline
//! learns, then a scraping burst over 5,000 record ids and a request it never made. The
//! agent must count the templates, estimate the distinct records within 2%, raise the query
//! findings, and nothing it writes may hold a record id, a name or a payload byte.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use clinicwatch_agent::{event::summary::WindowSummary, Agent, Config, Event};
use clinicwatch_tests::*;

const SERVER: &str = r#"
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a):
        pass
    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = json.dumps({"name": "RESPONSE-SECRET-MARKER", "path": self.path}).encode()
        self.send_response(404 if "missing" in self.path else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = _answer
    do_POST = _answer
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

const CLIENT: &str = r#"
import http.client, os, ssl, sys, time, random
mode, port, ca, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
c = http.client.HTTPSConnection("localhost", port, context=ctx)
def get(path):
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    return r.status
if mode == "normal":
    end = time.time() + float(sys.argv[5])
    known = ["PX7Q%06d" % i for i in range(20)]
    while time.time() < end:
        get("/api/v1/patients/" + random.choice(known))
        get("/api/v1/agenda?date=2026-11-29&doctor=12")
        c.request("POST", "/api/v1/notes", body='{"text": "PAYLOAD-SECRET-MARKER DUPONTMARKER"}',
                  headers={"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        get("/api/v1/search?nom=DUPONTMARKER&prenom=JEANMARKER")
        time.sleep(0.2)
else:
    for i in range(int(sys.argv[5])):
        get("/api/v1/patients/PX7Q%06d" % (100000 + i))
    get("/api/v1/export/missing")
print("done", flush=True)
"#;

/// Debian's python3 as a real file (the symlink's target): the watched executable.
fn python() -> Option<PathBuf> {
    std::fs::canonicalize("/usr/bin/python3").ok()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_line(child: &mut Child) -> String {
    use std::io::BufRead as _;
    let out = child.stdout.as_mut().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    line.trim().to_string()
}

/// Runs the client in `mode`: waits until it has loaded `ssl`, until the agent has probed
/// its TLS library, then lets it go and waits for it to finish.
fn client(agent: &Agent, py: &Path, dir: &Path, port: u16, mode: &str, arg: &str) {
    let script = dir.join("cw-pm-client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let go = dir.join(format!("go-{mode}"));
    let mut c = Command::new(py)
        .arg(&script)
        .args([mode, &port.to_string()])
        .arg(dir.join("ca.pem"))
        .arg(&go)
        .arg(arg)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(read_line(&mut c), "ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.tls_libraries().is_empty() {
        assert!(Instant::now() < deadline, "the agent never probed libssl");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&go, "").unwrap();
    assert_eq!(read_line(&mut c), "done");
    assert!(c.wait().unwrap().success());
}

fn unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Every file under `dir`, as text (lossy).
fn all_text(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_text(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push_str(&String::from_utf8_lossy(&b));
        }
    }
}

#[test]
fn scraping_through_the_pm_clients_https_api_is_counted_and_found_without_its_content() {
    if !require_root(
        "scraping_through_the_pm_clients_https_api_is_counted_and_found_without_its_content",
    ) {
        return;
    }
    let Some(py) = python() else {
        panic!("Debian's python3 is needed (`cargo xtask setup` installs it)");
    };
    let fx = Fixture::new(env!("CARGO_BIN_EXE_cw-workload"), "query");
    let ca = clinicwatch_collector::auth::pki::new_ca("query test ca").unwrap();
    let cert = clinicwatch_collector::auth::pki::server_cert(&ca, &["localhost".into()]).unwrap();
    std::fs::write(fx.dir.join("ca.pem"), &ca.cert).unwrap();
    std::fs::write(fx.dir.join("server.pem"), &cert.cert).unwrap();
    std::fs::write(fx.dir.join("server.key"), &cert.key).unwrap();
    let server_py = fx.dir.join("cw-test-server.py");
    std::fs::write(&server_py, SERVER).unwrap();
    let mut server = Kill(
        Command::new(&py)
            .arg(&server_py)
            .arg(fx.dir.join("server.pem"))
            .arg(fx.dir.join("server.key"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let port: u16 = read_line(&mut server.0).parse().unwrap();

    const WINDOW: f64 = 10.0;
    const LEARN_SECS: f64 = 14.0;
    let output = fx.dir.join("events.jsonl");
    // Practice hours that never come: every window is outside them.
    let text = format!(
        "[agent]\nsnapshot_interval_secs = 0\nstate_dir = \"{state}\"\noutput = \"{out}\"\n\
         [intel]\nwindow_secs = {WINDOW}\nlearning_days = {days}\n\
         practice_hours = [\"sun 03:00-03:01\"]\nutc_offset_minutes = 0\n\
         [[app]]\nname = \"pm-client\"\nexe = \"{exe}\"\ncmdline = \"cw-pm-client\"\n",
        state = fx.state_dir().display(),
        out = output.display(),
        days = LEARN_SECS / 86_400.0,
        exe = py.display(),
    );
    let cfg = Config::from_toml(&text).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let agent = Agent::start(&cfg, true, Some(tx)).expect("agent starts");

    // Normal work through the learning period and a window past it.
    client(
        &agent,
        &py,
        &fx.dir,
        port,
        "normal",
        &(LEARN_SECS + WINDOW).to_string(),
    );
    let mut seen: Vec<Event> = rx.try_iter().collect();
    let findings: Vec<&Event> = seen
        .iter()
        .filter(|e| matches!(e, Event::Finding(f) if f.rule.starts_with("CW-QUERY")))
        .collect();
    assert!(
        findings.is_empty(),
        "findings during normal work: {findings:#?}"
    );
    let host = format!("localhost:{port}");
    let templates: std::collections::BTreeSet<String> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Query {
                method,
                host: h,
                path,
                ..
            } => Some(format!("{method} {h}{path}")),
            _ => None,
        })
        .collect();
    let expected: std::collections::BTreeSet<String> = [
        format!("GET {host}/api/v1/patients/{{id}}"),
        format!("GET {host}/api/v1/agenda?date&doctor"),
        format!("POST {host}/api/v1/notes"),
        format!("GET {host}/api/v1/search?nom&prenom"),
    ]
    .into();
    assert_eq!(templates, expected);

    // The scrape, just after a window starts: 5,000 records, then a request never made.
    std::thread::sleep(Duration::from_secs_f64(WINDOW - unix() % WINDOW + 0.05));
    let scrape_start = unix();
    client(&agent, &py, &fx.dir, port, "scrape", "5000");
    assert!(
        unix() - scrape_start < WINDOW - 0.5,
        "the scrape must fit in one window to be counted in one"
    );
    let deadline = Instant::now() + Duration::from_secs_f64(WINDOW + 10.0);
    let wanted = [
        "CW-QUERY-SCRAPE",
        "CW-QUERY-SURGE",
        "CW-QUERY-NEW",
        "CW-QUERY-OFF-HOURS",
    ];
    loop {
        seen.extend(rx.try_iter());
        let rules: Vec<&str> = seen
            .iter()
            .filter_map(|e| match e {
                Event::Finding(f) => Some(f.rule.as_str()),
                _ => None,
            })
            .collect();
        if wanted.iter().all(|w| rules.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "findings so far: {rules:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The scrape's window: 5,000 requests of one template, about 5,000 distinct records.
    let window: &WindowSummary = seen
        .iter()
        .filter_map(|e| match e {
            Event::Summary(w) if w.start <= scrape_start && scrape_start < w.end => Some(w),
            _ => None,
        })
        .next()
        .expect("the scrape's window summary");
    let patients = window
        .queries
        .iter()
        .find(|q| q.path == "/api/v1/patients/{id}")
        .expect("the patients template in the scrape window");
    assert_eq!(patients.requests, 5_000);
    assert_eq!(patients.responses, [0, 5_000, 0, 0, 0]);
    let err = (patients.distinct_ids as f64 - 5_000.0).abs() / 5_000.0;
    assert!(
        err <= 0.02,
        "distinct records estimated as {}",
        patients.distinct_ids
    );
    let export = window
        .queries
        .iter()
        .find(|q| q.path.starts_with("/api/v1/export/{h:"))
        .expect("the new template (`missing` is no route word: a keyed hash)");
    assert_eq!(export.responses[3], 1, "a 404");
    let scrape = seen
        .iter()
        .find_map(|e| match e {
            Event::Finding(f) if f.rule == "CW-QUERY-SCRAPE" => Some(f.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(scrape.subject, format!("GET {host}/api/v1/patients/{{id}}"));

    agent.stop();
    // Nothing the agent wrote or gave out holds a record id, a name or a payload byte.
    let mut written = String::new();
    all_text(&fx.dir.join("state"), &mut written);
    written.push_str(&std::fs::read_to_string(&output).unwrap_or_default());
    for e in &seen {
        written.push_str(&serde_json::to_string(e).unwrap());
    }
    assert!(
        written.contains("/api/v1/patients/{id}"),
        "the output holds the templates"
    );
    for secret in [
        "PX7Q",
        "DUPONTMARKER",
        "JEANMARKER",
        "PAYLOAD-SECRET-MARKER",
        "RESPONSE-SECRET-MARKER",
    ] {
        assert!(!written.contains(secret), "`{secret}` left the agent");
    }
}
