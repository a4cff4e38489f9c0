//! A private PostgreSQL server from the machine's Debian packages (`postgresql`, installed by
//! `cargo xtask setup`), or the one `CLINICWATCH_PG_URL` names. One server per test binary,
//! run as the `postgres` user when we are root; it dies with the test process. Each test
//! gets its own database.
//!
//! The server has TLS on, with a certificate for `localhost` from a CA of the test's own,
//! and its `pg_hba.conf` accepts TCP only over TLS: the URLs tests get are
//! `postgres://cw@localhost:PORT/DB?sslmode=verify-full&sslrootcert=CA`, so every
//! PostgreSQL test runs the store's TLS path. Administration (creating databases) goes
//! over the Unix socket.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
};

fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file() && b.join("postgres").is_file())
        .collect();
    found.sort();
    found.pop()
}

/// (uid, gid) to run the server as: ours, or `postgres`'s when we are root.
fn run_as() -> Result<(u32, u32), String> {
    // SAFETY: plain syscalls; getpwnam's result is read before any other call.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok((libc::geteuid(), libc::getegid()));
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            return Err("no `postgres` user to run PostgreSQL as".into());
        }
        Ok(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn as_user(cmd: &mut Command, uid: u32, gid: u32) -> &mut Command {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::getuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // After setuid (which clears it): the server dies with the test process.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        })
    }
}

/// The private server: where to administer it and how tests reach it.
#[derive(Clone)]
pub struct Server {
    /// libpq key=value over the Unix socket (no TLS), without `dbname`.
    admin: String,
    /// The TCP port (TLS).
    pub port: u16,
    /// The CA the server's certificate chains to.
    pub ca: PathBuf,
    dir: PathBuf,
}

impl Server {
    /// A URL of database `db` over TCP with TLS `verify-full` against the test CA.
    pub fn url(&self, host: &str, db: &str) -> String {
        format!(
            "postgres://cw@{host}:{}/{db}?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.ca.display()
        )
    }
}

/// The CA, and the server's certificate and key (owned by the server's user, 0600).
fn tls_files(dir: &Path, uid: u32, gid: u32) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    use clinicwatch_collector::auth::pki;
    use std::os::unix::fs::PermissionsExt as _;
    let ca = pki::new_ca("clinicwatch test PostgreSQL CA").map_err(|e| e.to_string())?;
    let server = pki::server_cert(&ca, &["localhost".to_string()]).map_err(|e| e.to_string())?;
    let (ca_path, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca_path, &ca.cert).map_err(|e| e.to_string())?;
    std::fs::write(&cert, &server.cert).map_err(|e| e.to_string())?;
    std::fs::write(&key, &server.key).map_err(|e| e.to_string())?;
    for f in [&cert, &key] {
        std::os::unix::fs::chown(f, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok((ca_path, cert, key))
}

fn start() -> Result<Server, String> {
    if let Ok(url) = std::env::var("CLINICWATCH_PG_URL") {
        return Ok(Server {
            admin: url,
            port: 0,
            ca: PathBuf::new(),
            dir: PathBuf::new(),
        });
    }
    let bin = pg_bin().ok_or("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb); `cargo xtask setup` installs it")?;
    let (uid, gid) = run_as()?;
    // Folders left by earlier test processes that are gone.
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("cw-pg-")
                .and_then(|p| p.parse::<u32>().ok())
            {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("cw-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    let data = dir.join("data");
    let out = as_user(
        Command::new(bin.join("initdb"))
            .args(["-A", "trust", "-U", "cw", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data),
        uid,
        gid,
    )
    .output()
    .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (ca, cert, key) = tls_files(&dir, uid, gid)?;
    // The socket for administration; TCP only with TLS (a plaintext TCP connection finds
    // no entry and is refused).
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
    )
    .map_err(|e| e.to_string())?;
    let port = 50_000 + (std::process::id() % 10_000) as u16;
    // The server is started from a thread that lives as long as the process, so that the
    // parent-death signal fires only when the test process ends.
    let (tx, rx) = std::sync::mpsc::channel();
    let (d, s, b, cert, key) = (
        data.clone(),
        dir.clone(),
        bin.clone(),
        cert.clone(),
        key.clone(),
    );
    std::thread::spawn(move || {
        let child = as_user(
            Command::new(b.join("postgres"))
                .arg("-D")
                .arg(&d)
                .args(["-k"])
                .arg(&s)
                .args([
                    "-c",
                    "listen_addresses=localhost",
                    "-c",
                    "ssl=on",
                    "-c",
                    &format!("ssl_cert_file={}", cert.display()),
                    "-c",
                    &format!("ssl_key_file={}", key.display()),
                    "-c",
                    "fsync=on",
                    "-p",
                    &port.to_string(),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(
                    std::fs::File::create(s.join("postgres.log"))
                        .map_or(std::process::Stdio::null(), Into::into),
                ),
            uid,
            gid,
        )
        .spawn();
        let _ = tx.send(child.map(|_| ()).map_err(|e| e.to_string()));
        loop {
            std::thread::park();
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    let socket = dir.join(format!(".s.PGSQL.{port}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !socket.exists() {
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            return Err(format!("PostgreSQL did not start: {log}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The socket exists before the server accepts connections ("the database system is
    // starting up"): ready when a connection succeeds.
    let base = format!("host={} port={port} user=cw", dir.display());
    loop {
        match postgres::Client::connect(&format!("{base} dbname=postgres"), postgres::NoTls) {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(format!("PostgreSQL does not accept connections: {e:?}"))
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Ok(Server {
        admin: base,
        port,
        ca,
        dir,
    })
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A URL of a fresh database, or why there is none. Missing PostgreSQL fails the test when
/// `CLINICWATCH_EXPECT_PG=1` (as `cargo xtask test` sets), else the caller skips.
pub fn database(test: &str) -> Option<String> {
    let (name, server) = new_database(test)?;
    Some(if server.port == 0 {
        format!("{} dbname={name}", server.admin)
    } else {
        server.url("localhost", &name)
    })
}

/// A fresh database's name and the server it is on, or `None` (skipped; see [`database`]).
pub fn new_database(test: &str) -> Option<(String, Server)> {
    let server = match SERVER.get_or_init(start) {
        Ok(s) => s.clone(),
        Err(why) => {
            if std::env::var("CLINICWATCH_EXPECT_PG").as_deref() == Ok("1") {
                panic!("{test}: PostgreSQL is needed: {why}");
            }
            clinicwatch_testkit::skip(test, why);
            return None;
        }
    };
    let name = format!(
        "cw_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    admin(&server, "postgres", &format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("{test}: CREATE DATABASE: {e}"));
    Some((name, server))
}

/// Runs `sql` in database `db` over the administration socket (no TLS).
pub fn admin(server: &Server, db: &str, sql: &str) -> Result<(), String> {
    admin_connect(server, db)?
        .batch_execute(sql)
        .map_err(|e| format!("{e:?}"))
}

fn admin_connect(server: &Server, db: &str) -> Result<postgres::Client, String> {
    let base = &server.admin;
    postgres::Client::connect(&format!("{base} dbname={db}"), postgres::NoTls)
        .map_err(|e| format!("cannot connect to PostgreSQL at `{base}`: {e:?}"))
}

/// A connection to database `db` over the administration socket, for tests that hold
/// locks or read what the store wrote.
#[allow(dead_code)]
pub fn admin_client(server: &Server, db: &str) -> postgres::Client {
    admin_connect(server, db).unwrap_or_else(|e| panic!("{e}"))
}

/// The private server's folder (its socket, data and logs).
fn server_dir() -> Option<PathBuf> {
    match SERVER.get() {
        Some(Ok(s)) if s.port != 0 => Some(s.dir.clone()),
        _ => None,
    }
}

/// Restarts the private server (fast shutdown: open connections are cut, as when the
/// database host reboots), with the options it had; returns once it accepts connections
/// again. The restarted server is a daemon: [`stop`] it when done.
#[allow(dead_code)]
pub fn restart(_url: &str) -> Result<(), String> {
    let dir = server_dir().ok_or("no private PostgreSQL server to restart")?;
    let bin = pg_bin().ok_or("no PostgreSQL")?;
    let (uid, gid) = run_as()?;
    let out = as_user(
        Command::new(bin.join("pg_ctl"))
            .args(["-m", "fast", "-w", "-t", "60", "-l"])
            // The first log is the test process's file; the server's user writes this one.
            .arg(dir.join("postgres-restarted.log"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("restart"),
        uid,
        gid,
    )
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .output()
    .map_err(|e| format!("pg_ctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Stops the private server (after [`restart`], which leaves it running as a daemon).
#[allow(dead_code)]
pub fn stop(_url: &str) {
    let (Some(dir), Some(bin), Ok((uid, gid))) = (server_dir(), pg_bin(), run_as()) else {
        return;
    };
    let _ = as_user(
        Command::new(bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(dir.join("data"))
            .arg("stop"),
        uid,
        gid,
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .status();
}
