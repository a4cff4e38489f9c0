//! Attaching one program of each kind the hook table names: tracepoints (only those this
//! kernel has) and the cgroup programs. The BTF-typed kinds are attached in
//! `capabilities.rs`, where the BTF and the LSM list are at hand.

use std::{fs::File, path::Path};

use aya::programs::{
    links::CgroupAttachMode, CgroupSkb, CgroupSock, CgroupSockAddr, Program, ProgramError,
    TracePoint,
};

use super::capabilities::{describe, Attach, Links};

/// A program error as the capability report words it.
pub(super) fn d(e: ProgramError) -> String {
    describe(&e)
}

/// The tracepoints of `names` that this kernel has (the others are noted in `missing`);
/// an error when it has none.
pub(super) fn present_tracepoints(
    tracefs: &Path,
    category: &str,
    names: &[&'static str],
    missing: &mut Vec<String>,
) -> Result<Vec<&'static str>, String> {
    let present: Vec<&'static str> = names
        .iter()
        .copied()
        .filter(|n| {
            let ok = tracefs.join("events").join(category).join(n).exists();
            if !ok {
                missing.push(format!("{category}:{n}"));
            }
            ok
        })
        .collect();
    if present.is_empty() {
        return Err(format!(
            "none of the tracepoints exist under `{}`",
            tracefs.display()
        ));
    }
    Ok(present)
}

/// One tracepoint program attached to each of `names`.
pub(super) fn tracepoints(
    program: &mut Program,
    first_load: bool,
    category: &str,
    names: &[&str],
    links: &mut Links,
) -> Result<(), String> {
    let prog: &mut TracePoint = program.try_into().map_err(d)?;
    if first_load {
        prog.load().map_err(d)?;
    }
    for n in names {
        let id = prog
            .attach(category, n)
            .map_err(|e| format!("{category}:{n}: {}", describe(&e)))?;
        links.push(Box::new(prog.take_link(id).map_err(d)?));
    }
    Ok(())
}

/// A cgroup program (connect, packets, socket release) attached to the cgroup `cg`.
pub(super) fn cgroup_program(
    program: &mut Program,
    attach: &Attach,
    first_load: bool,
    cg: &File,
    links: &mut Links,
) -> Result<(), String> {
    match attach {
        Attach::CgroupSockAddr => {
            let prog: &mut CgroupSockAddr = program.try_into().map_err(d)?;
            if first_load {
                prog.load().map_err(d)?;
            }
            let id = prog.attach(cg, CgroupAttachMode::Single).map_err(d)?;
            links.push(Box::new(prog.take_link(id).map_err(d)?));
        }
        Attach::CgroupSkb(kind) => {
            let prog: &mut CgroupSkb = program.try_into().map_err(d)?;
            if first_load {
                prog.load().map_err(d)?;
            }
            let id = prog
                .attach(cg, *kind, CgroupAttachMode::Single)
                .map_err(d)?;
            links.push(Box::new(prog.take_link(id).map_err(d)?));
        }
        Attach::CgroupSock => {
            let prog: &mut CgroupSock = program.try_into().map_err(d)?;
            if first_load {
                prog.load().map_err(d)?;
            }
            let id = prog.attach(cg, CgroupAttachMode::Single).map_err(d)?;
            links.push(Box::new(prog.take_link(id).map_err(d)?));
        }
        _ => return Err("not a cgroup program".into()),
    }
    Ok(())
}
