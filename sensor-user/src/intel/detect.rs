//! Detectors for the window rules: each rule kind reads one window, the app's baseline and
//! the rule's thresholds. The event rules (protected reads, sensor health) are in `mod.rs`.

use super::{
    baseline::Baseline,
    dest::AllowList,
    rules::{Rule, RuleKind, Rules},
};
use crate::event::{
    class::FileClass,
    finding::{human, top, Finding},
    summary::WindowSummary,
};

/// Destinations named in one finding's evidence (the largest senders; the rest counted).
const TOP_DESTINATIONS: usize = 20;

pub struct Ctx<'a> {
    pub rules: &'a Rules,
    pub baseline: &'a Baseline,
    pub allow: &'a AllowList,
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
    let b = ctx.baseline;
    let non_vendor =
        |d: &&crate::event::summary::DestStats| !ctx.allow.allows(d.dst, d.name.as_deref());
    let mut out = Vec::new();
    for rule in ctx.rules.enabled() {
        match &rule.kind {
            RuleKind::BulkRead {
                class,
                factor,
                quantile,
                min_samples,
                floor_bytes,
            } if !learning => {
                let bytes = w.class_bytes(*class);
                let p = b
                    .class_bytes
                    .get(class)
                    .and_then(|h| h.quantile(w.hour_of_week, *quantile, *min_samples))
                    .unwrap_or(0);
                let limit = ((p as f64) * factor).max(*floor_bytes as f64);
                if bytes as f64 > limit {
                    out.push(
                        base(rule, w, class.as_str())
                            .summary(format!(
                                "{} read {} of {class} in {:.0} s, {:.1}x its usual p{:.0} ({}) for this hour of the week",
                                w.app,
                                human(bytes),
                                w.end - w.start,
                                bytes as f64 / (p.max(1)) as f64,
                                quantile * 100.0,
                                human(p)
                            ))
                            .with("class", class.as_str())
                            .with("bytes", bytes)
                            .with("files", w.classes.get(class).map_or(0, |s| s.files))
                            .with("baseline_quantile_bytes", p)
                            .with("factor", *factor)
                            .with("floor_bytes", *floor_bytes),
                    );
                }
            }
            RuleKind::NewClass { classes } if !learning => {
                for c in classes {
                    let Some(s) = w.classes.get(c) else { continue };
                    if (s.files > 0 || s.bytes > 0) && !b.knows_class(*c) {
                        out.push(
                            base(rule, w, c.as_str())
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
            }
            RuleKind::NewDestination {} if !learning => {
                for d in w.destinations.iter().filter(non_vendor) {
                    if !b.knows_dest(&d.key()) {
                        out.push(
                            base(rule, w, &d.key())
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
                                .with("connects", d.connects),
                        );
                    }
                }
            }
            RuleKind::EgressSurge {
                factor,
                quantile,
                min_samples,
                floor_bytes,
            } if !learning => {
                for d in &w.destinations {
                    let p = b
                        .destinations
                        .get(&d.key())
                        .and_then(|h| h.sent.quantile(w.hour_of_week, *quantile, *min_samples))
                        .unwrap_or(0);
                    let limit = ((p as f64) * factor).max(*floor_bytes as f64);
                    if d.bytes_sent as f64 > limit {
                        out.push(
                            base(rule, w, &d.key())
                                .summary(format!(
                                    "{} sent {} to {} in {:.0} s; its usual p{:.0} there is {}",
                                    w.app,
                                    human(d.bytes_sent),
                                    d.key(),
                                    w.end - w.start,
                                    quantile * 100.0,
                                    human(p)
                                ))
                                .with("destination", d.key())
                                .with("bytes_sent", d.bytes_sent)
                                .with("baseline_quantile_bytes", p)
                                .with("factor", *factor)
                                .with("floor_bytes", *floor_bytes),
                        );
                    }
                }
            }
            RuleKind::ReadThenSend {
                min_bytes,
                min_ratio,
                max_ratio,
            } => {
                let read = w.class_bytes(FileClass::PmData);
                let sent: u64 = w
                    .destinations
                    .iter()
                    .filter(non_vendor)
                    .map(|d| d.bytes_sent)
                    .sum();
                let ratio = sent as f64 / read.max(1) as f64;
                if read >= *min_bytes
                    && sent >= *min_bytes
                    && (*min_ratio..=*max_ratio).contains(&ratio)
                {
                    let dests: Vec<(String, u64)> = w
                        .destinations
                        .iter()
                        .filter(non_vendor)
                        .filter(|d| d.bytes_sent > 0)
                        .map(|d| (d.key(), d.bytes_sent))
                        .collect();
                    let count = dests.len();
                    out.push(
                        base(rule, w, "pm_data")
                            .summary(format!(
                                "{} read {} of patient data and sent {} to non-vendor destinations in the same window",
                                w.app,
                                human(read),
                                human(sent)
                            ))
                            .with("pm_data_bytes_read", read)
                            .with("bytes_sent_non_vendor", sent)
                            .with("ratio", (ratio * 1000.0).round() / 1000.0)
                            .with("destinations_count", count)
                            .with("destinations", top(dests, TOP_DESTINATIONS)),
                    );
                }
            }
            RuleKind::SuspiciousChild { names, prefixes } => {
                for (exe, n) in &w.children {
                    if suspicious(exe, names, prefixes) {
                        out.push(
                            base(rule, w, exe)
                                .summary(format!("{} ran {exe} ({n} time(s))", w.app))
                                .with("exe", exe.clone())
                                .with("count", *n),
                        );
                    }
                }
            }
            RuleKind::NewChild {} if !learning => {
                for (exe, n) in &w.children {
                    if !b.knows_child(exe) {
                        out.push(
                            base(rule, w, exe)
                                .summary(format!(
                                    "{} ran {exe}, a program it never ran while learning",
                                    w.app
                                ))
                                .with("exe", exe.clone())
                                .with("count", *n),
                        );
                    }
                }
            }
            RuleKind::QuerySurge {
                factor,
                quantile,
                min_samples,
                floor_requests,
            } if !learning => {
                let n = w.requests();
                let p = b
                    .requests
                    .quantile(w.hour_of_week, *quantile, *min_samples)
                    .unwrap_or(0);
                let limit = ((p as f64) * factor).max(*floor_requests as f64);
                if n as f64 > limit {
                    let top = w.queries.first();
                    out.push(
                        base(rule, w, "requests")
                            .summary(format!(
                                "{} made {n} HTTPS requests in {:.0} s, {:.1}x its usual p{:.0} ({p}) for this hour of the week",
                                w.app,
                                w.end - w.start,
                                n as f64 / p.max(1) as f64,
                                quantile * 100.0
                            ))
                            .with("requests", n)
                            .with("templates", w.queries.len())
                            .with("top_template", top.map(|q| q.key()))
                            .with("top_requests", top.map_or(0, |q| q.requests))
                            .with("baseline_quantile_requests", p)
                            .with("factor", *factor)
                            .with("floor_requests", *floor_requests),
                    );
                }
            }
            RuleKind::QueryScrape {
                factor,
                quantile,
                min_samples,
                floor_ids,
            } if !learning => {
                for q in &w.queries {
                    let p = b
                        .queries
                        .get(&q.key())
                        .and_then(|h| {
                            h.distinct_ids
                                .quantile(w.hour_of_week, *quantile, *min_samples)
                        })
                        .unwrap_or(0);
                    let limit = ((p as f64) * factor).max(*floor_ids as f64);
                    if q.distinct_ids as f64 > limit {
                        out.push(
                            base(rule, w, &q.key())
                                .summary(format!(
                                    "{} named about {} distinct records through {} in {:.0} s ({} requests), {:.1}x its usual p{:.0} ({p})",
                                    w.app,
                                    q.distinct_ids,
                                    q.key(),
                                    w.end - w.start,
                                    q.requests,
                                    q.distinct_ids as f64 / p.max(1) as f64,
                                    quantile * 100.0
                                ))
                                .with("template", q.key())
                                .with("distinct_ids", q.distinct_ids)
                                .with("requests", q.requests)
                                .with("baseline_quantile_ids", p)
                                .with("factor", *factor)
                                .with("floor_ids", *floor_ids),
                        );
                    }
                }
            }
            RuleKind::NewQuery {} if !learning => {
                for q in w.queries.iter().filter(|q| !b.knows_query(&q.key())) {
                    out.push(
                        base(rule, w, &q.key())
                            .summary(format!(
                                "{} made a request it never made before: {} ({} times)",
                                w.app,
                                q.key(),
                                q.requests
                            ))
                            .with("template", q.key())
                            .with("requests", q.requests)
                            .with("distinct_ids", q.distinct_ids),
                    );
                }
            }
            RuleKind::QueryOffHours { floor_requests } if !w.in_practice_hours => {
                let n = w.requests();
                if n > *floor_requests {
                    out.push(
                        base(rule, w, "query_off_hours")
                            .summary(format!(
                                "{} made {n} HTTPS requests outside practice hours",
                                w.app
                            ))
                            .with("requests", n)
                            .with("templates", w.queries.len())
                            .with("top_template", w.queries.first().map(|q| q.key()))
                            .with("floor_requests", *floor_requests),
                    );
                }
            }
            RuleKind::OffHours { floor_bytes } if !w.in_practice_hours => {
                let total = w.bytes_read() + w.bytes_sent();
                if total > *floor_bytes {
                    out.push(
                        base(rule, w, "off_hours")
                            .summary(format!(
                                "{} read {} and sent {} outside practice hours",
                                w.app,
                                human(w.bytes_read()),
                                human(w.bytes_sent())
                            ))
                            .with("bytes_read", w.bytes_read())
                            .with("bytes_sent", w.bytes_sent())
                            .with("floor_bytes", *floor_bytes),
                    );
                }
            }
            _ => {}
        }
    }
    out
}
