//! Agent configuration (TOML). Every key has a documented default; `validate` names the bad
//! key and why.
//!
//! ```toml
//! [agent]
//! output = "-"                  # "-" for stdout, or a file to append JSON lines to
//! output_max_mb = 64            # the file rotates before it would pass this (0: never)
//! output_keep = 3               # rotated files kept: FILE.1 (newest) .. FILE.3
//! snapshot_interval_secs = 10   # how often counters are written (0 disables snapshots)
//! cgroup_root = "auto"          # cgroup v2 mount for the socket hooks, or a path
//! disabled_hooks = []           # hook options never to try, e.g. ["lsm:file_open"]
//! state_dir = "/var/lib/clinicwatch"  # baselines, the findings log, a generated key
//! dns_resolvers = []            # whose answers name destinations; [] = resolv.conf + 127.0.0.53
//!
//! [intel]
//! window_secs = 60              # aggregation window
//! learning_days = 7.0           # learning period of a new baseline
//! slow_learning_every = 10      # after it, one quiet window in N is folded in
//! rules_file = ""               # site rules (TOML) merged over the built-in ones by `id`
//! vendor_allow = []             # the PM vendor's IPs, CIDRs (`203.0.113.0/24`) or names
//! practice_hours = ["mon-fri 07:00-20:00", "sat 08:00-13:00"]   # local time
//! utc_offset_minutes = "auto"   # local time zone offset, or minutes east of UTC
//! finding_cooldown_secs = 3600  # the same finding about the same thing, at most this often
//! follow_protected_readers = true  # watch a process that opened a protected file
//!
//! [privacy]
//! key_file = ""                 # per-clinic HMAC key (hex); empty: one made per host
//! keep_argv = false             # emit arguments beyond the executable
//!
//! [[app]]                       # one or more watched applications
//! name = "pm-client"
//! exe = "/opt/pm/bin/client"    # matched by device and inode, not by name
//! cmdline = "--profile clinic"  # optional regex the command line must match
//! data = ["/var/lib/pm/**"]     # its patient data: file class `pm_data`
//!
//! [[class]]                     # extra file-class rules, tried before the built-in ones
//! class = "documents"           # pm_data, browser_secrets, system_credentials, ssh_keys,
//! path = "/srv/scans/**"        # documents, removable_media, other
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
    #[serde(default)]
    pub intel: IntelConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    #[serde(default)]
    pub export: ExportConfig,
    #[serde(default, rename = "class")]
    pub classes: Vec<ClassRuleConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IntelConfig {
    /// Aggregation window in seconds. Default 60.
    pub window_secs: u64,
    /// Learning period of a new baseline, in days (fractions allowed). Default 7.
    pub learning_days: f64,
    /// After the learning period, one window in N without findings is folded in. Default 10.
    pub slow_learning_every: u64,
    /// Site rule file merged over the built-in rules by `id`. Default none.
    pub rules_file: String,
    /// The PM vendor's destinations: IPs, CIDRs or names. Default none.
    pub vendor_allow: Vec<String>,
    /// Practice hours in local time, e.g. `mon-fri 07:00-20:00`. Default Mon-Fri 7-20, Sat 8-13.
    pub practice_hours: Vec<String>,
    /// `auto` (the host's zone) or minutes east of UTC. Default `auto`.
    pub utc_offset_minutes: UtcOffset,
    /// The same finding about the same subject is raised at most this often. Default 3600.
    pub finding_cooldown_secs: u64,
    /// Watch (and follow) a process outside the apps that opened a protected file. Default true.
    pub follow_protected_readers: bool,
    /// Count the apps' HTTPS queries from TLS plaintext (uprobes on the TLS library they
    /// load). Default true.
    pub query_profiling: bool,
    /// Path segments kept verbatim in query templates, besides the built-in route words
    /// (`api`, `v1`, `patients`...). Default none.
    pub query_route_words: Vec<String>,
}

impl Default for IntelConfig {
    fn default() -> Self {
        Self {
            window_secs: 60,
            learning_days: 7.0,
            slow_learning_every: 10,
            rules_file: String::new(),
            vendor_allow: Vec::new(),
            practice_hours: vec!["mon-fri 07:00-20:00".into(), "sat 08:00-13:00".into()],
            utc_offset_minutes: UtcOffset::Auto,
            finding_cooldown_secs: 3600,
            follow_protected_readers: true,
            query_profiling: true,
            query_route_words: Vec::new(),
        }
    }
}

/// `"auto"` or a number of minutes east of UTC.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum UtcOffset {
    Minutes(i32),
    #[serde(with = "auto")]
    Auto,
}

pub(crate) mod targets;
mod validate;
pub(crate) mod values;

mod auto {
    use serde::{de::Error, Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        match String::deserialize(d)?.as_str() {
            "auto" => Ok(()),
            other => Err(D::Error::custom(format!(
                "expected \"auto\" or minutes east of UTC, got `{other}`"
            ))),
        }
    }
}

/// Delivery to the collector (mutual TLS). Off while `collector` is empty.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// `https://collector.example:7443`. Default empty: nothing is spooled or sent.
    pub collector: String,
    /// The clinic and host this agent speaks for: must be those of its certificate.
    pub clinic: String,
    pub host: String,
    /// PEM files: the collector's CA, this host's certificate and key.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The on-disk spool's cap, MiB: beyond it the oldest summaries are dropped, then, if
    /// findings alone fill it, the oldest findings (reported as `CW-SENSOR-SPOOL-FULL`).
    pub spool_max_mb: u64,
    /// Records per batch. Default 500.
    pub batch_records: usize,
    /// Seconds between heartbeats (spool depth, summaries dropped), busy or idle. Default 30.
    pub heartbeat_secs: u64,
    /// `zstd` (default) or `none`: compression of the stream, both ways.
    pub compression: String,
    /// Renew the certificate with the collector when a third of its life is left. Default true.
    pub renew: bool,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            collector: String::new(),
            clinic: String::new(),
            host: String::new(),
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            spool_max_mb: 256,
            batch_records: 500,
            heartbeat_secs: 30,
            compression: "zstd".into(),
            renew: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// File holding the per-clinic HMAC key as hex (at least 32 bytes). Empty: a random key is
    /// made once per host in `agent.state_dir` (hashes then differ between hosts).
    pub key_file: String,
    /// Emit the arguments of executed programs beyond the executable. Default false.
    pub keep_argv: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassRuleConfig {
    pub class: String,
    /// An absolute glob (`**` crosses folders).
    pub path: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// `-` for stdout, or a file path (appended to). Default `-`.
    pub output: String,
    /// The output file is rotated before it would pass this many MiB; 0 never. Default 64.
    pub output_max_mb: u64,
    /// Rotated output files kept (`FILE.1` newest .. `FILE.N`). Default 3.
    pub output_keep: u32,
    /// Seconds between counter snapshots; 0 disables them. Default 10.
    pub snapshot_interval_secs: u64,
    /// `auto` finds the cgroup v2 mount; otherwise its path. Default `auto`.
    pub cgroup_root: String,
    /// Hook options never to try (names as printed in the start-up report). Default none.
    pub disabled_hooks: Vec<String>,
    /// Baselines, the findings log and a generated key. Default `/var/lib/clinicwatch`.
    pub state_dir: PathBuf,
    /// DNS servers whose answers name destinations. Default (empty): the nameservers of
    /// `/etc/resolv.conf`, and 127.0.0.53.
    pub dns_resolvers: Vec<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            output: "-".into(),
            output_max_mb: 64,
            output_keep: 3,
            snapshot_interval_secs: 10,
            cgroup_root: "auto".into(),
            disabled_hooks: Vec::new(),
            state_dir: PathBuf::from("/var/lib/clinicwatch"),
            dns_resolvers: Vec::new(),
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
    /// Globs of the application's patient data (file class `pm_data`). Default none.
    #[serde(default)]
    pub data: Vec<String>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped configs are real configs: the example (every key at its default) and the
    /// one the package installs in /etc/clinicwatch.
    #[test]
    fn the_example_and_packaged_configs_load() {
        for (name, text) in [
            (
                "examples/agent.toml",
                include_str!("../../../examples/agent.toml"),
            ),
            (
                "packaging/agent/agent.toml",
                include_str!("../../../packaging/agent/agent.toml"),
            ),
        ] {
            let cfg = Config::from_toml(text).unwrap_or_else(|e| panic!("`{name}`: {e}"));
            assert!(!cfg.apps.is_empty(), "`{name}` watches an application");
        }
        let example = Config::from_toml(include_str!("../../../examples/agent.toml")).unwrap();
        assert_eq!(
            example.agent,
            AgentConfig::default(),
            "the example shows the defaults"
        );
        assert_eq!(example.intel, IntelConfig::default());
        assert_eq!(example.export, ExportConfig::default());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = Config::from_toml("[[app]]\nname = \"pm\"\nexe = \"/usr/bin/pm\"\n").unwrap();
        assert_eq!(cfg.agent, AgentConfig::default());
        assert_eq!(cfg.intel, IntelConfig::default());
        assert_eq!(cfg.intel.utc_offset_minutes, UtcOffset::Auto);
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
        let app = "[[app]]\nname = \"pm\"\nexe = \"/x\"\n";
        for (extra, key) in [
            ("[intel]\nwindow_secs = 0\n", "intel.window_secs"),
            (
                "[intel]\nvendor_allow = [\"10.0.0.0/33\"]\n",
                "intel.vendor_allow[0]",
            ),
            (
                "[intel]\npractice_hours = [\"mon-fri 9-5\"]\n",
                "intel.practice_hours[0]",
            ),
            ("[intel]\nutc_offset_minutes = \"paris\"\n", "paris"),
            (
                "[[class]]\nclass = \"patients\"\npath = \"/x/**\"\n",
                "class[0].class",
            ),
        ] {
            let e = err(&format!("{extra}{app}"));
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = err(&format!("[agent]\nstate_dir = \"state\"\n{app}"));
        assert!(e.contains("agent.state_dir"), "{e}");
        let e = err("[[app]]\nname = \"pm\"\nexe = \"/x\"\ndata = [\"rel/**\"]\n");
        assert!(e.contains("app[0].data[0]"), "{e}");
        let ok = Config::from_toml(&format!(
            "[intel]\nutc_offset_minutes = 60\nvendor_allow = [\"203.0.113.0/24\", \"api.vendor.example\"]\n{app}"
        ))
        .unwrap();
        assert_eq!(ok.intel.utc_offset_minutes, UtcOffset::Minutes(60));
    }
}
