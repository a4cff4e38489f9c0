//! What the agent ships to the collector: window summaries, findings and health, as
//! `clinicwatch.v1` records (already through the privacy edge: none carries a path), each
//! shaped to the collector's limits ([`shape`]) so that none is refused: texts cut and
//! without NUL bytes, lists cut to their largest entries (counted), evidence values within
//! the text limit.

use std::sync::atomic::{AtomicU64, Ordering};

use clinicwatch_proto::{
    limits::{self, fit_text, MAX_EVIDENCE, MAX_TEXT},
    v1::{self as pb, record::Body},
};
use prost::Message;

use crate::{
    event::{
        finding::{Finding, Severity},
        summary::WindowSummary,
    },
    event::{Event, Health},
    sinks::spool::Kind,
};

fn severity(s: Severity) -> pb::Severity {
    match s {
        Severity::Info => pb::Severity::Info,
        Severity::Low => pb::Severity::Low,
        Severity::Medium => pb::Severity::Medium,
        Severity::High => pb::Severity::High,
        Severity::Critical => pb::Severity::Critical,
    }
}

pub fn summary(w: &WindowSummary) -> pb::WindowSummary {
    pb::WindowSummary {
        app: w.app.clone(),
        start: w.start,
        end: w.end,
        hour_of_week: w.hour_of_week as u32,
        in_practice_hours: w.in_practice_hours,
        classes: w
            .classes
            .iter()
            .map(|(c, s)| pb::ClassStats {
                class: c.as_str().into(),
                bytes: s.bytes,
                reads: s.reads,
                opens: s.opens,
                mmaps: s.mmaps,
                files: s.files,
            })
            .collect(),
        destinations: w
            .destinations
            .iter()
            .map(|d| pb::Destination {
                ip: d.dst.to_string(),
                port: d.port as u32,
                protocol: d.protocol.clone(),
                name: d.name.clone().unwrap_or_default(),
                bytes_sent: d.bytes_sent,
                bytes_recv: d.bytes_recv,
                connects: d.connects,
            })
            .collect(),
        children: w
            .children
            .iter()
            .map(|(exe, n)| pb::ChildCount {
                exe: exe.clone(),
                count: *n,
            })
            .collect(),
        processes: w.processes,
        queries: w
            .queries
            .iter()
            .map(|q| pb::QueryStats {
                protocol: q.protocol.clone(),
                method: q.method.clone(),
                host: q.host.clone(),
                path: q.path.clone(),
                requests: q.requests,
                bytes_sent: q.bytes_sent,
                distinct_ids: q.distinct_ids,
                responses: q.responses.to_vec(),
            })
            .collect(),
    }
}

pub fn finding(f: &Finding) -> pb::Finding {
    pb::Finding {
        rule: f.rule.clone(),
        severity: severity(f.severity) as i32,
        app: f.app.clone(),
        time: f.time,
        subject: f.subject.clone(),
        summary: f.summary.clone(),
        evidence: f
            .evidence
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
    }
}

pub fn health(time: f64, h: &Health, spool_dropped: u64) -> pb::Health {
    pb::Health {
        time,
        ringbuf_drops: h.ringbuf_drops,
        decode_dropped: h.decode.truncated + h.decode.bad_size + h.decode.unknown_kind,
        exits_missed: h.exits_missed,
        file_counters_evicted: h.file_counters_evicted,
        output_write_errors: h.output_write_errors,
        watched_processes: h.watched_processes as u64,
        spool_dropped_summaries: spool_dropped,
        map_full: h.map_full,
        quota_refused: h.quota_refused,
        readers_not_followed: h.readers_not_followed,
        flows_evicted: h.flows_evicted,
        reader_processes: h.reader_processes,
        reader_flows: h.reader_flows,
        watched_capacity: h.watched_capacity as u64,
    }
}

/// The spool record for an event, if it is one the collector gets: its kind and the
/// encoded `Record` (sequence number 0; the exporter numbers it from the spool).
pub fn record(ev: &Event, spool_dropped: u64) -> Option<(Kind, Vec<u8>)> {
    let (kind, body) = match ev {
        Event::Summary(w) => (Kind::Summary, Body::Summary(summary(w))),
        Event::Finding(f) => (Kind::Finding, Body::Finding(finding(f))),
        Event::Snapshot {
            time, health: h, ..
        } => (Kind::Health, Body::Health(health(*time, h, spool_dropped))),
        _ => return None,
    };
    let mut rec = pb::Record {
        seq: 0,
        body: Some(body),
    };
    shape(&mut rec);
    Some((kind, rec.encode_to_vec()))
}

/// The wall clock in unix seconds, as records carry it.
pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// List and evidence entries cut by [`shape`] since the agent started.
static TRIMMED: AtomicU64 = AtomicU64::new(0);

/// List and evidence entries cut to fit the collector's limits since the agent started.
pub fn trimmed() -> u64 {
    TRIMMED.load(Ordering::Relaxed)
}

/// Shapes a record to the collector's limits (`clinicwatch_proto::limits`): every text cut
/// to [`MAX_TEXT`] bytes with NUL bytes replaced; a summary's lists cut to their largest
/// entries (destinations by bytes, children by count, queries by requests, classes by
/// bytes); at most [`MAX_EVIDENCE`] evidence entries, each value within the text limit (a
/// list keeps its first entries and says `+N more`). Returns how many entries were cut.
pub fn shape(rec: &mut pb::Record) -> usize {
    let cut = match &mut rec.body {
        Some(Body::Finding(f)) => shape_finding(f),
        Some(Body::Summary(w)) => shape_summary(w),
        Some(Body::Health(_)) | None => 0,
    };
    if cut > 0 {
        TRIMMED.fetch_add(cut as u64, Ordering::Relaxed);
        let (what, app) = match &rec.body {
            Some(Body::Finding(f)) => (f.rule.as_str(), f.app.as_str()),
            Some(Body::Summary(w)) => ("summary", w.app.as_str()),
            _ => ("", ""),
        };
        tracing::warn!(
            record = what,
            app,
            cut,
            total = trimmed(),
            "a record was cut to the collector's limits (the largest entries kept)"
        );
    }
    cut
}

fn fit(t: &mut String) {
    if t.len() > MAX_TEXT || t.contains('\0') {
        *t = fit_text(t, MAX_TEXT);
    }
}

/// Keeps the `max` entries largest by `size`, in their order; returns how many were cut.
fn keep_largest<T>(v: &mut Vec<T>, max: usize, size: impl Fn(&T) -> u64) -> usize {
    if v.len() <= max {
        return 0;
    }
    let mut by_size: Vec<usize> = (0..v.len()).collect();
    by_size.sort_by_key(|&i| std::cmp::Reverse(size(&v[i])));
    let mut keep = vec![false; v.len()];
    for &i in &by_size[..max] {
        keep[i] = true;
    }
    let cut = v.len() - max;
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    cut
}

fn shape_summary(w: &mut pb::WindowSummary) -> usize {
    fit(&mut w.app);
    let cut = keep_largest(&mut w.destinations, limits::MAX_DESTINATIONS, |d| {
        d.bytes_sent.saturating_add(d.bytes_recv)
    }) + keep_largest(&mut w.classes, limits::MAX_CLASSES, |c| c.bytes)
        + keep_largest(&mut w.children, limits::MAX_CHILDREN, |c| c.count)
        + keep_largest(&mut w.queries, limits::MAX_QUERIES, |q| q.requests);
    for d in &mut w.destinations {
        fit(&mut d.ip);
        fit(&mut d.name);
        fit(&mut d.protocol);
    }
    w.classes.iter_mut().for_each(|c| fit(&mut c.class));
    w.children.iter_mut().for_each(|c| fit(&mut c.exe));
    for q in &mut w.queries {
        for t in [&mut q.protocol, &mut q.method, &mut q.host, &mut q.path] {
            fit(t);
        }
    }
    cut
}

fn shape_finding(f: &mut pb::Finding) -> usize {
    for t in [&mut f.rule, &mut f.app, &mut f.subject, &mut f.summary] {
        fit(t);
    }
    let mut cut = 0;
    let oversized = f.evidence.len() > MAX_EVIDENCE
        || f.evidence.iter().any(|(k, v)| {
            k.len() > MAX_TEXT || v.len() > MAX_TEXT || k.contains('\0') || v.contains('\0')
        });
    if oversized {
        let mut entries: Vec<(String, String)> = f.evidence.drain().collect();
        entries.sort();
        if entries.len() > MAX_EVIDENCE {
            cut += entries.len() - (MAX_EVIDENCE - 1);
            entries.truncate(MAX_EVIDENCE - 1);
            entries.push(("evidence_cut".into(), cut.to_string()));
        }
        for (mut k, mut v) in entries {
            fit(&mut k);
            if v.len() > MAX_TEXT {
                let (fitted, n) = fit_evidence(&v);
                v = fitted;
                cut += n;
            }
            fit(&mut v);
            f.evidence.insert(k, v);
        }
    }
    cut
}

/// An evidence value (JSON text) within [`MAX_TEXT`] bytes: a list keeps as many of its
/// first entries as fit, then `"+N more"`; anything else becomes a cut JSON string. Returns
/// it and how many list entries were cut.
fn fit_evidence(json: &str) -> (String, usize) {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|_| serde_json::Value::String(json.into()));
    if let serde_json::Value::Array(items) = &value {
        let marker = |n: usize| serde_json::Value::String(format!("+{n} more")).to_string();
        let mut out = String::from("[");
        for (i, item) in items.iter().enumerate() {
            let t = item.to_string();
            let rest = items.len() - i - 1;
            let tail = if rest == 0 { 0 } else { 1 + marker(rest).len() };
            if out.len() + usize::from(i > 0) + t.len() + tail + 1 > MAX_TEXT {
                let cut = items.len() - i;
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&marker(cut));
                out.push(']');
                return (out, cut);
            }
            if i > 0 {
                out.push(',');
            }
            out.push_str(&t);
        }
        out.push(']');
        return (out, 0);
    }
    let text = match value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    // Escapes make the JSON longer than the text: cut until it fits.
    let mut max = MAX_TEXT - 5;
    loop {
        let mut t = fit_text(&text, max);
        t.push('…');
        let out = serde_json::Value::String(t).to_string();
        if out.len() <= MAX_TEXT {
            return (out, 0);
        }
        max = max.saturating_sub((out.len() - MAX_TEXT).max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::finding::Severity;

    #[test]
    fn findings_become_records_with_json_evidence() {
        let f = Finding::new("CW-X", Severity::Critical, "pm", 12.5, "1.2.3.4:443/tcp")
            .summary("s")
            .with("bytes", 42u64)
            .with("destination", "1.2.3.4:443/tcp");
        let (kind, bytes) = record(&Event::Finding(f), 0).unwrap();
        assert_eq!(kind, Kind::Finding);
        let rec = pb::Record::decode(bytes.as_slice()).unwrap();
        let Some(Body::Finding(pf)) = rec.body else {
            panic!("{rec:?}")
        };
        assert_eq!(pf.severity, pb::Severity::Critical as i32);
        assert_eq!(pf.evidence["bytes"], "42");
        assert_eq!(pf.evidence["destination"], "\"1.2.3.4:443/tcp\"");
        let fork = Event::Fork {
            time: 1.0,
            pid: 2,
            ppid: 1,
            app: "pm".into(),
        };
        assert!(record(&fork, 0).is_none(), "raw events stay on the host");
    }

    fn decoded(ev: Event) -> pb::Record {
        let (_, bytes) = record(&ev, 0).unwrap();
        let rec = pb::Record::decode(bytes.as_slice()).unwrap();
        if let Err(e) = limits::check_record(&rec) {
            panic!("the collector would refuse it: {e}");
        }
        rec
    }

    #[test]
    fn a_summary_over_every_limit_keeps_its_largest_entries_and_fits() {
        use crate::event::summary::{DestStats, QueryStats, WindowSummary};
        let long = format!("/opt/{}\0x", "é".repeat(3000));
        let w = WindowSummary {
            app: "pm\0".repeat(2000),
            start: 0.0,
            end: 60.0,
            hour_of_week: 1,
            in_practice_hours: true,
            classes: Default::default(),
            destinations: (0..700u64)
                .map(|i| DestStats {
                    dst: std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).into(),
                    port: 443,
                    protocol: "tcp".into(),
                    name: Some(format!("{i}.{long}")),
                    bytes_sent: i * 10,
                    bytes_recv: 1,
                    connects: 1,
                })
                .collect(),
            children: (0..300u64).map(|i| (format!("{i}{long}"), i)).collect(),
            processes: 1,
            queries: (0..300u64)
                .map(|i| QueryStats {
                    method: "GET".into(),
                    host: "h".into(),
                    path: format!("/{i}{long}"),
                    requests: 1000 - i,
                    ..Default::default()
                })
                .collect(),
        };
        let before = trimmed();
        let rec = decoded(Event::Summary(w));
        let Some(Body::Summary(s)) = rec.body else {
            panic!("{rec:?}")
        };
        assert_eq!(s.destinations.len(), limits::MAX_DESTINATIONS);
        // The largest senders are kept: 700 - 512 = 188 smallest cut.
        assert_eq!(
            s.destinations.iter().map(|d| d.bytes_sent).min(),
            Some(1880)
        );
        assert!(s.destinations.iter().all(|d| d.name.len() <= MAX_TEXT));
        assert_eq!(s.children.len(), limits::MAX_CHILDREN);
        assert_eq!(s.children.iter().map(|c| c.count).min(), Some(44));
        assert_eq!(s.queries.len(), limits::MAX_QUERIES);
        assert_eq!(s.queries[0].requests, 1000, "order kept");
        assert!(trimmed() - before >= 188 + 44 + 44);
    }

    #[test]
    fn a_finding_with_oversized_evidence_fits_and_says_what_was_cut() {
        let mut f = Finding::new("CW-X", Severity::High, "pm", 1.0, &"s".repeat(9000))
            .summary("a\0b")
            .with(
                "destinations",
                (0..300)
                    .map(|i| format!("198.51.100.{i}:443/tcp"))
                    .collect::<Vec<_>>(),
            )
            .with("note", "\"\0\n".repeat(3000))
            .with("object", serde_json::json!({ "k": "v".repeat(5000) }));
        for i in 0..100 {
            f = f.with(&format!("x{i:03}"), i);
        }
        let rec = decoded(Event::Finding(f));
        let Some(Body::Finding(pf)) = rec.body else {
            panic!("{rec:?}")
        };
        assert_eq!(pf.evidence.len(), MAX_EVIDENCE);
        assert!(pf.evidence.contains_key("evidence_cut"));
        let dests: Vec<String> = serde_json::from_str(&pf.evidence["destinations"]).unwrap();
        assert!(dests.len() > 100 && dests.len() < 300, "{}", dests.len());
        assert_eq!(
            dests.last().unwrap(),
            &format!("+{} more", 300 - (dests.len() - 1))
        );
        let note: String = serde_json::from_str(&pf.evidence["note"]).unwrap();
        assert!(
            note.starts_with("\"\u{fffd}\n") && note.ends_with('…'),
            "{note}"
        );
        assert!(pf.evidence["object"].len() <= MAX_TEXT);
        assert_eq!(pf.summary, "a\u{fffd}b");
    }
}
