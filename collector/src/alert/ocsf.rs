//! OCSF 1.1 mappings: agents' findings and the collector's incidents are Detection Findings
//! (class 2004); window summaries become Network Activity (4001) per destination, HTTP
//! Activity (4002) per query template, File
//! System Activity (1001) per file class and Process Activity (1007) per child executable,
//! with the window's counts (no paths, no contents: what the agent sent).

use clinicwatch_proto::v1::{
    record::Body, ChildCount, ClassStats, Destination, Finding, QueryStats, Record, WindowSummary,
};
use serde_json::{json, Value};

use crate::store::{HostKey, Incident};

fn ms(t: f64) -> i64 {
    (t * 1000.0) as i64
}

/// OCSF severity: 1 informational .. 5 critical (the proto's numbering too).
pub fn severity_id(name: &str) -> i64 {
    match name {
        "info" | "informational" => 1,
        "low" => 2,
        "medium" => 3,
        "high" => 4,
        "critical" => 5,
        _ => 0,
    }
}

fn severity_name(id: i64) -> &'static str {
    [
        "Unknown",
        "Informational",
        "Low",
        "Medium",
        "High",
        "Critical",
    ]
    .get(id as usize)
    .copied()
    .unwrap_or("Unknown")
}

fn metadata() -> Value {
    json!({
        "version": "1.1.0",
        "product": {"name": "clinicwatch", "vendor_name": "clinicwatch", "version": env!("CARGO_PKG_VERSION")}
    })
}

fn device(h: &HostKey) -> Value {
    json!({"hostname": h.host, "org": {"name": h.clinic}})
}

fn base(
    class_uid: i64,
    class_name: &str,
    category: (i64, &str),
    activity: (i64, &str),
    time: f64,
) -> Value {
    json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category.0,
        "category_name": category.1,
        "activity_id": activity.0,
        "activity_name": activity.1,
        "type_uid": class_uid * 100 + activity.0,
        "time": ms(time),
        "metadata": metadata(),
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// An agent's finding.
pub fn finding(h: &HostKey, seq: u64, f: &Finding) -> Value {
    let sev = f.severity as i64;
    let evidence: serde_json::Map<String, Value> = f
        .evidence
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_str(v).unwrap_or(Value::String(v.clone())),
            )
        })
        .collect();
    merge(
        base(
            2004,
            "Detection Finding",
            (2, "Findings"),
            (1, "Create"),
            f.time,
        ),
        json!({
            "severity_id": sev,
            "severity": severity_name(sev),
            "status_id": 1,
            "status": "New",
            "message": f.summary,
            "finding_info": {
                "uid": format!("{}/{}/{seq}", h.clinic, h.host),
                "title": f.rule,
                "types": [f.rule],
                "analytic": {"name": f.rule, "type_id": 1, "type": "Rule"},
                "first_seen_time": ms(f.time),
                "last_seen_time": ms(f.time),
            },
            "device": device(h),
            "unmapped": {"app": f.app, "subject": f.subject, "evidence": evidence},
        }),
    )
}

/// A collector incident (a campaign across clinics); `opened` false for an update.
pub fn incident(i: &Incident, opened: bool) -> Value {
    let sev = severity_id(&i.severity);
    let activity = if opened { (1, "Create") } else { (2, "Update") };
    let (status_id, status) = match i.state.as_str() {
        "acknowledged" => (2, "In Progress"),
        "closed" => (4, "Resolved"),
        _ => (1, "New"),
    };
    merge(
        base(
            2004,
            "Detection Finding",
            (2, "Findings"),
            activity,
            i.updated,
        ),
        json!({
            "severity_id": sev,
            "severity": severity_name(sev),
            "status_id": status_id,
            "status": status,
            "message": format!("{} ({} clinics): {}", i.title, i.clinics.len(), i.key),
            "finding_info": {
                "uid": format!("incident-{}", i.id),
                "title": i.title,
                "types": [i.rule, "campaign"],
                "analytic": {"name": i.rule, "type_id": 5, "type": "Correlation"},
                "first_seen_time": ms(i.first_seen),
                "last_seen_time": ms(i.last_seen),
            },
            "unmapped": {"key": i.key, "clinics": i.clinics, "hosts": i.hosts, "evidence": i.evidence},
        }),
    )
}

/// Everything a stored record maps to.
pub fn record(h: &HostKey, r: &Record) -> Vec<Value> {
    match &r.body {
        Some(Body::Finding(f)) => vec![finding(h, r.seq, f)],
        Some(Body::Summary(s)) => summary(h, s),
        _ => Vec::new(),
    }
}

/// A window summary: one event per destination, query template, file class and child.
fn summary(h: &HostKey, s: &WindowSummary) -> Vec<Value> {
    let window = json!({"app": s.app, "window_start": ms(s.start), "window_end": ms(s.end),
        "in_practice_hours": s.in_practice_hours});
    let mut out = Vec::new();
    out.extend(s.destinations.iter().map(|d| destination(h, s, &window, d)));
    out.extend(s.queries.iter().map(|q| query(h, s, &window, q)));
    out.extend(s.classes.iter().map(|c| file_class(h, s, &window, c)));
    out.extend(s.children.iter().map(|c| child(h, s, &window, c)));
    out
}

fn destination(h: &HostKey, s: &WindowSummary, window: &Value, d: &Destination) -> Value {
    merge(
        base(
            4001,
            "Network Activity",
            (4, "Network Activity"),
            (6, "Traffic"),
            s.end,
        ),
        json!({
            "severity_id": 1,
            "device": device(h),
            "dst_endpoint": {"ip": d.ip, "port": d.port, "hostname": d.name},
            "connection_info": {"protocol_name": d.protocol},
            "traffic": {"bytes_out": d.bytes_sent, "bytes_in": d.bytes_recv},
            "count": d.connects,
            "unmapped": window,
        }),
    )
}

/// HTTP Activity: the template (no identifiers), request count and distinct records named;
/// the activity is the method's.
fn query(h: &HostKey, s: &WindowSummary, window: &Value, q: &QueryStats) -> Value {
    let activity = match q.method.as_str() {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        _ => (99, "Other"),
    };
    merge(
        base(
            4002,
            "HTTP Activity",
            (4, "Network Activity"),
            activity,
            s.end,
        ),
        json!({
            "severity_id": 1,
            "device": device(h),
            "http_request": {"http_method": q.method, "version": q.protocol,
                "url": {"hostname": q.host, "path": q.path}},
            "count": q.requests,
            "traffic": {"bytes_out": q.bytes_sent},
            "unmapped": merge(window.clone(), json!({"template": format!("{} {}{}", q.method, q.host, q.path),
                "distinct_ids": q.distinct_ids, "responses_by_class": q.responses})),
        }),
    )
}

fn file_class(h: &HostKey, s: &WindowSummary, window: &Value, c: &ClassStats) -> Value {
    merge(
        base(
            1001,
            "File System Activity",
            (1, "System Activity"),
            (2, "Read"),
            s.end,
        ),
        json!({
            "severity_id": 1,
            "device": device(h),
            "file": {"name": c.class, "type_id": 99, "type": "class"},
            "count": c.reads,
            "unmapped": merge(window.clone(), json!({"bytes": c.bytes, "opens": c.opens, "mmaps": c.mmaps, "files": c.files})),
        }),
    )
}

fn child(h: &HostKey, s: &WindowSummary, window: &Value, c: &ChildCount) -> Value {
    merge(
        base(
            1007,
            "Process Activity",
            (1, "System Activity"),
            (1, "Launch"),
            s.end,
        ),
        json!({
            "severity_id": 1,
            "device": device(h),
            "process": {"file": {"path": c.exe}},
            "count": c.count,
            "unmapped": window,
        }),
    )
}
