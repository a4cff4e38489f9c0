//! Destinations: the vendor allow-list (IPs, CIDRs, names).

use std::net::IpAddr;

use crate::config::values::Allow;

/// The vendor allow-list.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<Allow>);

impl AllowList {
    /// Entries are checked by config validation; one that does not parse is skipped.
    pub fn new(entries: &[String]) -> Self {
        Self(
            entries
                .iter()
                .filter_map(|e| Allow::parse(e).ok())
                .collect(),
        )
    }

    pub fn allows(&self, ip: IpAddr, name: Option<&str>) -> bool {
        self.0.iter().any(|a| a.matches(ip, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_addresses_and_names() {
        let l = AllowList::new(&[
            "203.0.113.0/24".into(),
            "2001:db8::/32".into(),
            "198.51.100.7".into(),
            "*.vendor.example".into(),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(l.allows(ip("203.0.113.200"), None));
        assert!(!l.allows(ip("203.0.114.1"), None));
        assert!(l.allows(ip("::ffff:203.0.113.9"), None));
        assert!(l.allows(ip("2001:db8::1"), None));
        assert!(l.allows(ip("198.51.100.7"), None));
        assert!(!l.allows(ip("198.51.100.8"), None));
        assert!(l.allows(ip("192.0.2.1"), Some("API.vendor.example")));
        assert!(!l.allows(ip("192.0.2.1"), Some("vendor.example.evil")));
        assert!(Allow::parse("10.0.0.0/33").is_err());
        assert!(Allow::parse("bad name!").is_err());
    }
}
