//! A correlation pass: every rule over the recent past of the whole fleet (event time, with
//! `lateness_secs` of slack so spooled data arriving late is still counted), turned into
//! incidents. Passes are idempotent: an open incident of the same rule and group is updated,
//! never doubled, so several collectors on one database (only the leader runs passes) or a
//! pass run twice give the same incidents.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::rules::{Rule, RuleType};
use crate::store::{Incident, Store, StoreError, StoredFinding};

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PassReport {
    /// False when another collector leads: nothing was evaluated.
    pub led: bool,
    pub opened: Vec<i64>,
    pub updated: Vec<i64>,
}

/// One piece of evidence: who, when.
#[derive(Debug, Clone)]
struct Hit {
    time: f64,
    clinic: String,
    host: String,
}

/// A group that met its rule: everything seen for it in the look-back.
struct Group {
    key: String,
    hits: Vec<Hit>,
    evidence: BTreeMap<String, String>,
    severity: Option<String>,
}

/// Whether some window of `span` seconds holds hits from at least `min` clinics.
pub fn window_reaches(times_clinics: &mut [(f64, &str)], span: f64, min: usize) -> bool {
    times_clinics.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut lo = 0;
    for hi in 0..times_clinics.len() {
        *counts.entry(times_clinics[hi].1).or_default() += 1;
        while times_clinics[hi].0 - times_clinics[lo].0 > span {
            let c = times_clinics[lo].1;
            if let Some(n) = counts.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(c);
                }
            }
            lo += 1;
        }
        if counts.len() >= min {
            return true;
        }
    }
    false
}

fn domain_matches(name: &str, domains: &[String]) -> bool {
    domains.iter().any(|d| {
        let d = d
            .trim_start_matches("*.")
            .trim_end_matches('.')
            .to_ascii_lowercase();
        name == d || name.ends_with(&format!(".{d}"))
    })
}

/// What the names stood for (`dest_pair` sightings): the vendor's IPs (a new edge of its CDN
/// is not a campaign), and names that only ever meant private addresses (`pm-server.lan` in
/// every clinic is not a shared destination). What a clinic's hosts say a name resolved to
/// counts for that clinic's sightings only: one host claiming that an attacker's IP is the
/// vendor's cannot hide it fleet-wide.
struct Resolved<'a> {
    /// (clinic, IP) pairs that a vendor domain resolved to in that clinic.
    vendor_ips: BTreeSet<(&'a str, &'a str)>,
    /// Per name: whether it ever resolved to a public address.
    name_public: BTreeMap<&'a str, bool>,
}

impl<'a> Resolved<'a> {
    fn of(sightings: &'a [crate::store::SightingRow], vendor_domains: &[String]) -> Self {
        let mut vendor_ips: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut name_public: BTreeMap<&str, bool> = BTreeMap::new();
        for s in sightings.iter().filter(|s| s.kind == "dest_pair") {
            let Some((ip, name)) = s.value.split_once(' ') else {
                continue;
            };
            if domain_matches(name, vendor_domains) {
                vendor_ips.insert((s.clinic.as_str(), ip));
            }
            *name_public.entry(name).or_default() |= !crate::store::indicators::private(ip);
        }
        Resolved {
            vendor_ips,
            name_public,
        }
    }
}

/// The group of one indicator, with its fleet-wide first seen and prevalence as evidence.
fn indicator_group(
    kind: String,
    value: String,
    hits: Vec<Hit>,
    stats: &[crate::store::IndicatorStat],
) -> Group {
    let mut evidence = BTreeMap::new();
    evidence.insert("indicator".into(), format!("{kind}:{value}"));
    if let Some(s) = stats.iter().find(|s| s.kind == kind && s.value == value) {
        evidence.insert("fleet_first_seen".into(), format!("{:.0}", s.first_seen));
        // A sketch's estimate past `prevalence::EXACT_CLINICS` clinics: "~N".
        let approx = if s.clinics_estimated { "~" } else { "" };
        evidence.insert("clinics_ever".into(), format!("{approx}{}", s.clinics));
    }
    Group {
        key: format!("{kind}:{value}"),
        hits,
        evidence,
        severity: None,
    }
}

pub struct Engine {
    pub rules: Vec<Rule>,
    pub lateness_secs: f64,
    pub vendor_domains: Vec<String>,
}

impl Engine {
    /// Runs every enabled rule at `now` (unix seconds).
    pub fn pass(&self, store: &dyn Store, now: f64) -> Result<PassReport, StoreError> {
        let mut report = PassReport::default();
        if !store.lead_correlation()? {
            return Ok(report);
        }
        report.led = true;
        let rules: Vec<&Rule> = self.rules.iter().filter(|r| r.enabled).collect();
        let span_max = rules
            .iter()
            .filter(|r| matches!(r.kind, RuleType::FindingCount | RuleType::Temporal))
            .map(|r| r.timespan_secs + r.within_secs)
            .max()
            .unwrap_or(0) as f64;
        let findings = store.findings_since(now - span_max - self.lateness_secs)?;
        for rule in rules {
            let lookback = now - rule.timespan_secs as f64 - self.lateness_secs;
            let groups = match rule.kind {
                RuleType::ValueCount => {
                    // Each rule reads only its own look-back (and its apps): a day of the
                    // whole fleet's sightings is not held in memory for a one-hour rule.
                    let mut sightings = Vec::new();
                    if rule.apps.is_empty() {
                        sightings = store.sightings_since(lookback, None)?;
                    } else {
                        for app in &rule.apps {
                            sightings.extend(store.sightings_since(lookback, Some(app))?);
                        }
                    }
                    self.value_count(store, rule, &sightings, lookback, now)?
                }
                RuleType::FindingCount => finding_count(rule, &findings, lookback),
                RuleType::Temporal => temporal(rule, &findings, lookback),
                RuleType::Silence => silence(store, rule, now)?,
            };
            for g in groups {
                self.record(store, rule, g, now, &mut report)?;
            }
        }
        Ok(report)
    }

    /// Groups the sightings of a `value_count` rule by indicator and keeps those seen by
    /// enough clinics within the rule's timespan.
    fn value_count(
        &self,
        store: &dyn Store,
        rule: &Rule,
        sightings: &[crate::store::SightingRow],
        lookback: f64,
        now: f64,
    ) -> Result<Vec<Group>, StoreError> {
        let resolved = Resolved::of(sightings, &self.vendor_domains);
        let mut by_value: BTreeMap<(String, String), Vec<Hit>> = BTreeMap::new();
        for s in sightings {
            if !self.counts(rule, s, &resolved, lookback) {
                continue;
            }
            by_value
                .entry((s.kind.clone(), s.value.clone()))
                .or_default()
                .push(Hit {
                    time: s.first_time.max(lookback),
                    clinic: s.clinic.clone(),
                    host: s.host.clone(),
                });
        }
        let mut met: Vec<((String, String), Vec<Hit>)> = by_value
            .into_iter()
            .filter(|(_, hits)| {
                let mut tc: Vec<(f64, &str)> =
                    hits.iter().map(|h| (h.time, h.clinic.as_str())).collect();
                window_reaches(&mut tc, rule.timespan_secs as f64, rule.min_clinics)
            })
            .collect();
        // Fleet-wide first seen and prevalence, read once: for the age limit and the evidence.
        let stats =
            store.indicator_stats(&met.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>())?;
        if let Some(within) = rule.first_seen_within_secs {
            met.retain(|(k, _)| {
                stats
                    .iter()
                    .find(|s| (&s.kind, &s.value) == (&k.0, &k.1))
                    .is_some_and(|s| s.first_seen >= now - within as f64)
            });
        }
        Ok(met
            .into_iter()
            .map(|((kind, value), hits)| indicator_group(kind, value, hits, &stats))
            .collect())
    }

    /// Whether a sighting counts for a `value_count` rule: recent enough, of the rule's
    /// kinds and apps, and not excluded as the vendor's or a private destination.
    fn counts(
        &self,
        rule: &Rule,
        s: &crate::store::SightingRow,
        resolved: &Resolved<'_>,
        lookback: f64,
    ) -> bool {
        let skip = match s.kind.as_str() {
            "dest_name" => {
                (rule.exclude_vendor_domains && domain_matches(&s.value, &self.vendor_domains))
                    || (rule.exclude_private
                        && resolved.name_public.get(s.value.as_str()) == Some(&false))
            }
            "dest_ip" => {
                (rule.exclude_vendor_domains
                    && resolved
                        .vendor_ips
                        .contains(&(s.clinic.as_str(), s.value.as_str())))
                    || (rule.exclude_private && crate::store::indicators::private(&s.value))
            }
            _ => false,
        };
        !(skip
            || s.last_time < lookback
            || !rule.kinds.contains(&s.kind)
            || (!rule.apps.is_empty() && !rule.apps.contains(&s.app))
            || rule.exclude_apps.contains(&s.app)
            || (rule.vendor_domains_only && !domain_matches(&s.value, &self.vendor_domains)))
    }

    /// Opens or updates the incident of this rule and group.
    fn record(
        &self,
        store: &dyn Store,
        rule: &Rule,
        g: Group,
        now: f64,
        report: &mut PassReport,
    ) -> Result<(), StoreError> {
        let clinics: BTreeSet<String> = g.hits.iter().map(|h| h.clinic.clone()).collect();
        let hosts: BTreeSet<String> = g
            .hits
            .iter()
            .map(|h| format!("{}/{}", h.clinic, h.host))
            .collect();
        let first = g.hits.iter().map(|h| h.time).fold(f64::MAX, f64::min);
        let last = g.hits.iter().map(|h| h.time).fold(f64::MIN, f64::max);
        let mut evidence = g.evidence;
        evidence.insert("clinics".into(), clinics.len().to_string());
        let severity = g.severity.unwrap_or_else(|| rule.severity.clone());
        match store.open_incident(&rule.id, &g.key)? {
            Some(mut inc) => {
                let before = (inc.clinics.clone(), inc.hosts.clone(), inc.last_seen);
                let c: BTreeSet<String> = inc.clinics.drain(..).chain(clinics).collect();
                let h: BTreeSet<String> = inc.hosts.drain(..).chain(hosts).collect();
                inc.clinics = c.into_iter().collect();
                inc.hosts = h.into_iter().collect();
                inc.first_seen = inc.first_seen.min(first);
                inc.last_seen = inc.last_seen.max(last);
                if (inc.clinics.clone(), inc.hosts.clone(), inc.last_seen) != before {
                    evidence.insert("clinics".into(), inc.clinics.len().to_string());
                    inc.evidence = evidence;
                    inc.severity = severity;
                    inc.updated = now;
                    report.updated.push(store.save_incident(&inc)?);
                }
            }
            None => {
                let inc = Incident {
                    id: 0,
                    rule: rule.id.clone(),
                    key: g.key,
                    state: "new".into(),
                    severity,
                    title: rule.title.clone(),
                    first_seen: first,
                    last_seen: last,
                    clinics: clinics.into_iter().collect(),
                    hosts: hosts.into_iter().collect(),
                    evidence,
                    created: now,
                    updated: now,
                };
                let id = store.save_incident(&inc)?;
                tracing::warn!(id, rule = %inc.rule, key = %inc.key, clinics = inc.clinics.len(), "incident opened");
                report.opened.push(id);
            }
        }
        Ok(())
    }
}

/// The group a finding falls in for `group_by`, if it has that field.
fn group_of(f: &StoredFinding, by: &str) -> Option<String> {
    match by {
        "fleet" => Some("fleet".into()),
        "rule" => Some(format!("rule:{}", f.rule)),
        "subject" => Some(format!("subject:{}", f.subject)),
        _ => {
            let key = by.strip_prefix("evidence.")?;
            let v = f.evidence.get(key)?;
            // Evidence values are JSON text: a string's quotes go.
            let v = serde_json::from_str::<String>(v).unwrap_or_else(|_| v.clone());
            Some(format!("{key}:{v}"))
        }
    }
}

fn finding_count(rule: &Rule, findings: &[StoredFinding], lookback: f64) -> Vec<Group> {
    let mut groups: BTreeMap<String, Vec<&StoredFinding>> = BTreeMap::new();
    for f in findings {
        if f.time < lookback || !rule.findings.contains(&f.rule) {
            continue;
        }
        for by in &rule.group_by {
            if let Some(g) = group_of(f, by) {
                groups.entry(g).or_default().push(f);
            }
        }
    }
    groups
        .into_iter()
        .filter_map(|(key, fs)| {
            let mut tc: Vec<(f64, &str)> = fs.iter().map(|f| (f.time, f.clinic.as_str())).collect();
            if !window_reaches(&mut tc, rule.timespan_secs as f64, rule.min_clinics) {
                return None;
            }
            // Evidence values are JSON text: `false` or `"false"`.
            let off_hours = fs
                .iter()
                .filter(|f| {
                    f.evidence
                        .get("in_practice_hours")
                        .is_some_and(|v| v.trim_matches('"') == "false")
                })
                .count();
            let severity = rule
                .off_hours_severity
                .clone()
                .filter(|_| off_hours * 2 > fs.len());
            let mut evidence = BTreeMap::new();
            evidence.insert("findings".into(), fs.len().to_string());
            let rules: BTreeSet<&str> = fs.iter().map(|f| f.rule.as_str()).collect();
            evidence.insert(
                "rules".into(),
                rules.into_iter().collect::<Vec<_>>().join(","),
            );
            if severity.is_some() {
                evidence.insert("outside_practice_hours".into(), off_hours.to_string());
            }
            Some(Group {
                key,
                hits: fs
                    .iter()
                    .map(|f| Hit {
                        time: f.time,
                        clinic: f.clinic.clone(),
                        host: f.host.clone(),
                    })
                    .collect(),
                evidence,
                severity,
            })
        })
        .collect()
}

/// When one place's findings (time, rule), in time order, complete the rule's sequence:
/// every rule of `rules` within `within` seconds, in the listed order when `ordered`. Each
/// completion is the time of the finding that completed it.
pub fn completions(
    findings: &[(f64, &str)],
    rules: &[String],
    within: f64,
    ordered: bool,
) -> Vec<f64> {
    // Latest time each rule was seen (unordered), or the latest start of a chain covering
    // rules[..=k] (ordered): the tightest occurrence ending now.
    let mut latest: Vec<Option<f64>> = vec![None; rules.len()];
    let mut out = Vec::new();
    for &(t, rule) in findings {
        let Some(k) = rules.iter().position(|r| r == rule) else {
            continue;
        };
        let start = if ordered {
            if k == 0 {
                latest[0] = Some(t);
            } else if let Some(prev) = latest[k - 1] {
                latest[k] = Some(latest[k].map_or(prev, |s| s.max(prev)));
            }
            if k + 1 == rules.len() {
                latest[k]
            } else {
                None
            }
        } else {
            latest[k] = Some(t);
            latest.iter().try_fold(f64::MAX, |m, l| l.map(|l| m.min(l)))
        };
        if start.is_some_and(|s| t - s <= within) {
            out.push(t);
        }
    }
    out
}

fn temporal(rule: &Rule, findings: &[StoredFinding], lookback: f64) -> Vec<Group> {
    let per_clinic = rule.per.as_deref() == Some("clinic");
    // Findings arrive ordered by time (`findings_since`).
    let mut places: BTreeMap<(&str, &str), Vec<(f64, &str)>> = BTreeMap::new();
    for f in findings {
        // An occurrence may start up to `within_secs` before the look-back.
        if f.time < lookback - rule.within_secs as f64 || !rule.findings.contains(&f.rule) {
            continue;
        }
        let host = if per_clinic { "" } else { f.host.as_str() };
        places
            .entry((f.clinic.as_str(), host))
            .or_default()
            .push((f.time, f.rule.as_str()));
    }
    let mut hits = Vec::new();
    for ((clinic, host), mut fs) in places {
        fs.sort_by(|a, b| a.0.total_cmp(&b.0));
        for t in completions(&fs, &rule.findings, rule.within_secs as f64, rule.ordered) {
            if t >= lookback {
                hits.push(Hit {
                    time: t,
                    clinic: clinic.to_string(),
                    host: if per_clinic {
                        // The clinic's hosts that raised any of the findings.
                        findings
                            .iter()
                            .filter(|f| f.clinic == clinic && rule.findings.contains(&f.rule))
                            .map(|f| f.host.as_str())
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect::<Vec<_>>()
                            .join(",")
                    } else {
                        host.to_string()
                    },
                });
            }
        }
    }
    let mut tc: Vec<(f64, &str)> = hits.iter().map(|h| (h.time, h.clinic.as_str())).collect();
    if !window_reaches(&mut tc, rule.timespan_secs as f64, rule.min_clinics) {
        return Vec::new();
    }
    let sep = if rule.ordered { " then " } else { " and " };
    let mut evidence = BTreeMap::new();
    evidence.insert("sequence".into(), rule.findings.join(sep));
    evidence.insert("within_secs".into(), rule.within_secs.to_string());
    evidence.insert("occurrences".into(), hits.len().to_string());
    vec![Group {
        key: "fleet".into(),
        hits,
        evidence,
        severity: None,
    }]
}

/// Hosts that were reporting and stopped within the window: at least
/// max(min_hosts, min(fraction × hosts seen in the last day, max_hosts)).
fn silence(store: &dyn Store, rule: &Rule, now: f64) -> Result<Vec<Group>, StoreError> {
    let hosts = store.hosts()?;
    let active = hosts
        .iter()
        .filter(|h| h.last_seen >= now - 86_400.0)
        .count();
    let until = now - rule.silent_after_secs as f64;
    let from = until - rule.timespan_secs as f64;
    let silent: Vec<Hit> = hosts
        .iter()
        .filter(|h| h.last_seen >= from && h.last_seen < until)
        .map(|h| Hit {
            time: h.last_seen,
            clinic: h.clinic.clone(),
            host: h.host.clone(),
        })
        .collect();
    let need = ((rule.fraction * active as f64).ceil() as usize)
        .min(rule.max_hosts)
        .max(rule.min_hosts.max(1));
    if silent.len() < need {
        return Ok(Vec::new());
    }
    let mut evidence = BTreeMap::new();
    evidence.insert("silent_hosts".into(), silent.len().to_string());
    evidence.insert("active_hosts".into(), active.to_string());
    evidence.insert("threshold".into(), need.to_string());
    // One incident per silent spell: keyed by the window's start, to the 10 minutes.
    let spell = (silent.iter().map(|h| h.time).fold(f64::MAX, f64::min) / 600.0).floor() as i64;
    Ok(vec![Group {
        key: format!("silence:{spell}"),
        hits: silent,
        evidence,
        severity: None,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_must_hold_enough_distinct_clinics() {
        let mut v = vec![(0.0, "a"), (10.0, "a"), (20.0, "b"), (5000.0, "c")];
        assert!(
            !window_reaches(&mut v.clone(), 3600.0, 3),
            "c is outside a's and b's hour"
        );
        assert!(window_reaches(&mut v, 3600.0, 2));
        let mut v = vec![(100.0, "c"), (0.0, "a"), (3500.0, "b")];
        assert!(window_reaches(&mut v, 3600.0, 3), "order does not matter");
    }

    #[test]
    fn sequences_complete_in_order_within_the_time_allowed() {
        let rules = vec!["A".to_string(), "B".to_string(), "C".to_string()];
        let f = [(0.0, "A"), (10.0, "B"), (20.0, "C"), (30.0, "C")];
        assert_eq!(completions(&f, &rules, 100.0, true), [20.0, 30.0]);
        assert_eq!(
            completions(&f, &rules, 25.0, true),
            [20.0],
            "30 - 0 is too long"
        );
        let backwards = [(0.0, "C"), (10.0, "B"), (20.0, "A")];
        assert!(completions(&backwards, &rules, 100.0, true).is_empty());
        assert_eq!(completions(&backwards, &rules, 100.0, false), [20.0]);
        // A later A starts a tighter chain: A(0) B(10) A(50) B(60) C(70) fits in 20.
        let f = [
            (0.0, "A"),
            (10.0, "B"),
            (50.0, "A"),
            (60.0, "B"),
            (70.0, "C"),
        ];
        assert_eq!(completions(&f, &rules, 20.0, true), [70.0]);
        // Without B since the last A, the chain is the old one.
        let f = [(0.0, "A"), (10.0, "B"), (50.0, "A"), (70.0, "C")];
        assert_eq!(completions(&f, &rules, 100.0, true), [70.0]);
        assert!(completions(&f, &rules, 60.0, true).is_empty());
        assert!(completions(&[(0.0, "A"), (1.0, "B")], &rules, 100.0, false).is_empty());
    }

    #[test]
    fn vendor_domains_match_the_domain_and_its_subdomains() {
        let d = vec![
            "vendor.example".to_string(),
            "*.pm-cloud.example.".to_string(),
        ];
        assert!(domain_matches("vendor.example", &d));
        assert!(domain_matches("api.vendor.example", &d));
        assert!(domain_matches("eu.pm-cloud.example", &d));
        assert!(!domain_matches("evilvendor.example", &d));
    }
}
