//! Detection rules as data: the built-in rule file (`default_rules.toml`), with a site file
//! merged over it by `id`. Each rule has a kind (the detector that runs it), a severity and
//! its thresholds; the detectors are in `detect.rs`.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::event::{class::FileClass, finding::Severity};

pub const DEFAULT_RULES: &str = include_str!("default_rules.toml");

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("cannot read rule file `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rule file `{path}`: {why}")]
    Invalid { path: String, why: String },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleKind {
    BulkRead {
        class: FileClass,
        factor: f64,
        quantile: f64,
        min_samples: u64,
        floor_bytes: u64,
    },
    NewClass {
        classes: Vec<FileClass>,
    },
    ProtectedRead {},
    ProtectedReadThenConnect {
        within_secs: f64,
    },
    NewDestination {},
    EgressSurge {
        factor: f64,
        quantile: f64,
        min_samples: u64,
        floor_bytes: u64,
    },
    ReadThenSend {
        min_bytes: u64,
        min_ratio: f64,
        max_ratio: f64,
        /// The read and the send may lie in different windows within this span (seconds,
        /// back from the end of the window with the send).
        #[serde(default = "default_span_secs")]
        span_secs: f64,
    },
    SuspiciousChild {
        names: Vec<String>,
        #[serde(default)]
        prefixes: Vec<String>,
    },
    NewChild {},
    OffHours {
        floor_bytes: u64,
    },
    /// The app's requests in a window above factor x its quantile for the hour of week.
    QuerySurge {
        factor: f64,
        quantile: f64,
        min_samples: u64,
        floor_requests: u64,
    },
    /// One template naming more distinct records in a window than factor x its quantile.
    QueryScrape {
        factor: f64,
        quantile: f64,
        min_samples: u64,
        floor_ids: u64,
    },
    NewQuery {},
    /// Requests outside practice hours above a floor.
    QueryOffHours {
        floor_requests: u64,
    },
    SensorDrops {
        min_drops: u64,
    },
    /// Map pressure: full maps, reader quotas used up, flows evicted, a watched map filling.
    SensorPressure {
        watched_percent: f64,
    },
    SensorHooks {},
    AgentRestart {},
    ClockJump {
        max_jump_secs: f64,
    },
}

/// The keys each kind takes, besides `id`, `kind`, `severity` and `enabled`.
const KIND_KEYS: &[(&str, &[&str])] = &[
    (
        "bulk_read",
        &["class", "factor", "quantile", "min_samples", "floor_bytes"],
    ),
    ("new_class", &["classes"]),
    ("protected_read", &[]),
    ("protected_read_then_connect", &["within_secs"]),
    ("new_destination", &[]),
    (
        "egress_surge",
        &["factor", "quantile", "min_samples", "floor_bytes"],
    ),
    (
        "read_then_send",
        &["min_bytes", "min_ratio", "max_ratio", "span_secs"],
    ),
    ("suspicious_child", &["names", "prefixes"]),
    ("new_child", &[]),
    ("off_hours", &["floor_bytes"]),
    (
        "query_surge",
        &["factor", "quantile", "min_samples", "floor_requests"],
    ),
    (
        "query_scrape",
        &["factor", "quantile", "min_samples", "floor_ids"],
    ),
    ("new_query", &[]),
    ("query_off_hours", &["floor_requests"]),
    ("sensor_drops", &["min_drops"]),
    ("sensor_pressure", &["watched_percent"]),
    ("sensor_hooks", &[]),
    ("agent_restart", &[]),
    ("clock_jump", &["max_jump_secs"]),
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Rule {
    pub id: String,
    pub severity: Severity,
    #[serde(default = "enabled")]
    pub enabled: bool,
    #[serde(flatten)]
    pub kind: RuleKind,
}

fn enabled() -> bool {
    true
}

fn default_span_secs() -> f64 {
    120.0
}

#[derive(Debug, Clone)]
pub struct Rules(pub Vec<Rule>);

fn rule_tables(text: &str, path: &str) -> Result<Vec<toml::Table>, RuleError> {
    let bad = |why: String| RuleError::Invalid {
        path: path.to_string(),
        why,
    };
    let doc: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    for key in doc.keys() {
        if key != "rule" {
            return Err(bad(format!(
                "unknown top-level key `{key}` (expected `[[rule]]`)"
            )));
        }
    }
    let Some(rules) = doc.get("rule") else {
        return Ok(Vec::new());
    };
    let arr = rules
        .as_array()
        .ok_or_else(|| bad("`rule` must be an array of tables (`[[rule]]`)".into()))?;
    arr.iter()
        .enumerate()
        .map(|(i, r)| {
            let t = r
                .as_table()
                .ok_or_else(|| bad(format!("rule[{i}] is not a table")))?;
            match t.get("id").and_then(|v| v.as_str()) {
                Some(id) if !id.trim().is_empty() => Ok(t.clone()),
                _ => Err(bad(format!("rule[{i}] has no `id`"))),
            }
        })
        .collect()
}

impl Rules {
    pub fn builtin() -> Rules {
        Rules::merged(None).expect("the built-in rules are valid")
    }

    /// The built-in rules with `site` (file path, text) merged over them by `id`.
    pub fn merged(site: Option<(&str, &str)>) -> Result<Rules, RuleError> {
        let mut tables = rule_tables(DEFAULT_RULES, "<built-in rules>")?;
        let path = site.map_or("<built-in rules>", |(p, _)| p);
        if let Some((p, text)) = site {
            for t in rule_tables(text, p)? {
                let id = t["id"].as_str().unwrap_or_default().to_string();
                match tables.iter_mut().find(|b| b["id"].as_str() == Some(&id)) {
                    Some(base) => base.extend(t),
                    None => tables.push(t),
                }
            }
        }
        let bad = |id: &str, why: String| RuleError::Invalid {
            path: path.to_string(),
            why: format!("rule `{id}`: {why}"),
        };
        let mut ids = BTreeSet::new();
        let mut out = Vec::new();
        for t in tables {
            let id = t["id"].as_str().unwrap_or_default().to_string();
            if !ids.insert(id.clone()) {
                return Err(bad(&id, "defined twice".into()));
            }
            let kind = t
                .get("kind")
                .and_then(|k| k.as_str())
                .ok_or_else(|| bad(&id, "has no `kind`".into()))?;
            let Some((_, keys)) = KIND_KEYS.iter().find(|(k, _)| *k == kind) else {
                let kinds: Vec<&str> = KIND_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(bad(
                    &id,
                    format!("unknown kind `{kind}`; known: {}", kinds.join(", ")),
                ));
            };
            for key in t.keys() {
                let common = ["id", "kind", "severity", "enabled"].contains(&key.as_str());
                if !common && !keys.contains(&key.as_str()) {
                    return Err(bad(
                        &id,
                        format!(
                            "unknown key `{key}` for kind `{kind}`; it takes: {}",
                            keys.join(", ")
                        ),
                    ));
                }
            }
            let rule: Rule = toml::Value::Table(t)
                .try_into()
                .map_err(|e: toml::de::Error| bad(&id, e.message().to_string()))?;
            if let RuleKind::ReadThenSend { span_secs, .. } = rule.kind {
                if !(span_secs.is_finite() && (0.0..=86_400.0).contains(&span_secs)) {
                    return Err(bad(
                        &id,
                        format!("span_secs = {span_secs}: give seconds from 0 to 86400"),
                    ));
                }
            }
            out.push(rule);
        }
        Ok(Rules(out))
    }

    pub fn load(path: &str) -> Result<Rules, RuleError> {
        if path.is_empty() {
            return Ok(Rules::builtin());
        }
        let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
            path: path.to_string(),
            source,
        })?;
        Rules::merged(Some((path, &text)))
    }

    pub fn enabled(&self) -> impl Iterator<Item = &Rule> {
        self.0.iter().filter(|r| r.enabled)
    }

    /// How far back (seconds) an enabled rule pairing facts across windows looks: the
    /// windows to keep for it.
    pub fn longest_span(&self) -> f64 {
        self.enabled()
            .map(|r| match r.kind {
                RuleKind::ReadThenSend { span_secs, .. } => span_secs,
                _ => 0.0,
            })
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_then_send_span_outside_a_day_is_refused_by_name() {
        for v in ["-1.0", "1e9", "inf"] {
            let site = format!("[[rule]]\nid = \"CW-READ-THEN-SEND\"\nspan_secs = {v}\n");
            let e = Rules::merged(Some(("site.toml", &site)))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains("CW-READ-THEN-SEND") && e.contains("span_secs"),
                "{v}: {e}"
            );
        }
        let ok = "[[rule]]\nid = \"CW-READ-THEN-SEND\"\nspan_secs = 30\n";
        assert_eq!(
            Rules::merged(Some(("site.toml", ok)))
                .unwrap()
                .longest_span(),
            30.0
        );
    }

    #[test]
    fn builtin_rules_parse() {
        let r = Rules::builtin();
        assert!(r.0.len() >= 14);
        assert!(r
            .0
            .iter()
            .any(|r| matches!(r.kind, RuleKind::BulkRead { factor, .. } if factor == 5.0)));
    }

    #[test]
    fn a_site_file_tunes_disables_and_adds() {
        let site = r#"
[[rule]]
id = "CW-PM-BULK-READ"
factor = 8.0
[[rule]]
id = "CW-NEW-CHILD"
enabled = false
[[rule]]
id = "SITE-ARCHIVER"
kind = "suspicious_child"
severity = "critical"
names = ["winrar"]
"#;
        let r = Rules::merged(Some(("site.toml", site))).unwrap();
        let get = |id: &str| r.0.iter().find(|r| r.id == id).unwrap();
        assert!(
            matches!(get("CW-PM-BULK-READ").kind, RuleKind::BulkRead { factor, floor_bytes, .. } if factor == 8.0 && floor_bytes == 52428800)
        );
        assert!(!get("CW-NEW-CHILD").enabled);
        assert_eq!(get("SITE-ARCHIVER").severity, Severity::Critical);
    }

    #[test]
    fn mistakes_are_named() {
        let e = |site: &str| {
            Rules::merged(Some(("site.toml", site)))
                .unwrap_err()
                .to_string()
        };
        let typo = e("[[rule]]\nid = \"CW-PM-BULK-READ\"\nfactr = 3.0\n");
        assert!(
            typo.contains("site.toml")
                && typo.contains("CW-PM-BULK-READ")
                && typo.contains("`factr`"),
            "{typo}"
        );
        let kind = e("[[rule]]\nid = \"X\"\nkind = \"magic\"\nseverity = \"low\"\n");
        assert!(kind.contains("unknown kind `magic`"), "{kind}");
        let sev = e("[[rule]]\nid = \"CW-NEW-CHILD\"\nseverity = \"urgent\"\n");
        assert!(
            sev.contains("CW-NEW-CHILD") && sev.contains("urgent"),
            "{sev}"
        );
        let noid = e("[[rule]]\nkind = \"new_child\"\n");
        assert!(noid.contains("no `id`"), "{noid}");
        let class = e("[[rule]]\nid = \"CW-NEW-FILE-CLASS\"\nclasses = [\"patients\"]\n");
        assert!(class.contains("patients"), "{class}");
    }
}
