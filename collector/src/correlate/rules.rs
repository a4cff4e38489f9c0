//! Correlation rules as data (`default_rules.toml`, merged with a site file by `id`).

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("correlation rules `{path}`: {why}")]
    Invalid { path: String, why: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleType {
    ValueCount,
    FindingCount,
    Temporal,
    Silence,
}

/// One rule; which keys matter depends on `type` (unknown keys are errors).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: RuleType,
    #[serde(default)]
    pub title: String,
    pub severity: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub timespan_secs: u64,
    // value_count
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub apps: Vec<String>,
    #[serde(default)]
    pub exclude_apps: Vec<String>,
    #[serde(default)]
    pub first_seen_within_secs: Option<u64>,
    #[serde(default)]
    pub vendor_domains_only: bool,
    /// Leave out names under the vendor's domains and the IPs they stood for.
    #[serde(default)]
    pub exclude_vendor_domains: bool,
    /// Leave out private addresses and names that only stood for private addresses.
    #[serde(default)]
    pub exclude_private: bool,
    // value_count, finding_count
    #[serde(default)]
    pub min_clinics: usize,
    // finding_count
    #[serde(default)]
    pub findings: Vec<String>,
    #[serde(default)]
    pub group_by: Vec<String>,
    #[serde(default)]
    pub off_hours_severity: Option<String>,
    // temporal
    /// Where the `findings` must all occur: `host` (the default) or `clinic`.
    #[serde(default)]
    pub per: Option<String>,
    /// The most time from the first to the last finding of one occurrence.
    #[serde(default)]
    pub within_secs: u64,
    /// The findings must occur in the order listed.
    #[serde(default)]
    pub ordered: bool,
    // silence
    #[serde(default)]
    pub silent_after_secs: u64,
    #[serde(default)]
    pub fraction: f64,
    #[serde(default)]
    pub max_hosts: usize,
    #[serde(default)]
    pub min_hosts: usize,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<toml::Table>,
}

const DEFAULT: &str = include_str!("default_rules.toml");
const SEVERITIES: &[&str] = &["info", "low", "medium", "high", "critical"];
const KINDS: &[&str] = &["dest_ip", "dest_name", "dest_pair", "child_exe"];

fn parse_tables(text: &str, path: &str) -> Result<Vec<toml::Table>, RuleError> {
    toml::from_str::<File>(text)
        .map(|f| f.rule)
        .map_err(|e| RuleError::Invalid {
            path: path.into(),
            why: e.to_string(),
        })
}

/// The shipped rules, with `site` (a file's path, or empty) merged over them by `id`.
pub fn load(site: &str) -> Result<Vec<Rule>, RuleError> {
    let tables = merged_tables(site)?;
    let path = if site.is_empty() {
        "default_rules.toml"
    } else {
        site
    };
    tables.into_iter().map(|t| rule_of(t, path)).collect()
}

/// The shipped rule tables, each extended (or followed) by the site file's table of its `id`.
fn merged_tables(site: &str) -> Result<Vec<toml::Table>, RuleError> {
    let mut tables = parse_tables(DEFAULT, "default_rules.toml")?;
    if site.is_empty() {
        return Ok(tables);
    }
    let text = std::fs::read_to_string(site).map_err(|source| RuleError::Read {
        path: site.into(),
        source,
    })?;
    for t in parse_tables(&text, site)? {
        let id = t.get("id").and_then(|v| v.as_str()).map(str::to_string);
        match tables
            .iter_mut()
            .find(|d| d.get("id").and_then(|v| v.as_str()) == id.as_deref())
        {
            Some(d) => d.extend(t),
            None => tables.push(t),
        }
    }
    Ok(tables)
}

/// One merged table as a checked rule; errors name `path` and the rule's id.
fn rule_of(t: toml::Table, path: &str) -> Result<Rule, RuleError> {
    let id = t
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or("(no id)")
        .to_string();
    let bad = |why: String| RuleError::Invalid {
        path: path.into(),
        why: format!("rule `{id}`: {why}"),
    };
    let r: Rule = toml::Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    check(&r).map_err(bad)?;
    Ok(r)
}

/// Why a rule is unusable: the keys its `type` needs, with values in range.
fn check(r: &Rule) -> Result<(), String> {
    if !SEVERITIES.contains(&r.severity.as_str())
        || r.off_hours_severity
            .as_deref()
            .is_some_and(|s| !SEVERITIES.contains(&s))
    {
        return Err(format!("severity must be one of {SEVERITIES:?}"));
    }
    if r.timespan_secs == 0 {
        return Err("timespan_secs must be at least 1".into());
    }
    match r.kind {
        RuleType::ValueCount => {
            if r.kinds.is_empty() || r.kinds.iter().any(|k| !KINDS.contains(&k.as_str())) {
                return Err(format!("kinds must be some of {KINDS:?}"));
            }
            if r.min_clinics == 0 {
                return Err("min_clinics must be at least 1".into());
            }
        }
        RuleType::FindingCount => {
            if r.findings.is_empty() || r.min_clinics == 0 {
                return Err("findings and min_clinics are required".into());
            }
            if r.group_by.is_empty()
                || r.group_by.iter().any(|g| {
                    !matches!(g.as_str(), "fleet" | "rule" | "subject")
                        && !g.starts_with("evidence.")
                })
            {
                return Err(
                    "group_by must list `fleet`, `rule`, `subject` or `evidence.KEY`".into(),
                );
            }
        }
        RuleType::Temporal => {
            let distinct: std::collections::BTreeSet<&String> = r.findings.iter().collect();
            if r.findings.len() < 2 || distinct.len() != r.findings.len() {
                return Err("findings must list at least two different rules".into());
            }
            if r.within_secs == 0 || r.min_clinics == 0 {
                return Err("within_secs and min_clinics are required".into());
            }
            if !matches!(r.per.as_deref(), None | Some("host") | Some("clinic")) {
                return Err("per must be `host` or `clinic`".into());
            }
        }
        RuleType::Silence => {
            if !(0.0..=1.0).contains(&r.fraction) || r.max_hosts == 0 {
                return Err("fraction (0 to 1) and max_hosts are required".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rules_load_and_a_site_file_overrides_by_id() {
        let rules = load("").unwrap();
        assert_eq!(rules.len(), 7);
        let dir = std::env::temp_dir().join(format!("cw-corr-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let site = dir.join("site.toml");
        std::fs::write(
            &site,
            "[[rule]]\nid = \"CW-FLEET-SURGE\"\nmin_clinics = 20\n\n[[rule]]\nid = \"CW-FLEET-SENSORS-SILENT\"\nenabled = false\n",
        )
        .unwrap();
        let rules = load(site.to_str().unwrap()).unwrap();
        let surge = rules.iter().find(|r| r.id == "CW-FLEET-SURGE").unwrap();
        assert_eq!(surge.min_clinics, 20);
        assert_eq!(surge.timespan_secs, 1800, "other keys kept");
        assert!(
            !rules
                .iter()
                .find(|r| r.id == "CW-FLEET-SENSORS-SILENT")
                .unwrap()
                .enabled
        );
        std::fs::write(
            &site,
            "[[rule]]\nid = \"CW-FLEET-SURGE\"\nmin_clinic = 20\n",
        )
        .unwrap();
        let e = load(site.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            e.contains("CW-FLEET-SURGE") && e.contains("min_clinic"),
            "{e}"
        );
        std::fs::write(&site, "[[rule]]\nid = \"X\"\ntype = \"value_count\"\nseverity = \"urgent\"\ntimespan_secs = 1\nkinds = [\"dest_ip\"]\nmin_clinics = 1\n").unwrap();
        let e = load(site.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("rule `X`") && e.contains("severity"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
