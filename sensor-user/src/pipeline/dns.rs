//! DNS answers (the UDP payload the kernel hands over for watched flows to port 53) → the
//! name each answered address was asked for, so destinations carry names. Bounds-checked;
//! never panics on a malformed packet.
//!
//! The kernel captures the queries a watched flow sends and the answers it receives. An
//! answer is read only:
//! - for a question its flow asked ([`Asked`]): same flow, same transaction id, same name,
//!   within [`ANSWER_MEMORY_NS`]; an unsolicited answer is counted and ignored;
//! - on the flow: answers are read only on a UDP socket the application connected to a
//!   configured resolver's port 53 (the handler checks the resolver), and Linux delivers to
//!   a connected UDP socket only datagrams from that address and port, so another local
//!   process cannot answer in the resolver's place without forging packets (raw sockets);
//! - the answer itself: a standard `NOERROR` response to one `IN` question, whose address
//!   records are learned only when their owner is the question's name or a name its CNAME
//!   chain leads to (other records are counted, [`Counters::unbound_records`]);
//! - the transaction: one (flow, id) is answered once while remembered ([`ANSWER_MEMORY_NS`],
//!   [`TRANSACTIONS_KEPT`] per application); a repeat is ignored, and a repeat that
//!   disagrees (another question or other addresses: two answers to one query, one forged)
//!   withdraws the names the first one taught.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Compression pointers followed per name before the packet counts as malformed.
const MAX_JUMPS: usize = 16;
/// CNAMEs followed from the question's name.
const MAX_CNAMES: usize = 8;
/// How long an answered transaction is remembered, so that it is answered once.
pub const ANSWER_MEMORY_NS: u64 = 30_000_000_000;
/// Answered transactions remembered per application (past it, the oldest is forgotten).
pub const TRANSACTIONS_KEPT: usize = 1024;

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

/// The transaction id, the flags and the lowercase name of a message's one question.
fn question(b: &[u8]) -> Option<(u16, u16, String)> {
    let (id, flags) = (u16_at(b, 0)?, u16_at(b, 2)?);
    if u16_at(b, 4)? != 1 {
        return None;
    }
    let (qname, at) = name_at(b, 12)?;
    (u16_at(b, at + 2)? == CLASS_IN).then_some((id, flags, qname))
}

/// Questions asked per flow and transaction, remembered [`ANSWER_MEMORY_NS`]: an answer is
/// read only for a question its flow asked (a repeat of an answer still is, so that a
/// disagreeing repeat can withdraw what the first taught, [`Names::learn`]).
pub struct Asked {
    map: HashMap<(u64, u16), (String, u64)>,
    order: VecDeque<(u64, u16, u64)>,
    cap: usize,
    /// Queries remembered, and answers ignored because their flow asked no such question.
    pub queries: u64,
    pub unasked: u64,
}

impl Asked {
    pub fn new(cap: usize) -> Asked {
        Asked {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
            queries: 0,
            unasked: 0,
        }
    }

    fn expire(&mut self, now_ns: u64) {
        while let Some(&(flow, id, t)) = self.order.front() {
            if now_ns.saturating_sub(t) <= ANSWER_MEMORY_NS && self.order.len() <= self.cap {
                break;
            }
            self.order.pop_front();
            if self.map.get(&(flow, id)).is_some_and(|(_, at)| *at == t) {
                self.map.remove(&(flow, id));
            }
        }
    }

    /// A query `flow` sent at `time_ns` (boot-time nanoseconds).
    pub fn ask(&mut self, flow: u64, time_ns: u64, payload: &[u8]) {
        let Some((id, flags, qname)) = question(payload) else {
            return;
        };
        if flags & 0x8000 != 0 {
            return; // a response sent, not a query
        }
        self.queries += 1;
        self.map.insert((flow, id), (qname, time_ns));
        self.order.push_back((flow, id, time_ns));
        self.expire(time_ns);
    }

    /// Whether `flow` asked the question this answer answers.
    pub fn asked(&mut self, flow: u64, time_ns: u64, payload: &[u8]) -> bool {
        self.expire(time_ns);
        let ok = question(payload).is_some_and(|(id, _, qname)| {
            self.map.get(&(flow, id)).is_some_and(|(q, _)| *q == qname)
        });
        if !ok {
            self.unasked += 1;
        }
        ok
    }

    /// Forgets a flow's questions (its socket closed).
    pub fn forget(&mut self, flow: u64) {
        self.map.retain(|(f, _), _| *f != flow);
    }
}

/// A DNS response, as far as it names addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    id: u16,
    /// The question's name, lowercase.
    qname: String,
    /// A/AAAA addresses of the question's name and its CNAME chain (none unless `NOERROR`).
    ips: Vec<IpAddr>,
    /// A/AAAA records of other names, or of an answer that is not `NOERROR`: not learned.
    unbound: usize,
}

/// One resource record of the answer section: owner, type, and where its data lies.
struct Record {
    owner: String,
    rtype: u16,
    data: std::ops::Range<usize>,
}

fn parse_response(b: &[u8]) -> Option<Response> {
    let (id, flags) = (u16_at(b, 0)?, u16_at(b, 2)?);
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 {
        return None; // a query, or the response to another opcode than QUERY
    }
    let (qd, an) = (u16_at(b, 4)?, u16_at(b, 6)?);
    if qd != 1 {
        return None;
    }
    let (qname, at) = name_at(b, 12)?;
    if u16_at(b, at + 2)? != CLASS_IN {
        return None;
    }
    let records = records(b, at + 4, an);
    // The question's name and the names its CNAMEs lead to, in any order of the records.
    let mut chain = vec![qname.clone()];
    for _ in 0..MAX_CNAMES {
        let next = records.iter().find_map(|r| {
            if r.rtype != TYPE_CNAME || !chain.contains(&r.owner) {
                return None;
            }
            let (target, _) = name_at(b, r.data.start)?;
            (!chain.contains(&target)).then_some(target)
        });
        match next {
            Some(n) => chain.push(n),
            None => break,
        }
    }
    let noerror = flags & 0x000f == 0;
    let (mut ips, mut unbound) = (Vec::new(), 0);
    for r in &records {
        let rdata = &b[r.data.clone()];
        let ip = match (r.rtype, rdata.len()) {
            (TYPE_A, 4) => IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
            (TYPE_AAAA, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(rdata);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => continue,
        };
        if !noerror || !chain.contains(&r.owner) {
            unbound += 1;
        } else if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Some(Response {
        id,
        qname,
        ips,
        unbound,
    })
}

/// The `IN` records of the answer section from `at`. An answer cut at the captured length
/// (EDNS answers can be longer) still gives the records parsed before the cut.
fn records(b: &[u8], mut at: usize, count: u16) -> Vec<Record> {
    let mut records = Vec::new();
    for _ in 0..count {
        let Some((owner, after)) = name_at(b, at) else {
            break;
        };
        let (Some(rtype), Some(class), Some(rdlen)) =
            (u16_at(b, after), u16_at(b, after + 2), u16_at(b, after + 8))
        else {
            break;
        };
        let data = after + 10..after + 10 + rdlen as usize;
        if data.end > b.len() {
            break;
        }
        at = data.end;
        if class == CLASS_IN {
            records.push(Record { owner, rtype, data });
        }
    }
    records
}

/// The question's name and the A/AAAA addresses a DNS response gives for it (directly or
/// through its CNAME chain).
pub fn answers(b: &[u8]) -> Option<(String, Vec<IpAddr>)> {
    parse_response(b).map(|r| (r.qname, r.ips))
}

/// What [`Names::learn`] did with the answers it was given.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Answers refused: malformed, or not a standard response to one `IN` question.
    pub refused: u64,
    /// Address records ignored: of a name outside the question's CNAME chain, or in an
    /// answer that is not `NOERROR`.
    pub unbound_records: u64,
    /// Answers to a transaction of their flow already answered: ignored.
    pub repeated: u64,
    /// Of those, answers that disagreed with the first: its names were withdrawn.
    pub conflicting: u64,
    /// Transactions forgotten before their time because their application had too many.
    pub evicted: u64,
}

/// An answered transaction: a repeat on its flow within [`ANSWER_MEMORY_NS`] is ignored.
struct Answered {
    time_ns: u64,
    flow: u64,
    id: u16,
    qname: String,
    ips: Vec<IpAddr>,
}

/// (application, address) → the name the application last resolved it from, for the most
/// recent `cap` pairs. Per application: one app's answers never name another's destinations.
pub struct Names {
    map: HashMap<(u32, IpAddr), String>,
    order: VecDeque<(u32, IpAddr)>,
    cap: usize,
    /// Per application, its answered transactions, oldest first.
    answered: HashMap<u32, VecDeque<Answered>>,
    pub counters: Counters,
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
            answered: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// Learns from one answer received by `app` on `flow` (its socket cookie) at `time_ns`
    /// (boot-time nanoseconds); returns how many addresses it named.
    pub fn learn(&mut self, app: u32, flow: u64, time_ns: u64, payload: &[u8]) -> usize {
        let Some(r) = parse_response(payload) else {
            self.counters.refused += 1;
            return 0;
        };
        self.counters.unbound_records += r.unbound as u64;
        let answered = self.answered.entry(app).or_default();
        while answered
            .front()
            .is_some_and(|a| time_ns.saturating_sub(a.time_ns) > ANSWER_MEMORY_NS)
        {
            answered.pop_front();
        }
        if let Some(first) = answered.iter_mut().find(|a| a.flow == flow && a.id == r.id) {
            self.counters.repeated += 1;
            let same = first.qname == r.qname
                && first.ips.len() == r.ips.len()
                && r.ips.iter().all(|ip| first.ips.contains(ip));
            if !same {
                self.counters.conflicting += 1;
                let (qname, ips) = (first.qname.clone(), std::mem::take(&mut first.ips));
                self.withdraw(app, &qname, &ips);
            }
            return 0;
        }
        if answered.len() >= TRANSACTIONS_KEPT {
            answered.pop_front();
            self.counters.evicted += 1;
        }
        answered.push_back(Answered {
            time_ns,
            flow,
            id: r.id,
            qname: r.qname.clone(),
            ips: r.ips.clone(),
        });
        for ip in &r.ips {
            let key = (app, unmapped(ip));
            if self.map.insert(key, r.qname.clone()).is_none() {
                self.order.push_back(key);
                if self.order.len() > self.cap {
                    if let Some(old) = self.order.pop_front() {
                        self.map.remove(&old);
                    }
                }
            }
        }
        r.ips.len()
    }

    /// Forgets the names an answer taught, where no later answer has renamed them.
    fn withdraw(&mut self, app: u32, name: &str, ips: &[IpAddr]) {
        for ip in ips {
            let key = (app, unmapped(ip));
            if self.map.get(&key).is_some_and(|n| n == name) {
                self.map.remove(&key);
                self.order.retain(|k| *k != key);
            }
        }
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
        assert_eq!(n.learn(0, 1, 0, &r), 2);
        assert_eq!(n.name(0, &ips[0]), Some("api.vendor.example"));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(n.name(0, &mapped), Some("api.vendor.example"));
        assert_eq!(n.name(1, &ips[0]), None, "names are per application");
        let other = response(8, "other.example", &["198.51.100.1".parse().unwrap()]);
        n.learn(0, 1, 0, &other);
        assert_eq!(
            n.name(0, &ips[0]),
            None,
            "the oldest is forgotten beyond the cap"
        );
        let conf = "# x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch lan\n";
        let want: Vec<IpAddr> = vec!["127.0.0.53".parse().unwrap(), "fe80::1".parse().unwrap()];
        assert_eq!(resolvers(conf), want);
    }

    /// A query for `name` with transaction `id`.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn an_answer_is_read_only_for_a_question_its_flow_asked() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut a = Asked::new(16);
        a.ask(1, 0, &query(7, "Pm.Vendor.example"));
        assert_eq!(a.queries, 1);
        let answer = response(7, "pm.vendor.example", &[ip]);
        assert!(a.asked(1, 10, &answer), "the question asked, case aside");
        assert!(
            a.asked(1, 11, &answer),
            "a repeat still reaches the repeat check"
        );
        assert!(!a.asked(2, 12, &answer), "another flow asked nothing");
        assert!(
            !a.asked(1, 13, &response(8, "pm.vendor.example", &[ip])),
            "another id"
        );
        assert!(
            !a.asked(1, 14, &response(7, "evil.example", &[ip])),
            "another name"
        );
        assert!(
            !a.asked(1, ANSWER_MEMORY_NS + 1, &answer),
            "remembered for a while only"
        );
        assert_eq!(a.unasked, 4);
        // A response sent is not a question; a closed flow's questions are forgotten.
        a.ask(3, 0, &answer);
        assert_eq!(a.queries, 1);
        a.ask(4, 0, &query(9, "a.example"));
        a.forget(4);
        assert!(!a.asked(4, 1, &response(9, "a.example", &[ip])));
        // Bounded: past `cap` questions the oldest is forgotten.
        for id in 0..20u16 {
            a.ask(5, 2, &query(id, "b.example"));
        }
        assert!(!a.asked(5, 3, &response(0, "b.example", &[ip])));
        assert!(a.asked(5, 3, &response(19, "b.example", &[ip])));
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

    fn encoded(name: &str) -> Vec<u8> {
        let mut b = Vec::new();
        for label in name.split('.') {
            b.push(label.len() as u8);
            b.extend_from_slice(label.as_bytes());
        }
        b.push(0);
        b
    }

    /// A response with `flags` to a question for `qname`, with these (owner, type, data).
    fn packet(flags: u16, qname: &str, records: &[(&str, u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0, 7];
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&[0, 1, 0, records.len() as u8, 0, 0, 0, 0]);
        b.extend_from_slice(&encoded(qname));
        b.extend_from_slice(&[0, 1, 0, 1]);
        for (owner, rtype, data) in records {
            b.extend_from_slice(&encoded(owner));
            b.extend_from_slice(&rtype.to_be_bytes());
            b.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            b.extend_from_slice(&(data.len() as u16).to_be_bytes());
            b.extend_from_slice(data);
        }
        b
    }

    #[test]
    fn only_the_question_and_its_cname_chain_are_named() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v4 = |s: &str| match ip(s) {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(_) => unreachable!(),
        };
        let r = packet(
            0x8180,
            "vendor.example",
            &[
                ("evil.example", TYPE_A, v4("198.51.100.66")),
                ("cdn.example", TYPE_A, v4("203.0.113.9")),
                ("VENDOR.example", TYPE_CNAME, encoded("cdn.example")),
                ("Vendor.Example", TYPE_A, v4("203.0.113.10")),
            ],
        );
        assert_eq!(
            answers(&r),
            Some((
                "vendor.example".to_string(),
                vec![ip("203.0.113.9"), ip("203.0.113.10")]
            ))
        );
        let mut n = Names::new(16);
        assert_eq!(n.learn(0, 1, 0, &r), 2);
        assert_eq!(
            n.name(0, &ip("198.51.100.66")),
            None,
            "planted by an extra record"
        );
        assert_eq!(n.name(0, &ip("203.0.113.9")), Some("vendor.example"));
        assert_eq!(n.counters.unbound_records, 1);
        // NXDOMAIN names nothing, whatever it carries.
        let nx = packet(
            0x8183,
            "a.example",
            &[("a.example", TYPE_A, v4("198.51.100.1"))],
        );
        assert_eq!(n.learn(0, 2, 0, &nx), 0);
        assert_eq!(n.counters.unbound_records, 2);
        // Not the response to a standard query; not an `IN` question: refused.
        let notify = packet(
            0xa180,
            "a.example",
            &[("a.example", TYPE_A, v4("198.51.100.1"))],
        );
        assert_eq!(n.learn(0, 3, 0, &notify), 0);
        let mut chaos = response(8, "a.example", &[ip("198.51.100.1")]);
        chaos[12 + encoded("a.example").len() + 3] = 3;
        assert_eq!(answers(&chaos), None);
        assert_eq!(n.learn(0, 4, 0, &chaos), 0);
        assert_eq!(n.counters.refused, 2);
    }

    #[test]
    fn a_transaction_is_answered_once_and_a_disagreeing_repeat_withdraws_it() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (real, forged) = (ip("203.0.113.7"), ip("198.51.100.66"));
        let mut n = Names::new(16);
        let t0 = 1_000_000_000;
        let answer = response(7, "api.vendor.example", &[real]);
        assert_eq!(n.learn(0, 1, t0, &answer), 1);
        assert_eq!(
            n.learn(0, 1, t0 + 1, &answer),
            0,
            "a repeat teaches nothing"
        );
        assert_eq!(n.name(0, &real), Some("api.vendor.example"));
        assert_eq!(n.counters.repeated, 1);
        // A second, different answer to the same query: one of the two is forged.
        let forgery = response(7, "api.vendor.example", &[forged]);
        assert_eq!(n.learn(0, 1, t0 + 2, &forgery), 0);
        assert_eq!(n.name(0, &forged), None);
        assert_eq!(n.name(0, &real), None, "the first answer is withdrawn too");
        assert_eq!(n.counters.conflicting, 1);
        // The same id on another flow is another transaction; a repeat naming another
        // question disagrees.
        assert_eq!(n.learn(0, 2, t0 + 3, &answer), 1);
        let other = response(7, "other.example", &[real]);
        assert_eq!(n.learn(0, 2, t0 + 4, &other), 0);
        assert_eq!(n.name(0, &real), None);
        assert_eq!(n.counters.conflicting, 2);
        // Past the memory, the id may be used again.
        assert_eq!(n.learn(0, 1, t0 + ANSWER_MEMORY_NS + 3, &answer), 1);
        assert_eq!(n.name(0, &real), Some("api.vendor.example"));
    }

    #[test]
    fn answered_transactions_are_bounded_per_application() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let mut n = Names::new(16);
        for id in 0..=TRANSACTIONS_KEPT as u16 {
            assert_eq!(n.learn(0, 1, 0, &response(id, "a.example", &[ip])), 1);
        }
        assert_eq!(n.counters.evicted, 1);
        assert_eq!(
            n.learn(0, 1, 0, &response(0, "a.example", &[ip])),
            1,
            "forgotten"
        );
        assert_eq!(n.learn(0, 1, 0, &response(5, "a.example", &[ip])), 0);
        assert_eq!(
            n.learn(1, 1, 0, &response(5, "a.example", &[ip])),
            1,
            "per app"
        );
    }
}
