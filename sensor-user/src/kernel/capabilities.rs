//! Which hook serves which capability, chosen at run time.
//!
//! Each capability lists hook options, best first. An option is a set of programs that must
//! all load and attach; if any fails, the ones already attached are detached and the next
//! option is tried. The report says which option serves each capability, what it costs the
//! rest of the machine (`scope`), and why the better options were passed over.

use std::{any::Any, collections::HashSet, fs::File, path::Path};

use aya::{
    programs::{BtfTracePoint, CgroupSkbAttachType, FExit, Lsm, ProgramError, RawTracePoint},
    Btf, Ebpf,
};
use clinicwatch_common::names::prog;

use super::attach::{cgroup_program, d, present_tracepoints, tracepoints};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// What an option's programs fire on, besides the watched application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Only the kernel paths the capability is about (process lifecycle, file opens, sockets).
    Targeted,
    /// Every call of these syscalls by every process on the host: the fallback's cost.
    EverySyscall,
    /// Every packet of every socket on the host (one map lookup each).
    EveryPacket,
}

pub enum Attach {
    TpBtf(&'static str),
    RawTp(&'static str),
    Lsm(&'static str),
    FExit(&'static str),
    /// Tracepoints of one category; names the running kernel lacks are skipped.
    Tracepoints(&'static str, &'static [&'static str]),
    CgroupSockAddr,
    CgroupSkb(CgroupSkbAttachType),
    CgroupSock,
}

pub struct ProgramSpec {
    pub prog: &'static str,
    pub attach: Attach,
}

pub struct HookOption {
    pub name: &'static str,
    pub scope: Scope,
    pub programs: &'static [ProgramSpec],
}

pub struct Capability {
    pub name: &'static str,
    /// Without it the agent cannot work at all.
    pub required: bool,
    pub options: &'static [HookOption],
}

const fn spec(prog: &'static str, attach: Attach) -> ProgramSpec {
    ProgramSpec { prog, attach }
}

/// Syscall tracepoints of the file fallbacks (also used by the benchmark floor).
pub const OPEN_EXITS: &[&str] = &[
    "sys_exit_open",
    "sys_exit_openat",
    "sys_exit_openat2",
    "sys_exit_creat",
];
pub const READ_EXITS: &[&str] = &[
    "sys_exit_read",
    "sys_exit_pread64",
    "sys_exit_readv",
    "sys_exit_preadv",
    "sys_exit_preadv2",
];

/// The hook table.
pub const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "process",
        required: true,
        options: &[
            HookOption {
                name: "tp_btf:sched_process_{exec,fork,exit}",
                scope: Scope::Targeted,
                programs: &[
                    spec(prog::TP_BTF_EXEC, Attach::TpBtf("sched_process_exec")),
                    spec(prog::TP_BTF_FORK, Attach::TpBtf("sched_process_fork")),
                    spec(prog::TP_BTF_EXIT, Attach::TpBtf("sched_process_exit")),
                ],
            },
            HookOption {
                name: "raw_tp:sched_process_{exec,fork,exit}",
                scope: Scope::Targeted,
                programs: &[
                    spec(prog::RAW_TP_EXEC, Attach::RawTp("sched_process_exec")),
                    spec(prog::RAW_TP_FORK, Attach::RawTp("sched_process_fork")),
                    spec(prog::RAW_TP_EXIT, Attach::RawTp("sched_process_exit")),
                ],
            },
        ],
    },
    Capability {
        name: "file_open",
        required: false,
        options: &[
            HookOption {
                name: "lsm:file_open",
                scope: Scope::Targeted,
                programs: &[spec(prog::LSM_FILE_OPEN, Attach::Lsm("file_open"))],
            },
            HookOption {
                name: "tracepoint:syscalls:sys_exit_open*",
                scope: Scope::EverySyscall,
                programs: &[spec(
                    prog::TP_OPEN_EXIT,
                    Attach::Tracepoints("syscalls", OPEN_EXITS),
                )],
            },
        ],
    },
    Capability {
        name: "file_read",
        required: false,
        options: &[
            HookOption {
                name: "fexit:vfs_read,vfs_readv",
                scope: Scope::Targeted,
                programs: &[
                    spec(prog::FEXIT_VFS_READ, Attach::FExit("vfs_read")),
                    spec(prog::FEXIT_VFS_READV, Attach::FExit("vfs_readv")),
                ],
            },
            HookOption {
                name: "tracepoint:syscalls:sys_exit_*read*",
                scope: Scope::EverySyscall,
                programs: &[spec(
                    prog::TP_READ_EXIT,
                    Attach::Tracepoints("syscalls", READ_EXITS),
                )],
            },
        ],
    },
    Capability {
        name: "file_mmap",
        required: false,
        options: &[
            HookOption {
                name: "lsm:mmap_file",
                scope: Scope::Targeted,
                programs: &[spec(prog::LSM_MMAP_FILE, Attach::Lsm("mmap_file"))],
            },
            HookOption {
                name: "tracepoint:syscalls:sys_enter_mmap",
                scope: Scope::EverySyscall,
                programs: &[spec(
                    prog::TP_MMAP_ENTER,
                    Attach::Tracepoints("syscalls", &["sys_enter_mmap"]),
                )],
            },
        ],
    },
    Capability {
        name: "net_connect",
        required: false,
        options: &[HookOption {
            name: "cgroup:connect4,connect6",
            scope: Scope::Targeted,
            programs: &[
                spec(prog::CG_CONNECT4, Attach::CgroupSockAddr),
                spec(prog::CG_CONNECT6, Attach::CgroupSockAddr),
            ],
        }],
    },
    Capability {
        name: "net_bytes",
        required: false,
        options: &[HookOption {
            name: "cgroup_skb:egress,ingress",
            scope: Scope::EveryPacket,
            programs: &[
                spec(
                    prog::CG_SKB_EGRESS,
                    Attach::CgroupSkb(CgroupSkbAttachType::Egress),
                ),
                spec(
                    prog::CG_SKB_INGRESS,
                    Attach::CgroupSkb(CgroupSkbAttachType::Ingress),
                ),
            ],
        }],
    },
    Capability {
        name: "net_close",
        required: false,
        options: &[HookOption {
            name: "cgroup:sock_release",
            scope: Scope::Targeted,
            programs: &[spec(prog::CG_SOCK_RELEASE, Attach::CgroupSock)],
        }],
    },
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TriedHook {
    pub hook: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CapabilityReport {
    pub capability: Cow<'static, str>,
    /// The option that serves it, or `None` when none could.
    pub hook: Option<Cow<'static, str>>,
    pub scope: Option<Scope>,
    /// Better options that were passed over, and why.
    pub passed_over: Vec<TriedHook>,
    /// Tracepoints of the chosen option that this kernel lacks.
    pub missing_tracepoints: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no hook for required capability `{capability}`: {reasons}")]
    Required {
        capability: &'static str,
        reasons: String,
    },
    #[error("cannot open cgroup v2 root `{path}`")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Targeted => "targeted",
            Scope::EverySyscall => "every_syscall",
            Scope::EveryPacket => "every_packet",
        }
    }
}

/// The hook table as `clinicwatch-agent check` prints it: one line per capability
/// (`capability hook scope`, whitespace-separated, `-` where none serves it), each followed
/// by the better options passed over and why (with the verifier log's tail), indented.
pub fn render_reports(reports: &[CapabilityReport]) -> String {
    let mut out = format!("{:<12} {:<40} {}\n", "capability", "hook", "scope");
    for r in reports {
        out.push_str(&format!(
            "{:<12} {:<40} {}\n",
            r.capability,
            r.hook.as_deref().unwrap_or("-"),
            r.scope.map_or("-", Scope::as_str)
        ));
        for t in &r.passed_over {
            let mut lines = t.error.lines();
            let first = lines.next().unwrap_or("");
            out.push_str(&format!("    passed over {}: {first}\n", t.hook));
            for l in lines {
                out.push_str(&format!("      {l}\n"));
            }
        }
        if !r.missing_tracepoints.is_empty() {
            out.push_str(&format!(
                "    tracepoints this kernel lacks: {}\n",
                r.missing_tracepoints.join(", ")
            ));
        }
    }
    out
}

/// Links of attached programs; dropping one detaches it.
pub type Links = Vec<Box<dyn Any + Send>>;

/// Describes a program error, with the tail of the verifier's log where there is one (the
/// verifier's real complaint is at the end).
pub fn describe(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if tail.is_empty() {
                format!("load failed: {io_error} (empty verifier log)")
            } else {
                format!(
                    "load failed: {io_error}; verifier log tail:\n{}",
                    tail.join("\n")
                )
            }
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(&format!(": {e}"));
                src = e.source();
            }
            s
        }
    }
}

/// `Ok` when BPF-LSM programs will run: `bpf` is among the active LSMs.
pub fn bpf_lsm_active(lsms: &Result<String, String>) -> Result<(), String> {
    match lsms {
        Ok(list) if list.split(',').any(|l| l.trim() == "bpf") => Ok(()),
        Ok(list) => Err(format!(
            "BPF-LSM is not active: `bpf` is not in /sys/kernel/security/lsm (`{list}`); \
             add it to the kernel's `lsm=` boot parameter to use LSM hooks"
        )),
        Err(why) => Err(format!("BPF-LSM state unknown: {why}")),
    }
}

/// Attaches the best option of every capability.
pub struct Attacher<'a> {
    pub ebpf: &'a mut Ebpf,
    pub btf: &'a Btf,
    pub cgroup_root: &'a Path,
    pub tracefs: &'a Path,
    pub disabled: &'a [String],
    /// The active LSM list (`/sys/kernel/security/lsm`), or why it could not be read.
    active_lsms: Result<String, String>,
    loaded: HashSet<&'static str>,
}

impl<'a> Attacher<'a> {
    pub fn new(
        ebpf: &'a mut Ebpf,
        btf: &'a Btf,
        cgroup_root: &'a Path,
        tracefs: &'a Path,
        disabled: &'a [String],
    ) -> Self {
        Self {
            ebpf,
            btf,
            cgroup_root,
            tracefs,
            disabled,
            active_lsms: Err("the active LSM list was not read".into()),
            loaded: HashSet::new(),
        }
    }

    /// LSM options are only tried when `bpf` is in this list: otherwise their programs
    /// attach but never run.
    pub fn with_active_lsms(mut self, lsms: Result<String, String>) -> Self {
        self.active_lsms = lsms;
        self
    }

    pub fn attach_all(&mut self, links: &mut Links) -> Result<Vec<CapabilityReport>, AttachError> {
        let mut reports = Vec::new();
        for cap in CAPABILITIES {
            let mut report = CapabilityReport {
                capability: cap.name.into(),
                hook: None,
                scope: None,
                passed_over: Vec::new(),
                missing_tracepoints: Vec::new(),
            };
            for option in cap.options {
                if self.disabled.iter().any(|d| d == option.name) {
                    report.passed_over.push(TriedHook {
                        hook: option.name.into(),
                        error: "disabled by config".into(),
                    });
                    continue;
                }
                let mut attached: Links = Vec::new();
                let mut missing = Vec::new();
                match self.attach_option(option, &mut attached, &mut missing) {
                    Ok(()) => {
                        links.append(&mut attached);
                        report.hook = Some(option.name.into());
                        report.scope = Some(option.scope);
                        report.missing_tracepoints = missing;
                        break;
                    }
                    Err(error) => {
                        drop(attached); // detaches what this option had attached
                        report.passed_over.push(TriedHook {
                            hook: option.name.into(),
                            error,
                        });
                    }
                }
            }
            if report.hook.is_none() && cap.required {
                let reasons = report
                    .passed_over
                    .iter()
                    .map(|t| format!("`{}`: {}", t.hook, t.error))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(AttachError::Required {
                    capability: cap.name,
                    reasons,
                });
            }
            reports.push(report);
        }
        Ok(reports)
    }

    fn attach_option(
        &mut self,
        option: &HookOption,
        links: &mut Links,
        missing: &mut Vec<String>,
    ) -> Result<(), String> {
        for p in option.programs {
            self.attach_program(p, links, missing)
                .map_err(|e| format!("`{}`: {e}", p.prog))?;
        }
        Ok(())
    }

    /// With bpf_link (5.7+) the kernel runs every attached program whatever the mode; the
    /// mode only matters for the legacy attach, where `Single` would refuse a second program.
    fn cgroup(&self) -> Result<File, String> {
        File::open(self.cgroup_root).map_err(|e| {
            format!(
                "cannot open cgroup v2 root `{}`: {e}",
                self.cgroup_root.display()
            )
        })
    }

    fn attach_program(
        &mut self,
        p: &ProgramSpec,
        links: &mut Links,
        missing: &mut Vec<String>,
    ) -> Result<(), String> {
        let first_load = self.loaded.insert(p.prog);
        let cgroup = match p.attach {
            Attach::CgroupSockAddr | Attach::CgroupSkb(_) | Attach::CgroupSock => {
                Some(self.cgroup()?)
            }
            _ => None,
        };
        let program = self
            .ebpf
            .program_mut(p.prog)
            .ok_or_else(|| "program missing from the eBPF object".to_string())?;
        match &p.attach {
            Attach::TpBtf(name) => {
                let prog: &mut BtfTracePoint = program.try_into().map_err(d)?;
                if first_load {
                    prog.load(name, self.btf).map_err(d)?;
                }
                let id = prog.attach().map_err(d)?;
                links.push(Box::new(prog.take_link(id).map_err(d)?));
            }
            Attach::RawTp(name) => {
                let prog: &mut RawTracePoint = program.try_into().map_err(d)?;
                if first_load {
                    prog.load().map_err(d)?;
                }
                let id = prog.attach(name).map_err(d)?;
                links.push(Box::new(prog.take_link(id).map_err(d)?));
            }
            Attach::Lsm(name) => {
                bpf_lsm_active(&self.active_lsms)?;
                let prog: &mut Lsm = program.try_into().map_err(d)?;
                if first_load {
                    prog.load(name, self.btf).map_err(d)?;
                }
                let id = prog.attach().map_err(d)?;
                links.push(Box::new(prog.take_link(id).map_err(d)?));
            }
            Attach::FExit(name) => {
                let prog: &mut FExit = program.try_into().map_err(d)?;
                if first_load {
                    prog.load(name, self.btf).map_err(d)?;
                }
                let id = prog.attach().map_err(d)?;
                links.push(Box::new(prog.take_link(id).map_err(d)?));
            }
            Attach::Tracepoints(category, names) => {
                let present = present_tracepoints(self.tracefs, category, names, missing)?;
                tracepoints(program, first_load, category, &present, links)?;
            }
            Attach::CgroupSockAddr | Attach::CgroupSkb(_) | Attach::CgroupSock => {
                let cg = cgroup.as_ref().ok_or_else(|| "no cgroup".to_string())?;
                cgroup_program(program, &p.attach, first_load, cg, links)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_in_the_table_is_in_the_contract() {
        for cap in CAPABILITIES {
            assert!(!cap.options.is_empty(), "{} has no hook", cap.name);
            for o in cap.options {
                for p in o.programs {
                    assert!(
                        prog::ALL.contains(&p.prog),
                        "{} is not in names::prog::ALL",
                        p.prog
                    );
                }
            }
        }
    }

    #[test]
    fn lsm_hooks_need_bpf_among_the_active_lsms() {
        assert!(bpf_lsm_active(&Ok("lockdown,capability,yama,bpf".into())).is_ok());
        let off = bpf_lsm_active(&Ok("lockdown,capability,yama,bpfx".into())).unwrap_err();
        assert!(
            off.contains("`bpf` is not in /sys/kernel/security/lsm"),
            "{off}"
        );
        assert!(off.contains("lockdown,capability,yama,bpfx"), "{off}");
        let unknown = bpf_lsm_active(&Err("no securityfs".into())).unwrap_err();
        assert!(unknown.contains("no securityfs"), "{unknown}");
    }

    #[test]
    fn rendered_table_has_one_parsable_line_per_capability() {
        let reports = vec![
            CapabilityReport {
                capability: "file_open".into(),
                hook: Some("tracepoint:syscalls:sys_exit_open*".into()),
                scope: Some(Scope::EverySyscall),
                passed_over: vec![TriedHook {
                    hook: "lsm:file_open".into(),
                    error: "load failed: EPERM\nmore".into(),
                }],
                missing_tracepoints: vec!["syscalls:sys_exit_openat2".into()],
            },
            CapabilityReport {
                capability: "net_bytes".into(),
                hook: None,
                scope: None,
                passed_over: vec![],
                missing_tracepoints: vec![],
            },
        ];
        let text = render_reports(&reports);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec!["capability", "hook", "scope"],
                vec![
                    "file_open",
                    "tracepoint:syscalls:sys_exit_open*",
                    "every_syscall"
                ],
                vec!["net_bytes", "-", "-"],
            ]
        );
        assert!(text.contains("    passed over lsm:file_open: load failed: EPERM\n"));
        assert!(
            text.contains("\n      more\n"),
            "later lines of a reason are indented"
        );
        assert!(text.contains("lacks: syscalls:sys_exit_openat2"));
    }
}
