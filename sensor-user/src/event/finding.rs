//! A finding: a stable rule id, a severity, a short explanation, and evidence as numbers and
//! categories (destinations and executables in clear; never file paths or contents).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How bad a finding is, in the order a SOC sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    /// The watched app it is about (`-` for the sensor itself or an outside process).
    pub app: String,
    pub time: f64,
    /// What it is about: a file class, a destination, an executable.
    pub subject: String,
    pub summary: String,
    pub evidence: BTreeMap<String, serde_json::Value>,
}

impl Finding {
    pub fn new(rule: &str, severity: Severity, app: &str, time: f64, subject: &str) -> Self {
        Self {
            rule: rule.to_string(),
            severity,
            app: app.to_string(),
            time,
            subject: subject.to_string(),
            summary: String::new(),
            evidence: BTreeMap::new(),
        }
    }

    pub fn summary(mut self, s: impl Into<String>) -> Self {
        self.summary = s.into();
        self
    }

    pub fn with(mut self, key: &str, v: impl Into<serde_json::Value>) -> Self {
        self.evidence.insert(key.to_string(), v.into());
        self
    }
}

/// The names of the `n` largest `(name, size)` items, largest first, then `+N more` for the
/// rest: a list in evidence stays short however many items there are.
pub fn top(mut items: Vec<(String, u64)>, n: usize) -> Vec<String> {
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest = items.len().saturating_sub(n);
    let mut out: Vec<String> = items.into_iter().take(n).map(|(name, _)| name).collect();
    if rest > 0 {
        out.push(format!("+{rest} more"));
    }
    out
}

/// Bytes for people: `12.3 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
