//! No import cycles between the top-level modules of a crate: a module that uses another
//! (`crate::x` in its code, tests left out) must not be used by it, directly or around a
//! loop. `cargo test -p xtask` (so `cargo xtask test`) checks the agent and the collector.
//!
//! The top-level modules are the stages of the data path (folders such as the agent's
//! `kernel/`, `pipeline/`, `intel/`), so this is the check that the stages form a chain.
//! A name the crate root re-exports (`crate::Config`) counts as a use of its module.
//! [`KNOWN`] lists cycles not yet taken apart (none today): a new cycle, or a known one
//! that grew or went away, fails the check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// (crate source folder, the modules of a cycle there, sorted), not yet taken apart.
pub const KNOWN: &[(&str, &[&str])] = &[];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file under `src` belongs to (`lib`/`main` are the root).
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    let m = first.trim_end_matches(".rs").to_string();
    if m == "lib" || m == "main" {
        "(root)".into()
    } else {
        m
    }
}

/// The modules `text` names as `crate::x` or in `crate::{x, y::z}`, tests left out.
fn uses(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's top-level items only: `crate::{a::{b, c}, d}` names a and d.
            let (mut depth, mut start) = (0usize, 0usize);
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(group[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            out.remove("");
        } else {
            let m = ident(rest);
            if !m.is_empty() {
                out.insert(m);
            }
        }
    }
    out
}

fn graph(src: &Path) -> std::io::Result<Graph> {
    let mut g = Graph::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let m = module_of(p.strip_prefix(src).unwrap_or(&p));
                let deps = uses(&std::fs::read_to_string(&p)?);
                let entry = g.entry(m.clone()).or_default();
                entry.extend(deps.into_iter().filter(|d| *d != m));
            }
        }
    }
    // `crate::Config` where the root has `pub use config::Config;` is a use of `config`.
    let mut aliases = BTreeMap::new();
    for root in ["lib.rs", "main.rs"] {
        let text = std::fs::read_to_string(src.join(root)).unwrap_or_default();
        for line in text.lines() {
            if let Some(path) = line.trim().strip_prefix("pub use ") {
                let path = path.trim_end_matches(';');
                if let (Some((m, _)), Some((_, name))) =
                    (path.split_once("::"), path.rsplit_once("::"))
                {
                    aliases.insert(name.to_string(), m.to_string());
                }
            }
        }
    }
    for deps in g.values_mut() {
        let renamed: BTreeSet<String> = deps
            .iter()
            .map(|d| aliases.get(d).cloned().unwrap_or_else(|| d.clone()))
            .collect();
        *deps = renamed;
    }
    for (m, deps) in g.iter_mut() {
        deps.remove(m);
    }
    Ok(g)
}

/// The cycles: strongly connected components of more than one module, each sorted.
fn cycles(g: &Graph) -> BTreeSet<Vec<String>> {
    // Two modules are in one cycle when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in g.get(&m).into_iter().flatten() {
                if g.contains_key(d) && seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let all: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|m| (m, reach(m))).collect();
    let mut out = BTreeSet::new();
    for (m, r) in &all {
        let comp: Vec<String> = all
            .iter()
            .filter(|(o, ro)| *o == m || (r.contains(o.as_str()) && ro.contains(m.as_str())))
            .map(|(o, _)| o.to_string())
            .collect();
        if comp.len() > 1 {
            out.insert(comp);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_is_found_and_a_chain_is_not() {
        let mut g = Graph::new();
        let edge = |g: &mut Graph, a: &str, b: &str| {
            g.entry(a.into()).or_default().insert(b.into());
            g.entry(b.into()).or_default();
        };
        edge(&mut g, "a", "b");
        edge(&mut g, "b", "c");
        assert!(cycles(&g).is_empty());
        edge(&mut g, "c", "a");
        edge(&mut g, "c", "d");
        assert_eq!(
            cycles(&g).into_iter().collect::<Vec<_>>(),
            [["a", "b", "c"]]
        );
        assert_eq!(
            uses("use crate::{x, y::{z, q}};\nfn f() { crate::w::g() }\n#[cfg(test)]\nmod tests { use crate::t; }"),
            ["w", "x", "y"].into_iter().map(String::from).collect()
        );
    }

    #[test]
    fn the_agent_and_the_collector_have_no_import_cycles_but_the_known_ones() {
        let root = crate::util::root();
        for src in ["collector/src", "sensor-user/src"] {
            let found = cycles(&graph(&root.join(src)).unwrap());
            let known: BTreeSet<Vec<String>> = KNOWN
                .iter()
                .filter(|(s, _)| *s == src)
                .map(|(_, c)| c.iter().map(|m| m.to_string()).collect())
                .collect();
            assert_eq!(
                found, known,
                "{src}: import cycles (found) differ from xtask/src/cycles.rs's KNOWN: take a \
                 new cycle apart, or remove one that is gone from KNOWN"
            );
        }
    }
}
