//! File classes: what kind of file a path is, by path rules. The app's own data rules
//! (`[[app]].data`) and the site's `[[class]]` rules come first, then the built-in ones.

use std::collections::BTreeMap;

use crate::event::class::FileClass;
use glob::{MatchOptions, Pattern};

/// Home folders the built-in rules look under.
const HOMES: &[&str] = &["/home/*", "/root"];

/// Built-in rules, relative to each home (`~/`) or absolute.
const BUILTIN: &[(FileClass, &str)] = &[
    (FileClass::SshKeys, "~/.ssh/id_*"),
    (FileClass::SshKeys, "~/.ssh/*.pem"),
    (FileClass::SshKeys, "/etc/ssh/ssh_host_*_key"),
    (FileClass::SystemCredentials, "/etc/shadow"),
    (FileClass::SystemCredentials, "/etc/shadow-"),
    (FileClass::SystemCredentials, "/etc/gshadow"),
    (FileClass::SystemCredentials, "/etc/sudoers"),
    (FileClass::SystemCredentials, "/etc/sudoers.d/*"),
    (FileClass::SystemCredentials, "/etc/krb5.keytab"),
    (FileClass::SystemCredentials, "~/.netrc"),
    (FileClass::SystemCredentials, "~/.pgpass"),
    (FileClass::SystemCredentials, "~/.aws/credentials"),
    (FileClass::SystemCredentials, "~/.docker/config.json"),
    (FileClass::SystemCredentials, "~/.local/share/keyrings/*"),
    (FileClass::SystemCredentials, "~/.password-store/**"),
    (
        FileClass::BrowserSecrets,
        "~/.mozilla/firefox/*/logins.json",
    ),
    (FileClass::BrowserSecrets, "~/.mozilla/firefox/*/key4.db"),
    (
        FileClass::BrowserSecrets,
        "~/.mozilla/firefox/*/cookies.sqlite",
    ),
    (
        FileClass::BrowserSecrets,
        "~/.mozilla/firefox/*/formhistory.sqlite",
    ),
    (
        FileClass::BrowserSecrets,
        "~/.config/google-chrome/*/Login Data",
    ),
    (
        FileClass::BrowserSecrets,
        "~/.config/google-chrome/*/Cookies",
    ),
    (
        FileClass::BrowserSecrets,
        "~/.config/google-chrome/*/Network/Cookies",
    ),
    (
        FileClass::BrowserSecrets,
        "~/.config/google-chrome/*/Web Data",
    ),
    (FileClass::BrowserSecrets, "~/.config/chromium/*/Login Data"),
    (FileClass::BrowserSecrets, "~/.config/chromium/*/Cookies"),
    (
        FileClass::BrowserSecrets,
        "~/.config/chromium/*/Network/Cookies",
    ),
    (
        FileClass::BrowserSecrets,
        "~/.config/microsoft-edge/*/Login Data",
    ),
    (
        FileClass::BrowserSecrets,
        "~/.config/microsoft-edge/*/Network/Cookies",
    ),
    (FileClass::RemovableMedia, "/media/**"),
    (FileClass::RemovableMedia, "/run/media/**"),
    (FileClass::RemovableMedia, "/mnt/**"),
    (FileClass::Documents, "~/Documents/**"),
    (FileClass::Documents, "~/Desktop/**"),
];

/// Extensions that make a file a document wherever it is.
const DOCUMENT_EXTENSIONS: &[&str] = &[
    "pdf", "doc", "docx", "odt", "rtf", "xls", "xlsx", "ods", "csv", "ppt", "pptx", "odp",
];

const OPTS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// Ordered path rules for one host: per-app data rules, site rules, built-in rules.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// App name → its data globs.
    app_data: BTreeMap<String, Vec<Pattern>>,
    rules: Vec<(FileClass, Pattern)>,
}

impl Classifier {
    /// `app_data`: (app, globs); `site`: (class, glob). Globs are checked by config validation;
    /// one that does not parse here is skipped.
    pub fn new(app_data: &[(String, Vec<String>)], site: &[(FileClass, String)]) -> Self {
        let pat = |g: &str| Pattern::new(g).ok();
        let mut rules: Vec<(FileClass, Pattern)> = site
            .iter()
            .filter_map(|(c, g)| pat(g).map(|p| (*c, p)))
            .collect();
        for (class, g) in BUILTIN {
            match g.strip_prefix("~/") {
                Some(rel) => {
                    for home in HOMES {
                        if let Some(p) = pat(&format!("{home}/{rel}")) {
                            rules.push((*class, p));
                        }
                    }
                }
                None => rules.extend(pat(g).map(|p| (*class, p))),
            }
        }
        Self {
            app_data: app_data
                .iter()
                .map(|(a, gs)| (a.clone(), gs.iter().filter_map(|g| pat(g)).collect()))
                .collect(),
            rules,
        }
    }

    pub fn classify(&self, app: &str, path: &str) -> FileClass {
        // A path already through the privacy edge (`class:hash[.ext]`, from a recorded
        // output replayed) keeps its class.
        if let Some(class) = token_class(path) {
            return class;
        }
        if let Some(pats) = self.app_data.get(app) {
            if pats.iter().any(|p| p.matches_with(path, OPTS)) {
                return FileClass::PmData;
            }
        }
        if let Some((class, _)) = self.rules.iter().find(|(_, p)| p.matches_with(path, OPTS)) {
            return *class;
        }
        match extension(path) {
            Some(ext) if DOCUMENT_EXTENSIONS.contains(&ext.as_str()) => FileClass::Documents,
            _ => FileClass::Other,
        }
    }
}

/// The class of a privacy token (`pm_data:<32 hex>[.ext]`), if `path` is one.
pub fn token_class(path: &str) -> Option<FileClass> {
    let (class, rest) = path.split_once(':')?;
    let hash = rest.get(..32)?;
    let tail = &rest[32..];
    (hash.bytes().all(|b| b.is_ascii_hexdigit()) && (tail.is_empty() || tail.starts_with('.')))
        .then(|| FileClass::parse(class))
        .flatten()
}

/// The lower-case extension of a path's last component, if it has one.
pub fn extension(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_data_then_site_then_builtin_rules() {
        let c = Classifier::new(
            &[("pm".into(), vec!["/var/lib/pm/**".into()])],
            &[(FileClass::Documents, "/srv/scans/**".into())],
        );
        for (app, path, class) in [
            ("pm", "/var/lib/pm/db/patients.db", FileClass::PmData),
            ("other-app", "/var/lib/pm/db/patients.db", FileClass::Other),
            ("pm", "/srv/scans/2026/x.tif", FileClass::Documents),
            ("pm", "/home/ana/.ssh/id_ed25519", FileClass::SshKeys),
            ("pm", "/root/.ssh/id_rsa", FileClass::SshKeys),
            ("pm", "/etc/shadow", FileClass::SystemCredentials),
            (
                "pm",
                "/home/ana/.mozilla/firefox/abc.default/logins.json",
                FileClass::BrowserSecrets,
            ),
            (
                "pm",
                "/home/ana/.config/google-chrome/Default/Login Data",
                FileClass::BrowserSecrets,
            ),
            ("pm", "/media/usb0/export.zip", FileClass::RemovableMedia),
            ("pm", "/tmp/letter.PDF", FileClass::Documents),
            ("pm", "/usr/lib/libc.so.6", FileClass::Other),
            // `*` does not cross folders.
            ("pm", "/home/ana/x/.ssh/id_rsa", FileClass::Other),
        ] {
            assert_eq!(c.classify(app, path), class, "{app} {path}");
        }
    }

    #[test]
    fn names_round_trip() {
        for c in FileClass::ALL {
            assert_eq!(FileClass::parse(c.as_str()), Some(c));
        }
        assert_eq!(extension("/a/b.tar.GZ").as_deref(), Some("gz"));
        assert_eq!(extension("/a/.bashrc"), None);
        assert_eq!(extension("/a/b"), None);
        let t = format!("ssh_keys:{}", "ab".repeat(16));
        assert_eq!(token_class(&t), Some(FileClass::SshKeys));
        assert_eq!(token_class(&format!("{t}.pem")), Some(FileClass::SshKeys));
        assert_eq!(token_class("/etc/passwd"), None);
        assert_eq!(token_class("C:/x"), None);
    }
}
