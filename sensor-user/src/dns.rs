//! DNS answers (the UDP payload the kernel hands over for watched flows to port 53) → the
//! name each answered address was asked for, so destinations carry names. Bounds-checked;
//! never panics on a malformed packet.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
/// Compression pointers followed per name before the packet counts as malformed.
const MAX_JUMPS: usize = 16;

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset after it.
fn name_at(b: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..=MAX_JUMPS * 8 {
        let len = *b.get(at)? as usize;
        match len {
            0 => {
                let name = labels.join(".").to_ascii_lowercase();
                return Some((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let ptr = (u16_at(b, at)? & 0x3fff) as usize;
                end.get_or_insert(at + 2);
                if ptr >= at {
                    return None; // pointers go backwards; forwards would loop
                }
                at = ptr;
            }
            l if l <= 63 => {
                let label = b.get(at + 1..at + 1 + l)?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                at += 1 + l;
                if labels.len() > 127 {
                    return None;
                }
            }
            _ => return None,
        }
    }
    None
}

/// The question's name and every A/AAAA address in a DNS response.
pub fn answers(b: &[u8]) -> Option<(String, Vec<IpAddr>)> {
    let flags = u16_at(b, 2)?;
    if flags & 0x8000 == 0 {
        return None; // a query, not a response
    }
    let (qd, an) = (u16_at(b, 4)?, u16_at(b, 6)?);
    if qd != 1 {
        return None;
    }
    let (qname, mut at) = name_at(b, 12)?;
    at += 4; // qtype, qclass
    let mut ips = Vec::new();
    // An answer cut at the captured length (EDNS answers can be longer) still names the
    // addresses parsed before the cut.
    for _ in 0..an {
        let Some((_, after)) = name_at(b, at) else {
            break;
        };
        let (Some(rtype), Some(rdlen)) = (u16_at(b, after), u16_at(b, after + 8)) else {
            break;
        };
        let rdlen = rdlen as usize;
        let Some(rdata) = b.get(after + 10..after + 10 + rdlen) else {
            break;
        };
        match (rtype, rdlen) {
            (TYPE_A, 4) => ips.push(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            ))),
            (TYPE_AAAA, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(rdata);
                ips.push(IpAddr::V6(Ipv6Addr::from(o)));
            }
            _ => {} // CNAMEs and the rest: the addresses still answer the question's name
        }
        at = after + 10 + rdlen;
    }
    Some((qname, ips))
}

/// (application, address) → the name the application last resolved it from, for the most
/// recent `cap` pairs. Per application: one app's answers never name another's destinations.
pub struct Names {
    map: HashMap<(u32, IpAddr), String>,
    order: VecDeque<(u32, IpAddr)>,
    cap: usize,
}

/// The nameservers of a `resolv.conf`.
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect()
}

fn unmapped(ip: &IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
        v4 => *v4,
    }
}

impl Names {
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Learns from one answer received by `app`; returns how many addresses it named.
    pub fn learn(&mut self, app: u32, payload: &[u8]) -> usize {
        let Some((name, ips)) = answers(payload) else {
            return 0;
        };
        for ip in &ips {
            let key = (app, unmapped(ip));
            if self.map.insert(key, name.clone()).is_none() {
                self.order.push_back(key);
                if self.order.len() > self.cap {
                    if let Some(old) = self.order.pop_front() {
                        self.map.remove(&old);
                    }
                }
            }
        }
        ips.len()
    }

    pub fn name(&self, app: u32, ip: &IpAddr) -> Option<&str> {
        self.map.get(&(app, unmapped(ip))).map(String::as_str)
    }
}

/// Builds a DNS response (for tests and the workload's stand-in server).
pub fn response(id: u16, name: &str, ips: &[IpAddr]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&0x8180u16.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    for label in name.split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&[0, 1, 0, 1]);
    for ip in ips {
        b.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        let (t, data) = match ip {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        b.extend_from_slice(&t.to_be_bytes());
        b.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        b.extend_from_slice(&(data.len() as u16).to_be_bytes());
        b.extend_from_slice(&data);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_their_addresses() {
        let ips: Vec<IpAddr> = vec![
            "203.0.113.7".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ];
        let r = response(7, "API.Vendor.example", &ips);
        assert_eq!(
            answers(&r),
            Some(("api.vendor.example".to_string(), ips.clone()))
        );
        let mut n = Names::new(2);
        assert_eq!(n.learn(0, &r), 2);
        assert_eq!(n.name(0, &ips[0]), Some("api.vendor.example"));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(n.name(0, &mapped), Some("api.vendor.example"));
        assert_eq!(n.name(1, &ips[0]), None, "names are per application");
        let other = response(8, "other.example", &["198.51.100.1".parse().unwrap()]);
        n.learn(0, &other);
        assert_eq!(
            n.name(0, &ips[0]),
            None,
            "the oldest is forgotten beyond the cap"
        );
        let conf = "# x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch lan\n";
        let want: Vec<IpAddr> = vec!["127.0.0.53".parse().unwrap(), "fe80::1".parse().unwrap()];
        assert_eq!(resolvers(conf), want);
    }

    #[test]
    fn malformed_packets_are_refused_not_panicked_on() {
        let r = response(7, "a.example", &["203.0.113.7".parse().unwrap()]);
        for cut in 0..r.len() {
            let _ = answers(&r[..cut]);
        }
        let mut query = r.clone();
        query[2] = 0; // not a response
        assert_eq!(answers(&query), None);
        // Cut inside the second answer: the first is still named.
        let two = response(
            9,
            "b.example",
            &[
                "203.0.113.1".parse().unwrap(),
                "203.0.113.2".parse().unwrap(),
            ],
        );
        assert_eq!(
            answers(&two[..two.len() - 3]).unwrap().1,
            vec!["203.0.113.1".parse::<IpAddr>().unwrap()]
        );
        let mut looped = r.clone();
        let at = looped.len() - 16; // the answer's name pointer
        looped[at + 1] = at as u8; // points at itself
        assert_eq!(
            answers(&looped).map(|a| a.1),
            Some(vec![]),
            "a looping answer names nothing"
        );
        for seed in 0..2000u32 {
            let junk: Vec<u8> = (0..64)
                .map(|i| (seed.wrapping_mul(2654435761).rotate_left(i) & 0xff) as u8)
                .collect();
            let _ = answers(&junk);
        }
    }
}
