//! The durable, bounded on-disk queue between the agent and its exporter.
//!
//! Append-only segment files (`<first seq>.seg`) of checksummed records:
//! `[u32 len][u32 crc32][u8 kind][u64 seq][payload]` (little-endian; `len` and the CRC cover
//! kind, seq and payload). Sequence numbers run on across restarts within an epoch (the
//! `epoch` file; a new one only when the spool's state is lost). `ack` records how far the
//! collector has durably stored; fully acked segments are deleted.
//!
//! On open, each segment is scanned and a torn or corrupt tail (a crash mid-write, `kill
//! -9`, power loss) is cut at the last good record. A write that fails (disk full) is rolled
//! back so no partial record stays, and the error names the spool.
//!
//! Bounded: over `max_bytes`, the oldest closed segments are rewritten without their
//! summaries and health records (counted in `dropped`). A segment is read for that at most
//! once: one that holds only findings (it never held anything else, or was rewritten) is
//! remembered as such and skipped. Findings may then fill the whole cap; past it, the
//! oldest segments of findings are deleted whole (counted in `dropped_findings`, which the
//! exporter reports to the collector as a `CW-SENSOR-SPOOL-FULL` finding). So the spool
//! never holds more than `max_bytes` plus the segment being written, and an append over the
//! cap reads no segment it has read before. Losing the oldest findings of a long outage is
//! the price of a bound; a disk filled by the agent would lose everything after it.
//!
//! The folder is 0700, its files 0600, every file is opened with `O_NOFOLLOW` (a symbolic
//! link planted in the folder is refused with an error naming it, never followed), and the
//! folder is fsynced after a segment or state file is created or renamed.

use std::{
    collections::VecDeque,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use crate::sinks::statefile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Finding = 1,
    Summary = 2,
    Health = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Finding),
            2 => Some(Kind::Summary),
            3 => Some(Kind::Health),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool `{path}`: {what}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("spool record of {len} bytes is larger than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("spool `{path}` is a symbolic link; refusing to follow it (remove it, the agent makes its own files)")]
    Symlink {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Total size above which summaries are dropped, oldest first, then the oldest findings.
    pub max_bytes: u64,
    /// Size at which a new segment is started.
    pub segment_bytes: u64,
    /// `fsync` after every append (off: after every `sync`).
    pub fsync_each: bool,
}

/// The largest record payload (the collector's frame limit, less room for the batch).
pub const MAX_PAYLOAD: usize = (4 << 20) - 1024;
const HEADER: usize = 4 + 4 + 1 + 8;

#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    last_seq: u64,
    bytes: u64,
    records: u64,
    /// It holds findings only: nothing in it can be dropped but the whole segment.
    findings_only: bool,
}

/// A record read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

pub struct Spool {
    cfg: SpoolConfig,
    epoch: u64,
    next_seq: u64,
    acked: u64,
    segments: VecDeque<Segment>,
    writer: Option<File>,
    total_bytes: u64,
    /// Summaries and health records dropped to keep under `max_bytes`.
    pub dropped: u64,
    /// Findings dropped (oldest first) because findings alone filled `max_bytes`.
    pub dropped_findings: u64,
    /// Bytes cut from torn or corrupt segment tails when the spool was opened.
    pub recovered_cut_bytes: u64,
    /// Segments read to drop their summaries (each at most once).
    pub compaction_reads: u64,
}

impl SpoolError {
    /// An I/O error on `path` (a refused symbolic link named as such).
    pub(crate) fn from_io(path: &Path, what: &'static str, source: std::io::Error) -> SpoolError {
        io(path, what)(source)
    }
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SpoolError {
    let path = path.display().to_string();
    move |source| {
        if statefile::is_symlink_refusal(&source) {
            SpoolError::Symlink { path, source }
        } else {
            SpoolError::Io { path, what, source }
        }
    }
}

fn encode(kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(9 + payload.len());
    body.push(kind as u8);
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(payload);
    let mut rec = Vec::with_capacity(8 + body.len());
    rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    rec.extend_from_slice(&body);
    rec
}

/// Parses the records of a segment; returns them and the length of the valid prefix.
fn parse(data: &[u8]) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while data.len() - at >= HEADER {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        if !(9..=MAX_PAYLOAD + 9).contains(&len) || data.len() - at - 8 < len {
            break;
        }
        let body = &data[at + 8..at + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(kind) = Kind::from_u8(body[0]) else {
            break;
        };
        let seq = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
        if out.last().is_some_and(|e: &Entry| e.seq >= seq) {
            break;
        }
        out.push(Entry {
            seq,
            kind,
            payload: body[9..].to_vec(),
        });
        at += 8 + len;
    }
    (out, at)
}

/// A small state file's number: `None` when it is missing or not a number; an error when
/// it cannot be read (a symbolic link among them).
fn read_u64(path: &Path) -> Result<Option<u64>, SpoolError> {
    match statefile::read(path) {
        Ok(data) => Ok(std::str::from_utf8(&data)
            .ok()
            .and_then(|t| t.trim().parse().ok())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, "cannot read a state file")(e)),
    }
}

/// Writes a small state file atomically (temporary file, fsync, rename, fsync of the folder).
fn write_u64(path: &Path, v: u64) -> Result<(), SpoolError> {
    statefile::write_atomic(path, format!("{v}\n").as_bytes())
        .map_err(|e| io(&e.path, "cannot write a state file")(e.source))
}

impl Spool {
    pub fn open(cfg: SpoolConfig) -> Result<Spool, SpoolError> {
        let dir = cfg.dir.clone();
        statefile::make_dir(&dir).map_err(io(&dir, "cannot create the spool folder"))?;
        let epoch = match read_u64(&dir.join("epoch"))? {
            Some(e) => e,
            None => {
                let e = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                write_u64(&dir.join("epoch"), e)?;
                e
            }
        };
        let acked = read_u64(&dir.join("ack"))?.unwrap_or(0);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io(&dir, "cannot list the spool folder"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        names.sort();
        let mut s = Spool {
            cfg,
            epoch,
            next_seq: acked + 1,
            acked,
            segments: VecDeque::new(),
            writer: None,
            total_bytes: 0,
            dropped: 0,
            dropped_findings: 0,
            recovered_cut_bytes: 0,
            compaction_reads: 0,
        };
        for path in names {
            let data = statefile::read(&path).map_err(io(&path, "cannot read a segment"))?;
            let (entries, good) = parse(&data);
            if good < data.len() {
                s.recovered_cut_bytes += (data.len() - good) as u64;
                let f = statefile::open_existing(&path)
                    .map_err(io(&path, "cannot repair a segment"))?;
                f.set_len(good as u64)
                    .and_then(|_| f.sync_all())
                    .map_err(io(&path, "cannot repair a segment"))?;
            }
            let Some(last) = entries.last() else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if last.seq <= acked {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            s.next_seq = s.next_seq.max(last.seq + 1);
            s.total_bytes += good as u64;
            s.segments.push_back(Segment {
                path,
                last_seq: last.seq,
                bytes: good as u64,
                records: entries.len() as u64,
                findings_only: entries.iter().all(|e| e.kind == Kind::Finding),
            });
        }
        Ok(s)
    }

    /// The spool's folder.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// The size over which records are dropped.
    pub fn max_bytes(&self) -> u64 {
        self.cfg.max_bytes
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Starts a new epoch: the collector holds sequence numbers of this epoch beyond any the
    /// spool has written (its state was restored from an older copy), so sending on would
    /// reuse them and the collector would take new records for duplicates. Records waiting
    /// keep their numbers, in the new epoch.
    pub fn new_epoch(&mut self) -> Result<u64, SpoolError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let e = now.max(self.epoch + 1);
        write_u64(&self.cfg.dir.join("epoch"), e)?;
        self.epoch = e;
        Ok(e)
    }

    /// Records not yet acked.
    pub fn pending(&self) -> u64 {
        self.next_seq - 1 - self.acked
    }

    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let path = self.cfg.dir.join(format!("{:020}.seg", self.next_seq));
        let f = statefile::open_write(&path, true)
            .and_then(|f| {
                // An old file of that name (all its records acked) starts again empty.
                f.set_len(0)?;
                statefile::sync_dir(&self.cfg.dir)?;
                Ok(f)
            })
            .map_err(io(&path, "cannot create a segment"))?;
        self.segments.push_back(Segment {
            path,
            last_seq: self.next_seq.saturating_sub(1),
            bytes: 0,
            records: 0,
            findings_only: true,
        });
        self.writer = Some(f);
        Ok(())
    }

    /// Appends a record; returns its sequence number. On error nothing was added.
    pub fn append(&mut self, kind: Kind, payload: &[u8]) -> Result<u64, SpoolError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(SpoolError::TooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let rec = encode(kind, self.next_seq, payload);
        let full = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + rec.len() as u64 > self.cfg.segment_bytes && s.records > 0);
        if self.writer.is_none() || full {
            self.start_segment()?;
        }
        let seg = self.segments.back_mut().expect("a segment was started");
        let w = self.writer.as_mut().expect("a writer was opened");
        let written = w.write_all(&rec).and_then(|_| {
            if self.cfg.fsync_each {
                w.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Roll back a partial record so the segment stays valid.
            let _ = w.set_len(seg.bytes);
            return Err(io(&seg.path, "cannot append (is the disk full?)")(e));
        }
        seg.bytes += rec.len() as u64;
        seg.records += 1;
        seg.last_seq = self.next_seq;
        seg.findings_only &= kind == Kind::Finding;
        self.total_bytes += rec.len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.enforce_cap()?;
        Ok(seq)
    }

    /// Flushes appended records to disk.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segments.back()) {
            w.sync_data().map_err(io(&seg.path, "cannot sync"))?;
        }
        Ok(())
    }

    /// Over the cap: rewrites the oldest closed segments without their summaries and health
    /// records until under it; if findings alone are over it, deletes the oldest closed
    /// segments whole. A segment known to hold only findings is not read again.
    fn enforce_cap(&mut self) -> Result<(), SpoolError> {
        let mut i = 0;
        while self.total_bytes > self.cfg.max_bytes && i + 1 < self.segments.len() {
            if self.segments[i].findings_only {
                i += 1;
                continue;
            }
            if self.compact(i)? {
                i += 1;
            }
        }
        while self.total_bytes > self.cfg.max_bytes && self.segments.len() > 1 {
            // Every closed segment holds findings only now: the oldest go.
            let front = &self.segments[0];
            std::fs::remove_file(&front.path).map_err(io(
                &front.path,
                "cannot delete a full spool's oldest segment",
            ))?;
            let front = self.segments.pop_front().expect("front exists");
            self.total_bytes -= front.bytes;
            self.dropped_findings += front.records;
        }
        Ok(())
    }

    /// Rewrites segment `i` with its findings only (deletes it if it has none); returns
    /// whether it is still there.
    fn compact(&mut self, i: usize) -> Result<bool, SpoolError> {
        let seg = self.segments[i].clone();
        let data = statefile::read(&seg.path).map_err(io(&seg.path, "cannot read a segment"))?;
        self.compaction_reads += 1;
        let (entries, _) = parse(&data[..(seg.bytes as usize).min(data.len())]);
        let mut out = Vec::new();
        let mut kept = 0;
        for e in entries.iter().filter(|e| e.kind == Kind::Finding) {
            out.extend_from_slice(&encode(e.kind, e.seq, &e.payload));
            kept += 1;
        }
        if kept == 0 {
            std::fs::remove_file(&seg.path)
                .map_err(io(&seg.path, "cannot delete a compacted segment"))?;
            self.segments.remove(i);
        } else {
            statefile::write_atomic(&seg.path, &out)
                .map_err(|e| io(&e.path, "cannot compact a segment")(e.source))?;
        }
        self.dropped += entries.len() as u64 - kept;
        self.total_bytes = self.total_bytes - seg.bytes + out.len() as u64;
        if kept == 0 {
            return Ok(false);
        }
        let s = &mut self.segments[i];
        s.bytes = out.len() as u64;
        s.records = kept;
        s.findings_only = true;
        Ok(true)
    }

    /// Up to `max` records after `after`, in order, from at most `max_bytes` of payload (at
    /// least one record is returned when there is one).
    pub fn read_after(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SpoolError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for seg in self
            .segments
            .iter()
            .filter(|s| s.last_seq > after && s.records > 0)
        {
            let data =
                statefile::read(&seg.path).map_err(io(&seg.path, "cannot read a segment"))?;
            let (entries, _) = parse(&data[..(seg.bytes as usize).min(data.len())]);
            for e in entries.into_iter().filter(|e| e.seq > after) {
                if out.len() >= max || (!out.is_empty() && bytes + e.payload.len() > max_bytes) {
                    return Ok(out);
                }
                bytes += e.payload.len();
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Everything up to `seq` is durably stored by the collector: records it and deletes the
    /// segments wholly acked.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let seq = seq.min(self.next_seq - 1);
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        write_u64(&self.cfg.dir.join("ack"), seq)?;
        while let Some(front) = self.segments.front() {
            if front.last_seq > seq || front.records == 0 {
                break;
            }
            let front = self.segments.pop_front().expect("front exists");
            if self.segments.is_empty() {
                self.writer = None;
            }
            self.total_bytes -= front.bytes;
            let _ = std::fs::remove_file(&front.path);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cw-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn cfg(d: &Path, max: u64, seg: u64) -> SpoolConfig {
        SpoolConfig {
            dir: d.to_path_buf(),
            max_bytes: max,
            segment_bytes: seg,
            fsync_each: false,
        }
    }

    #[test]
    fn sequence_numbers_survive_a_restart_and_acks_delete_segments() {
        let d = dir("restart");
        let mut s = Spool::open(cfg(&d, 1 << 20, 256)).unwrap();
        for i in 0..20u32 {
            assert_eq!(
                s.append(Kind::Summary, &i.to_le_bytes()).unwrap(),
                i as u64 + 1
            );
        }
        s.sync().unwrap();
        let epoch = s.epoch();
        drop(s);
        let mut s = Spool::open(cfg(&d, 1 << 20, 256)).unwrap();
        assert_eq!((s.epoch(), s.next_seq(), s.pending()), (epoch, 21, 20));
        let all = s.read_after(0, 100, 1 << 20).unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        assert_eq!(all[7].payload, 7u32.to_le_bytes());
        let segments_before = s.segments.len();
        s.ack(12).unwrap();
        assert!(
            s.segments.len() < segments_before,
            "acked segments are deleted"
        );
        assert_eq!(s.read_after(s.acked(), 100, 1 << 20).unwrap()[0].seq, 13);
        drop(s);
        let mut s = Spool::open(cfg(&d, 1 << 20, 256)).unwrap();
        assert_eq!((s.acked(), s.pending()), (12, 8));
        assert_eq!(s.append(Kind::Finding, b"x").unwrap(), 21);
        assert_eq!(s.read_after(0, 3, 1 << 20).unwrap().len(), 3, "max records");
        assert_eq!(
            s.read_after(0, 100, 1).unwrap().len(),
            1,
            "max bytes, at least one"
        );
        s.ack(21).unwrap();
        assert_eq!((s.pending(), s.bytes()), (0, 0));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record() {
        let d = dir("torn");
        let mut s = Spool::open(cfg(&d, 1 << 20, 1 << 20)).unwrap();
        for i in 0..10u8 {
            s.append(Kind::Finding, &[i; 100]).unwrap();
        }
        s.sync().unwrap();
        let seg = s.segments[0].path.clone();
        drop(s);
        // A crash in the middle of the tenth record, then garbage after it.
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 40).unwrap();
        let mut s = Spool::open(cfg(&d, 1 << 20, 1 << 20)).unwrap();
        assert_eq!(s.read_after(0, 100, 1 << 20).unwrap().len(), 9);
        assert!(s.recovered_cut_bytes > 0);
        assert_eq!(s.append(Kind::Finding, b"after").unwrap(), 10);
        // A flipped bit in a record's body: the tail from there is cut, the head kept.
        s.sync().unwrap();
        drop(s);
        let mut data = std::fs::read(&seg).unwrap();
        let at = data.len() / 2;
        data[at] ^= 0xff;
        std::fs::write(&seg, &data).unwrap();
        let s = Spool::open(cfg(&d, 1 << 20, 1 << 20)).unwrap();
        let left = s.read_after(0, 100, 1 << 20).unwrap();
        // The first segment keeps its records before the flip; the later segment (seq 10,
        // written after the first recovery) is untouched.
        let seqs: Vec<u64> = left.iter().map(|e| e.seq).collect();
        assert!(seqs.len() > 1 && seqs.len() < 10, "{seqs:?}");
        assert_eq!(seqs.last(), Some(&10));
        let head = &seqs[..seqs.len() - 1];
        assert!(
            head.iter().enumerate().all(|(i, s)| *s == i as u64 + 1),
            "{seqs:?}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_full_spool_drops_oldest_summaries_never_findings() {
        let d = dir("cap");
        let mut s = Spool::open(cfg(&d, 4096, 1024)).unwrap();
        let mut findings = Vec::new();
        for i in 0..200u32 {
            let kind = if i % 10 == 0 {
                Kind::Finding
            } else {
                Kind::Summary
            };
            let seq = s.append(kind, &[7u8; 40]).unwrap();
            if kind == Kind::Finding {
                findings.push(seq);
            }
        }
        assert!(s.dropped > 0);
        assert!(s.bytes() <= 4096 + 1024, "{} bytes", s.bytes());
        let left = s.read_after(0, 1000, 1 << 20).unwrap();
        let kept: Vec<u64> = left
            .iter()
            .filter(|e| e.kind == Kind::Finding)
            .map(|e| e.seq)
            .collect();
        assert_eq!(kept, findings, "every finding is kept");
        // The newest summaries are the ones kept.
        assert!(left.iter().any(|e| e.kind == Kind::Summary && e.seq > 190));
        assert!(!left.iter().any(|e| e.kind == Kind::Summary && e.seq < 20));
        assert_eq!(left.len() as u64 + s.dropped, 200);
        let reopened = Spool::open(cfg(&d, 4096, 1024)).unwrap();
        assert_eq!(reopened.read_after(0, 1000, 1 << 20).unwrap(), left);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Findings with a summary now and then, far past the cap.
    fn fill(s: &mut Spool, n: u32) -> Vec<u64> {
        let mut findings = Vec::new();
        for i in 0..n {
            let kind = if i % 50 == 7 {
                Kind::Summary
            } else {
                Kind::Finding
            };
            let seq = s.append(kind, &[i as u8; 100]).unwrap();
            if kind == Kind::Finding {
                findings.push(seq);
            }
        }
        findings
    }

    fn bytes_on_disk(d: &Path) -> u64 {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn findings_past_the_cap_drop_the_oldest_and_no_segment_is_read_twice() {
        let d = dir("findings-cap");
        let (max, seg) = (64 << 10, 4 << 10);
        let mut s = Spool::open(cfg(&d, max, seg)).unwrap();
        let n = 20_000;
        let mut findings = Vec::new();
        for _ in 0..20 {
            findings.extend(fill(&mut s, n / 20));
            assert!(s.bytes() <= max + seg, "{} bytes", s.bytes());
            assert_eq!(s.bytes(), bytes_on_disk(&d));
        }
        // Before: every append over the cap read every segment again (millions of reads).
        // Now each segment is read at most once, and only one that held a summary.
        let summaries = n / 50;
        assert!(
            s.compaction_reads <= summaries as u64,
            "{} segment reads for {summaries} summaries",
            s.compaction_reads
        );
        assert!(s.dropped_findings > 0);
        let left = s.read_after(0, 1_000_000, usize::MAX).unwrap();
        assert_eq!(
            left.len() as u64 + s.dropped + s.dropped_findings,
            n as u64,
            "every record is kept or counted"
        );
        // The newest findings are the ones kept.
        let kept: Vec<u64> = left
            .iter()
            .filter(|e| e.kind == Kind::Finding)
            .map(|e| e.seq)
            .collect();
        assert_eq!(kept[..], findings[findings.len() - kept.len()..]);
        let reopened = Spool::open(cfg(&d, max, seg)).unwrap();
        assert_eq!(reopened.read_after(0, 1_000_000, usize::MAX).unwrap(), left);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_spool_of_findings_only_reads_no_segment_to_stay_bounded() {
        let d = dir("findings-only");
        let (max, seg) = (32 << 10, 4 << 10);
        let mut s = Spool::open(cfg(&d, max, seg)).unwrap();
        for i in 0..20_000u32 {
            s.append(Kind::Finding, &i.to_le_bytes()).unwrap();
        }
        assert_eq!(s.compaction_reads, 0);
        assert!(s.bytes() <= max + seg && bytes_on_disk(&d) == s.bytes());
        let left = s.read_after(0, 1_000_000, usize::MAX).unwrap();
        assert_eq!(left.len() as u64 + s.dropped_findings, 20_000);
        assert_eq!(left.last().unwrap().seq, 20_000);
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_spools_folder_is_0700_and_its_files_0600() {
        let d = dir("modes");
        let mut s = Spool::open(cfg(&d, 4096, 1024)).unwrap();
        fill(&mut s, 200);
        s.ack(3).unwrap();
        assert_eq!(mode(&d), 0o700);
        let files: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(files.iter().any(|p| p.ends_with("ack")) && files.len() > 3);
        for f in files {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A file outside the spool that a planted link points at.
    fn target(d: &Path) -> PathBuf {
        let t = d.with_extension("target");
        std::fs::write(&t, b"precious\n").unwrap();
        t
    }

    fn assert_refused(e: SpoolError, link: &Path, t: &Path) {
        let msg = e.to_string();
        assert!(
            matches!(e, SpoolError::Symlink { .. })
                && msg.contains(&link.display().to_string())
                && msg.contains("symbolic link"),
            "{msg}"
        );
        assert_eq!(std::fs::read(t).unwrap(), b"precious\n", "not followed");
    }

    #[test]
    fn a_link_planted_at_a_state_file_or_segment_is_refused_never_followed() {
        let d = dir("links");
        let t = target(&d);
        let mut s = Spool::open(cfg(&d, 1 << 20, 1 << 20)).unwrap();
        s.append(Kind::Finding, b"one").unwrap();
        s.sync().unwrap();
        let seg = s.segments[0].path.clone();
        drop(s);
        for name in ["ack", "epoch"] {
            let p = d.join(name);
            let saved = std::fs::read(&p).ok();
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(&t, &p).unwrap();
            let e = Spool::open(cfg(&d, 1 << 20, 1 << 20)).err().unwrap();
            assert_refused(e, &p, &t);
            std::fs::remove_file(&p).unwrap();
            if let Some(v) = saved {
                std::fs::write(&p, v).unwrap();
            }
        }
        // The temporary file `ack` is written through.
        let mut s = Spool::open(cfg(&d, 1 << 20, 1 << 20)).unwrap();
        let tmp = d.join("ack.tmp");
        std::os::unix::fs::symlink(&t, &tmp).unwrap();
        assert_refused(s.ack(1).unwrap_err(), &tmp, &t);
        std::fs::remove_file(&tmp).unwrap();
        drop(s);
        // A segment replaced by a link: the spool does not open (nor cut the target).
        let saved = std::fs::read(&seg).unwrap();
        std::fs::remove_file(&seg).unwrap();
        std::os::unix::fs::symlink(&t, &seg).unwrap();
        let e = Spool::open(cfg(&d, 1 << 20, 1 << 20)).err().unwrap();
        assert_refused(e, &seg, &t);
        std::fs::remove_file(&seg).unwrap();
        std::fs::write(&seg, saved).unwrap();
        // A link where the next segment will be made.
        let mut s = Spool::open(cfg(&d, 1 << 20, 8)).unwrap();
        let next = d.join(format!("{:020}.seg", s.next_seq()));
        std::os::unix::fs::symlink(&t, &next).unwrap();
        assert_refused(s.append(Kind::Finding, b"two").unwrap_err(), &next, &t);
        assert_eq!(s.read_after(0, 10, 1 << 20).unwrap().len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_file(&t).unwrap();
    }

    #[test]
    fn an_oversized_record_is_refused_by_size() {
        let d = dir("big");
        let mut s = Spool::open(cfg(&d, 1 << 30, 1 << 20)).unwrap();
        let e = s
            .append(Kind::Summary, &vec![0; MAX_PAYLOAD + 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&(MAX_PAYLOAD + 1).to_string()), "{e}");
        assert_eq!(s.next_seq(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The child side of the crash test (run by it, not on its own): appends with fsync and
    /// prints each sequence number once it is on disk, until killed.
    #[test]
    #[ignore = "the child process of kill_9_mid_stream_loses_nothing_that_was_synced"]
    fn crash_writer() {
        let Some(d) = std::env::var_os("CW_SPOOL_CRASH_DIR") else {
            return;
        };
        let mut s = Spool::open(cfg(Path::new(&d), 1 << 30, 64 << 10)).unwrap();
        let mut out = std::io::stdout();
        loop {
            let seq = s.append(Kind::Finding, &[0x5a; 300]).unwrap();
            s.sync().unwrap();
            writeln!(out, "synced {seq}").unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn kill_9_mid_stream_loses_nothing_that_was_synced() {
        use std::io::BufRead;
        let d = dir("kill9");
        std::fs::create_dir_all(&d).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sinks::spool::tests::crash_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CW_SPOOL_CRASH_DIR", &d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut synced = 0u64;
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("synced ") {
                synced = n.parse().unwrap();
                if synced >= 2000 {
                    break;
                }
            }
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        assert!(synced >= 2000, "the writer ran");
        let s = Spool::open(cfg(&d, 1 << 30, 64 << 10)).unwrap();
        let left = s.read_after(0, 1_000_000, usize::MAX).unwrap();
        assert!(
            left.len() as u64 >= synced,
            "{} records after the crash, {synced} synced",
            left.len()
        );
        assert!(left
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1 && e.payload == [0x5a; 300]));
        assert_eq!(s.next_seq(), left.len() as u64 + 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_full_disk_is_an_error_naming_the_spool_and_loses_nothing_accepted() {
        const TEST: &str = "a_full_disk_is_an_error_naming_the_spool_and_loses_nothing_accepted";
        if !clinicwatch_testkit::require_root(TEST, "to mount a small tmpfs") {
            return;
        }
        let d = dir("full");
        std::fs::create_dir_all(&d).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&d)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            clinicwatch_testkit::skip(TEST, "cannot mount a tmpfs");
            return;
        }
        let mut s = Spool::open(cfg(&d, 1 << 30, 1 << 20)).unwrap();
        let mut accepted = 0u64;
        let err = loop {
            match s.append(Kind::Finding, &[1u8; 1000]) {
                Ok(seq) => accepted = seq,
                Err(e) => break e.to_string(),
            }
            assert!(accepted < 1000, "a 64 KiB disk took more than 1000 records");
        };
        assert!(
            err.contains(&d.display().to_string()) && err.contains("disk full"),
            "{err}"
        );
        drop(s);
        let s = Spool::open(cfg(&d, 1 << 30, 1 << 20)).unwrap();
        assert_eq!(
            s.read_after(0, 10_000, usize::MAX).unwrap().len() as u64,
            accepted
        );
        let _ = std::process::Command::new("umount").arg(&d).status();
        let _ = std::fs::remove_dir_all(&d);
    }
}
