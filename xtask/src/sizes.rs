//! Functions fit on a screen and files stay readable: no function over [`MAX_FN_LINES`]
//! lines and no file over [`MAX_FILE_LINES`] lines in the crates' own code (a file's
//! `#[cfg(test)] mod tests` at its end, test crates, benches and fuzz targets left out).
//! `cargo test -p xtask` (so `cargo xtask test`) checks it.
//!
//! Functions are found by their `fn` line and measured by brace matching, with strings,
//! character literals and `//` comments skipped: a scanner, not a parser, which is enough
//! for rustfmt-formatted code.

use std::path::{Path, PathBuf};

pub const MAX_FN_LINES: usize = 80;
pub const MAX_FILE_LINES: usize = 600;

/// Exceptions, as [`too_long`] words them without the line counts. Empty since issue 15
/// split the last ones: the check fails for anything too long that is not here, and for
/// an entry here that is no longer too long, so the list can only stay empty or shrink.
pub const KNOWN: &[&str] = &[];

/// The source folders checked.
pub const CHECKED: &[&str] = &[
    "sensor-user/src",
    "sensor-ebpf/src",
    "sensor-ebpf/common/src",
    "collector/src",
    "proto/src",
    "testkit/src",
    "xtask/src",
];

/// A line with its string literals, character literals and `//` comment removed.
fn code_of(line: &str) -> String {
    let b = line.as_bytes();
    let (mut out, mut i) = (String::new(), 0);
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => break,
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            // `'x'` or `'\x'` is a character; `'a` alone is a lifetime.
            b'\'' if b.get(i + 2) == Some(&b'\'') && b.get(i + 1) != Some(&b'\\') => i += 3,
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

/// The name of the function a line starts, if it does (`pub(crate) async fn x(`).
fn fn_name(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    for word in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(word).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("extern \"C\" ").unwrap_or(rest);
    let name = rest.strip_prefix("fn ")?;
    let end = name
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(name.len());
    (end > 0).then(|| &name[..end])
}

/// The lines before a file's test module.
fn own_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| {
            w[0].starts_with("#[cfg(test)]") && w[1].starts_with("mod ") && w[1].ends_with('{')
        })
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

/// (function, lines) for every function of `lines` with a body.
fn functions<'a>(lines: &[&'a str]) -> Vec<(&'a str, usize)> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let (mut depth, mut opened) = (0i64, false);
        for (j, l) in lines[i..].iter().enumerate() {
            let code = code_of(l);
            if !opened && code.contains(';') && !code.contains('{') {
                break; // a declaration without a body (trait items, externs)
            }
            for c in code.chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth <= 0 {
                out.push((name, j + 1));
                break;
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// What is too long under `root`, one (key, line) per function or file; the key is the
/// line without the counts, as [`KNOWN`] lists it.
pub fn too_long(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in CHECKED {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines = own_lines(&text);
            let shown = file
                .strip_prefix(root)
                .unwrap_or(&file)
                .display()
                .to_string();
            if lines.len() > MAX_FILE_LINES {
                out.push((
                    format!("{shown}: file"),
                    format!("{shown}: {} lines (at most {MAX_FILE_LINES})", lines.len()),
                ));
            }
            for (name, n) in functions(&lines) {
                if n > MAX_FN_LINES {
                    out.push((
                        format!("{shown}: fn {name}"),
                        format!("{shown}: fn {name} is {n} lines (at most {MAX_FN_LINES})"),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_measured_by_their_braces() {
        let text = "fn a() {\n    let s = \"}\";\n    let c = '{';\n    // }\n}\n\
                    pub(crate) async fn b<'x>(v: &'x str) -> &'x str {\n    v\n}\n\
                    trait T {\n    fn c(&self);\n}\n";
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(functions(&lines), [("a", 5), ("b", 3)]);
        let with_tests = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn long() {}\n}\n";
        assert_eq!(own_lines(with_tests), ["fn a() {}"]);
        let declared = "#[cfg(test)]\nmod cycles;\nfn b() {}";
        assert_eq!(
            own_lines(declared).len(),
            3,
            "a declaration is not the test module"
        );
    }

    #[test]
    fn no_function_or_file_of_the_crates_is_too_long_but_the_known_ones() {
        let found = too_long(&crate::util::root());
        let new: Vec<&str> = found
            .iter()
            .filter(|(key, _)| !KNOWN.contains(&key.as_str()))
            .map(|(_, line)| line.as_str())
            .collect();
        assert!(
            new.is_empty(),
            "split these (xtask/src/sizes.rs says why):\n{}",
            new.join("\n")
        );
        let gone: Vec<&&str> = KNOWN
            .iter()
            .filter(|k| !found.iter().any(|(key, _)| key == **k))
            .collect();
        assert!(
            gone.is_empty(),
            "no longer too long: remove from sizes.rs's KNOWN: {gone:?}"
        );
    }
}
