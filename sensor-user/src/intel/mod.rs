//! The agent's judgement: events → per-app windows ([`window`]) → findings against learned
//! baselines ([`baseline`], [`detect`]) under data rules ([`rules`]); and the privacy edge
//! ([`privacy`]) every emitted event passes through.
//!
//! [`Intel`] is a pure consumer of the agent's events, so a recorded event file replays
//! through it (`clinicwatch-agent replay`) exactly as the live agent saw it.

pub mod baseline;
pub(crate) mod classes;
pub(crate) mod dest;
pub(crate) mod detect;
mod events;
pub(crate) mod hist;
pub(crate) mod hours;
pub(crate) mod pressure;
pub(crate) mod privacy;
pub mod rules;
pub(crate) mod window;

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::PathBuf,
};

use anyhow::Context as _;

use crate::event::finding::Finding;
use crate::{config::Config, event::Event};
use baseline::Baseline;
use rules::{RuleKind, Rules};

/// Size at which the findings log is rotated.
const FINDINGS_LOG_MAX: u64 = 64 << 20;

/// The app name given to processes followed because they opened a protected file.
pub const PROTECTED_READER_APP: &str = "protected-reader";

/// Where the engine keeps its state; `None` (replay) keeps everything in memory.
pub struct Persist {
    pub state_dir: PathBuf,
}

pub struct Intel {
    rules: Rules,
    allow: dest::AllowList,
    windows: window::Windows,
    baselines: BTreeMap<String, Baseline>,
    slow_every: u64,
    cooldown: f64,
    persist: Option<Persist>,
    pub privacy: privacy::Privacy,
    last_fired: HashMap<(String, String, String), f64>,
    quiet: BTreeMap<String, u64>,
    /// Each app's latest windows, for the rules that pair facts across windows.
    recent: BTreeMap<String, std::collections::VecDeque<crate::event::summary::WindowSummary>>,
    /// Processes that opened a protected file (and their children): pid → (time, exe, rule).
    readers: HashMap<u32, (f64, String, String)>,
    drops_seen: Option<u64>,
    pressure: pressure::Pressure,
    startups: u64,
    /// How the previous run on this state ended: `Some(true)` stopped cleanly, `Some(false)`
    /// did not (killed, crashed, power lost), `None` no previous run.
    previous_run: Option<bool>,
    clock: Option<(f64, f64)>,
    clock_jumped: bool,
    unsaved: u64,
}

/// Keeps `w` among its app's recent windows, and only those that end within `span` seconds
/// of its end (none when no rule looks back).
fn keep_recent(
    recent: &mut std::collections::VecDeque<crate::event::summary::WindowSummary>,
    w: &crate::event::summary::WindowSummary,
    span: f64,
) {
    if span <= 0.0 {
        recent.clear();
        return;
    }
    recent.push_back(w.clone());
    while recent.front().is_some_and(|p| p.start < w.end - span) {
        recent.pop_front();
    }
}

/// The apps windows are made for: the configured ones, and the followed protected readers
/// as one more when they are followed.
fn window_apps(apps: &[String], readers: bool) -> Vec<String> {
    let mut v = apps.to_vec();
    if readers {
        v.push(PROTECTED_READER_APP.to_string());
    }
    v
}

fn drops(h: &crate::event::Health) -> u64 {
    h.ringbuf_drops
        + h.decode.truncated
        + h.decode.bad_size
        + h.decode.unknown_kind
        + h.exits_missed
        + h.file_counters_evicted
}

impl Intel {
    /// Loads the rules, the privacy key and (when persisting) each app's baseline. A
    /// baseline that cannot be read is moved aside (`.corrupt`) and learning starts again.
    pub fn new(cfg: &Config, persist: Option<Persist>, now: f64) -> anyhow::Result<Intel> {
        let rules = Rules::load(&cfg.intel.rules_file)?;
        let state_dir = persist
            .as_ref()
            .map(|p| p.state_dir.clone())
            .unwrap_or_else(|| cfg.agent.state_dir.clone());
        let privacy = if persist.is_some() {
            privacy::Privacy::load(&cfg.privacy.key_file, &state_dir, cfg.privacy.keep_argv)?
        } else {
            // Replay reads no key (it needs no root): a random one for this run only.
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key)
                .map_err(|e| anyhow::anyhow!("no randomness for this run's privacy key: {e}"))?;
            privacy::Privacy::new(key, cfg.privacy.keep_argv)
        };
        let apps: Vec<String> = cfg.apps.iter().map(|a| a.name.clone()).collect();
        let classifier = classes::Classifier::new(
            &cfg.apps
                .iter()
                .map(|a| (a.name.clone(), a.data.clone()))
                .collect::<Vec<_>>(),
            &cfg.classes
                .iter()
                .filter_map(|c| {
                    crate::event::class::FileClass::parse(&c.class).map(|k| (k, c.path.clone()))
                })
                .collect::<Vec<_>>(),
        );
        let hours =
            hours::PracticeHours::new(&cfg.intel.practice_hours, cfg.intel.utc_offset_minutes);
        let mut baselines = BTreeMap::new();
        for app in &apps {
            let b = match &persist {
                Some(p) => load_or_start(
                    &baseline::path_for(&p.state_dir, app),
                    app,
                    now,
                    cfg.intel.learning_days,
                )?,
                None => Baseline::new(app, now, cfg.intel.learning_days),
            };
            baselines.insert(app.clone(), b);
        }
        let previous_run = persist.as_ref().and_then(|p| run_marker(&p.state_dir));
        Ok(Intel {
            rules,
            allow: dest::AllowList::new(&cfg.intel.vendor_allow),
            windows: window::Windows::new(
                cfg.intel.window_secs,
                window_apps(&apps, cfg.intel.follow_protected_readers),
                classifier,
                hours,
            ),
            baselines,
            slow_every: cfg.intel.slow_learning_every,
            cooldown: cfg.intel.finding_cooldown_secs as f64,
            persist,
            privacy,
            last_fired: HashMap::new(),
            quiet: BTreeMap::new(),
            recent: BTreeMap::new(),
            readers: HashMap::new(),
            drops_seen: None,
            pressure: pressure::Pressure::default(),
            startups: 0,
            previous_run,
            clock: None,
            clock_jumped: false,
            unsaved: 0,
        })
    }

    pub fn baselines(&self) -> &BTreeMap<String, Baseline> {
        &self.baselines
    }

    fn rule(&self, pick: impl Fn(&RuleKind) -> bool) -> Option<&rules::Rule> {
        self.rules.enabled().find(|r| pick(&r.kind))
    }

    /// Drops a finding raised about the same subject within the cooldown.
    fn fresh(&mut self, f: &Finding) -> bool {
        let key = (f.rule.clone(), f.app.clone(), f.subject.clone());
        match self.last_fired.get(&key) {
            Some(t) if f.time - t < self.cooldown => false,
            _ => {
                self.last_fired.insert(key, f.time);
                true
            }
        }
    }

    fn emit_findings(&mut self, found: Vec<Finding>, out: &mut Vec<Event>) {
        for f in found {
            if self.fresh(&f) {
                self.log_finding(&f);
                out.push(Event::Finding(f));
            }
        }
    }

    fn log_finding(&self, f: &Finding) {
        let Some(p) = &self.persist else { return };
        let path = p.state_dir.join("findings.jsonl");
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&p.state_dir)?;
            // One older generation is kept: `findings.jsonl.1`.
            if std::fs::metadata(&path).is_ok_and(|m| m.len() > FINDINGS_LOG_MAX) {
                std::fs::rename(&path, path.with_extension("jsonl.1"))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let mut line = serde_json::to_vec(f).map_err(std::io::Error::other)?;
            line.push(b'\n');
            file.write_all(&line)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "cannot append to the findings log");
        }
    }

    fn closed(
        &mut self,
        summaries: Vec<crate::event::summary::WindowSummary>,
        out: &mut Vec<Event>,
    ) {
        for w in summaries {
            let Some(b) = self.baselines.get(&w.app) else {
                // Followed protected readers: no baseline, their own rules; the summary goes
                // to the collector (where a vendor destination among them is a fleet rule).
                if w.app == PROTECTED_READER_APP {
                    out.push(Event::Summary(w));
                }
                continue;
            };
            let recent = self.recent.entry(w.app.clone()).or_default();
            let found = detect::window_findings(
                &detect::Ctx {
                    rules: &self.rules,
                    baseline: b,
                    allow: &self.allow,
                    recent,
                },
                &w,
            );
            keep_recent(recent, &w, self.rules.longest_span());
            let b = self.baselines.get_mut(&w.app).expect("checked above");
            if b.learning(w.start) {
                b.fold(&w);
            } else {
                // New destinations and children are reported once, then known.
                b.remember(&w);
                if found.is_empty() {
                    let q = self.quiet.entry(w.app.clone()).or_default();
                    *q += 1;
                    if (*q).is_multiple_of(self.slow_every) {
                        b.fold(&w);
                    }
                }
            }
            self.unsaved += 1;
            out.push(Event::Summary(w));
            self.emit_findings(found, out);
        }
        if self.unsaved >= 10 {
            self.save();
        }
    }

    /// Writes every baseline (atomically); errors are logged, learning goes on in memory.
    pub fn save(&mut self) {
        self.unsaved = 0;
        let Some(p) = &self.persist else { return };
        for (app, b) in &self.baselines {
            if let Err(e) = b.save(&baseline::path_for(&p.state_dir, app)) {
                tracing::warn!(app, error = %format!("{e:#}"), "cannot save the baseline");
            }
        }
    }

    /// Folds an event in; returns the summaries and findings it produced.
    pub fn observe(&mut self, ev: &Event) -> Vec<Event> {
        let mut out = Vec::new();
        let closed = self.windows.push(ev);
        self.closed(closed, &mut out);
        let found = match ev {
            Event::Startup {
                time, capabilities, ..
            } => self.on_startup(*time, capabilities),
            Event::Snapshot { time, health, .. } => self.on_snapshot(*time, health),
            Event::ProtectedOpen {
                time,
                pid,
                exe,
                rule,
                uid,
                ..
            } => self.on_protected_open(*time, *pid, exe, rule, *uid),
            Event::Fork { pid, ppid, .. } => {
                // A child of a protected reader inherits its read (and its clock).
                if let Some(parent) = self.readers.get(ppid).cloned() {
                    self.readers.insert(*pid, parent);
                }
                Vec::new()
            }
            Event::NetConnect {
                time,
                pid,
                dst,
                port,
                protocol,
                ..
            } => self.on_connect(*time, *pid, *dst, *port, protocol),
            _ => Vec::new(),
        };
        self.emit_findings(found, &mut out);
        out
    }

    /// Whether `now` is past the current window's end.
    pub fn window_due(&self, now: f64) -> bool {
        self.windows.due(now)
    }

    /// Time passes: closes a window that is due, forgets old protected readers, and checks
    /// how far the wall clock has stepped away from the agent's clock (`drift` in seconds,
    /// from `Clock::wall_drift`; `None` in replay).
    pub fn tick(&mut self, now: f64, drift: Option<f64>) -> Vec<Event> {
        let mut out = Vec::new();
        let closed = self.windows.tick(now);
        self.closed(closed, &mut out);
        let keep = self
            .rules
            .enabled()
            .find_map(|r| match r.kind {
                RuleKind::ProtectedReadThenConnect { within_secs } => Some(within_secs),
                _ => None,
            })
            .unwrap_or(0.0);
        self.readers.retain(|_, (t, ..)| now - *t <= keep.max(60.0));
        if let Some(drift) = drift {
            // Detected even with the rule off: the caller re-derives its clock.
            let rule = self
                .rule(|k| matches!(k, RuleKind::ClockJump { .. }))
                .map(|r| (r.id.clone(), r.severity, r.kind.clone()));
            let max = match &rule {
                Some((_, _, RuleKind::ClockJump { max_jump_secs })) => *max_jump_secs,
                _ => 120.0,
            };
            if let Some((_, d0)) = self.clock.replace((now, drift)) {
                let jump = drift - d0;
                if jump.abs() > max {
                    self.clock = None;
                    self.clock_jumped = true;
                    if let Some((id, severity, _)) = rule {
                        let f = Finding::new(&id, severity, "-", now, "clock")
                            .summary(format!("the wall clock jumped {jump:+.0} s"))
                            .with("jump_secs", jump.round());
                        self.emit_findings(vec![f], &mut out);
                    }
                }
            }
        }
        out
    }

    /// Whether the wall clock jumped at the last `tick` (the caller re-derives its clock).
    pub fn take_clock_jump(&mut self) -> bool {
        std::mem::take(&mut self.clock_jumped)
    }

    /// At stop: closes the current window and saves the baselines.
    pub fn stop(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let closed = self.windows.flush();
        self.closed(closed, &mut out);
        self.save();
        if let Some(p) = &self.persist {
            let path = p.state_dir.join(RUN_MARKER);
            if let Err(e) = std::fs::write(&path, "stopped\n") {
                tracing::warn!(path = %path.display(), error = %e, "cannot mark the clean stop");
            }
        }
        out
    }

    /// The privacy edge: paths become class + keyed hash + extension, arguments are cut to
    /// the executable (unless `privacy.keep_argv`). Summaries and findings carry no paths.
    pub fn filter(&self, mut ev: Event) -> Event {
        let c = self.windows.classifier();
        let p = &self.privacy;
        let token = |app: &str, path: &str| p.path_token(c.classify(app, path), path);
        match &mut ev {
            Event::FileOpen { app, file, .. } | Event::FileMmap { app, file, .. } => {
                file.path = token(app, &file.path);
            }
            Event::Exit { app, files, .. } => {
                for f in files {
                    f.path = token(app, &f.path);
                }
            }
            Event::Snapshot { processes, .. } => {
                for pr in processes {
                    for f in &mut pr.files {
                        f.path = token(&pr.app, &f.path);
                    }
                }
            }
            Event::ProtectedOpen { path, .. } => *path = token("", path),
            Event::Exec {
                argv,
                argv_truncated,
                ..
            } => {
                let (kept, cut) = p.argv(std::mem::take(argv));
                *argv = kept;
                *argv_truncated |= cut;
            }
            _ => {}
        }
        ev
    }
}

/// An app's baseline from disk, or a new one (moving an unreadable file aside).
fn load_or_start(
    path: &std::path::Path,
    app: &str,
    now: f64,
    learning_days: f64,
) -> anyhow::Result<Baseline> {
    if !path.exists() {
        tracing::info!(app, learning_days, "no baseline yet: learning");
        return Ok(Baseline::new(app, now, learning_days));
    }
    Ok(match Baseline::load(path) {
        Ok(b) if b.app == app => {
            tracing::info!(
                app,
                windows = b.windows,
                learning = b.learning(now),
                "baseline loaded"
            );
            b
        }
        Ok(b) => {
            tracing::warn!(app, file_app = %b.app, path = %path.display(), "baseline is for another app: learning afresh");
            Baseline::new(app, now, learning_days)
        }
        Err(e @ baseline::BaselineError::Read { .. }) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot read the baseline of `{app}`; fix its permissions or move it away"
            )));
        }
        Err(e) => {
            let aside = path.with_extension(format!("corrupt-{}", now as u64));
            let moved = std::fs::rename(path, &aside).is_ok();
            tracing::warn!(app, error = %format!("{e:#}"), moved_to = %aside.display(), moved, "unreadable baseline: learning afresh");
            Baseline::new(app, now, learning_days)
        }
    })
}

/// Reads a baseline file shipped by the collector (for `baseline import`).
/// `state_dir/run`: `running` while an agent runs, `stopped` after a clean stop.
const RUN_MARKER: &str = "run";

/// Reads how the previous run ended, then marks this one as running.
fn run_marker(state_dir: &std::path::Path) -> Option<bool> {
    let path = state_dir.join(RUN_MARKER);
    let previous = std::fs::read_to_string(&path)
        .ok()
        .map(|t| t.trim() == "stopped");
    let _ = std::fs::create_dir_all(state_dir);
    if let Err(e) = std::fs::write(&path, "running\n") {
        tracing::warn!(path = %path.display(), error = %e, "cannot mark the run");
    }
    previous
}

pub fn read_baseline(path: &std::path::Path) -> anyhow::Result<Baseline> {
    Baseline::load(path).with_context(|| format!("cannot import `{}`", path.display()))
}
