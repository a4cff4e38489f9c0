//! Detectors for the window rules: one function per rule kind, each reading one window, the
//! app's baseline and the rule's thresholds. The event rules (protected reads, sensor
//! health) are in `events.rs`.

use std::ops::RangeInclusive;

use super::{
    baseline::Baseline,
    dest::AllowList,
    rules::{Rule, RuleKind, Rules},
};
use crate::event::{
    class::FileClass,
    finding::{human, top, Finding},
    summary::{DestStats, WindowSummary},
};

/// Destinations named in one finding's evidence (the largest senders; the rest counted).
const TOP_DESTINATIONS: usize = 20;

pub struct Ctx<'a> {
    pub rules: &'a Rules,
    pub baseline: &'a Baseline,
    pub allow: &'a AllowList,
    /// The app's earlier windows, oldest first, as far back as [`Rules::longest_span`].
    pub recent: &'a std::collections::VecDeque<WindowSummary>,
}

fn base(rule: &Rule, w: &WindowSummary, subject: &str) -> Finding {
    Finding::new(&rule.id, rule.severity, &w.app, w.end, subject)
        .with("window_start", w.start)
        .with("window_secs", w.end - w.start)
        .with("hour_of_week", w.hour_of_week)
        .with("in_practice_hours", w.in_practice_hours)
}

/// Whether a child executable matches the rule's names (by file name) or prefixes.
pub fn suspicious(exe: &str, names: &[String], prefixes: &[String]) -> bool {
    let name = exe.rsplit('/').next().unwrap_or(exe);
    names.iter().any(|n| n == name) || prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

/// Findings of the window rules for one window. While the baseline is still learning, the
/// rules that compare with it stay silent.
pub fn window_findings(ctx: &Ctx, w: &WindowSummary) -> Vec<Finding> {
    let learning = ctx.baseline.learning(w.start);
    let mut out = Vec::new();
    for rule in ctx.rules.enabled() {
        let c = Check { ctx, w, rule };
        let found = match &rule.kind {
            RuleKind::ReadThenSend {
                min_bytes,
                min_ratio,
                max_ratio,
                span_secs,
            } => c.read_then_send(*min_bytes, *min_ratio..=*max_ratio, *span_secs),
            RuleKind::SuspiciousChild { names, prefixes } => c.suspicious_child(names, prefixes),
            RuleKind::QueryOffHours { floor_requests } if !w.in_practice_hours => {
                c.query_off_hours(*floor_requests)
            }
            RuleKind::OffHours { floor_bytes } if !w.in_practice_hours => c.off_hours(*floor_bytes),
            _ if learning => Vec::new(),
            kind => c.against_baseline(kind),
        };
        out.extend(found);
    }
    out
}

/// The thresholds of a rule that compares a figure with a quantile of its baseline.
#[derive(Clone, Copy)]
struct Surge {
    factor: f64,
    quantile: f64,
    min_samples: u64,
    floor: u64,
}

impl Surge {
    /// The figure above which a window is reported, given the baseline's quantile.
    fn limit(&self, p: u64) -> f64 {
        ((p as f64) * self.factor).max(self.floor as f64)
    }
}

/// One rule applied to one window.
struct Check<'a> {
    ctx: &'a Ctx<'a>,
    w: &'a WindowSummary,
    rule: &'a Rule,
}

impl Check<'_> {
    fn base(&self, subject: &str) -> Finding {
        base(self.rule, self.w, subject)
    }

    fn non_vendor(&self, d: &DestStats) -> bool {
        !self.ctx.allow.allows(d.dst, d.name.as_deref())
    }

    /// The rules that compare with the baseline (silent while it learns).
    fn against_baseline(&self, kind: &RuleKind) -> Vec<Finding> {
        let surge = |factor: &f64, quantile: &f64, min_samples: &u64, floor: &u64| Surge {
            factor: *factor,
            quantile: *quantile,
            min_samples: *min_samples,
            floor: *floor,
        };
        match kind {
            RuleKind::BulkRead {
                class,
                factor,
                quantile,
                min_samples,
                floor_bytes,
            } => self.bulk_read(*class, surge(factor, quantile, min_samples, floor_bytes)),
            RuleKind::NewClass { classes } => self.new_class(classes),
            RuleKind::NewDestination {} => self.new_destination(),
            RuleKind::EgressSurge {
                factor,
                quantile,
                min_samples,
                floor_bytes,
            } => self.egress_surge(surge(factor, quantile, min_samples, floor_bytes)),
            RuleKind::NewChild {} => self.new_child(),
            RuleKind::QuerySurge {
                factor,
                quantile,
                min_samples,
                floor_requests,
            } => self.query_surge(surge(factor, quantile, min_samples, floor_requests)),
            RuleKind::QueryScrape {
                factor,
                quantile,
                min_samples,
                floor_ids,
            } => self.query_scrape(surge(factor, quantile, min_samples, floor_ids)),
            RuleKind::NewQuery {} => self.new_query(),
            _ => Vec::new(),
        }
    }

    fn bulk_read(&self, class: FileClass, t: Surge) -> Vec<Finding> {
        let w = self.w;
        let bytes = w.class_bytes(class);
        let p = self
            .ctx
            .baseline
            .class_bytes
            .get(&class)
            .and_then(|h| h.quantile(w.hour_of_week, t.quantile, t.min_samples))
            .unwrap_or(0);
        if bytes as f64 <= t.limit(p) {
            return Vec::new();
        }
        vec![self
            .base(class.as_str())
            .summary(format!(
                "{} read {} of {class} in {:.0} s, {:.1}x its usual p{:.0} ({}) for this hour of the week",
                w.app,
                human(bytes),
                w.end - w.start,
                bytes as f64 / (p.max(1)) as f64,
                t.quantile * 100.0,
                human(p)
            ))
            .with("class", class.as_str())
            .with("bytes", bytes)
            .with("files", w.classes.get(&class).map_or(0, |s| s.files))
            .with("baseline_quantile_bytes", p)
            .with("factor", t.factor)
            .with("floor_bytes", t.floor)]
    }

    fn new_class(&self, classes: &[FileClass]) -> Vec<Finding> {
        let w = self.w;
        let mut out = Vec::new();
        for c in classes {
            let Some(s) = w.classes.get(c) else { continue };
            if (s.files > 0 || s.bytes > 0) && !self.ctx.baseline.knows_class(*c) {
                out.push(
                    self.base(c.as_str())
                        .summary(format!(
                            "{} opened {} {} file(s) ({} read); it never did while learning",
                            w.app,
                            s.files,
                            c,
                            human(s.bytes)
                        ))
                        .with("class", c.as_str())
                        .with("files", s.files)
                        .with("bytes", s.bytes)
                        .with("opens", s.opens),
                );
            }
        }
        out
    }

    fn new_destination(&self) -> Vec<Finding> {
        let w = self.w;
        w.destinations
            .iter()
            .filter(|d| self.non_vendor(d) && !self.ctx.baseline.knows_dest(&d.key()))
            .map(|d| {
                self.base(&d.key())
                    .summary(format!(
                        "{} connected to {} (not in its baseline nor the vendor list): {} sent, {} received",
                        w.app,
                        d.key(),
                        human(d.bytes_sent),
                        human(d.bytes_recv)
                    ))
                    .with("destination", d.key())
                    .with("ip", d.dst.to_string())
                    .with("port", d.port)
                    .with("name", d.name.clone())
                    .with("bytes_sent", d.bytes_sent)
                    .with("bytes_recv", d.bytes_recv)
                    .with("connects", d.connects)
            })
            .collect()
    }

    fn egress_surge(&self, t: Surge) -> Vec<Finding> {
        let w = self.w;
        let mut out = Vec::new();
        for d in &w.destinations {
            let p = self
                .ctx
                .baseline
                .destinations
                .get(&d.key())
                .and_then(|h| h.sent.quantile(w.hour_of_week, t.quantile, t.min_samples))
                .unwrap_or(0);
            if d.bytes_sent as f64 > t.limit(p) {
                out.push(
                    self.base(&d.key())
                        .summary(format!(
                            "{} sent {} to {} in {:.0} s; its usual p{:.0} there is {}",
                            w.app,
                            human(d.bytes_sent),
                            d.key(),
                            w.end - w.start,
                            t.quantile * 100.0,
                            human(p)
                        ))
                        .with("destination", d.key())
                        .with("bytes_sent", d.bytes_sent)
                        .with("baseline_quantile_bytes", p)
                        .with("factor", t.factor)
                        .with("floor_bytes", t.floor),
                );
            }
        }
        out
    }

    /// Patient data read and sent to non-vendor destinations within `span` seconds, raised
    /// for the window with the send. Tried on this window alone, then on this window with
    /// the earlier ones of the span, newest first, each run starting at a window that read
    /// (so a send before the read does not pair with it, and older reads do not dilute a
    /// recent pair): the first run whose figures pass is the finding.
    fn read_then_send(
        &self,
        min_bytes: u64,
        ratios: RangeInclusive<f64>,
        span: f64,
    ) -> Vec<Finding> {
        let w = self.w;
        if self.sends(w).next().is_none() {
            return Vec::new();
        }
        let from = w.end - span.max(w.end - w.start);
        let earlier: Vec<&WindowSummary> = self
            .ctx
            .recent
            .iter()
            .filter(|p| p.start >= from && p.end <= w.start)
            .collect();
        let read_at = (0..earlier.len())
            .rev()
            .filter(|&i| earlier[i].class_bytes(FileClass::PmData) > 0);
        for first in std::iter::once(earlier.len()).chain(read_at) {
            let mut run = earlier[first..].to_vec();
            run.push(w);
            if let Some(f) = self.paired(&run, min_bytes, &ratios) {
                return vec![f];
            }
        }
        Vec::new()
    }

    /// This window's non-vendor destinations with bytes sent.
    fn sends<'w>(&self, w: &'w WindowSummary) -> impl Iterator<Item = &'w DestStats> + use<'_, 'w> {
        w.destinations
            .iter()
            .filter(|d| self.non_vendor(d) && d.bytes_sent > 0)
    }

    /// The read-then-send finding over `run` (oldest first, ending with this window), when
    /// its reads and sends pass the rule's figures.
    fn paired(
        &self,
        run: &[&WindowSummary],
        min_bytes: u64,
        ratios: &RangeInclusive<f64>,
    ) -> Option<Finding> {
        let read: u64 = run.iter().map(|p| p.class_bytes(FileClass::PmData)).sum();
        let mut sent_to: std::collections::BTreeMap<String, u64> = Default::default();
        for d in run.iter().flat_map(|p| self.sends(p)) {
            *sent_to.entry(d.key()).or_default() += d.bytes_sent;
        }
        let dests: Vec<(String, u64)> = sent_to.into_iter().collect();
        let sent: u64 = dests.iter().map(|(_, b)| b).sum();
        let ratio = sent as f64 / read.max(1) as f64;
        if read < min_bytes || sent < min_bytes || !ratios.contains(&ratio) {
            return None;
        }
        let w = self.w;
        let within = match run.len() {
            1 => "in the same window".to_string(),
            n => format!("within {n} windows ({:.0} s)", w.end - run[0].start),
        };
        Some(
            self.base("pm_data")
                .summary(format!(
                    "{} read {} of patient data and sent {} to non-vendor destinations {within}",
                    w.app,
                    human(read),
                    human(sent)
                ))
                .with("pm_data_bytes_read", read)
                .with("bytes_sent_non_vendor", sent)
                .with("ratio", (ratio * 1000.0).round() / 1000.0)
                .with("windows", run.len())
                .with("span_start", run[0].start)
                .with("destinations_count", dests.len())
                .with("destinations", top(dests, TOP_DESTINATIONS)),
        )
    }

    fn suspicious_child(&self, names: &[String], prefixes: &[String]) -> Vec<Finding> {
        let w = self.w;
        w.children
            .iter()
            .filter(|(exe, _)| suspicious(exe, names, prefixes))
            .map(|(exe, n)| {
                self.base(exe)
                    .summary(format!("{} ran {exe} ({n} time(s))", w.app))
                    .with("exe", exe.clone())
                    .with("count", *n)
            })
            .collect()
    }

    fn new_child(&self) -> Vec<Finding> {
        let w = self.w;
        w.children
            .iter()
            .filter(|(exe, _)| !self.ctx.baseline.knows_child(exe))
            .map(|(exe, n)| {
                self.base(exe)
                    .summary(format!(
                        "{} ran {exe}, a program it never ran while learning",
                        w.app
                    ))
                    .with("exe", exe.clone())
                    .with("count", *n)
            })
            .collect()
    }

    fn query_surge(&self, t: Surge) -> Vec<Finding> {
        let w = self.w;
        let n = w.requests();
        let p = self
            .ctx
            .baseline
            .requests
            .quantile(w.hour_of_week, t.quantile, t.min_samples)
            .unwrap_or(0);
        if n as f64 <= t.limit(p) {
            return Vec::new();
        }
        let top = w.queries.first();
        vec![self
            .base("requests")
            .summary(format!(
                "{} made {n} HTTPS requests in {:.0} s, {:.1}x its usual p{:.0} ({p}) for this hour of the week",
                w.app,
                w.end - w.start,
                n as f64 / p.max(1) as f64,
                t.quantile * 100.0
            ))
            .with("requests", n)
            .with("templates", w.queries.len())
            .with("top_template", top.map(|q| q.key()))
            .with("top_requests", top.map_or(0, |q| q.requests))
            .with("baseline_quantile_requests", p)
            .with("factor", t.factor)
            .with("floor_requests", t.floor)]
    }

    fn query_scrape(&self, t: Surge) -> Vec<Finding> {
        let w = self.w;
        let mut out = Vec::new();
        for q in &w.queries {
            let p = self
                .ctx
                .baseline
                .queries
                .get(&q.key())
                .and_then(|h| {
                    h.distinct_ids
                        .quantile(w.hour_of_week, t.quantile, t.min_samples)
                })
                .unwrap_or(0);
            if q.distinct_ids as f64 > t.limit(p) {
                out.push(
                    self.base(&q.key())
                        .summary(format!(
                            "{} named about {} distinct records through {} in {:.0} s ({} requests), {:.1}x its usual p{:.0} ({p})",
                            w.app,
                            q.distinct_ids,
                            q.key(),
                            w.end - w.start,
                            q.requests,
                            q.distinct_ids as f64 / p.max(1) as f64,
                            t.quantile * 100.0
                        ))
                        .with("template", q.key())
                        .with("distinct_ids", q.distinct_ids)
                        .with("requests", q.requests)
                        .with("baseline_quantile_ids", p)
                        .with("factor", t.factor)
                        .with("floor_ids", t.floor),
                );
            }
        }
        out
    }

    fn new_query(&self) -> Vec<Finding> {
        let w = self.w;
        w.queries
            .iter()
            .filter(|q| !self.ctx.baseline.knows_query(&q.key()))
            .map(|q| {
                self.base(&q.key())
                    .summary(format!(
                        "{} made a request it never made before: {} ({} times)",
                        w.app,
                        q.key(),
                        q.requests
                    ))
                    .with("template", q.key())
                    .with("requests", q.requests)
                    .with("distinct_ids", q.distinct_ids)
            })
            .collect()
    }

    fn query_off_hours(&self, floor_requests: u64) -> Vec<Finding> {
        let w = self.w;
        let n = w.requests();
        if n <= floor_requests {
            return Vec::new();
        }
        vec![self
            .base("query_off_hours")
            .summary(format!(
                "{} made {n} HTTPS requests outside practice hours",
                w.app
            ))
            .with("requests", n)
            .with("templates", w.queries.len())
            .with("top_template", w.queries.first().map(|q| q.key()))
            .with("floor_requests", floor_requests)]
    }

    fn off_hours(&self, floor_bytes: u64) -> Vec<Finding> {
        let w = self.w;
        let total = w.bytes_read() + w.bytes_sent();
        if total <= floor_bytes {
            return Vec::new();
        }
        vec![self
            .base("off_hours")
            .summary(format!(
                "{} read {} and sent {} outside practice hours",
                w.app,
                human(w.bytes_read()),
                human(w.bytes_sent())
            ))
            .with("bytes_read", w.bytes_read())
            .with("bytes_sent", w.bytes_sent())
            .with("floor_bytes", floor_bytes)]
    }
}
