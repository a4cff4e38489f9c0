//! ArcSight CEF lines for older SIEMs, carried over syslog: findings and incidents only.

use clinicwatch_proto::v1::Finding;

use crate::store::{HostKey, Incident};

/// Control characters (NUL, ESC: a terminal or a parser's), and the Unicode line and
/// paragraph separators, written as `\uXXXX` text: agent-supplied text never reaches a
/// SIEM raw.
fn controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (c.is_control() && c != '\n' && c != '\r') || c == '\u{2028}' || c == '\u{2029}' {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn header(s: &str) -> String {
    controls(
        &s.replace('\\', "\\\\")
            .replace('|', "\\|")
            .replace(['\n', '\r'], " "),
    )
}

fn ext(s: &str) -> String {
    controls(
        &s.replace('\\', "\\\\")
            .replace('=', "\\=")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
    )
}

/// CEF severity 0-10 from 1 (informational) .. 5 (critical).
fn sev(id: i64) -> i64 {
    [0, 1, 3, 5, 8, 10].get(id as usize).copied().unwrap_or(0)
}

pub fn finding(h: &HostKey, f: &Finding) -> String {
    format!(
        "CEF:0|clinicwatch|agent|{}|{}|{}|{}|rt={} shost={} cs1Label=clinic cs1={} cs2Label=app cs2={} msg={}",
        header(env!("CARGO_PKG_VERSION")),
        header(&f.rule),
        header(&f.rule),
        sev(f.severity as i64),
        (f.time * 1000.0) as i64,
        ext(&h.host),
        ext(&h.clinic),
        ext(&f.app),
        ext(&f.summary)
    )
}

pub fn incident(i: &Incident) -> String {
    format!(
        "CEF:0|clinicwatch|collector|{}|{}|{}|{}|rt={} externalId=incident-{} cnt={} cs1Label=key cs1={} cs2Label=clinics cs2={} msg={}",
        header(env!("CARGO_PKG_VERSION")),
        header(&i.rule),
        header(&i.title),
        sev(super::ocsf::severity_id(&i.severity)),
        (i.updated * 1000.0) as i64,
        i.id,
        i.clinics.len(),
        ext(&i.key),
        ext(&i.clinics.join(",")),
        ext(&format!("{} clinics, state {}", i.clinics.len(), i.state))
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn separators_are_escaped() {
        let h = crate::store::HostKey {
            clinic: "a=b".into(),
            host: "ws|1".into(),
        };
        let f = clinicwatch_proto::v1::Finding {
            rule: "R|X".into(),
            severity: 4,
            summary: "x=y\nz".into(),
            ..Default::default()
        };
        let line = super::finding(&h, &f);
        assert!(line.contains("|R\\|X|R\\|X|8|"), "{line}");
        assert!(
            line.contains("cs1=a\\=b")
                && line.contains("shost=ws|1")
                && line.contains("msg=x\\=y\\nz"),
            "{line}"
        );
        let f = clinicwatch_proto::v1::Finding {
            rule: "R\u{1b}[2J".into(),
            summary: "a\0b\u{2028}c".into(),
            ..Default::default()
        };
        let line = super::finding(&h, &f);
        assert!(
            !line.contains(['\0', '\u{1b}', '\u{2028}']),
            "no raw control character: {line:?}"
        );
        assert!(
            line.contains("R\\u001b[2J") && line.contains("msg=a\\u0000b\\u2028c"),
            "{line}"
        );
    }
}
