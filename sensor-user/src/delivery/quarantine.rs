//! No poison record: a spooled record the collector would refuse is kept on the host and
//! skipped, so it can never block the records after it.
//!
//! Before a batch is sent, each record is decoded and checked against the collector's own
//! limits (`clinicwatch_proto::limits::check_record`); a batch stops before the first bad
//! one. When the collector refuses a batch as `invalid_argument` anyway (the stream then
//! ends), the refused record is found: by the seq the message names (`record <seq>: …`),
//! or by halving the batches after the refusal until a batch of one is refused. A bad
//! record, once it is the oldest pending, is quarantined: written with its reason to
//! `<spool>/quarantine/` (0600 files in a 0700 folder, the oldest deleted past
//! [`MAX_BYTES`]), counted, acked in the spool so that delivery goes on, and reported by a
//! `CW-SENSOR-QUARANTINE` finding (medium), shaped like every record so that it reaches the
//! SOC. A quarantine finding that is itself refused is quarantined without another one.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use clinicwatch_proto::{
    limits,
    v1::{record::Body, Record},
};
use prost::Message as _;

use crate::{
    event::finding::{Finding, Severity},
    event::Event,
    sinks::spool::{Entry, Spool, SpoolError},
    sinks::statefile,
};

/// The rule of the finding that reports a quarantined record.
pub const RULE: &str = "CW-SENSOR-QUARANTINE";
/// The quarantine folder's cap; past it the oldest quarantined records are deleted.
pub const MAX_BYTES: u64 = 16 << 20;
/// The longest reason kept in a finding's evidence.
const REASON_MAX: usize = 1024;

/// The quarantine folder.
pub struct Quarantine {
    dir: PathBuf,
    max_bytes: u64,
}

impl Quarantine {
    pub fn new(spool_dir: &Path, max_bytes: u64) -> Quarantine {
        Quarantine {
            dir: spool_dir.join("quarantine"),
            max_bytes,
        }
    }

    /// Keeps a record and why it was quarantined (its bytes too, if they fit the cap);
    /// returns the file's name. The folder is fsynced: the record is durably kept before
    /// the spool skips it.
    pub fn keep(&self, epoch: u64, e: &Entry, reason: &str) -> Result<String, SpoolError> {
        let err = |p: &Path, what| {
            let p = p.to_path_buf();
            move |source: std::io::Error| SpoolError::from_io(&p, what, source)
        };
        statefile::make_dir(&self.dir).map_err(err(&self.dir, "cannot create the quarantine"))?;
        let name = format!("{epoch:020}-{:020}.rec", e.seq);
        let mut header = format!(
            "reason: {}\nkind: {:?}\nepoch: {epoch}\nseq: {}\nbytes: {}\n",
            reason.replace(['\n', '\0'], " "),
            e.kind,
            e.seq,
            e.payload.len()
        );
        let keep_payload = (header.len() + 1 + e.payload.len()) as u64 <= self.max_bytes;
        if !keep_payload {
            header.push_str("payload: not kept (over the quarantine's cap)\n");
        }
        header.push('\n');
        let mut data = header.into_bytes();
        if keep_payload {
            data.extend_from_slice(&e.payload);
        }
        self.make_room(data.len() as u64, &name)
            .map_err(err(&self.dir, "cannot list the quarantine"))?;
        let path = self.dir.join(&name);
        statefile::write_atomic(&path, &data)
            .map_err(|e| SpoolError::from_io(&e.path, "cannot quarantine a record", e.source))?;
        Ok(name)
    }

    /// Deletes the oldest quarantined records until `need` more bytes fit the cap.
    fn make_room(&self, need: u64, name: &str) -> std::io::Result<()> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let meta = e.metadata().ok()?;
                (n.ends_with(".rec") && n != name && meta.is_file()).then_some((n, meta.len()))
            })
            .collect();
        files.sort();
        let mut total: u64 = files.iter().map(|(_, n)| n).sum();
        let mut removed = false;
        for (n, len) in files {
            if total + need <= self.max_bytes {
                break;
            }
            std::fs::remove_file(self.dir.join(&n))?;
            total -= len;
            removed = true;
        }
        if removed {
            statefile::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// What the next batch is.
#[derive(Debug)]
pub enum Screened {
    /// The records to send: the pending ones up to the first bad one.
    Send(Vec<Record>),
    /// The oldest pending record is bad: quarantine it (with the reason) instead.
    Bad(Entry, String),
}

/// The record a seq names at the start of a collector's refusal: `record 12: …`.
fn named_seq(message: &str) -> Option<u64> {
    let rest = message.strip_prefix("record ")?;
    let (n, _) = rest.split_once(':')?;
    n.parse().ok()
}

/// Which spooled records must not be sent, across the exporter's sessions; and the
/// quarantine they go to.
pub struct Screen {
    quarantine: Quarantine,
    /// Records the collector refused on their own: seq → its message.
    refused: BTreeMap<u64, String>,
    /// After a refusal that named no record: batches of at most `.0` records until `.1`
    /// is acked.
    narrow: Option<(usize, u64)>,
    /// The batch sent and not acked yet: first seq, last seq, records.
    in_flight: Option<(u64, u64, usize)>,
    /// Refusals of a batch as invalid.
    pub refusals: u64,
    /// Records quarantined.
    pub quarantined: u64,
}

impl Screen {
    pub fn new(quarantine: Quarantine) -> Screen {
        Screen {
            quarantine,
            refused: BTreeMap::new(),
            narrow: None,
            in_flight: None,
            refusals: 0,
            quarantined: 0,
        }
    }

    /// The most records the next batch may hold: fewer while a refused batch is bisected.
    pub fn batch_limit(&mut self, acked: u64, configured: usize) -> usize {
        match self.narrow {
            Some((max, until)) if acked < until => max.min(configured),
            _ => {
                self.narrow = None;
                configured
            }
        }
    }

    /// Decodes and checks pending records, oldest first.
    pub fn screen(&self, entries: Vec<Entry>) -> Screened {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let verdict = match Record::decode(e.payload.as_slice()) {
                Err(err) => Err(format!("record {}: does not decode: {err}", e.seq)),
                Ok(mut r) => {
                    r.seq = e.seq;
                    match self.refused.get(&e.seq) {
                        Some(why) => Err(format!("refused by the collector: {why}")),
                        None => match limits::check_record(&r) {
                            Ok(()) => Ok(r),
                            // Spooled by an older agent, unshaped: shaped now, it may pass.
                            Err(l) => {
                                crate::delivery::records::shape(&mut r);
                                limits::check_record(&r).map(|()| r).map_err(|_| l.0)
                            }
                        },
                    }
                }
            };
            match verdict {
                Ok(r) => out.push(r),
                Err(why) if out.is_empty() => return Screened::Bad(e, why),
                // Sent first: the bad one is quarantined once it is the oldest.
                Err(_) => break,
            }
        }
        Screened::Send(out)
    }

    /// A batch goes out.
    pub fn sending(&mut self, records: &[Record]) {
        self.in_flight = match (records.first(), records.last()) {
            (Some(a), Some(b)) => Some((a.seq, b.seq, records.len())),
            _ => None,
        };
    }

    /// The batch in flight was acked (or what was sent was not a batch).
    pub fn settled(&mut self) {
        self.in_flight = None;
    }

    /// The collector refused the batch in flight as invalid: learns which record to
    /// quarantine, or halves the next batches. Returns whether there was a batch in flight
    /// (then the exporter reconnects at once: each refusal brings the bad record closer).
    pub fn refused(&mut self, message: &str) -> bool {
        let Some((first, last, n)) = self.in_flight.take() else {
            return false;
        };
        self.refusals += 1;
        let named = named_seq(message).filter(|s| (first..=last).contains(s));
        match named {
            Some(seq) => {
                self.refused.insert(seq, message.to_string());
            }
            None if n == 1 => {
                self.refused.insert(first, message.to_string());
            }
            None => self.narrow = Some(((n / 2).max(1), last)),
        }
        true
    }

    /// Quarantines the oldest pending record: kept, acked in the spool, reported by a
    /// finding appended to the spool. A failure to keep it is reported too: the record is
    /// skipped all the same, since it can never be delivered.
    pub fn quarantine(&mut self, spool: &mut Spool, e: Entry, why: &str) -> Result<(), SpoolError> {
        let kept = self.quarantine.keep(spool.epoch(), &e, why);
        spool.ack(e.seq)?;
        self.refused.remove(&e.seq);
        self.quarantined += 1;
        let rec = Record::decode(e.payload.as_slice()).ok();
        let (kind, rule, app) = describe(rec.as_ref());
        tracing::warn!(
            seq = e.seq,
            kind,
            rule,
            reason = %why,
            kept = ?kept.as_ref().map_err(|e| e.to_string()),
            quarantined = self.quarantined,
            "a record the collector would refuse was quarantined; delivery goes on"
        );
        if rule == RULE {
            return Ok(());
        }
        let f = Finding::new(RULE, Severity::Medium, "-", crate::delivery::records::unix_time(), "quarantine")
            .summary(format!(
                "a {kind} record (seq {}) the collector would refuse was kept on the host instead of sent: {}",
                e.seq,
                limits::fit_text(why, 256)
            ))
            .with("reason", limits::fit_text(why, REASON_MAX))
            .with("record_kind", kind)
            .with("record_rule", rule)
            .with("record_app", app)
            .with("seq", e.seq)
            .with("epoch", spool.epoch())
            .with("record_bytes", e.payload.len())
            .with(
                "kept",
                match &kept {
                    Ok(name) => format!("quarantine/{name}"),
                    Err(err) => limits::fit_text(&format!("not kept: {err}"), REASON_MAX),
                },
            )
            .with("quarantined_since_start", self.quarantined);
        if let Some((kind, payload)) =
            crate::delivery::records::record(&Event::Finding(f), spool.dropped)
        {
            spool.append(kind, &payload)?;
        }
        Ok(())
    }
}

/// A record's kind, rule and app, for the report.
fn describe(r: Option<&Record>) -> (&'static str, String, String) {
    match r.and_then(|r| r.body.as_ref()) {
        Some(Body::Finding(f)) => (
            "finding",
            limits::fit_text(&f.rule, 128),
            limits::fit_text(&f.app, 128),
        ),
        Some(Body::Summary(s)) => ("summary", String::new(), limits::fit_text(&s.app, 128)),
        Some(Body::Health(_)) => ("health", String::new(), String::new()),
        None if r.is_some() => ("empty", String::new(), String::new()),
        None => ("undecodable", String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, sync::Mutex};

    use clinicwatch_proto::v1::WindowSummary;

    use super::*;
    use crate::{
        delivery::client::{next_batch, DropReport},
        sinks::spool::{Kind, SpoolConfig},
    };

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cw-quarantine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A summary of `app`; one of an app named `nan…` ends at a time that is not a number
    /// (no shaping can fix it).
    fn summary(app: &str) -> Vec<u8> {
        Record {
            seq: 0,
            body: Some(Body::Summary(WindowSummary {
                app: app.into(),
                end: if app.starts_with("nan") {
                    f64::NAN
                } else {
                    60.0
                },
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    /// A spool of `n` summaries named `pm-<seq>`, but those `odd` names.
    fn spool(d: &Path, n: u64, odd: &[(u64, String)]) -> Mutex<Spool> {
        let mut s = Spool::open(SpoolConfig {
            dir: d.to_path_buf(),
            max_bytes: 64 << 20,
            segment_bytes: 4096,
            fsync_each: false,
        })
        .unwrap();
        for seq in 1..=n {
            let app = odd
                .iter()
                .find(|(s, _)| *s == seq)
                .map_or(format!("pm-{seq}"), |(_, a)| a.clone());
            assert_eq!(s.append(Kind::Summary, &summary(&app)).unwrap(), seq);
        }
        Mutex::new(s)
    }

    fn app(r: &Record) -> &str {
        match &r.body {
            Some(Body::Summary(s)) => &s.app,
            Some(Body::Finding(f)) => &f.rule,
            _ => "",
        }
    }

    /// What a collector stored, how often it refused a batch, and the quarantine findings.
    #[derive(Default)]
    struct Delivered {
        seqs: Vec<u64>,
        refusals: u64,
        reports: Vec<clinicwatch_proto::v1::Finding>,
    }

    /// Delivers the spool to a collector that refuses (as invalid) any batch holding a
    /// record `refuse` picks, naming its seq in the message when `named`.
    fn deliver(
        spool: &Mutex<Spool>,
        screen: &mut Screen,
        max_records: usize,
        named: bool,
        refuse: impl Fn(&Record) -> bool,
    ) -> Delivered {
        let mut out = Delivered::default();
        let mut drops = DropReport::default();
        for _ in 0..10_000 {
            let Some(records) = next_batch(spool, screen, &mut drops, max_records).unwrap() else {
                return out;
            };
            assert!(records.len() <= max_records);
            screen.sending(&records);
            if let Some(bad) = records.iter().find(|r| refuse(r)) {
                out.refusals += 1;
                let why = if named {
                    format!("record {}: app `{}` is not allowed", bad.seq, app(bad))
                } else {
                    "frame too large: what the collector would not say".to_string()
                };
                assert!(screen.refused(&why));
                continue;
            }
            spool
                .lock()
                .unwrap()
                .ack(records.last().unwrap().seq)
                .unwrap();
            screen.settled();
            for r in records {
                if let Some(Body::Finding(f)) = &r.body {
                    if f.rule == RULE {
                        out.reports.push(f.clone());
                    }
                }
                out.seqs.push(r.seq);
            }
        }
        panic!("delivery never ended");
    }

    fn quarantined(d: &Path) -> Vec<(String, String)> {
        let q = d.join("quarantine");
        let mut out: Vec<(String, String)> = std::fs::read_dir(&q)
            .map(|r| r.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600);
                (
                    e.file_name().into_string().unwrap(),
                    String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned(),
                )
            })
            .collect();
        out.sort();
        if !out.is_empty() {
            let mode = std::fs::metadata(&q).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        out
    }

    #[test]
    fn a_record_over_the_limits_is_quarantined_before_it_is_sent_and_reported() {
        let d = dir("local");
        let sp = spool(
            &d,
            50,
            &[
                (20, "nan-a".into()),
                (30, "nan-b".into()),
                // Spooled unshaped (an older agent): shaped now, and sent.
                (40, "pm\0nul".into()),
                (45, "x".repeat(limits::MAX_TEXT + 1)),
            ],
        );
        let mut screen = Screen::new(Quarantine::new(&d, MAX_BYTES));
        let got = deliver(&sp, &mut screen, 16, true, |_| false);
        assert_eq!(
            got.refusals, 0,
            "nothing the collector would refuse was sent"
        );
        let expected: Vec<u64> = (1..=52).filter(|s| ![20, 30].contains(s)).collect();
        assert_eq!(
            got.seqs, expected,
            "the rest, in order, then the two reports"
        );
        assert_eq!(screen.quarantined, 2);
        let files = quarantined(&d);
        assert_eq!(files.len(), 2);
        assert!(
            files[0].0.ends_with("-00000000000000000020.rec"),
            "{files:?}"
        );
        assert!(files[0].1.contains("not a number") && files[0].1.contains("seq: 20"));
        assert!(files[1].1.contains("seq: 30"), "{}", files[1].1);
        let r = &got.reports[0];
        assert_eq!(r.severity, clinicwatch_proto::v1::Severity::Medium as i32);
        assert_eq!(r.evidence["seq"], "20");
        assert_eq!(r.evidence["record_kind"], "\"summary\"");
        assert!(
            r.evidence["reason"].contains("not a number"),
            "{:?}",
            r.evidence
        );
        assert!(r.evidence["kept"].contains("quarantine/"));
        let sp = sp.lock().unwrap();
        assert_eq!((sp.acked(), sp.pending()), (52, 0));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_refused_batch_is_halved_until_the_record_is_found() {
        let d = dir("bisect");
        let poison = [(37, "poison".to_string()), (80, "poison".to_string())];
        let sp = spool(&d, 100, &poison);
        let mut screen = Screen::new(Quarantine::new(&d, MAX_BYTES));
        let got = deliver(&sp, &mut screen, 16, false, |r| app(r) == "poison");
        let expected: Vec<u64> = (1..=102).filter(|s| ![37, 80].contains(s)).collect();
        assert_eq!(got.seqs, expected, "every other record, in order");
        // 16, 8, 4, 2, 1: at most five refusals per bad record.
        assert!(
            (4..=10).contains(&got.refusals),
            "{} refusals",
            got.refusals
        );
        assert_eq!(screen.quarantined, 2);
        assert_eq!(got.reports.len(), 2);
        assert!(got.reports[0].evidence["reason"].contains("frame too large"));
        assert_eq!(got.reports[1].evidence["seq"], "80");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_record_the_collector_names_is_quarantined_after_one_refusal() {
        let d = dir("named");
        let sp = spool(&d, 100, &[(37, "poison".into()), (38, "poison".into())]);
        let mut screen = Screen::new(Quarantine::new(&d, MAX_BYTES));
        let got = deliver(&sp, &mut screen, 1000, true, |r| app(r) == "poison");
        assert_eq!(got.refusals, 2);
        assert_eq!(got.seqs.len(), 98 + 2);
        assert_eq!(got.reports[1].evidence["seq"], "38");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_refused_quarantine_report_is_quarantined_without_another() {
        let d = dir("report-refused");
        let sp = spool(&d, 10, &[(5, "poison".into())]);
        let mut screen = Screen::new(Quarantine::new(&d, MAX_BYTES));
        let got = deliver(&sp, &mut screen, 4, false, |r| {
            app(r) == "poison" || app(r) == RULE
        });
        assert_eq!(got.seqs, vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
        assert_eq!(
            screen.quarantined, 2,
            "the record, then its report; no loop"
        );
        assert_eq!(sp.lock().unwrap().pending(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_quarantine_is_capped_oldest_first_and_refuses_a_planted_link() {
        let d = dir("cap");
        let q = Quarantine::new(&d, 4096);
        for seq in 1..=10 {
            let e = Entry {
                seq,
                kind: Kind::Summary,
                payload: vec![7; 1000],
            };
            q.keep(1, &e, "too big").unwrap();
        }
        let files = quarantined(&d);
        let total: usize = files.iter().map(|(_, t)| t.len()).sum();
        assert!(total <= 4096 && files.len() >= 3, "{total} bytes");
        assert!(files
            .last()
            .unwrap()
            .0
            .ends_with("-00000000000000000010.rec"));
        // Larger than the cap: the reason is kept, not the bytes.
        let big = Entry {
            seq: 11,
            kind: Kind::Summary,
            payload: vec![7; 5000],
        };
        q.keep(1, &big, "huge").unwrap();
        let text = quarantined(&d).pop().unwrap().1;
        assert!(text.contains("not kept") && text.len() < 400, "{text}");
        // A link planted where the next record goes is refused, its target untouched.
        let target = d.with_extension("target");
        std::fs::write(&target, b"precious").unwrap();
        let link = d
            .join("quarantine")
            .join(format!("{:020}-{:020}.tmp", 1, 12));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = Entry { seq: 12, ..big };
        let err = q.keep(1, &e, "x").unwrap_err();
        assert!(
            matches!(err, SpoolError::Symlink { .. }) && err.to_string().contains(".tmp"),
            "{err}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_file(&target).unwrap();
    }
}
