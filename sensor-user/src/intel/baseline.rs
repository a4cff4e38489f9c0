//! What is normal for one app on this host: hour-of-week distributions of bytes read per file
//! class and bytes sent per destination, the destinations and child executables seen, and
//! the hours it is active. Learned during a learning period, then slowly; kept on disk.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::hist::WeekHist;
use crate::event::{class::FileClass, summary::WindowSummary};

pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("cannot read baseline `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("baseline `{path}` is not valid: {why}")]
    Invalid { path: String, why: String },
    #[error("cannot write baseline `{path}`")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DestBaseline {
    pub first_seen: f64,
    pub windows: u64,
    pub sent: WeekHist,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildBaseline {
    pub first_seen: f64,
    pub count: u64,
}

/// One query template: when first seen, and its requests and distinct identifiers per window
/// by hour of week.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryBaseline {
    pub first_seen: f64,
    pub windows: u64,
    pub requests: WeekHist,
    pub distinct_ids: WeekHist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub version: u32,
    pub app: String,
    /// `learned` on this host, or `imported` (shipped by the collector).
    pub source: String,
    pub started: f64,
    pub learning_until: f64,
    pub updated: f64,
    /// Windows folded in.
    pub windows: u64,
    pub class_bytes: BTreeMap<FileClass, WeekHist>,
    pub destinations: BTreeMap<String, DestBaseline>,
    pub children: BTreeMap<String, ChildBaseline>,
    /// Windows with activity, by hour of week.
    pub active_hours: BTreeMap<u16, u64>,
    /// File classes the app touched (opened, mapped or read).
    #[serde(default)]
    pub classes_seen: std::collections::BTreeSet<FileClass>,
    /// Query templates (`QueryStats::key`).
    #[serde(default)]
    pub queries: BTreeMap<String, QueryBaseline>,
    /// All the app's requests per window, by hour of week (zeros included).
    #[serde(default)]
    pub requests: WeekHist,
}

impl Baseline {
    pub fn new(app: &str, now: f64, learning_days: f64) -> Self {
        Self {
            version: VERSION,
            app: app.to_string(),
            source: "learned".into(),
            started: now,
            learning_until: now + learning_days * 86_400.0,
            updated: now,
            windows: 0,
            class_bytes: BTreeMap::new(),
            destinations: BTreeMap::new(),
            children: BTreeMap::new(),
            active_hours: BTreeMap::new(),
            classes_seen: Default::default(),
            queries: BTreeMap::new(),
            requests: WeekHist::default(),
        }
    }

    pub fn learning(&self, t: f64) -> bool {
        t < self.learning_until
    }

    /// Folds a window in: every class (zeros too), each destination it sent to, its children.
    pub fn fold(&mut self, w: &WindowSummary) {
        let h = w.hour_of_week;
        self.see_classes(w);
        for c in FileClass::ALL {
            self.class_bytes
                .entry(c)
                .or_default()
                .add(h, w.class_bytes(c));
        }
        for d in &w.destinations {
            let b = self
                .destinations
                .entry(d.key())
                .or_insert_with(|| DestBaseline {
                    first_seen: w.start,
                    ..Default::default()
                });
            b.windows += 1;
            b.sent.add(h, d.bytes_sent);
        }
        for (exe, n) in &w.children {
            self.children
                .entry(exe.clone())
                .or_insert_with(|| ChildBaseline {
                    first_seen: w.start,
                    count: 0,
                })
                .count += n;
        }
        for q in &w.queries {
            let b = self
                .queries
                .entry(q.key())
                .or_insert_with(|| QueryBaseline {
                    first_seen: w.start,
                    ..Default::default()
                });
            b.windows += 1;
            b.requests.add(h, q.requests);
            b.distinct_ids.add(h, q.distinct_ids);
        }
        self.requests.add(h, w.requests());
        if !w.is_empty() {
            *self.active_hours.entry(h).or_default() += 1;
        }
        self.windows += 1;
        self.updated = w.end;
    }

    /// Whether the app has ever touched a file of this class.
    pub fn knows_class(&self, c: FileClass) -> bool {
        self.classes_seen.contains(&c)
            || self
                .class_bytes
                .get(&c)
                .is_some_and(|w| w.all.buckets.keys().any(|b| *b != 0))
    }

    pub fn knows_dest(&self, key: &str) -> bool {
        self.destinations.contains_key(key)
    }

    pub fn knows_query(&self, key: &str) -> bool {
        self.queries.contains_key(key)
    }

    pub fn knows_child(&self, exe: &str) -> bool {
        self.children.contains_key(exe)
    }

    /// Remembers a destination or child already reported, so it is reported once.
    /// Classes the window touched (opened, mapped or read).
    fn see_classes(&mut self, w: &WindowSummary) {
        for (c, s) in &w.classes {
            if s.files + s.bytes + s.opens + s.mmaps > 0 {
                self.classes_seen.insert(*c);
            }
        }
    }

    pub fn remember(&mut self, w: &WindowSummary) {
        self.see_classes(w);
        for d in &w.destinations {
            self.destinations
                .entry(d.key())
                .or_insert_with(|| DestBaseline {
                    first_seen: w.start,
                    ..Default::default()
                });
        }
        for exe in w.children.keys() {
            self.children
                .entry(exe.clone())
                .or_insert_with(|| ChildBaseline {
                    first_seen: w.start,
                    count: 0,
                });
        }
        for q in &w.queries {
            self.queries
                .entry(q.key())
                .or_insert_with(|| QueryBaseline {
                    first_seen: w.start,
                    ..Default::default()
                });
        }
    }

    pub fn load(path: &Path) -> Result<Baseline, BaselineError> {
        let text = std::fs::read_to_string(path).map_err(|source| BaselineError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let b: Baseline = serde_json::from_str(&text).map_err(|e| BaselineError::Invalid {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        if b.version != VERSION {
            return Err(BaselineError::Invalid {
                path: path.display().to_string(),
                why: format!("version {} (this agent reads {VERSION})", b.version),
            });
        }
        Ok(b)
    }

    /// Writes atomically: a temporary file, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<(), BaselineError> {
        let err = |source| BaselineError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec(self).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&data).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

/// Where an app's baseline lives.
pub fn path_for(state_dir: &Path, app: &str) -> PathBuf {
    let safe: String = app
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join("baselines").join(format!("{safe}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::summary::{ClassStats, DestStats};

    fn window(start: f64, pm: u64, sent: u64) -> WindowSummary {
        let mut classes = BTreeMap::new();
        classes.insert(
            FileClass::PmData,
            ClassStats {
                bytes: pm,
                ..Default::default()
            },
        );
        WindowSummary {
            app: "pm".into(),
            start,
            end: start + 60.0,
            hour_of_week: 10,
            in_practice_hours: true,
            classes,
            destinations: vec![DestStats {
                dst: "203.0.113.5".parse().unwrap(),
                port: 443,
                protocol: "tcp".into(),
                name: None,
                bytes_sent: sent,
                bytes_recv: 0,
                connects: 1,
            }],
            children: BTreeMap::from([("/usr/bin/lp".to_string(), 1)]),
            processes: 1,
            queries: Vec::new(),
        }
    }

    #[test]
    fn learns_and_survives_a_round_trip() {
        let mut b = Baseline::new("pm", 0.0, 1.0);
        assert!(b.learning(3600.0) && !b.learning(86_400.0));
        for i in 0..30 {
            b.fold(&window(i as f64 * 60.0, 1_000_000, 5_000));
        }
        assert!(b.knows_class(FileClass::PmData));
        assert!(!b.knows_class(FileClass::SshKeys));
        assert!(b.knows_dest("203.0.113.5:443/tcp"));
        assert!(b.knows_child("/usr/bin/lp"));
        let p99 = b.class_bytes[&FileClass::PmData]
            .quantile(10, 0.99, 10)
            .unwrap();
        assert!((1_000_000..=1_200_000).contains(&p99), "{p99}");
        let dir = std::env::temp_dir().join(format!("cw-baseline-{}", std::process::id()));
        let path = path_for(&dir, "pm client/1");
        assert!(path.ends_with("baselines/pm_client_1.json"));
        b.save(&path).unwrap();
        assert_eq!(Baseline::load(&path).unwrap(), b);
        std::fs::write(&path, "{not json").unwrap();
        let e = Baseline::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("pm_client_1.json") && e.contains("not valid"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
