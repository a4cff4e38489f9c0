//! Destinations: the vendor allow-list (IPs, CIDRs, names).

use std::net::IpAddr;

/// One `intel.vendor_allow` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Allow {
    Net {
        addr: IpAddr,
        prefix: u8,
    },
    /// A DNS name (matched against a destination's name when one is known); `*.x` covers
    /// subdomains.
    Name(String),
}

impl Allow {
    pub fn parse(s: &str) -> Result<Allow, String> {
        let s = s.trim();
        if let Some((a, p)) = s.split_once('/') {
            let addr: IpAddr = a
                .parse()
                .map_err(|_| format!("`{a}` is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = p
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`/{p}` is not a prefix length of 0 to {max}"))?;
            return Ok(Allow::Net { addr, prefix });
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Allow::Net { addr, prefix });
        }
        let name = s.to_ascii_lowercase();
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        let valid = !bare.is_empty()
            && bare
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            return Err(format!("`{s}` is neither an IP, a CIDR nor a DNS name"));
        }
        Ok(Allow::Name(name))
    }

    pub fn matches(&self, ip: IpAddr, name: Option<&str>) -> bool {
        match self {
            Allow::Net { addr, prefix } => in_net(ip, *addr, *prefix),
            Allow::Name(n) => name.is_some_and(|name| {
                let name = name.to_ascii_lowercase();
                match n.strip_prefix("*.") {
                    Some(base) => name == base || name.ends_with(&format!(".{base}")),
                    None => name == *n,
                }
            }),
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = match (ip, net) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        _ => ip,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

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

/// How a destination is named in baselines and evidence: `ip:port/protocol`.
pub fn dest_key(ip: IpAddr, port: u16, protocol: &str) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}/{protocol}"),
        IpAddr::V4(v4) => format!("{v4}:{port}/{protocol}"),
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
        assert_eq!(dest_key(ip("::1"), 443, "tcp"), "[::1]:443/tcp");
    }
}
