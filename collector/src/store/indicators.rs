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

/// Destination IP (`dest_ip`), destination name (`dest_name`, lower case), the pair of
/// them (`dest_pair`: `IP NAME`), child executable (`child_exe`).
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
            let name = d.name.trim_end_matches('.').to_ascii_lowercase();
            // Which address a name stood for: rules use it to leave out the vendor's IPs
            // and names that only ever meant private addresses.
            out.push(at("dest_pair", format!("{} {name}", d.ip)));
            out.push(at("dest_name", name));
        }
    }
    for c in &s.children {
        if !c.exe.is_empty() {
            out.push(at("child_exe", c.exe.clone()));
        }
    }
    out
}

/// Loopback, private, link-local, shared (CGNAT), unique-local: addresses that name nothing
/// outside the clinic.
pub fn private(ip: &str) -> bool {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64)
        }
        Ok(std::net::IpAddr::V6(a)) => {
            a.is_loopback()
                || a.is_unspecified()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped()
                    .is_some_and(|v4| private(&v4.to_string()))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn private_addresses_are_told_apart() {
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(super::private(ip), "{ip}");
        }
        for ip in [
            "203.0.113.9",
            "8.8.8.8",
            "2001:db8::1",
            "100.128.0.1",
            "not an ip",
        ] {
            assert!(!super::private(ip), "{ip}");
        }
    }
}

/// (kind, value, app, hour bucket).
pub type SightingKey = (&'static str, String, String, i64);

/// A batch's sightings folded together before they are written: one row per (kind, value,
/// app, hour) with its first and last time and how many windows; one per (kind, value) for
/// the fleet-wide first and last seen. A day of one agent's windows is ~20 rows, not ~900.
#[derive(Debug, Default)]
pub struct Folded {
    /// (kind, value, app, bucket) → (first, last, windows).
    pub sightings: std::collections::BTreeMap<SightingKey, (f64, f64, i64)>,
    /// (kind, value) → (first, last).
    pub indicators: std::collections::BTreeMap<(&'static str, String), (f64, f64)>,
}

pub fn fold<'a>(records: impl IntoIterator<Item = &'a Record>) -> Folded {
    let mut f = Folded::default();
    for r in records {
        for s in sightings(r) {
            let e = f
                .sightings
                .entry((s.kind, s.value.clone(), s.app, bucket(s.time)))
                .or_insert((s.time, s.time, 0));
            e.0 = e.0.min(s.time);
            e.1 = e.1.max(s.time);
            e.2 += 1;
            let i = f
                .indicators
                .entry((s.kind, s.value))
                .or_insert((s.time, s.time));
            i.0 = i.0.min(s.time);
            i.1 = i.1.max(s.time);
        }
    }
    f
}

/// The hour a sighting is filed under.
pub fn bucket(time: f64) -> i64 {
    (time / 3600.0).floor() as i64
}
