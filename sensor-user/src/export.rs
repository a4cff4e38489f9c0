//! What the agent ships to the collector: window summaries, findings and health, as
//! `clinicwatch.v1` records (already through the privacy edge: none carries a path).

use clinicwatch_proto::v1::{self as pb, record::Body};
use prost::Message;

use crate::{
    event::{Event, Health},
    intel::{finding::Finding, rules::Severity, window::WindowSummary},
    spool::Kind,
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
    let rec = pb::Record {
        seq: 0,
        body: Some(body),
    };
    Some((kind, rec.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intel::rules::Severity;

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
}
