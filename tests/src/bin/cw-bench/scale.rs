//! Scenario 6, memory and scale of tracking: 10,000 watched processes over time and 100,000
//! distinct files read by one process. Maps must stay bounded, live counters exact, and
//! evictions counted and reported.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clinicwatch_agent::{Agent, Event};

use crate::scenarios::Bench;

const PROCESSES: u32 = 10_000;
const FILES: usize = 100_000;
const FILE_BYTES: usize = 16;

/// Memory the kernel charges for this process' eBPF maps (`memlock` in fdinfo), in bytes.
pub fn bpf_map_memory(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map")
        })
        .filter_map(|e| {
            std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .ok()
        })
        .filter_map(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("memlock:")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        })
        .sum()
}

fn wait_exit(
    rx: &Receiver<Event>,
    pid: u32,
    mut each: impl FnMut(&Event),
) -> anyhow::Result<Event> {
    loop {
        let ev = rx
            .recv_timeout(Duration::from_secs(60))
            .context("no exit event within 60 s")?;
        each(&ev);
        if matches!(&ev, Event::Exit { pid: p, .. } if *p == pid) {
            return Ok(ev);
        }
    }
}

fn health(agent: &Agent) -> anyhow::Result<(usize, clinicwatch_agent::event::Health)> {
    match agent.snapshot() {
        Event::Snapshot {
            processes, health, ..
        } => Ok((processes.len(), health)),
        other => bail!("not a snapshot: {other:?}"),
    }
}

pub fn run(bench: &Bench) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let small = bench.dir.join("small.db");
    std::fs::write(&small, vec![3u8; 4096])?;
    let many = bench.dir.join("many");
    std::fs::create_dir_all(&many)?;
    for i in 0..FILES {
        std::fs::write(many.join(format!("{i:06}")), [b'x'; FILE_BYTES])?;
    }

    let (tx, rx) = std::sync::mpsc::channel();
    let agent = Agent::start(&bench.config(&[])?, false, Some(tx))?;

    // 10,000 processes, one after the other.
    let started = Instant::now();
    let parent = Command::new(&bench.app)
        .arg("spawn-many")
        .arg(PROCESSES.to_string())
        .arg(&small)
        .stdout(Stdio::null())
        .spawn()?;
    let ppid = parent.id();
    let (mut forks, mut exact_exits, mut exits) = (0u32, 0u32, 0u32);
    wait_exit(&rx, ppid, |ev| match ev {
        Event::Fork { ppid: p, .. } if *p == ppid => forks += 1,
        Event::Exit { pid, files, .. } if *pid != ppid => {
            exits += 1;
            if files
                .iter()
                .any(|f| Path::new(&f.path) == small && f.bytes_read == 4096)
            {
                exact_exits += 1;
            }
        }
        _ => {}
    })?;
    let secs = started.elapsed().as_secs_f64();
    let (procs, h) = health(&agent)?;
    out.push(format!(
        "6a {PROCESSES} watched processes in {secs:.1} s: {forks} forks and {exits} exits reported, {exact_exits} with exactly 4096 bytes of small.db; afterwards {} in the kernel's watched map, {procs} in the agent's table; ring-buffer drops {}",
        h.watched_processes, h.ringbuf_drops
    ));
    if forks != PROCESSES || exact_exits != PROCESSES || h.watched_processes != 0 || procs != 0 {
        bail!("scale check failed: {}", out.last().unwrap());
    }

    // 100,000 distinct files read by one process.
    let mut child = Command::new(&bench.app)
        .arg("read-dir-then-wait")
        .arg(&many)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    std::thread::sleep(Duration::from_millis(300)); // let the agent drain the ring buffer
    let live = match agent.snapshot() {
        Event::Snapshot { processes, .. } => processes
            .into_iter()
            .find(|p| p.pid == pid)
            .map(|p| p.files)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let live_many: Vec<_> = live
        .iter()
        .filter(|f| Path::new(&f.path).starts_with(&many))
        .collect();
    let live_exact = live_many
        .iter()
        .filter(|f| f.bytes_read == FILE_BYTES as u64)
        .count();
    let maps = bpf_map_memory(std::process::id());
    child.stdin.take().context("stdin")?.write_all(b"done\n")?;
    child.wait()?;
    let exit = wait_exit(&rx, pid, |_| {})?;
    let Event::Exit {
        files,
        files_evicted,
        ..
    } = exit
    else {
        unreachable!()
    };
    let reported: Vec<_> = files
        .iter()
        .filter(|f| Path::new(&f.path).starts_with(&many))
        .collect();
    let exact = reported
        .iter()
        .filter(|f| f.bytes_read == FILE_BYTES as u64)
        .count();
    let (_, h) = health(&agent)?;
    out.push(format!(
        "6b {FILES} distinct files read by one process: while alive {} tracked ({live_exact} exact); at exit {} reported ({exact} exact) and {files_evicted} evicted (health: {} file counters evicted, {} ring-buffer drops); eBPF maps and ring buffer {:.1} MiB",
        live_many.len(),
        reported.len(),
        h.file_counters_evicted,
        h.ringbuf_drops,
        maps as f64 / (1 << 20) as f64
    ));
    if live_exact != live_many.len()
        || exact != reported.len()
        || reported.len() as u64 + files_evicted + h.ringbuf_drops < FILES as u64
    {
        bail!("scale check failed: {}", out.last().unwrap());
    }
    agent.stop();
    Ok(out)
}
