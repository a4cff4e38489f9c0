//! Timed loops for the benchmarks (`cw-bench`): each runs for a given number of seconds and
//! prints `OPS SECONDS` on its first line (and, for `loop-pread16`, the bytes it read from
//! each file on the following lines, as the ground truth the agent's counters must equal).

use std::{
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::Path,
    time::{Duration, Instant},
};

const PAGE: usize = 4096;

/// Runs `step` (which returns how many operations it did) until `secs` have passed, checking
/// the clock every `batch` steps. Returns (operations, seconds).
fn timed(
    secs: f64,
    batch: u32,
    mut step: impl FnMut() -> std::io::Result<u64>,
) -> std::io::Result<(u64, f64)> {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut ops = 0u64;
    loop {
        for _ in 0..batch {
            ops += step()?;
        }
        if start.elapsed() >= limit {
            return Ok((ops, start.elapsed().as_secs_f64()));
        }
    }
}

fn report((ops, secs): (u64, f64)) {
    println!("{ops} {secs:.6}");
}

/// An abortive close (RST): leaves no TIME_WAIT socket, so long loops do not run out of ports.
fn abortive_close(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a valid option struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

/// 4 KiB preads over the 16 files `DIR/f00`..`DIR/f15`, with an open and a close every 64
/// reads. Prints the ground truth per file after the totals.
pub fn pread16(dir: &Path, secs: f64) -> std::io::Result<()> {
    let paths: Vec<_> = (0..16).map(|i| dir.join(format!("f{i:02}"))).collect();
    let sizes: Vec<u64> = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .collect::<Result<_, _>>()?;
    let mut bytes = [0u64; 16];
    let mut buf = [0u8; PAGE];
    let mut turn = 0usize;
    let r = timed(secs, 1, || {
        let i = turn % 16;
        turn += 1;
        let f = File::open(&paths[i])?;
        let pages = (sizes[i] / PAGE as u64).max(1);
        for k in 0..64u64 {
            let off = ((turn as u64 * 64 + k) % pages) * PAGE as u64;
            bytes[i] += f.read_at(&mut buf, off)? as u64;
        }
        Ok(64)
    })?;
    report(r);
    for (p, b) in paths.iter().zip(bytes) {
        println!("{} {b}", p.display());
    }
    Ok(())
}

pub fn getpid(secs: f64) -> std::io::Result<()> {
    report(timed(secs, 4096, || {
        // SAFETY: a raw syscall without arguments (glibc's getpid may be cached).
        unsafe { libc::syscall(libc::SYS_getpid) };
        Ok(1)
    })?);
    Ok(())
}

pub fn open_close(file: &Path, secs: f64) -> std::io::Result<()> {
    report(timed(secs, 256, || {
        File::open(file)?;
        Ok(1)
    })?);
    Ok(())
}

pub fn pread1(file: &Path, secs: f64) -> std::io::Result<()> {
    let f = File::open(file)?;
    let pages = (f.metadata()?.len() / PAGE as u64).max(1);
    let mut buf = [0u8; PAGE];
    let mut k = 0u64;
    report(timed(secs, 1024, || {
        k += 1;
        f.read_at(&mut buf, (k % pages) * PAGE as u64)?;
        Ok(1)
    })?);
    Ok(())
}

/// Connects to `addr`, waits for the peer to accept and close, closes; over and over. Waiting
/// for the peer keeps the loop in step with its accepts, so the backlog never overflows.
pub fn connect(addr: &str, secs: f64) -> std::io::Result<()> {
    report(timed(secs, 16, || {
        let mut s = TcpStream::connect(addr)?;
        let _ = s.read(&mut [0u8; 1])?;
        abortive_close(&s);
        Ok(1)
    })?);
    Ok(())
}

/// Connect, accept and close, both ends in this process.
pub fn connect_accept(secs: f64) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    report(timed(secs, 16, || {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        abortive_close(&c);
        drop(s);
        Ok(1)
    })?);
    Ok(())
}

/// A macro job, over and over: `tar` archives `dir` into a pipe this process drains, then
/// `grep -r` searches it. Both children are part of the watched tree.
pub fn macro_job(dir: &Path, secs: f64) -> std::io::Result<()> {
    report(timed(secs, 1, || {
        let mut tar = std::process::Command::new("tar")
            .arg("-cf")
            .arg("-")
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut out = tar
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("tar stdout"))?;
        std::io::copy(&mut out, &mut std::io::sink())?;
        if !tar.wait()?.success() {
            return Err(std::io::Error::other("tar failed"));
        }
        std::process::Command::new("grep")
            .args(["-rc", "needle"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .status()?;
        Ok(1)
    })?);
    Ok(())
}

/// Paces `op` at `rate` per second for `secs` seconds (spinning between operations).
/// Prints `OPS SECONDS`.
fn paced(rate: f64, secs: f64, mut op: impl FnMut() -> std::io::Result<()>) -> std::io::Result<()> {
    let start = Instant::now();
    let mut done = 0u64;
    loop {
        let t = start.elapsed().as_secs_f64();
        if t >= secs {
            break;
        }
        let due = (t * rate) as u64;
        while done < due {
            op()?;
            done += 1;
        }
        std::hint::spin_loop();
    }
    report((done, start.elapsed().as_secs_f64()));
    Ok(())
}

/// Opens and closes the 16 files `DIR/f00`..`DIR/f15` in turn, `rate` times a second.
pub fn burst_open(dir: &Path, rate: f64, secs: f64) -> std::io::Result<()> {
    let paths: Vec<_> = (0..16).map(|i| dir.join(format!("f{i:02}"))).collect();
    let mut i = 0usize;
    paced(rate, secs, || {
        File::open(&paths[i % 16])?;
        i += 1;
        Ok(())
    })
}

/// Connects a UDP socket to 127.0.0.1:9 and closes it, `rate` times a second (a UDP connect
/// sends nothing, so only the sensor's connect and close paths are exercised).
pub fn burst_connect(rate: f64, secs: f64) -> std::io::Result<()> {
    paced(rate, secs, || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.connect("127.0.0.1:9")?;
        Ok(())
    })
}

/// Forks `n` children one after the other; each reads `file` once and exits.
pub fn spawn_many(n: u32, file: &Path) -> std::io::Result<()> {
    for _ in 0..n {
        // SAFETY: the child only reads a file and leaves with `_exit`.
        match unsafe { libc::fork() } {
            -1 => return Err(std::io::Error::last_os_error()),
            0 => {
                let ok = std::fs::read(file).is_ok();
                // SAFETY: leave the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
            }
        }
    }
    println!("{n}");
    Ok(())
}

/// Reads every file in `dir` once (in name order), then waits for a line on stdin before
/// exiting, so its counters can be looked at while it is alive.
pub fn read_dir_then_wait(dir: &Path) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut bytes = 0u64;
    for p in &names {
        bytes += std::fs::read(p)?.len() as u64;
    }
    println!("{} {bytes}", names.len());
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

/// 4 KiB round trips to an echo server at `addr`.
pub fn echo(addr: &str, secs: f64) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let out = [7u8; PAGE];
    let mut back = [0u8; PAGE];
    report(timed(secs, 64, || {
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        Ok(1)
    })?);
    Ok(())
}

/// What a local user trying to blind the sensor does: opens a protected file (so that the
/// agent follows it), prints `opened` and waits for a line on stdin; then forks `forks`
/// children that wait, and connects `sockets` UDP sockets (raising its descriptor limit as
/// root can); prints `ready`, holds all of it until stdin closes, then lets the children go
/// and waits for them.
pub fn blind(file: &Path, forks: usize, sockets: usize) -> std::io::Result<()> {
    use std::io::BufRead as _;
    let _protected = std::fs::File::open(file)?;
    // The agent follows a reader once it has seen the open: the test says when.
    println!("opened");
    std::io::stdout().flush()?;
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go)?;
    let want = (sockets + 64) as libc::rlim_t;
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: a plain struct; failure leaves the old limit (then fewer sockets open).
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut children = 0;
    for _ in 0..forks {
        // SAFETY: the child only blocks on the pipe and leaves with `_exit`.
        match unsafe { libc::fork() } {
            -1 => break,
            0 => unsafe {
                // SAFETY: descriptors of this process; the read returns 0 once the parent
                // closes its end.
                libc::close(fds[1]);
                let mut b = [0u8; 1];
                libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            },
            _ => children += 1,
        }
    }
    let mut held = Vec::new();
    for _ in 0..sockets {
        let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            break;
        };
        if s.connect("127.0.0.1:9").is_ok() {
            held.push(s);
        }
    }
    println!("ready {children} {}", held.len());
    std::io::stdout().flush()?;
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(held);
    // SAFETY: our own descriptor; the children see end of file and leave.
    unsafe { libc::close(fds[1]) };
    for _ in 0..children {
        let mut status = 0;
        // SAFETY: waiting for our own children.
        unsafe { libc::waitpid(-1, &mut status, 0) };
    }
    Ok(())
}
