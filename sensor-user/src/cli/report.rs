//! The agent's offline commands: `baseline show|import`, `findings --since`, and `replay`
//! (a recorded event file through the detectors, without root and without touching state).

use std::{
    io::{BufRead, Write},
    path::Path,
};

use anyhow::{bail, Context as _};
use time::{
    format_description::FormatItem, macros::format_description, Date, OffsetDateTime,
    PrimitiveDateTime, Time,
};

use crate::{
    config::Config,
    event::{
        class::FileClass,
        finding::{human, Finding},
        Event,
    },
    intel::{
        baseline::{self, Baseline},
        Intel,
    },
};

/// `--since`: `30m`, `24h`, `7d` ago, or a UTC date `2026-11-29[THH:MM[:SS]]`, or unix seconds.
pub fn parse_since(s: &str, now: f64) -> anyhow::Result<f64> {
    let s = s.trim();
    let bad = || {
        format!(
            "`--since {s}`: expected 30m, 24h, 7d, 2026-11-29, 2026-11-29T08:00 or unix seconds"
        )
    };
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        if let Ok(n) = s[..s.len() - 1].parse::<f64>() {
            let secs = match unit {
                's' => 1.0,
                'm' => 60.0,
                'h' => 3600.0,
                _ => 86_400.0,
            };
            return Ok(now - n * secs);
        }
    }
    if let Ok(t) = s.parse::<f64>() {
        return Ok(t);
    }
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00"));
    let d = Date::parse(date, DATE).ok().filter(|d| d.year() >= 1970);
    let t = time.trim_end_matches('Z');
    let t = Time::parse(t, HMS).or_else(|_| Time::parse(t, HM)).ok();
    let (Some(d), Some(t)) = (d, t) else {
        bail!(bad());
    };
    Ok(PrimitiveDateTime::new(d, t).assume_utc().unix_timestamp() as f64)
}

const DATE: &[FormatItem<'static>] = format_description!("[year]-[month]-[day]");
const HM: &[FormatItem<'static>] = format_description!("[hour]:[minute]");
const HMS: &[FormatItem<'static>] = format_description!("[hour]:[minute]:[second]");

/// A UTC timestamp for people: `2026-11-29 08:00:00Z`.
pub fn utc(t: f64) -> String {
    const SHOWN: &[FormatItem<'static>] =
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    OffsetDateTime::from_unix_timestamp(t.floor() as i64)
        .ok()
        .and_then(|d| d.format(SHOWN).ok())
        .unwrap_or_else(|| format!("{t} (unix seconds)"))
}

/// `baseline show`: what the agent considers normal, for people.
pub fn baseline_text(b: &Baseline, now: f64) -> String {
    let mut out = format!(
        "app {} ({}, {} windows, since {})\n",
        b.app,
        b.source,
        b.windows,
        utc(b.started)
    );
    if b.learning(now) {
        out.push_str(&format!(
            "  learning until {} ({:.1} days left)\n",
            utc(b.learning_until),
            (b.learning_until - now) / 86_400.0
        ));
    } else {
        out.push_str(&format!(
            "  learned; since {} learning slowly\n",
            utc(b.learning_until)
        ));
    }
    out.push_str(
        "  bytes read per window, by class (whole week): p50 / p99 / windows with reads\n",
    );
    for c in FileClass::ALL {
        let Some(h) = b.class_bytes.get(&c) else {
            continue;
        };
        let active: u64 = h
            .all
            .buckets
            .iter()
            .filter(|(k, _)| **k != 0)
            .map(|(_, n)| n)
            .sum();
        if active == 0 {
            continue;
        }
        out.push_str(&format!(
            "    {:<19} {:>10} / {:>10} / {active}\n",
            c.as_str(),
            human(h.all.quantile(0.5).unwrap_or(0)),
            human(h.all.quantile(0.99).unwrap_or(0))
        ));
    }
    out.push_str(&format!(
        "  destinations ({}): first seen, windows, p99 sent per window\n",
        b.destinations.len()
    ));
    for (k, d) in &b.destinations {
        out.push_str(&format!(
            "    {k:<28} {}  {:>6}  {}\n",
            utc(d.first_seen),
            d.windows,
            human(d.sent.all.quantile(0.99).unwrap_or(0))
        ));
    }
    out.push_str(&format!("  child executables ({}):\n", b.children.len()));
    for (exe, c) in &b.children {
        out.push_str(&format!(
            "    {exe} ({} runs, first {})\n",
            c.count,
            utc(c.first_seen)
        ));
    }
    let mut hours: Vec<(u16, u64)> = b.active_hours.iter().map(|(h, n)| (*h, *n)).collect();
    hours.sort_by_key(|h| std::cmp::Reverse(h.1));
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let top: Vec<String> = hours
        .iter()
        .take(8)
        .map(|(h, n)| format!("{} {:02}h ({n})", days[(*h / 24) as usize % 7], h % 24))
        .collect();
    out.push_str(&format!(
        "  busiest hours (active windows): {}\n",
        top.join(", ")
    ));
    out
}

pub fn show_baselines(cfg: &Config, app: Option<&str>, json: bool, now: f64) -> anyhow::Result<()> {
    let mut shown = 0;
    for a in cfg.apps.iter().filter(|a| app.is_none_or(|x| x == a.name)) {
        let path = baseline::path_for(&cfg.agent.state_dir, &a.name);
        if !path.exists() {
            println!(
                "app {}: no baseline yet ({} missing)",
                a.name,
                path.display()
            );
            continue;
        }
        let b = Baseline::load(&path)?;
        if json {
            println!("{}", serde_json::to_string(&b)?);
        } else {
            print!("{}", baseline_text(&b, now));
        }
        shown += 1;
    }
    if let Some(a) = app.filter(|_| shown == 0) {
        if !cfg.apps.iter().any(|x| x.name == a) {
            bail!("no application `{a}` in the config");
        }
    }
    Ok(())
}

/// Takes the state folder's lock (`state_dir/agent.lock`): held by the running agent, and by
/// commands that write its state, so neither overwrites the other.
pub fn lock_state(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create `{}`", state_dir.display()))?;
    let path = state_dir.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open `{}`", path.display()))?;
    // SAFETY: a plain flock on our own descriptor.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        bail!(
            "`{}` is locked: an agent is running with this state folder (stop it first)",
            path.display()
        );
    }
    Ok(f)
}

/// `baseline import FILE`: a shipped baseline becomes this host's for its app (with the
/// agent stopped: it would overwrite the file at its next save).
pub fn import_baseline(cfg: &Config, file: &Path) -> anyhow::Result<()> {
    let _lock = lock_state(&cfg.agent.state_dir)?;
    let mut b = crate::intel::read_baseline(file)?;
    if !cfg.apps.iter().any(|a| a.name == b.app) {
        bail!(
            "`{}` is a baseline for `{}`, which is not an application in the config",
            file.display(),
            b.app
        );
    }
    b.source = "imported".into();
    let path = baseline::path_for(&cfg.agent.state_dir, &b.app);
    b.save(&path)?;
    println!(
        "imported the baseline of {} ({} windows) into {}",
        b.app,
        b.windows,
        path.display()
    );
    Ok(())
}

/// Findings in a findings log (JSON lines) at or after `since`; malformed lines are counted.
pub fn read_findings(path: &Path, since: f64) -> anyhow::Result<(Vec<Finding>, u64)> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    let (mut out, mut bad) = (Vec::new(), 0);
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("cannot read `{}`", path.display()))?;
        match serde_json::from_str::<Finding>(&line) {
            Ok(f) if f.time >= since => out.push(f),
            Ok(_) => {}
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

pub fn finding_line(f: &Finding) -> String {
    format!(
        "{}  {:<8} {:<26} {:<12} {}",
        utc(f.time),
        format!("{:?}", f.severity).to_lowercase(),
        f.rule,
        f.app,
        f.summary
    )
}

/// What a replay saw.
#[derive(Debug, Default)]
pub struct Replay {
    pub events: u64,
    pub malformed: u64,
    pub windows: u64,
    pub findings: Vec<Finding>,
}

/// Replays recorded events (the agent's JSON lines output, or a synthesized stream) through
/// fresh detectors: the learning period runs over the recording's own first days.
pub fn replay(
    cfg: &Config,
    input: impl BufRead,
    mut out: impl Write,
    summaries: bool,
) -> anyhow::Result<Replay> {
    let mut r = Replay::default();
    let mut intel: Option<Intel> = None;
    let mut last = 0.0;
    for line in input.lines() {
        let line = line.context("cannot read the recording")?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: Event = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(_) => {
                r.malformed += 1;
                continue;
            }
        };
        if matches!(ev, Event::Summary(_) | Event::Finding(_)) {
            continue; // the recording's own conclusions are not replayed
        }
        let t = ev.time().unwrap_or(last);
        last = t;
        let engine = match &mut intel {
            Some(i) => i,
            None => intel.insert(Intel::new(cfg, None, t)?),
        };
        r.events += 1;
        for e in engine.observe(&ev) {
            emit(&mut r, &mut out, e, summaries)?;
        }
    }
    if let Some(mut engine) = intel {
        for e in engine.stop() {
            emit(&mut r, &mut out, e, summaries)?;
        }
    }
    Ok(r)
}

fn emit(r: &mut Replay, out: &mut impl Write, e: Event, summaries: bool) -> anyhow::Result<()> {
    match &e {
        Event::Summary(_) => {
            r.windows += 1;
            if summaries {
                writeln!(out, "{}", serde_json::to_string(&e)?)?;
            }
        }
        Event::Finding(f) => {
            writeln!(out, "{}", serde_json::to_string(&e)?)?;
            r.findings.push(f.clone());
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_lock_is_exclusive() {
        let d = std::env::temp_dir().join(format!("cw-lock-{}", std::process::id()));
        let held = lock_state(&d).unwrap();
        let e = lock_state(&d).unwrap_err().to_string();
        assert!(
            e.contains("agent.lock") && e.contains("stop it first"),
            "{e}"
        );
        drop(held);
        lock_state(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn since_accepts_durations_dates_and_seconds() {
        let now = 1_796_000_000.0;
        assert_eq!(parse_since("30m", now).unwrap(), now - 1800.0);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7.0 * 86_400.0);
        assert_eq!(parse_since("2026-11-30", now).unwrap(), 1_795_996_800.0);
        assert_eq!(
            parse_since("2026-11-30T08:30", now).unwrap(),
            1_795_996_800.0 + 8.5 * 3600.0
        );
        assert_eq!(
            parse_since("2026-11-30T08:30:15Z", now).unwrap(),
            1_795_996_800.0 + 8.5 * 3600.0 + 15.0
        );
        assert_eq!(parse_since("1700000000", now).unwrap(), 1_700_000_000.0);
        let e = parse_since("yesterday", now).unwrap_err().to_string();
        assert!(e.contains("yesterday"), "{e}");
        assert!(parse_since("2026-13-01", now).is_err());
        assert!(parse_since("9223372036854775807-01-01", now).is_err());
        assert!(parse_since("2026-01-01T-5:00", now).is_err());
        assert_eq!(utc(1_795_996_800.0 + 8.5 * 3600.0), "2026-11-30 08:30:00Z");
        assert_eq!(utc(0.0), "1970-01-01 00:00:00Z");
    }
}
