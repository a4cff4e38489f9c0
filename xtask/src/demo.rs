//! `cargo xtask demo`: the agent watching a stand-in practice-management client that reads
//! its patient database, sends data to a loopback server and runs a shell, while another
//! program reads a protected browser cookie store. Prints the agent's JSON events.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::util::target_dir;

pub fn demo() -> anyhow::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs: run it as root (sudo -E cargo xtask demo)");
    }
    let bin = target_dir().join("debug");
    let dir = std::env::temp_dir().join("clinicwatch-demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("profile"))?;
    let app = dir.join("pm-client");
    std::fs::copy(bin.join("cw-workload"), &app)
        .context("the workload binary (cargo xtask build)")?;
    std::fs::write(dir.join("patients.db"), vec![b'p'; 2 * 1024 * 1024])?;
    std::fs::write(dir.join("notes.db"), vec![b'n'; 256 * 1024])?;
    std::fs::write(dir.join("profile/Cookies"), b"session=...")?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\noutput = \"-\"\nsnapshot_interval_secs = 2\nstate_dir = \"{state}\"\n\n\
             # No learning period: everything the demo does is new to the baseline.\n\
             [intel]\nwindow_secs = 5\nlearning_days = 0\npractice_hours = [\"daily 00:00-24:00\"]\n\n\
             [[app]]\nname = \"pm-client\"\nexe = \"{app}\"\ndata = [\"{dir}/*.db\"]\n\n\
             [[protected]]\nname = \"browser-cookies\"\npath = \"{cookies}\"\n",
            state = dir.join("state").display(),
            app = app.display(),
            dir = dir.display(),
            cookies = dir.join("profile/Cookies").display()
        ),
    )?;

    // A loopback "vendor API": reads 64 KiB, answers 4 KiB.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = vec![0u8; 64 * 1024];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&[b'r'; 4096]);
            }
            let _ = s.read_to_end(&mut Vec::new());
        }
    });

    eprintln!(
        "demo: config {}\ndemo: starting the agent",
        config.display()
    );
    let mut agent = Command::new(bin.join("clinicwatch-agent"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start clinicwatch-agent")?;
    let stdout = agent.stdout.take().context("agent stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let printer = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("\"type\":\"startup\"") => break,
            Ok(_) => {}
            Err(_) if Instant::now() > deadline => bail!("the agent did not start within 30 s"),
            Err(_) => {
                if let Some(status) = agent.try_wait()? {
                    bail!("the agent exited: {status}");
                }
            }
        }
    }
    eprintln!(
        "demo: running the workload {} demo {} {addr}",
        app.display(),
        dir.display()
    );
    let status = Command::new(&app)
        .arg("demo")
        .arg(&dir)
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .status()?;
    eprintln!("demo: workload finished: {status}");
    eprintln!("demo: an unwatched program reads the protected cookie store");
    Command::new("cat")
        .arg(dir.join("profile/Cookies"))
        .stdout(Stdio::null())
        .status()?;
    std::thread::sleep(Duration::from_millis(2500));
    eprintln!("demo: stopping the agent (SIGINT, as Ctrl-C)");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let status = agent.wait()?;
    let _ = printer.join();
    eprintln!("demo: agent exited: {status}; files in {}", dir.display());
    if !status.success() {
        bail!("the agent failed");
    }
    let _ = Path::new(&dir);
    Ok(())
}
