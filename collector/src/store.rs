//! Where agents' records land: SQLite in WAL mode with `synchronous = FULL`, so a batch is
//! on disk before it is acked. Records are keyed by (clinic, host, epoch, seq): a batch sent
//! again after a lost ack is stored once and counted as duplicates. Findings are also kept
//! in their own table for queries; summaries and health stay as encoded records.

use std::path::Path;

use clinicwatch_proto::v1::{record::Body, Batch, Hello};
use prost::Message;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The batch is malformed; nothing of it was stored (`invalid_argument`).
    #[error("invalid batch: {0}")]
    Invalid(String),
    #[error("store `{path}`: {source}")]
    Db {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// Who sent it: taken from the client certificate, never from the frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub clinic: String,
    pub host: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ingested {
    pub stored: u64,
    pub duplicates: u64,
    /// Every record of the epoch up to here is stored: what the collector acks.
    pub up_to_seq: u64,
}

/// A finding as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFinding {
    pub clinic: String,
    pub host: String,
    pub rule: String,
    pub severity: i32,
    pub app: String,
    pub time: f64,
    pub subject: String,
    pub summary: String,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS hosts (
    clinic TEXT NOT NULL, host TEXT NOT NULL, hostname TEXT, agent_version TEXT,
    kernel TEXT, epoch INTEGER, last_seen REAL,
    PRIMARY KEY (clinic, host)
);
CREATE TABLE IF NOT EXISTS records (
    clinic TEXT NOT NULL, host TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, received REAL NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (clinic, host, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS findings (
    clinic TEXT NOT NULL, host TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    rule TEXT NOT NULL, severity INTEGER NOT NULL, app TEXT NOT NULL, time REAL NOT NULL,
    subject TEXT NOT NULL, summary TEXT NOT NULL, evidence TEXT NOT NULL,
    PRIMARY KEY (clinic, host, epoch, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS findings_time ON findings (time);
CREATE INDEX IF NOT EXISTS records_received ON records (kind, received);
";

pub struct SqliteStore {
    path: String,
    db: Connection,
}

/// The largest batch accepted, in records.
pub const MAX_BATCH_RECORDS: usize = 10_000;

fn validate(batch: &Batch) -> Result<(), StoreError> {
    let bad = |why: String| Err(StoreError::Invalid(why));
    if batch.records.is_empty() {
        return bad("no records".into());
    }
    if batch.records.len() > MAX_BATCH_RECORDS {
        return bad(format!(
            "{} records (at most {MAX_BATCH_RECORDS})",
            batch.records.len()
        ));
    }
    if batch.first_seq == 0 || batch.records[0].seq != batch.first_seq {
        return bad(format!(
            "first_seq {} does not match the first record's {}",
            batch.first_seq, batch.records[0].seq
        ));
    }
    // Increasing, not contiguous: a full spool drops summaries, leaving gaps.
    for (i, w) in batch.records.windows(2).enumerate() {
        if w[1].seq <= w[0].seq {
            return bad(format!(
                "record {} has seq {} after {}; sequence numbers must increase",
                i + 1,
                w[1].seq,
                w[0].seq
            ));
        }
    }
    for r in &batch.records {
        if r.body.is_none() {
            return bad(format!("record {} has no body", r.seq));
        }
    }
    Ok(())
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let p = path.display().to_string();
        let err = |source| StoreError::Db {
            path: p.clone(),
            source,
        };
        let db = Connection::open(path).map_err(err)?;
        db.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteStore { path: p, db })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Records a Hello; returns the last contiguous seq stored for its epoch (the agent
    /// resumes after it).
    pub fn hello(&mut self, host: &HostKey, hello: &Hello, now: f64) -> Result<u64, StoreError> {
        self.db
            .execute(
                "INSERT INTO hosts (clinic, host, hostname, agent_version, kernel, epoch, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (clinic, host) DO UPDATE SET hostname = ?3, agent_version = ?4,
                   kernel = ?5, epoch = ?6, last_seen = ?7",
                params![host.clinic, host.host, hello.hostname, hello.agent_version, hello.kernel, hello.epoch as i64, now],
            )
            .map_err(self.err())?;
        self.stored_up_to(host, hello.epoch)
    }

    /// The highest seq stored for the epoch: the agent sends in order and resends from its
    /// last ack, so everything below it is stored (or was dropped by the agent's full spool,
    /// which it reports).
    pub fn stored_up_to(&self, host: &HostKey, epoch: u64) -> Result<u64, StoreError> {
        let max: Option<i64> = self
            .db
            .query_row(
                "SELECT MAX(seq) FROM records WHERE clinic = ?1 AND host = ?2 AND epoch = ?3",
                params![host.clinic, host.host, epoch as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?
            .flatten();
        Ok(max.unwrap_or(0) as u64)
    }

    /// Stores a batch in one transaction (durable at commit); a record already stored is a
    /// duplicate, not an error.
    pub fn ingest(
        &mut self,
        host: &HostKey,
        batch: &Batch,
        now: f64,
    ) -> Result<Ingested, StoreError> {
        validate(batch)?;
        let path = self.path.clone();
        let err = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let tx = self.db.transaction().map_err(err)?;
        let mut out = Ingested::default();
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO records (clinic, host, epoch, seq, kind, received, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            let mut finding = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO findings (clinic, host, epoch, seq, rule, severity, app,
                       time, subject, summary, evidence)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(err)?;
            for r in &batch.records {
                let kind = match &r.body {
                    Some(Body::Summary(_)) => "summary",
                    Some(Body::Finding(_)) => "finding",
                    Some(Body::Health(_)) => "health",
                    None => unreachable!("validated"),
                };
                let n = put
                    .execute(params![
                        host.clinic,
                        host.host,
                        batch.epoch as i64,
                        r.seq as i64,
                        kind,
                        now,
                        r.encode_to_vec()
                    ])
                    .map_err(err)?;
                if n == 0 {
                    out.duplicates += 1;
                    continue;
                }
                out.stored += 1;
                if let Some(Body::Finding(f)) = &r.body {
                    let evidence = serde_json::to_string(&f.evidence).unwrap_or_default();
                    finding
                        .execute(params![
                            host.clinic,
                            host.host,
                            batch.epoch as i64,
                            r.seq as i64,
                            f.rule,
                            f.severity,
                            f.app,
                            f.time,
                            f.subject,
                            f.summary,
                            evidence
                        ])
                        .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)?;
        out.up_to_seq = batch.records.last().map_or(0, |r| r.seq);
        Ok(out)
    }

    pub fn findings_since(&self, since: f64) -> Result<Vec<StoredFinding>, StoreError> {
        let mut q = self
            .db
            .prepare_cached(
                "SELECT clinic, host, rule, severity, app, time, subject, summary FROM findings
                 WHERE time >= ?1 ORDER BY time, clinic, host",
            )
            .map_err(self.err())?;
        let rows = q
            .query_map(params![since], |r| {
                Ok(StoredFinding {
                    clinic: r.get(0)?,
                    host: r.get(1)?,
                    rule: r.get(2)?,
                    severity: r.get(3)?,
                    app: r.get(4)?,
                    time: r.get(5)?,
                    subject: r.get(6)?,
                    summary: r.get(7)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Deletes summaries and health older than `summaries_before` and findings older than
    /// `findings_before` (received time); returns the rows removed.
    pub fn prune(
        &mut self,
        summaries_before: f64,
        findings_before: f64,
    ) -> Result<u64, StoreError> {
        let mut n = self
            .db
            .execute(
                "DELETE FROM records WHERE kind != 'finding' AND received < ?1",
                params![summaries_before],
            )
            .map_err(self.err())? as u64;
        n += self
            .db
            .execute(
                "DELETE FROM records WHERE kind = 'finding' AND received < ?1",
                params![findings_before],
            )
            .map_err(self.err())? as u64;
        n += self
            .db
            .execute(
                "DELETE FROM findings WHERE time < ?1",
                params![findings_before],
            )
            .map_err(self.err())? as u64;
        Ok(n)
    }

    /// Rows in the record table (for tests and metrics).
    pub fn record_count(&self) -> Result<u64, StoreError> {
        self.db
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use clinicwatch_proto::v1::{Finding, Record, Severity, WindowSummary};

    use super::*;

    fn batch(epoch: u64, first: u64, n: u64) -> Batch {
        Batch {
            epoch,
            first_seq: first,
            records: (first..first + n)
                .map(|seq| Record {
                    seq,
                    body: Some(if seq % 3 == 0 {
                        Body::Finding(Finding {
                            rule: "CW-X".into(),
                            severity: Severity::High as i32,
                            app: "pm".into(),
                            time: seq as f64,
                            subject: "s".into(),
                            summary: format!("finding {seq}"),
                            evidence: Default::default(),
                        })
                    } else {
                        Body::Summary(WindowSummary {
                            app: "pm".into(),
                            start: seq as f64,
                            ..Default::default()
                        })
                    }),
                })
                .collect(),
        }
    }

    fn host(c: &str) -> HostKey {
        HostKey {
            clinic: c.into(),
            host: "ws1".into(),
        }
    }

    #[test]
    fn a_batch_sent_twice_is_stored_once_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("cw-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("collector.db");
        let mut s = SqliteStore::open(&path).unwrap();
        let a = host("clinic-a");
        let hello = Hello {
            epoch: 7,
            hostname: "ws1".into(),
            ..Default::default()
        };
        assert_eq!(s.hello(&a, &hello, 1.0).unwrap(), 0);
        let got = s.ingest(&a, &batch(7, 1, 30), 2.0).unwrap();
        assert_eq!(
            got,
            Ingested {
                stored: 30,
                duplicates: 0,
                up_to_seq: 30
            }
        );
        // The ack was lost: the agent resends an overlapping batch.
        let again = s.ingest(&a, &batch(7, 21, 20), 3.0).unwrap();
        assert_eq!(
            again,
            Ingested {
                stored: 10,
                duplicates: 10,
                up_to_seq: 40
            }
        );
        // Another clinic's host with the same name and seqs is its own.
        let b = host("clinic-b");
        assert_eq!(s.ingest(&b, &batch(7, 1, 5), 3.0).unwrap().stored, 5);
        drop(s);
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.record_count().unwrap(), 45);
        assert_eq!(
            s.hello(&a, &hello, 4.0).unwrap(),
            40,
            "resume after the stored records"
        );
        let f = s.findings_since(0.0).unwrap();
        assert_eq!(f.iter().filter(|f| f.clinic == "clinic-a").count(), 13);
        assert_eq!(f.iter().filter(|f| f.clinic == "clinic-b").count(), 1);
        assert_eq!(
            s.prune(10.0, 0.0).unwrap(),
            45 - 14,
            "summaries pruned, findings kept"
        );
        // A batch with gaps (summaries the agent's full spool dropped) is fine.
        let mut gaps = batch(7, 41, 6);
        gaps.records.retain(|r| r.seq % 2 == 1);
        assert_eq!(s.ingest(&a, &gaps, 5.0).unwrap().up_to_seq, 45);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_batches_are_refused_whole() {
        let dir = std::env::temp_dir().join(format!("cw-store-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = SqliteStore::open(&dir.join("c.db")).unwrap();
        let a = host("a");
        let mut back = batch(1, 1, 5);
        back.records[3].seq = 2;
        let mut wrong_first = batch(1, 1, 5);
        wrong_first.first_seq = 2;
        let mut no_body = batch(1, 1, 5);
        no_body.records[2].body = None;
        for (b, why) in [
            (back, "must increase"),
            (wrong_first, "first_seq"),
            (no_body, "no body"),
            (Batch::default(), "no records"),
            (batch(1, 1, MAX_BATCH_RECORDS as u64 + 1), "at most"),
        ] {
            let e = s.ingest(&a, &b, 1.0).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        assert_eq!(
            s.record_count().unwrap(),
            0,
            "nothing of a bad batch is stored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
