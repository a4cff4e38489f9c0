//! The scenarios, the alternating-window measurement, and the table.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::Receiver,
    time::Duration,
};

use anyhow::{bail, Context as _};
use clinicwatch_agent::{Agent, Config, Event};

use crate::{servers::Server, Args};

/// What is attached in the "attached" windows.
pub enum Mode {
    /// The agent, with these hook options disabled.
    Agent(&'static str, &'static [&'static str]),
    /// Only an empty program on the syscall tracepoints the file fallbacks use: the floor.
    Floor,
}

const DEFAULT: Mode = Mode::Agent("agent, default hooks", &[]);
const FLOOR: Mode = Mode::Floor;
/// Every hook mode the agent can run in on this kernel, and the floor.
const ALL_MODES: &[Mode] = &[
    DEFAULT,
    Mode::Agent(
        "agent, raw_tp process hooks",
        &["tp_btf:sched_process_{exec,fork,exit}"],
    ),
    Mode::Agent(
        "agent, no syscall tracepoints (file capabilities off)",
        &[
            "tracepoint:syscalls:sys_exit_open*",
            "tracepoint:syscalls:sys_exit_*read*",
            "tracepoint:syscalls:sys_enter_mmap",
        ],
    ),
    FLOOR,
];
const WATCHED_MODES: &[Mode] = &[DEFAULT, FLOOR];

impl Mode {
    fn label(&self) -> &'static str {
        match self {
            Mode::Agent(label, _) => label,
            Mode::Floor => "floor: empty program on the file fallbacks' syscall tracepoints",
        }
    }
}

/// The floor: `tp_noop` attached where the file fallbacks attach.
struct Floor {
    _links: Vec<aya::programs::trace_point::TracePointLink>,
    _ebpf: aya::Ebpf,
}

fn attach_floor() -> anyhow::Result<Floor> {
    use clinicwatch_agent::kernel::capabilities::{OPEN_EXITS, READ_EXITS};
    let tracefs = clinicwatch_agent::kernel::procfs::ensure_tracefs()?;
    let mut ebpf = aya::EbpfLoader::new().load(clinicwatch_agent::kernel::sensor::EBPF_OBJECT)?;
    let prog: &mut aya::programs::TracePoint =
        ebpf.program_mut("tp_noop").context("tp_noop")?.try_into()?;
    prog.load()?;
    let mut links = Vec::new();
    for name in OPEN_EXITS
        .iter()
        .chain(READ_EXITS)
        .chain(&["sys_enter_mmap"])
    {
        if tracefs.join("events/syscalls").join(name).exists() {
            let id = prog.attach("syscalls", name)?;
            links.push(prog.take_link(id)?);
        }
    }
    Ok(Floor {
        _links: links,
        _ebpf: ebpf,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Who {
    /// The watched copy of the workload.
    Watched,
    /// An identical, unwatched copy.
    Other,
}

struct Scenario {
    /// Short name for `--only`.
    id: &'static str,
    name: &'static str,
    who: Who,
    args: Vec<String>,
    target: f64,
    /// Check the agent's per-file byte counts against the workload's ground truth.
    check_bytes: bool,
    /// A fixed job measured by time (lower is better), not a rate.
    by_time: bool,
    /// Also compare whole-system CPU per operation, with this maximum ratio.
    cpu_target: Option<f64>,
    modes: &'static [Mode],
}

impl Scenario {
    /// Throughput in a timed loop; attached/detached must be at least `target`.
    fn rate(
        id: &'static str,
        name: &'static str,
        who: Who,
        args: Vec<String>,
        target: f64,
        modes: &'static [Mode],
    ) -> Self {
        Scenario {
            id,
            name,
            who,
            args,
            target,
            check_bytes: false,
            by_time: false,
            cpu_target: None,
            modes,
        }
    }

    /// A fixed job repeated in a timed loop; attached/detached time must be at most `target`.
    fn job(
        id: &'static str,
        name: &'static str,
        who: Who,
        args: Vec<String>,
        target: f64,
        modes: &'static [Mode],
    ) -> Self {
        Scenario {
            by_time: true,
            ..Self::rate(id, name, who, args, target, modes)
        }
    }

    fn checking_bytes(self) -> Self {
        Scenario {
            check_bytes: true,
            ..self
        }
    }

    fn with_cpu_target(self, max: f64) -> Self {
        Scenario {
            cpu_target: Some(max),
            ..self
        }
    }
}

pub struct Row {
    pub id: &'static str,
    pub name: String,
    pub mode: String,
    pub ratios: Vec<f64>,
    pub target: f64,
    /// Lower is better: the target is a maximum.
    pub at_most: bool,
    pub note: String,
}

/// One window's result.
struct Window {
    rate: f64,
    /// Whole-system busy CPU seconds per operation.
    cpu_per_op: f64,
    pid: u32,
    stdout: String,
}

/// Busy CPU seconds of the whole machine so far (all CPUs, from /proc/stat).
fn busy_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: plain sysconf.
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

pub struct Bench {
    pub dir: PathBuf,
    pub app: PathBuf,
    other: PathBuf,
    args: Args,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

impl Bench {
    pub fn new(workload: &Path, args: Args) -> anyhow::Result<Bench> {
        let dir = std::env::temp_dir().join("clinicwatch-bench");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let app = dir.join("pm-client");
        let other = dir.join("other-client");
        std::fs::copy(workload, &app).with_context(|| format!("copy {}", workload.display()))?;
        std::fs::copy(workload, &other)?;
        for i in 0..16 {
            std::fs::write(
                dir.join("data").join(format!("f{i:02}")),
                vec![i as u8; 1 << 20],
            )?;
        }
        std::fs::write(dir.join("one.db"), vec![1u8; 1 << 20])?;
        // The macro job's tree: 40 folders of 100 text files of 4 KiB.
        let line = b"lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\n";
        let text: Vec<u8> = line.iter().copied().cycle().take(4096).collect();
        for d in 0..40 {
            let sub = dir.join("tree").join(format!("d{d:02}"));
            std::fs::create_dir_all(&sub)?;
            for f in 0..100 {
                std::fs::write(sub.join(format!("f{f:03}.txt")), &text)?;
            }
        }
        Ok(Bench {
            dir,
            app,
            other,
            args,
        })
    }

    pub fn config(&self, disabled: &[&str]) -> anyhow::Result<Config> {
        let disabled: Vec<String> = disabled.iter().map(|d| format!("\"{d}\"")).collect();
        let text = format!(
            "[agent]\nsnapshot_interval_secs = 0\ndisabled_hooks = [{}]\nstate_dir = \"{}\"\n[[app]]\nname = \"pm-client\"\nexe = \"{}\"\n",
            disabled.join(", "),
            self.dir.join("state").display(),
            self.app.display()
        );
        Ok(Config::from_toml(&text)?)
    }

    /// Runs one window of a loop.
    fn window(&self, sc: &Scenario) -> anyhow::Result<Window> {
        let cpu0 = busy_cpu_secs();
        let program = if sc.who == Who::Watched {
            &self.app
        } else {
            &self.other
        };
        let child = Command::new(program)
            .args(&sc.args)
            .stdout(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("{} {:?} failed: {}", program.display(), sc.args, out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut first = stdout.lines().next().unwrap_or("").split_whitespace();
        let ops: f64 = first
            .next()
            .and_then(|v| v.parse().ok())
            .context("ops count")?;
        let secs: f64 = first
            .next()
            .and_then(|v| v.parse().ok())
            .context("seconds")?;
        let cpu = busy_cpu_secs() - cpu0;
        Ok(Window {
            rate: ops / secs,
            cpu_per_op: cpu / ops.max(1.0),
            pid,
            stdout,
        })
    }

    /// Compares the workload's per-file ground truth with the agent's exit counters.
    fn check_bytes(rx: &Receiver<Event>, pid: u32, stdout: &str) -> anyhow::Result<()> {
        let exit = loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Event::Exit { pid: p, files, .. }) if p == pid => break files,
                Ok(_) => continue,
                Err(_) => bail!("no exit event for {pid}"),
            }
        };
        for line in stdout.lines().skip(1) {
            let (path, bytes) = line.rsplit_once(' ').context("ground-truth line")?;
            let bytes: u64 = bytes.parse()?;
            let counted = exit
                .iter()
                .find(|f| f.path == path)
                .map(|f| f.bytes_read)
                .unwrap_or(0);
            if counted != bytes {
                bail!("{path}: agent counted {counted} bytes, the workload read {bytes}");
            }
        }
        Ok(())
    }

    /// Rate ratios (attached / detached) and CPU-per-operation ratios, one per pair.
    fn measure(&self, sc: &Scenario, mode: &Mode) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let cfg = match mode {
            Mode::Agent(_, disabled) => Some(self.config(disabled)?),
            Mode::Floor => None,
        };
        let (mut ratios, mut cpu) = (Vec::new(), Vec::new());
        for pair in 0..self.args.pairs {
            let mut on: Option<Window> = None;
            let mut off: Option<Window> = None;
            let order = if pair % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for attached in order {
                if attached && cfg.is_none() {
                    let floor = attach_floor()?;
                    on = Some(self.window(sc)?);
                    drop(floor);
                } else if let (true, Some(cfg)) = (attached, &cfg) {
                    // Events reach this process only where they are checked: a subscriber
                    // costs a copy of every event.
                    let (tx, rx) = std::sync::mpsc::channel();
                    let agent = Agent::start(cfg, false, sc.check_bytes.then_some(tx))?;
                    let w = self.window(sc)?;
                    if sc.check_bytes {
                        Self::check_bytes(&rx, w.pid, &w.stdout)?;
                    }
                    agent.stop();
                    on = Some(w);
                } else {
                    off = Some(self.window(sc)?);
                }
            }
            let (on, off) = (
                on.context("attached window")?,
                off.context("detached window")?,
            );
            ratios.push(if sc.by_time {
                off.rate / on.rate
            } else {
                on.rate / off.rate
            });
            cpu.push(on.cpu_per_op / off.cpu_per_op);
        }
        Ok((ratios, cpu))
    }

    fn scenarios(&self, echo: &Server, sink: &Server) -> Vec<Scenario> {
        let w = format!("{}", self.args.window);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let data = self.dir.join("data").display().to_string();
        let one = self.dir.join("one.db").display().to_string();
        let tree = self.dir.join("tree").display().to_string();
        vec![
            Scenario::rate(
                "pread16",
                "1 watched pread16 (4 KiB preads, open+close every 64)",
                Who::Watched,
                s(&["loop-pread16", &data, &w]),
                0.80,
                WATCHED_MODES,
            )
            .checking_bytes(),
            Scenario::rate(
                "getpid",
                "2 unwatched getpid",
                Who::Other,
                s(&["loop-getpid", &w]),
                0.97,
                ALL_MODES,
            ),
            Scenario::rate(
                "open-close",
                "2 unwatched open+close",
                Who::Other,
                s(&["loop-open", &one, &w]),
                0.97,
                ALL_MODES,
            ),
            Scenario::rate(
                "unwatched-connect",
                "2 unwatched loopback connect",
                Who::Other,
                s(&["loop-connect", &sink.addr.to_string(), &w]),
                0.97,
                ALL_MODES,
            ),
            Scenario::rate(
                "unwatched-pread",
                "2 unwatched 4 KiB pread",
                Who::Other,
                s(&["loop-pread", &one, &w]),
                0.85,
                ALL_MODES,
            ),
            Scenario::rate(
                "connect-accept",
                "5 watched connect/accept/close",
                Who::Watched,
                s(&["loop-connect-accept", &w]),
                0.95,
                WATCHED_MODES,
            ),
            Scenario::rate(
                "echo",
                "5 watched 4 KiB echo",
                Who::Watched,
                s(&["loop-echo", &echo.addr.to_string(), &w]),
                0.95,
                WATCHED_MODES,
            ),
            Scenario::job(
                "macro",
                "4 watched macro (tar + grep -r over 4,000 files)",
                Who::Watched,
                s(&["loop-macro", &tree, &w]),
                1.03,
                WATCHED_MODES,
            )
            .with_cpu_target(1.05),
        ]
    }

    pub fn run_all(&self) -> anyhow::Result<Vec<Row>> {
        let echo = Server::echo()?;
        let sink = Server::accept_close()?;
        let mut rows = Vec::new();
        for sc in self.scenarios(&echo, &sink) {
            if self
                .args
                .only
                .as_deref()
                .is_some_and(|o| !sc.name.contains(o))
            {
                continue;
            }
            for mode in sc.modes {
                eprintln!("bench: {} [{}]", sc.name, mode.label());
                let (ratios, cpu) = self.measure(&sc, mode)?;
                let note = if sc.check_bytes && matches!(mode, Mode::Agent(..)) {
                    "per-file bytes = ground truth in every attached window".into()
                } else {
                    String::new()
                };
                if let Some(cpu_target) = sc.cpu_target {
                    rows.push(Row {
                        id: sc.id,
                        name: format!("{}: whole-system CPU per job", sc.name),
                        mode: mode.label().to_string(),
                        ratios: cpu,
                        target: cpu_target,
                        at_most: true,
                        note: "includes the agent".into(),
                    });
                }
                rows.push(Row {
                    id: sc.id,
                    name: if sc.by_time {
                        format!("{}: wall time", sc.name)
                    } else {
                        sc.name.to_string()
                    },
                    mode: mode.label().to_string(),
                    ratios,
                    target: sc.target,
                    at_most: sc.by_time,
                    note,
                });
            }
        }
        Ok(rows)
    }
}

/// The results as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| benchmark | hooks | ratio median | min | max | target | met | note | reproduce |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let med = median(&r.ratios);
        let min = r.ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = r.ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        out.push_str(&format!(
            "| {} | {} | {med:.3} | {min:.3} | {max:.3} | {} {:.2} | {} | {} | `cargo xtask bench -- --only {}` |\n",
            r.name,
            r.mode,
            if r.at_most { "≤" } else { "≥" },
            r.target,
            if (r.at_most && med <= r.target) || (!r.at_most && med >= r.target) {
                "yes"
            } else {
                "no"
            },
            r.note,
            r.id
        ));
    }
    out
}
