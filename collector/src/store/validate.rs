//! Checks a batch before any of it is stored: a malformed one is refused whole.

use clinicwatch_proto::v1::{Batch, Hello};

use super::StoreError;

/// The largest batch accepted, in records.
pub const MAX_BATCH_RECORDS: usize = 10_000;

/// The longest text field accepted in a record (rule, app, subject, summary, names).
const MAX_TEXT: usize = 4096;

/// Checks a Hello's fields (identity is checked against the certificate elsewhere).
pub fn validate_hello(h: &Hello) -> Result<(), StoreError> {
    let bad = |why: String| Err(StoreError::Invalid(why));
    if h.epoch == 0 || h.epoch > i64::MAX as u64 {
        return bad(format!("epoch {} is out of range", h.epoch));
    }
    for (name, v) in [
        ("hostname", &h.hostname),
        ("agent_version", &h.agent_version),
        ("kernel", &h.kernel),
    ] {
        if v.len() > 256 {
            return bad(format!("hello.{name} is {} bytes (at most 256)", v.len()));
        }
    }
    if h.capabilities.len() > 64 {
        return bad(format!(
            "{} capabilities (at most 64)",
            h.capabilities.len()
        ));
    }
    if h.capabilities
        .iter()
        .any(|c| c.capability.len() + c.hook.len() + c.scope.len() > 256)
    {
        return bad("a capability longer than 256 bytes".into());
    }
    Ok(())
}

pub fn validate(batch: &Batch) -> Result<(), StoreError> {
    let bad = |why: String| Err(StoreError::Invalid(why));
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
    use clinicwatch_proto::v1::record::Body;
    for r in &batch.records {
        let texts: Vec<&str> = match &r.body {
            None => return bad(format!("record {} has no body", r.seq)),
            Some(Body::Finding(f)) => {
                if f.rule.is_empty() {
                    return bad(format!("finding {} has no rule", r.seq));
                }
                let mut t = vec![f.rule.as_str(), &f.app, &f.subject, &f.summary];
                for (k, v) in &f.evidence {
                    t.push(k);
                    t.push(v);
                }
                t
            }
            Some(Body::Summary(s)) => {
                let mut t = vec![s.app.as_str()];
                t.extend(
                    s.destinations
                        .iter()
                        .flat_map(|d| [d.ip.as_str(), &d.name, &d.protocol]),
                );
                t.extend(s.classes.iter().map(|c| c.class.as_str()));
                t.extend(s.children.iter().map(|c| c.exe.as_str()));
                t
            }
            Some(Body::Health(_)) => Vec::new(),
        };
        if let Some(t) = texts.iter().find(|t| t.len() > MAX_TEXT) {
            return bad(format!(
                "record {} has a text field of {} bytes (at most {MAX_TEXT})",
                r.seq,
                t.len()
            ));
        }
        let t = super::record_time(r);
        if !t.is_finite() {
            return bad(format!("record {} has a time that is not a number", r.seq));
        }
    }
    Ok(())
}
