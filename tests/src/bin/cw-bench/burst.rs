//! Scenario 3, burst without loss: the watched app opens files or connects sockets at 50K,
//! 100K and 200K per second for 5 s. Every operation must be accounted for (opens counted in
//! the kernel, one connect event per connect), with the agent's CPU per event, its memory and
//! the eBPF maps' memory measured.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::Receiver,
    time::Duration,
};

use anyhow::{bail, Context as _};
use clinicwatch_agent::{Agent, Event};

use crate::{scale::bpf_map_memory, scenarios::Bench};

const SECS: f64 = 5.0;

/// CPU seconds used so far by this process' thread named `name`.
fn thread_cpu(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    // SAFETY: plain sysconf.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    dir.flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| {
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat: 11 and 12 after the command name
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (field(11) + field(12)) / tick
        })
        .sum()
}

/// Peak resident memory of this process (the agent runs inside it), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

struct Counts {
    connects: u64,
    closes: u64,
    opens: u64,
}

/// Counts the workload's events until its exit arrives.
fn count_until_exit(rx: &Receiver<Event>, pid: u32, data: &Path) -> anyhow::Result<Counts> {
    let mut c = Counts {
        connects: 0,
        closes: 0,
        opens: 0,
    };
    loop {
        match rx
            .recv_timeout(Duration::from_secs(30))
            .context("no exit event within 30 s")?
        {
            Event::NetConnect { pid: p, .. } if p == pid => c.connects += 1,
            Event::NetClose { pid: p, .. } if p == pid => c.closes += 1,
            Event::Exit { pid: p, files, .. } if p == pid => {
                c.opens = files
                    .iter()
                    .filter(|f| Path::new(&f.path).starts_with(data))
                    .map(|f| f.opens)
                    .sum();
                // Closes of the last sockets may follow the exit record.
                while let Ok(ev) = rx.recv_timeout(Duration::from_millis(300)) {
                    if matches!(ev, Event::NetClose { pid: p, .. } if p == pid) {
                        c.closes += 1;
                    }
                }
                return Ok(c);
            }
            _ => {}
        }
    }
}

pub fn run(bench: &Bench) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let data = bench.dir.join("data");
    for rate in [50_000u32, 100_000, 200_000] {
        for kind in ["open", "connect"] {
            let (tx, rx) = std::sync::mpsc::channel();
            let agent = Agent::start(&bench.config(&[])?, false, Some(tx))?;
            let cpu0 = thread_cpu(clinicwatch_agent::agent::EVENT_THREAD);
            let mut cmd = Command::new(&bench.app);
            match kind {
                "open" => cmd.arg("burst-open").arg(&data),
                _ => cmd.arg("burst-connect"),
            };
            let child = cmd
                .arg(rate.to_string())
                .arg(SECS.to_string())
                .stdout(Stdio::piped())
                .spawn()?;
            let pid = child.id();
            let counts = count_until_exit(&rx, pid, &data)?;
            let output = child.wait_with_output()?;
            let first = String::from_utf8_lossy(&output.stdout);
            let mut f = first.split_whitespace();
            let generated: u64 = f
                .next()
                .and_then(|v| v.parse().ok())
                .context("generated count")?;
            let secs: f64 = f.next().and_then(|v| v.parse().ok()).context("seconds")?;
            let cpu = thread_cpu(clinicwatch_agent::agent::EVENT_THREAD) - cpu0;
            let health = match agent.snapshot() {
                Event::Snapshot { health, .. } => health,
                _ => bail!("not a snapshot"),
            };
            let maps = bpf_map_memory(std::process::id()) as f64 / (1 << 20) as f64;
            agent.stop();
            let (delivered, events) = match kind {
                "open" => (counts.opens, health.decode.decoded),
                _ => (counts.connects, counts.connects + counts.closes),
            };
            let ratio = delivered as f64 / generated.max(1) as f64;
            out.push(format!(
                "3 {kind} at {rate}/s for {SECS} s: achieved {:.0}/s; delivered/generated = {delivered}/{generated} = {ratio:.3}{}; agent event thread {:.3} s CPU for {events} events{}; peak RSS of agent+bench {:.1} MiB; eBPF maps and ring buffer {maps:.1} MiB; ring-buffer drops {}",
                generated as f64 / secs,
                if kind == "connect" { format!(" (and {} closes)", counts.closes) } else { " (opens counted in the kernel)".into() },
                cpu,
                if kind == "connect" { format!(" = {:.2} µs/event", cpu * 1e6 / events.max(1) as f64) } else { String::new() },
                peak_rss_mib(),
                health.ringbuf_drops,
            ));
            eprintln!("bench: {}", out.last().unwrap());
        }
    }
    Ok(out)
}
