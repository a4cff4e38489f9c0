//! What a stored record says about indicators: the destinations (IP, and name when the
//! agent knew it) and child executables of a window summary, at the summary's time. Findings
//! are correlated from the findings table itself.

use clinicwatch_proto::v1::{record::Body, Record};

/// One indicator seen by one host's app at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting {
    pub kind: &'static str,
    pub value: String,
    pub app: String,
    pub time: f64,
}

/// Destination IP (`dest_ip`), destination name (`dest_name`, lower case), child
/// executable (`child_exe`).
pub fn sightings(r: &Record) -> Vec<Sighting> {
    let Some(Body::Summary(s)) = &r.body else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let at = |kind, value: String| Sighting {
        kind,
        value,
        app: s.app.clone(),
        time: s.end,
    };
    for d in &s.destinations {
        if !d.ip.is_empty() {
            out.push(at("dest_ip", d.ip.clone()));
        }
        if !d.name.is_empty() {
            out.push(at(
                "dest_name",
                d.name.trim_end_matches('.').to_ascii_lowercase(),
            ));
        }
    }
    for c in &s.children {
        if !c.exe.is_empty() {
            out.push(at("child_exe", c.exe.clone()));
        }
    }
    out
}

/// The hour a sighting is filed under.
pub fn bucket(time: f64) -> i64 {
    (time / 3600.0).floor() as i64
}
