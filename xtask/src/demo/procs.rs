//! What the demo needs of the machine: a private folder, child processes that end with it
//! (on return, on error, on Ctrl-C), free loopback ports and a plain HTTP GET.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::DirBuilderExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set a flag the demo's waits look at, so that it stops its children
/// and removes its folder before it exits.
pub fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails once Ctrl-C (or SIGTERM) was seen.
pub fn check_stop() -> anyhow::Result<()> {
    if stopped() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, or less if interrupted.
pub fn nap(d: Duration) {
    let end = Instant::now() + d;
    while !stopped() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}

/// A new folder only we can read, with an unpredictable name, under the system's temporary
/// folder; removed on drop unless `keep` (a failed run keeps it to look at).
pub struct PrivateDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl PrivateDir {
    pub fn new(prefix: &str) -> anyhow::Result<PrivateDir> {
        let base = std::env::temp_dir();
        for _ in 0..16 {
            let mut r = [0u8; 8];
            // SAFETY: writes 8 bytes into r.
            if unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) } != 8 {
                bail!("getrandom failed");
            }
            let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
            let path = base.join(format!("{prefix}.{name}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path, keep: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot make `{}`", path.display()))
                }
            }
        }
        bail!("no free name for a folder in `{}`", base.display())
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "demo: files kept in {} (its logs: collector.log, agent.log, fleet.log; the agent's events: agent-events.jsonl)",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

struct Proc {
    name: &'static str,
    child: Child,
    /// How it is asked to stop: SIGINT for the agent (as Ctrl-C), SIGTERM for the others.
    signal: libc::c_int,
    /// Runs until the demo ends (its exit is a failure), or may finish its job before.
    lasting: bool,
}

/// The demo's child processes. Each runs in its own process group (Ctrl-C reaches the demo
/// alone, which stops them in order: the last started first) and gets SIGTERM if the demo
/// dies without cleaning up.
#[derive(Default)]
pub struct Children(Vec<Proc>);

impl Children {
    /// A child that runs until the demo ends.
    pub fn spawn(
        &mut self,
        name: &'static str,
        cmd: &mut Command,
        signal: libc::c_int,
    ) -> anyhow::Result<&mut Child> {
        self.start(name, cmd, signal, true)
    }

    /// A child that may end before the demo (stopped with it if it has not).
    pub fn spawn_job(
        &mut self,
        name: &'static str,
        cmd: &mut Command,
    ) -> anyhow::Result<&mut Child> {
        self.start(name, cmd, libc::SIGTERM, false)
    }

    fn start(
        &mut self,
        name: &'static str,
        cmd: &mut Command,
        signal: libc::c_int,
        lasting: bool,
    ) -> anyhow::Result<&mut Child> {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        self.0.push(Proc {
            name,
            child,
            signal,
            lasting,
        });
        Ok(&mut self.0.last_mut().expect("just pushed").child)
    }

    /// Fails if one that runs until the demo ends has exited (and reaps the others).
    pub fn check(&mut self) -> anyhow::Result<()> {
        for p in &mut self.0 {
            match p.child.try_wait()? {
                Some(status) if p.lasting => bail!("{} exited: {status}", p.name),
                _ => {}
            }
        }
        Ok(())
    }

    /// Stops the last started first; waits up to 10 s each, then kills.
    pub fn stop_all(&mut self) {
        while let Some(mut p) = self.0.pop() {
            if matches!(p.child.try_wait(), Ok(Some(_))) {
                continue;
            }
            // SAFETY: signalling our own child.
            unsafe { libc::kill(p.child.id() as i32, p.signal) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(p.child.try_wait(), Ok(None)) {
                eprintln!("demo: {} did not stop within 10 s: killed", p.name);
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A loopback port free now (bound and released: a port another program takes in between
/// makes the collector fail to start, with that error).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET path` over plain HTTP/1.1: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status from {addr}"))?;
    Ok((code, body.to_string()))
}

/// A file only its owner can read or write.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write `{}`", path.display()))
}

/// A child's stdin, and its stdout as lines read by a thread.
pub struct Piped {
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Piped {
    /// For a child spawned with piped stdin and stdout.
    pub fn new(child: &mut Child) -> anyhow::Result<Piped> {
        let stdin = child
            .stdin
            .take()
            .context("the child's stdin is not piped")?;
        let stdout = child
            .stdout
            .take()
            .context("the child's stdout is not piped")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Piped { stdin, lines })
    }

    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .context("the child stopped reading")
    }

    /// A line, if one came.
    pub fn line(&self) -> Option<String> {
        self.lines.try_recv().ok()
    }
}
