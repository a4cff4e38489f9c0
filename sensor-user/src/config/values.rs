//! Values the config holds that are more than a string or a number: vendor allow-list
//! entries and practice-hour spans, each parsed once with an error that says what was
//! expected. `validate` checks them; intel matches with them.

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

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `mon-fri 07:00-20:00`, `sat 08:00-13:00`, `daily 00:00-24:00`.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    days: [bool; 7],
    from: u32,
    to: u32,
}

fn minute(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
}

impl Span {
    pub fn parse(s: &str) -> Result<Span, String> {
        let bad = || format!("`{s}`: expected `DAY[-DAY] HH:MM-HH:MM`, e.g. `mon-fri 07:00-20:00`");
        let (days, times) = s.trim().split_once(' ').ok_or_else(bad)?;
        let day = |d: &str| DAYS.iter().position(|x| *x == d.to_ascii_lowercase());
        let mut set = [false; 7];
        if days.eq_ignore_ascii_case("daily") {
            set = [true; 7];
        } else {
            let (a, b) = days.split_once('-').unwrap_or((days, days));
            let (a, b) = (day(a).ok_or_else(bad)?, day(b).ok_or_else(bad)?);
            let mut d = a;
            loop {
                set[d] = true;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        let (f, t) = times.trim().split_once('-').ok_or_else(bad)?;
        let (from, to) = (minute(f).ok_or_else(bad)?, minute(t).ok_or_else(bad)?);
        if from >= to {
            return Err(format!("`{s}`: the end must be after the start"));
        }
        Ok(Span {
            days: set,
            from,
            to,
        })
    }

    pub fn contains(&self, day: u32, minute: u32) -> bool {
        self.days[day as usize % 7] && minute >= self.from && minute < self.to
    }
}
