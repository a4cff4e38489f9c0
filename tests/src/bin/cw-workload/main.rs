//! A stand-in practice-management client for the end-to-end tests and the demo: each
//! subcommand does one kind of thing the sensor must see, with exact, known sizes.

mod loops;

use std::{
    fs::File,
    io::{IoSliceMut, Read, Write},
    net::TcpStream,
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::Path,
    process::{Command, ExitCode},
};

fn usage() -> ExitCode {
    eprintln!(
        "usage: cw-workload <command> ...\n\
         read|pread|readv|preadv FILE CHUNK   read FILE to the end in CHUNK-byte calls\n\
         fork-read FILE CHUNK                 a forked child reads FILE; prints the child's pid\n\
         connect ADDR SEND RECV               send SEND bytes to ADDR, read RECV bytes back\n\
         connect-shutdown ADDR SEND RECV      as `connect`, with shutdown(SHUT_WR) after the send\n\
         connect-wait ADDR SEND RECV          connect, print `connected`, wait for a line on\n\
                                              stdin, then as `connect`\n\
         shell                                run `/bin/sh -c 'exit 3'`\n\
         thread-exec PROGRAM ARGS...          a second thread execs PROGRAM\n\
         mmap FILE                            map FILE and touch every page\n\
         open FILE                            open FILE and read it once\n\
         wait-then-read FILE CHUNK            wait for a line on stdin, then read FILE\n\
         demo DIR ADDR                        the README demo: reads, a connect, a shell\n\
         loop-pread16 DIR SECS | loop-getpid SECS | loop-open FILE SECS | loop-pread FILE SECS\n\
         loop-connect ADDR SECS | loop-connect-accept SECS | loop-echo ADDR SECS\n\
         loop-macro DIR SECS                  tar and grep -r over DIR, repeatedly\n\
         burst-open DIR RATE SECS | burst-connect RATE SECS   paced opens / UDP connects\n\
         spawn-many N FILE                    fork N children in turn, each reads FILE\n\
         read-dir-then-wait DIR               read every file of DIR, then wait for stdin\n\
         blind FILE FORKS SOCKETS             open FILE, fork FORKS children and connect\n\
                                              SOCKETS UDP sockets, print `ready`, hold them\n\
                                              until stdin closes\n\
         pm-normal FILE ADDR SECS             a practice's day: 64 KiB of FILE and 512 B to ADDR\n\
                                              every 200 ms, on one connection\n\
         pm-exfil FILE ADDR                   read FILE in 1 MiB chunks, sending each to ADDR\n\
         resolve-connect DNS NAME PORT        ask DNS (connected UDP) for NAME's A record, then\n\
                                              connect to it on PORT; prints the address\n\
                                              timed loops for cw-bench: print `OPS SECONDS`"
    );
    ExitCode::from(2)
}

fn read_all(mode: &str, path: &str, chunk: usize) -> std::io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; chunk];
    let mut total = 0u64;
    loop {
        let n = match mode {
            "read" => f.read(&mut buf)?,
            "pread" => f.read_at(&mut buf, total)?,
            "readv" => {
                let (a, b) = buf.split_at_mut(chunk / 2);
                f.read_vectored(&mut [IoSliceMut::new(a), IoSliceMut::new(b)])?
            }
            "preadv" => {
                let (a, b) = buf.split_at_mut(chunk / 2);
                let iov = [
                    libc::iovec {
                        iov_base: a.as_mut_ptr().cast(),
                        iov_len: a.len(),
                    },
                    libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    },
                ];
                // SAFETY: two valid iovecs over `buf`.
                let n =
                    unsafe { libc::preadv(f.as_raw_fd(), iov.as_ptr(), 2, total as libc::off_t) };
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                n as usize
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "unknown read mode `{other}`"
                )))
            }
        };
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn connect(addr: &str, send: usize, recv: usize) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(&vec![b'x'; send])?;
    let mut back = vec![0u8; recv];
    s.read_exact(&mut back)?;
    Ok(())
}

/// As [`connect`], but the sending side is closed (`shutdown(SHUT_WR)`, a FIN) right after
/// the send, and the socket stays open until the peer closes too (its FIN acked).
fn connect_shutdown(addr: &str, send: usize, recv: usize) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(&vec![b'x'; send])?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = vec![0u8; recv];
    s.read_exact(&mut back)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    // The ACK of the peer's FIN goes out while the socket is still open.
    std::thread::sleep(std::time::Duration::from_millis(200));
    Ok(())
}

fn mmap_touch(path: &str) -> std::io::Result<u64> {
    let f = File::open(path)?;
    let len = f.metadata()?.len() as usize;
    // SAFETY: a private read-only mapping of an open file, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let mut sum = 0u64;
    for off in (0..len).step_by(4096) {
        // SAFETY: inside the mapping.
        sum += unsafe { *(p as *const u8).add(off) } as u64;
    }
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, len) };
    Ok(sum)
}

fn run(args: &[String]) -> std::io::Result<ExitCode> {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let secs = |i: usize| {
        arg(i)
            .parse::<f64>()
            .map_err(|_| std::io::Error::other(format!("argument {i} must be seconds")))
    };
    let num = |i: usize| {
        arg(i)
            .parse::<usize>()
            .map_err(|_| std::io::Error::other(format!("argument {i} must be a number")))
    };
    match arg(0) {
        m @ ("read" | "pread" | "readv" | "preadv") => {
            println!("{}", read_all(m, arg(1), num(2)?)?);
        }
        "fork-read" => {
            let chunk = num(2)?;
            // SAFETY: the child only reads a file and exits.
            match unsafe { libc::fork() } {
                -1 => return Err(std::io::Error::last_os_error()),
                0 => {
                    let code = if read_all("read", arg(1), chunk).is_ok() {
                        0
                    } else {
                        1
                    };
                    // SAFETY: leave the child without running the parent's destructors.
                    unsafe { libc::_exit(code) };
                }
                child => {
                    println!("{child}");
                    let mut status = 0;
                    // SAFETY: waiting for our own child.
                    unsafe { libc::waitpid(child, &mut status, 0) };
                }
            }
        }
        "connect" => connect(arg(1), num(2)?, num(3)?)?,
        "connect-shutdown" => connect_shutdown(arg(1), num(2)?, num(3)?)?,
        "connect-wait" => {
            // Connected first, then (after a line on stdin) the exchange: a flow that lives
            // through what happens meanwhile.
            let mut s = TcpStream::connect(arg(1))?;
            println!("connected");
            std::io::stdout().flush()?;
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)?;
            s.write_all(&vec![b'x'; num(2)?])?;
            let mut back = vec![0u8; num(3)?];
            s.read_exact(&mut back)?;
        }
        "thread-exec" => {
            // A thread other than the main one replaces the program: the kernel kills the
            // main thread first, and the process lives on under the same pid.
            let argv: Vec<std::ffi::CString> = args[1..]
                .iter()
                .map(|a| std::ffi::CString::new(a.as_str()))
                .collect::<Result<_, _>>()
                .map_err(std::io::Error::other)?;
            let t = std::thread::spawn(move || {
                let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
                ptrs.push(std::ptr::null());
                // SAFETY: NUL-terminated strings and a NULL-terminated array.
                unsafe { libc::execv(ptrs[0], ptrs.as_ptr()) };
                std::io::Error::last_os_error()
            });
            return Err(t
                .join()
                .unwrap_or_else(|_| std::io::Error::other("exec thread panicked")));
        }
        "shell" => {
            let status = Command::new("/bin/sh").args(["-c", "exit 3"]).status()?;
            println!("{}", status.code().unwrap_or(-1));
        }
        "mmap" => println!("{}", mmap_touch(arg(1))?),
        "open" => {
            let mut s = Vec::new();
            File::open(arg(1))?.read_to_end(&mut s)?;
        }
        "wait-then-read" => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            println!("{}", read_all("read", arg(1), num(2)?)?);
        }
        "pm-normal" => {
            let (f, mut s) = (File::open(arg(1))?, TcpStream::connect(arg(2))?);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs(3)?);
            let len = f.metadata()?.len().max(1);
            let (mut buf, mut off, mut read) = (vec![0u8; 64 * 1024], 0u64, 0u64);
            while std::time::Instant::now() < deadline {
                let n = f.read_at(&mut buf, off)?;
                read += n as u64;
                off = (off + n as u64) % len;
                s.write_all(&buf[..512])?;
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            println!("{read}");
        }
        "pm-exfil" => {
            let (mut f, mut s) = (File::open(arg(1))?, TcpStream::connect(arg(2))?);
            let (mut buf, mut sent) = (vec![0u8; 1 << 20], 0u64);
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n])?;
                sent += n as u64;
            }
            println!("{sent}");
        }
        "tls-write" => {
            let n = tls_write(
                arg(1),
                arg(2).parse().unwrap_or(2.0),
                arg(3).parse().unwrap_or(1),
                arg(4),
            )?;
            println!("{n}");
        }
        "resolve-connect" => {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            sock.connect(arg(1))?;
            sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in arg(2).split('.') {
                q.push(label.len() as u8);
                q.extend_from_slice(label.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            sock.send(&q)?;
            let mut buf = [0u8; 512];
            let n = sock.recv(&mut buf)?;
            let (_, ips) = clinicwatch_agent::pipeline::dns::answers(&buf[..n])
                .ok_or_else(|| std::io::Error::other("not a DNS answer"))?;
            let ip = ips
                .first()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            drop(TcpStream::connect((*ip, num(3)? as u16))?);
            println!("{ip}");
        }
        "demo" => {
            let dir = arg(1);
            println!(
                "read {} bytes of patients.db",
                read_all("read", &format!("{dir}/patients.db"), 4096)?
            );
            println!(
                "pread {} bytes of notes.db",
                read_all("pread", &format!("{dir}/notes.db"), 4096)?
            );
            connect(arg(2), 64 * 1024, 4096)?;
            println!("sent 65536 bytes to {}, got 4096 back", arg(2));
            let status = Command::new("/bin/sh")
                .args(["-c", "id -u > /dev/null"])
                .status()?;
            println!("shell exited with {status}");
        }
        "loop-pread16" => loops::pread16(Path::new(arg(1)), secs(2)?)?,
        "loop-getpid" => loops::getpid(secs(1)?)?,
        "loop-open" => loops::open_close(Path::new(arg(1)), secs(2)?)?,
        "loop-pread" => loops::pread1(Path::new(arg(1)), secs(2)?)?,
        "loop-connect" => loops::connect(arg(1), secs(2)?)?,
        "loop-connect-accept" => loops::connect_accept(secs(1)?)?,
        "loop-echo" => loops::echo(arg(1), secs(2)?)?,
        "loop-macro" => loops::macro_job(Path::new(arg(1)), secs(2)?)?,
        "burst-open" => loops::burst_open(Path::new(arg(1)), secs(2)?, secs(3)?)?,
        "burst-connect" => loops::burst_connect(secs(1)?, secs(2)?)?,
        "spawn-many" => loops::spawn_many(num(1)? as u32, Path::new(arg(2)))?,
        "read-dir-then-wait" => loops::read_dir_then_wait(Path::new(arg(1)))?,
        "blind" => loops::blind(Path::new(arg(1)), num(2)?, num(3)?)?,
        _ => return Ok(usage()),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cw-workload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads an OpenSSL `libssl` at run time (as applications that pick their TLS library do)
/// and calls `SSL_write` `n` times on an SSL object without a connection: each call returns
/// an error, after the library's entry, where the uprobe reads the buffer. Returns how many
/// calls were made.
fn tls_write(lib: &str, wait: f64, n: u32, request: &str) -> std::io::Result<u32> {
    use std::ffi::{c_int, c_void, CString};
    let err = |what: &str| std::io::Error::other(format!("{lib}: {what}"));
    let name = CString::new(lib).map_err(|_| err("bad path"))?;
    // SAFETY: dlopen/dlsym with valid C strings; the symbols are OpenSSL's, called with the
    // argument types of their C declarations.
    unsafe {
        let h = libc::dlopen(name.as_ptr(), libc::RTLD_NOW);
        if h.is_null() {
            return Err(err("cannot load"));
        }
        let sym = |s: &str| {
            let c = CString::new(s).unwrap_or_default();
            let p = libc::dlsym(h, c.as_ptr());
            if p.is_null() {
                Err(err(&format!("no symbol {s}")))
            } else {
                Ok(p)
            }
        };
        let method: extern "C" fn() -> *const c_void =
            std::mem::transmute(sym("TLS_client_method")?);
        let ctx_new: extern "C" fn(*const c_void) -> *mut c_void =
            std::mem::transmute(sym("SSL_CTX_new")?);
        let ssl_new: extern "C" fn(*mut c_void) -> *mut c_void =
            std::mem::transmute(sym("SSL_new")?);
        let write: extern "C" fn(*mut c_void, *const c_void, c_int) -> c_int =
            std::mem::transmute(sym("SSL_write")?);
        let ctx = ctx_new(method());
        let ssl = if ctx.is_null() { ctx } else { ssl_new(ctx) };
        if ssl.is_null() {
            return Err(err("cannot make an SSL object"));
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(wait));
        let req = request.replace("\\r\\n", "\r\n");
        for _ in 0..n {
            write(ssl, req.as_ptr().cast(), req.len() as c_int);
        }
        Ok(n)
    }
}
