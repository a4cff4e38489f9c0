//! The collector's documented limits on what a host may send, in one place: the collector
//! refuses a batch that breaks them (`invalid_argument`), and the agent checks every record
//! against them before it is spooled, so that it never produces one the collector would
//! refuse (a refused record would otherwise block everything after it). `cost` is what the
//! collector's rate limit counts: a record's work, not one per record.

use crate::v1::{record::Body, Batch, Hello, Record};

/// The largest batch accepted, in records.
pub const MAX_BATCH_RECORDS: usize = 10_000;
/// The longest text field (rule, app, subject, summary, names, evidence keys and values).
pub const MAX_TEXT: usize = 4096;
/// Evidence entries in one finding.
pub const MAX_EVIDENCE: usize = 64;
/// Destinations in one window summary.
pub const MAX_DESTINATIONS: usize = 512;
/// File classes in one window summary.
pub const MAX_CLASSES: usize = 32;
/// Child executables in one window summary.
pub const MAX_CHILDREN: usize = 256;
/// Query templates in one window summary.
pub const MAX_QUERIES: usize = 256;
/// The longest Hello text field (hostname, agent version, kernel, a capability).
pub const MAX_HELLO_TEXT: usize = 256;
/// Capabilities in one Hello.
pub const MAX_CAPABILITIES: usize = 64;

/// Why a record or batch is refused; the text names the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitError(pub String);

fn bad<T>(why: String) -> Result<T, LimitError> {
    Err(LimitError(why))
}

/// A record's event time (a summary's end).
pub fn record_time(r: &Record) -> f64 {
    match &r.body {
        Some(Body::Summary(s)) => s.end,
        Some(Body::Finding(f)) => f.time,
        Some(Body::Health(h)) => h.time,
        None => 0.0,
    }
}

fn check_text(seq: u64, field: &str, t: &str) -> Result<(), LimitError> {
    if t.len() > MAX_TEXT {
        return bad(format!(
            "record {seq}: {field} is {} bytes (at most {MAX_TEXT})",
            t.len()
        ));
    }
    if t.contains('\0') {
        return bad(format!("record {seq}: {field} holds a NUL byte"));
    }
    Ok(())
}

fn check_count(seq: u64, what: &str, n: usize, max: usize) -> Result<(), LimitError> {
    if n > max {
        return bad(format!("record {seq}: {n} {what} (at most {max})"));
    }
    Ok(())
}

/// One record: a body, finite times, bounded lists and text fields without NUL bytes.
pub fn check_record(r: &Record) -> Result<(), LimitError> {
    let seq = r.seq;
    match &r.body {
        None => return bad(format!("record {seq} has no body")),
        Some(Body::Finding(f)) => {
            if f.rule.is_empty() {
                return bad(format!("finding {seq} has no rule"));
            }
            check_count(seq, "evidence entries", f.evidence.len(), MAX_EVIDENCE)?;
            for (field, t) in [
                ("rule", &f.rule),
                ("app", &f.app),
                ("subject", &f.subject),
                ("summary", &f.summary),
            ] {
                check_text(seq, field, t)?;
            }
            for (k, v) in &f.evidence {
                check_text(seq, "an evidence key", k)?;
                check_text(seq, &format!("evidence `{}`", k.escape_debug()), v)?;
            }
        }
        Some(Body::Summary(s)) => {
            check_text(seq, "app", &s.app)?;
            check_count(seq, "destinations", s.destinations.len(), MAX_DESTINATIONS)?;
            check_count(seq, "file classes", s.classes.len(), MAX_CLASSES)?;
            check_count(seq, "child executables", s.children.len(), MAX_CHILDREN)?;
            check_count(seq, "query templates", s.queries.len(), MAX_QUERIES)?;
            for d in &s.destinations {
                check_text(seq, "a destination ip", &d.ip)?;
                check_text(seq, "a destination name", &d.name)?;
                check_text(seq, "a destination protocol", &d.protocol)?;
            }
            for c in &s.classes {
                check_text(seq, "a class", &c.class)?;
            }
            for c in &s.children {
                check_text(seq, "a child executable", &c.exe)?;
            }
            for q in &s.queries {
                for (field, t) in [
                    ("a query protocol", &q.protocol),
                    ("a query method", &q.method),
                    ("a query host", &q.host),
                    ("a query path", &q.path),
                ] {
                    check_text(seq, field, t)?;
                }
            }
            if !s.start.is_finite() {
                return bad(format!("record {seq} has a start that is not a number"));
            }
        }
        Some(Body::Health(_)) => {}
    }
    if !record_time(r).is_finite() {
        return bad(format!("record {seq} has a time that is not a number"));
    }
    Ok(())
}

/// A whole batch: 1 to [`MAX_BATCH_RECORDS`] valid records with increasing sequence numbers
/// starting at `first_seq`.
pub fn check_batch(batch: &Batch) -> Result<(), LimitError> {
    if batch.records.is_empty() {
        return bad("no records".into());
    }
    if batch.records.len() > MAX_BATCH_RECORDS {
        return bad(format!(
            "{} records (at most {MAX_BATCH_RECORDS})",
            batch.records.len()
        ));
    }
    if batch.first_seq == 0 || batch.records[0].seq != batch.first_seq {
        return bad(format!(
            "first_seq {} does not match the first record's {}",
            batch.first_seq, batch.records[0].seq
        ));
    }
    if batch.epoch > i64::MAX as u64 {
        return bad(format!("epoch {} is out of range", batch.epoch));
    }
    // Increasing, not contiguous: a full spool drops summaries, leaving gaps.
    for (i, w) in batch.records.windows(2).enumerate() {
        if w[1].seq <= w[0].seq {
            return bad(format!(
                "record {} has seq {} after {}; sequence numbers must increase",
                i + 1,
                w[1].seq,
                w[0].seq
            ));
        }
    }
    if let Some(last) = batch.records.last() {
        if last.seq > i64::MAX as u64 {
            return bad(format!("seq {} is out of range", last.seq));
        }
    }
    batch.records.iter().try_for_each(check_record)
}

/// A Hello's fields (its identity is checked against the certificate by the collector).
pub fn check_hello(h: &Hello) -> Result<(), LimitError> {
    if h.epoch == 0 || h.epoch > i64::MAX as u64 {
        return bad(format!("epoch {} is out of range", h.epoch));
    }
    for (name, v) in [
        ("hostname", &h.hostname),
        ("agent_version", &h.agent_version),
        ("kernel", &h.kernel),
    ] {
        if v.len() > MAX_HELLO_TEXT {
            return bad(format!(
                "hello.{name} is {} bytes (at most {MAX_HELLO_TEXT})",
                v.len()
            ));
        }
    }
    if h.capabilities.len() > MAX_CAPABILITIES {
        return bad(format!(
            "{} capabilities (at most {MAX_CAPABILITIES})",
            h.capabilities.len()
        ));
    }
    if h.capabilities
        .iter()
        .any(|c| c.capability.len() + c.hook.len() + c.scope.len() > MAX_HELLO_TEXT)
    {
        return bad(format!("a capability longer than {MAX_HELLO_TEXT} bytes"));
    }
    Ok(())
}

/// What a record costs the collector, in the rate limit's units: 1, plus one per list entry
/// (each may become an indicator row), plus one per KiB encoded.
pub fn cost(r: &Record) -> u64 {
    let items = match &r.body {
        Some(Body::Finding(f)) => f.evidence.len(),
        Some(Body::Summary(s)) => {
            s.destinations.len() * 3 + s.classes.len() + s.children.len() + s.queries.len()
        }
        _ => 0,
    };
    1 + items as u64 + (prost::Message::encoded_len(r) / 1024) as u64
}

/// Replaces NUL bytes, then cuts `t` to at most `max` bytes on a character boundary: for
/// the agent, which shapes what it produces to fit the limits rather than have it refused.
pub fn fit_text(t: &str, max: usize) -> String {
    let mut t = t.replace('\0', "\u{fffd}");
    let mut end = t.len().min(max);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    t.truncate(end);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Destination, Finding, WindowSummary};

    fn finding(evidence: &[(&str, &str)]) -> Record {
        Record {
            seq: 7,
            body: Some(Body::Finding(Finding {
                rule: "CW-X".into(),
                time: 1.0,
                evidence: evidence
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn each_limit_is_named_when_broken() {
        assert!(check_record(&finding(&[("a", "b")])).is_ok());
        let long = "x".repeat(MAX_TEXT + 1);
        let e = check_record(&finding(&[("destinations", &long)])).unwrap_err();
        assert!(
            e.0.contains("evidence `destinations`") && e.0.contains("4096"),
            "{e}"
        );
        let e = check_record(&finding(&[("k", "a\0b")])).unwrap_err();
        assert!(e.0.contains("NUL"), "{e}");
        let many: Vec<(String, String)> = (0..=MAX_EVIDENCE)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(check_record(&finding(&refs))
            .unwrap_err()
            .0
            .contains("evidence entries"));
        let s = Record {
            seq: 1,
            body: Some(Body::Summary(WindowSummary {
                destinations: vec![Destination::default(); MAX_DESTINATIONS + 1],
                ..Default::default()
            })),
        };
        assert!(check_record(&s).unwrap_err().0.contains("513 destinations"));
    }

    #[test]
    fn cost_grows_with_what_a_record_holds() {
        let small = finding(&[("a", "b")]);
        let big = Record {
            seq: 1,
            body: Some(Body::Summary(WindowSummary {
                destinations: vec![Destination::default(); 500],
                ..Default::default()
            })),
        };
        assert_eq!(cost(&small), 2);
        assert!(cost(&big) > 1500, "{}", cost(&big));
    }

    #[test]
    fn fit_text_cuts_on_a_character_and_replaces_nul() {
        assert_eq!(fit_text("é\0é", 5), "é\u{fffd}");
        assert_eq!(fit_text("ééé", 3), "é");
        // The replacement is longer than the NUL: the result still fits.
        assert_eq!(fit_text("é\0é", 4), "é");
        assert_eq!(fit_text(&"\0".repeat(10), 10).len(), 9);
    }
}
