//! Agent configuration (TOML). Every key has a documented default; `validate` names the bad
//! key and why.
//!
//! ```toml
//! [agent]
//! output = "-"                  # "-" for stdout, or a file to append JSON lines to
//! snapshot_interval_secs = 10   # how often counters are written (0 disables snapshots)
//! cgroup_root = "auto"          # cgroup v2 mount for the socket hooks, or a path
//! disabled_hooks = []           # hook options never to try, e.g. ["lsm:file_open"]
//!
//! [[app]]                       # one or more watched applications
//! name = "pm-client"
//! exe = "/opt/pm/bin/client"    # matched by device and inode, not by name
//! cmdline = "--profile clinic"  # optional regex the command line must match
//!
//! [[protected]]                 # files or directories no outside process should open
//! name = "firefox-cookies"
//! path = "/home/*/.mozilla/firefox/*/cookies.sqlite"  # glob, expanded at start-up
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: `{key}`: {why}")]
    Invalid { key: String, why: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default, rename = "app")]
    pub apps: Vec<AppConfig>,
    #[serde(default)]
    pub protected: Vec<ProtectedConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// `-` for stdout, or a file path (appended to). Default `-`.
    pub output: String,
    /// Seconds between counter snapshots; 0 disables them. Default 10.
    pub snapshot_interval_secs: u64,
    /// `auto` finds the cgroup v2 mount; otherwise its path. Default `auto`.
    pub cgroup_root: String,
    /// Hook options never to try (names as printed in the start-up report). Default none.
    pub disabled_hooks: Vec<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            output: "-".into(),
            snapshot_interval_secs: 10,
            cgroup_root: "auto".into(),
            disabled_hooks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    pub exe: PathBuf,
    /// Optional regex over the command line (arguments joined by spaces).
    #[serde(default)]
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProtectedConfig {
    pub name: String,
    /// A file or directory, or a glob matching several.
    pub path: String,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg = Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<string>".into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: String, why: &str| {
            Err(ConfigError::Invalid {
                key,
                why: why.into(),
            })
        };
        if self.apps.is_empty() {
            return bad("app".into(), "at least one `[[app]]` to watch is required");
        }
        if self.apps.len() > clinicwatch_common::capacity::WATCHED_EXES as usize {
            return bad("app".into(), "too many applications");
        }
        if self.agent.output.is_empty() {
            return bad("agent.output".into(), "must be `-` or a file path");
        }
        for (i, app) in self.apps.iter().enumerate() {
            if app.name.trim().is_empty() {
                return bad(format!("app[{i}].name"), "must not be empty");
            }
            if self.apps[..i].iter().any(|a| a.name == app.name) {
                return bad(format!("app[{i}].name"), "duplicate application name");
            }
            if !app.exe.is_absolute() {
                return bad(format!("app[{i}].exe"), "must be an absolute path");
            }
            if let Some(re) = &app.cmdline {
                if let Err(e) = regex::Regex::new(re) {
                    return Err(ConfigError::Invalid {
                        key: format!("app[{i}].cmdline"),
                        why: format!("not a valid regex: {e}"),
                    });
                }
            }
        }
        for (i, hook) in self.agent.disabled_hooks.iter().enumerate() {
            let known: Vec<&str> = crate::capabilities::CAPABILITIES
                .iter()
                .flat_map(|c| c.options.iter().map(|o| o.name))
                .collect();
            if !known.contains(&hook.as_str()) {
                return Err(ConfigError::Invalid {
                    key: format!("agent.disabled_hooks[{i}]"),
                    why: format!("unknown hook `{hook}`; known: {}", known.join(", ")),
                });
            }
        }
        for (i, p) in self.protected.iter().enumerate() {
            if p.name.trim().is_empty() {
                return bad(format!("protected[{i}].name"), "must not be empty");
            }
            if !p.path.starts_with('/') {
                return bad(
                    format!("protected[{i}].path"),
                    "must be an absolute path or glob",
                );
            }
            if let Err(e) = glob::Pattern::new(&p.path) {
                return Err(ConfigError::Invalid {
                    key: format!("protected[{i}].path"),
                    why: format!("not a valid glob: {e}"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = Config::from_toml("[[app]]\nname = \"pm\"\nexe = \"/usr/bin/pm\"\n").unwrap();
        assert_eq!(cfg.agent, AgentConfig::default());
        assert_eq!(cfg.apps[0].name, "pm");
    }

    #[test]
    fn errors_name_the_key() {
        let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
        assert!(err("").contains("`app`"));
        assert!(err("[[app]]\nname = \"pm\"\nexe = \"rel/path\"\n").contains("app[0].exe"));
        assert!(
            err("[[app]]\nname = \"pm\"\nexe = \"/x\"\ncmdline = \"(\"\n")
                .contains("app[0].cmdline")
        );
        let e = err("[agent]\nbogus = 1\n[[app]]\nname = \"pm\"\nexe = \"/x\"\n");
        assert!(e.contains("bogus"), "{e}");
        let e = err(
            "[[app]]\nname = \"pm\"\nexe = \"/x\"\n[[protected]]\nname = \"c\"\npath = \"x\"\n",
        );
        assert!(e.contains("protected[0].path"), "{e}");
        let e = err(
            "[agent]\ndisabled_hooks = [\"lsm:file_opne\"]\n[[app]]\nname = \"pm\"\nexe = \"/x\"\n",
        );
        assert!(
            e.contains("agent.disabled_hooks[0]") && e.contains("lsm:file_open"),
            "{e}"
        );
    }
}
