//! The embedded backend: SQLite in WAL mode with `synchronous = FULL`, so a batch is on disk
//! when `ingest` returns (and is acked).

use std::path::Path;

use clinicwatch_proto::v1::{record::Body, Batch, Heartbeat, Hello};
use prost::Message;
use rusqlite::{params, Connection, OptionalExtension};

use super::prevalence::{self, SketchCache};
use super::{
    kind, record_time, validate, Enrollment, HostKey, HostRow, Incident, IndicatorStat, Ingested,
    Pruned, SightingRow, Store, StoreError, StoredFinding, TimeWindow, TokenRefusal, TokenRow,
    INCIDENT_COLUMNS,
};

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let json = |i: usize| r.get::<_, String>(i);
    Ok(Incident {
        id: r.get(0)?,
        rule: r.get(1)?,
        key: r.get(2)?,
        state: r.get(3)?,
        severity: r.get(4)?,
        title: r.get(5)?,
        first_seen: r.get(6)?,
        last_seen: r.get(7)?,
        clinics: serde_json::from_str(&json(8)?).unwrap_or_default(),
        hosts: serde_json::from_str(&json(9)?).unwrap_or_default(),
        evidence: serde_json::from_str(&json(10)?).unwrap_or_default(),
        created: r.get(11)?,
        updated: r.get(12)?,
    })
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA cache_size = -131072;
CREATE TABLE IF NOT EXISTS hosts (
    clinic TEXT NOT NULL, host TEXT NOT NULL, hostname TEXT, agent_version TEXT,
    kernel TEXT, epoch INTEGER, last_seen REAL, spooled INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
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
    received REAL NOT NULL,
    PRIMARY KEY (clinic, host, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS enrollments (
    clinic TEXT NOT NULL, host TEXT NOT NULL, key_sha256 TEXT NOT NULL,
    revoked INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (clinic, host)
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, clinic TEXT NOT NULL, host TEXT NOT NULL, expires REAL NOT NULL,
    uses_left INTEGER NOT NULL, revoked INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sightings (
    kind TEXT NOT NULL, value TEXT NOT NULL, clinic TEXT NOT NULL, host TEXT NOT NULL,
    app TEXT NOT NULL, bucket INTEGER NOT NULL, first_time REAL NOT NULL,
    last_time REAL NOT NULL, windows INTEGER NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (kind, value, clinic, host, app, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sightings_last ON sightings (last_time);
CREATE TABLE IF NOT EXISTS indicators (
    kind TEXT NOT NULL, value TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    clinics_sketch BLOB,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS indicator_clinics (
    kind TEXT NOT NULL, value TEXT NOT NULL, clinic TEXT NOT NULL, first_seen REAL NOT NULL,
    PRIMARY KEY (kind, value, clinic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL, key TEXT NOT NULL,
    state TEXT NOT NULL, severity TEXT NOT NULL, title TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, clinics TEXT NOT NULL,
    hosts TEXT NOT NULL, evidence TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (rule, key, state);
CREATE INDEX IF NOT EXISTS findings_time ON findings (time);
CREATE INDEX IF NOT EXISTS findings_received ON findings (received);
CREATE INDEX IF NOT EXISTS records_received ON records (kind, received);
";

pub struct SqliteStore {
    path: String,
    db: Connection,
    sketches: SketchCache,
}

fn db_err(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Db {
        path: path.to_string(),
        source: Box::new(source),
    }
}

/// The database holds every clinic's findings: it (and so its `-wal` and `-shm` files,
/// which SQLite creates with the database's mode) is the collector user's alone, and a
/// symlink planted in its place is refused rather than followed. An existing file is never
/// opened here: closing a second descriptor of a database would drop the POSIX locks that
/// this process's open connections hold on it (the collector opens two).
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(std::io::Error::other(
            "is a symbolic link; refusing to follow it",
        )),
        Ok(m) => {
            let mode = m.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map(drop)
            .or_else(|e| match e.kind() {
                // Another process made it first: its mode is checked at its next open.
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            }),
        Err(e) => Err(e),
    }
}

fn sqlite_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        clinic: r.get(1)?,
        host: r.get(2)?,
        expires: r.get(3)?,
        uses_left: r.get(4)?,
        revoked: r.get::<_, i64>(5)? != 0,
        created: r.get(6)?,
    })
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let p = path.display().to_string();
        if path != Path::new(":memory:") {
            private_file(path).map_err(|e| StoreError::Db {
                path: p.clone(),
                source: Box::new(e),
            })?;
        }
        let db = Connection::open(path).map_err(db_err(&p))?;
        db.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err(&p))?;
        db.execute_batch(SCHEMA).map_err(db_err(&p))?;
        // Files from before prevalence sketches: add the column.
        let has_sketch: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('indicators') WHERE name = 'clinics_sketch'",
                [],
                |r| r.get(0),
            )
            .map_err(db_err(&p))?;
        if has_sketch == 0 {
            db.execute_batch("ALTER TABLE indicators ADD COLUMN clinics_sketch BLOB")
                .map_err(db_err(&p))?;
        }
        // Files from before two-phase renewal.
        let has_pending: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('enrollments') WHERE name = 'pending_key'",
                [],
                |r| r.get(0),
            )
            .map_err(db_err(&p))?;
        if has_pending == 0 {
            db.execute_batch(
                "ALTER TABLE enrollments ADD COLUMN pending_key TEXT NOT NULL DEFAULT ''",
            )
            .map_err(db_err(&p))?;
        }
        Ok(SqliteStore {
            path: p,
            db,
            sketches: SketchCache::default(),
        })
    }
}

impl Store for SqliteStore {
    fn stored_up_to(&mut self, host: &HostKey, epoch: u64) -> Result<u64, StoreError> {
        let max: Option<i64> = self
            .db
            .query_row(
                "SELECT MAX(seq) FROM records WHERE clinic = ?1 AND host = ?2 AND epoch = ?3",
                params![host.clinic, host.host, epoch as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err(&self.path))?
            .flatten();
        Ok(max.unwrap_or(0) as u64)
    }

    fn hello(&mut self, host: &HostKey, hello: &Hello, now: f64) -> Result<u64, StoreError> {
        self.db
            .execute(
                "INSERT INTO hosts (clinic, host, hostname, agent_version, kernel, epoch, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (clinic, host) DO UPDATE SET hostname = ?3, agent_version = ?4,
                   kernel = ?5, epoch = ?6, last_seen = ?7",
                params![host.clinic, host.host, hello.hostname, hello.agent_version, hello.kernel, hello.epoch as i64, now],
            )
            .map_err(db_err(&self.path))?;
        self.stored_up_to(host, hello.epoch)
    }

    fn enrollment(&mut self, host: &HostKey) -> Result<Option<Enrollment>, StoreError> {
        self.db
            .query_row(
                "SELECT key_sha256, revoked, updated, pending_key FROM enrollments
                 WHERE clinic = ?1 AND host = ?2",
                params![host.clinic, host.host],
                |r| {
                    Ok(Enrollment {
                        key_sha256: r.get(0)?,
                        revoked: r.get::<_, i64>(1)? != 0,
                        updated: r.get(2)?,
                        pending_key_sha256: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(db_err(&self.path))
    }

    fn set_enrollment(&mut self, host: &HostKey, e: &Enrollment) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO enrollments (clinic, host, key_sha256, revoked, updated, pending_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (clinic, host) DO UPDATE SET key_sha256 = ?3, revoked = ?4,
                   updated = ?5, pending_key = ?6",
                params![
                    host.clinic,
                    host.host,
                    e.key_sha256,
                    e.revoked as i64,
                    e.updated,
                    e.pending_key_sha256
                ],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    fn put_token(&mut self, t: &TokenRow) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO tokens (id, clinic, host, expires, uses_left, revoked, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t.id,
                    t.clinic,
                    t.host,
                    t.expires,
                    t.uses_left,
                    t.revoked as i64,
                    t.created
                ],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    fn use_token(
        &mut self,
        id: &str,
        host: &str,
        now: f64,
    ) -> Result<Result<TokenRow, TokenRefusal>, StoreError> {
        let err = db_err(&self.path);
        let tx = self.db.transaction().map_err(&err)?;
        let row = tx
            .query_row(
                "SELECT id, clinic, host, expires, uses_left, revoked, created FROM tokens
                 WHERE id = ?1",
                params![id],
                sqlite_token,
            )
            .optional()
            .map_err(&err)?;
        let verdict = TokenRow::usable(row, host, now);
        if let Ok(t) = &verdict {
            tx.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1",
                params![t.id],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(verdict)
    }

    fn tokens(&mut self) -> Result<Vec<TokenRow>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .db
            .prepare(
                "SELECT id, clinic, host, expires, uses_left, revoked, created FROM tokens
                 ORDER BY created",
            )
            .map_err(&err)?;
        let rows = q.query_map([], sqlite_token).map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    fn revoke_token(&mut self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", params![id])
            .map_err(db_err(&self.path))?;
        Ok(n == 1)
    }

    fn heartbeat(&mut self, host: &HostKey, hb: &Heartbeat, now: f64) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE hosts SET last_seen = ?3, spooled = ?4, dropped = ?5
                 WHERE clinic = ?1 AND host = ?2",
                params![
                    host.clinic,
                    host.host,
                    now,
                    hb.spooled.min(i64::MAX as u64) as i64,
                    hb.dropped.min(i64::MAX as u64) as i64
                ],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    fn ingest(
        &mut self,
        host: &HostKey,
        batch: &Batch,
        now: f64,
        window: TimeWindow,
    ) -> Result<Ingested, StoreError> {
        validate(batch)?;
        let err = db_err(&self.path);
        let tx = self.db.transaction().map_err(&err)?;
        let mut out = Ingested::default();
        // Sketches written by this batch: cached only once it commits.
        let mut sketched_now = Vec::new();
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO records (clinic, host, epoch, seq, kind, received, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(&err)?;
            let mut finding = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO findings (clinic, host, epoch, seq, rule, severity, app,
                       time, subject, summary, evidence, received)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(&err)?;
            let mut sighting = tx
                .prepare_cached(
                    "INSERT INTO sightings (kind, value, clinic, host, app, bucket, first_time,
                       last_time, windows, received)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (kind, value, clinic, host, app, bucket) DO UPDATE SET
                       first_time = MIN(first_time, excluded.first_time),
                       last_time = MAX(last_time, excluded.last_time),
                       windows = windows + excluded.windows, received = excluded.received",
                )
                .map_err(&err)?;
            let mut indicator = tx
                .prepare_cached(
                    "INSERT INTO indicators (kind, value, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (kind, value) DO UPDATE SET
                       first_seen = MIN(first_seen, excluded.first_seen),
                       last_seen = MAX(last_seen, excluded.last_seen)
                     RETURNING clinics_sketch IS NOT NULL",
                )
                .map_err(&err)?;
            let mut indicator_clinic = tx
                .prepare_cached(
                    "INSERT INTO indicator_clinics (kind, value, clinic, first_seen)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (kind, value, clinic) DO NOTHING",
                )
                .map_err(&err)?;
            for r in &batch.records {
                let n = put
                    .execute(params![
                        host.clinic,
                        host.host,
                        batch.epoch as i64,
                        r.seq as i64,
                        kind(r),
                        now,
                        r.encode_to_vec()
                    ])
                    .map_err(&err)?;
                if n == 0 {
                    out.duplicates += 1;
                    continue;
                }
                out.stored += 1;
                out.new_seqs.push(r.seq);
                if !window.contains(record_time(r)) {
                    out.out_of_window += 1;
                    continue;
                }
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
                            evidence,
                            now
                        ])
                        .map_err(&err)?;
                }
            }
            let new: std::collections::HashSet<u64> = out.new_seqs.iter().copied().collect();
            let folded = crate::correlate::indicators::fold(
                batch
                    .records
                    .iter()
                    .filter(|r| new.contains(&r.seq) && window.contains(record_time(r))),
            );
            for ((kind, value, app, bucket), (first, last, n)) in &folded.sightings {
                sighting
                    .execute(params![
                        kind,
                        value,
                        host.clinic,
                        host.host,
                        app,
                        bucket,
                        first,
                        last,
                        n,
                        now
                    ])
                    .map_err(&err)?;
            }
            // Fleet-wide first seen is when the collector first heard of it, never the time a
            // host claims: a backdated record must not make a new destination look old.
            for ((kind, value), (_, last)) in &folded.indicators {
                let sketched: bool = indicator
                    .query_row(params![kind, value, now, last], |r| r.get(0))
                    .map_err(&err)?;
                if sketched {
                    if self.sketches.covers(kind, value, &host.clinic) {
                        continue;
                    }
                    let stored: Option<Vec<u8>> = tx
                        .query_row(
                            "SELECT clinics_sketch FROM indicators WHERE kind = ?1 AND value = ?2",
                            params![kind, value],
                            |r| r.get(0),
                        )
                        .map_err(&err)?;
                    let mut h = prevalence::sketch_for_update(kind, value, stored.as_deref());
                    if h.insert_hash(prevalence::clinic_hash(&host.clinic)) {
                        tx.execute(
                            "UPDATE indicators SET clinics_sketch = ?3 WHERE kind = ?1 AND value = ?2",
                            params![kind, value, h.to_bytes()],
                        )
                        .map_err(&err)?;
                    }
                    sketched_now.push((kind.to_string(), value.clone(), h));
                } else if indicator_clinic
                    .execute(params![kind, value, host.clinic, now])
                    .map_err(&err)?
                    == 1
                {
                    let clinics: Vec<String> = tx
                        .prepare_cached(
                            "SELECT clinic FROM indicator_clinics WHERE kind = ?1 AND value = ?2
                             LIMIT ?3",
                        )
                        .map_err(&err)?
                        .query_map(params![kind, value, prevalence::EXACT_CLINICS + 1], |r| {
                            r.get(0)
                        })
                        .map_err(&err)?
                        .collect::<Result<_, _>>()
                        .map_err(&err)?;
                    if clinics.len() as i64 > prevalence::EXACT_CLINICS {
                        let h = prevalence::fold(&clinics);
                        tx.execute(
                            "UPDATE indicators SET clinics_sketch = ?3 WHERE kind = ?1 AND value = ?2",
                            params![kind, value, h.to_bytes()],
                        )
                        .map_err(&err)?;
                        tx.execute(
                            "DELETE FROM indicator_clinics WHERE kind = ?1 AND value = ?2",
                            params![kind, value],
                        )
                        .map_err(&err)?;
                        sketched_now.push((kind.to_string(), value.clone(), h));
                    }
                }
            }
            tx.execute(
                "UPDATE hosts SET last_seen = ?3 WHERE clinic = ?1 AND host = ?2",
                params![host.clinic, host.host, now],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        for (kind, value, h) in sketched_now {
            self.sketches.put(&kind, &value, h);
        }
        out.up_to_seq = batch.records.last().map_or(0, |r| r.seq);
        Ok(out)
    }

    fn findings_since(&mut self, since: f64) -> Result<Vec<StoredFinding>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .db
            .prepare_cached(
                "SELECT clinic, host, rule, severity, app, time, subject, summary, evidence
                 FROM findings WHERE time >= ?1 ORDER BY time, clinic, host",
            )
            .map_err(&err)?;
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
                    evidence: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    fn hosts(&mut self) -> Result<Vec<HostRow>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .db
            .prepare_cached(
                "SELECT clinic, host, COALESCE(hostname, ''), COALESCE(agent_version, ''),
                   COALESCE(kernel, ''), COALESCE(epoch, 0), COALESCE(last_seen, 0), spooled, dropped
                 FROM hosts ORDER BY clinic, host",
            )
            .map_err(&err)?;
        let rows = q
            .query_map([], |r| {
                Ok(HostRow {
                    clinic: r.get(0)?,
                    host: r.get(1)?,
                    hostname: r.get(2)?,
                    agent_version: r.get(3)?,
                    kernel: r.get(4)?,
                    epoch: r.get::<_, i64>(5)? as u64,
                    last_seen: r.get(6)?,
                    spooled: r.get::<_, i64>(7)? as u64,
                    dropped: r.get::<_, i64>(8)? as u64,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    fn prune(&mut self, summaries_before: f64, findings_before: f64) -> Result<Pruned, StoreError> {
        let err = db_err(&self.path);
        let tx = self.db.transaction().map_err(&err)?;
        let mut records = tx
            .execute(
                "DELETE FROM records WHERE kind != 'finding' AND received < ?1",
                params![summaries_before],
            )
            .map_err(&err)? as u64;
        records += tx
            .execute(
                "DELETE FROM records WHERE kind = 'finding' AND received < ?1",
                params![findings_before],
            )
            .map_err(&err)? as u64;
        let findings = tx
            .execute(
                "DELETE FROM findings WHERE received < ?1",
                params![findings_before],
            )
            .map_err(&err)? as u64;
        // Sightings go with the summaries they came from.
        records += tx
            .execute(
                "DELETE FROM sightings WHERE received < ?1",
                params![summaries_before],
            )
            .map_err(&err)? as u64;
        // Indicators not seen for as long go too (bounded rows; one is new again after).
        records += tx
            .execute(
                "DELETE FROM indicator_clinics WHERE (kind, value) IN
                   (SELECT kind, value FROM indicators WHERE last_seen < ?1)",
                params![summaries_before],
            )
            .map_err(&err)? as u64;
        records += tx
            .execute(
                "DELETE FROM indicators WHERE last_seen < ?1",
                params![summaries_before],
            )
            .map_err(&err)? as u64;
        tx.commit().map_err(&err)?;
        Ok(Pruned { records, findings })
    }

    fn sightings_since(
        &mut self,
        since: f64,
        app: Option<&str>,
    ) -> Result<Vec<SightingRow>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .db
            .prepare_cached(
                "SELECT kind, value, clinic, host, app, first_time, last_time FROM sightings
                 WHERE last_time >= ?1 AND (?2 IS NULL OR app = ?2)",
            )
            .map_err(&err)?;
        let rows = q
            .query_map(params![since, app], |r| {
                Ok(SightingRow {
                    kind: r.get(0)?,
                    value: r.get(1)?,
                    clinic: r.get(2)?,
                    host: r.get(3)?,
                    app: r.get(4)?,
                    first_time: r.get(5)?,
                    last_time: r.get(6)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    fn indicator_stats(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<IndicatorStat>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .db
            .prepare_cached(
                "SELECT first_seen, last_seen, clinics_sketch FROM indicators
                 WHERE kind = ?1 AND value = ?2",
            )
            .map_err(&err)?;
        let mut rows_q = self
            .db
            .prepare_cached("SELECT clinic FROM indicator_clinics WHERE kind = ?1 AND value = ?2")
            .map_err(&err)?;
        let mut out = Vec::new();
        for (kind, value) in keys {
            let row = q
                .query_row(params![kind, value], |r| {
                    Ok((
                        r.get::<_, f64>(0)?,
                        r.get::<_, f64>(1)?,
                        r.get::<_, Option<Vec<u8>>>(2)?,
                    ))
                })
                .optional()
                .map_err(&err)?;
            if let Some((first_seen, last_seen, sketch)) = row {
                let rows: Vec<String> = rows_q
                    .query_map(params![kind, value], |r| r.get(0))
                    .map_err(&err)?
                    .collect::<Result<_, _>>()
                    .map_err(&err)?;
                let (clinics, clinics_estimated) =
                    prevalence::count(kind, value, sketch.as_deref(), &rows)?;
                out.push(IndicatorStat {
                    kind: kind.clone(),
                    value: value.clone(),
                    first_seen,
                    last_seen,
                    clinics,
                    clinics_estimated,
                });
            }
        }
        Ok(out)
    }

    fn top_indicators(
        &mut self,
        since: f64,
        limit: usize,
    ) -> Result<Vec<IndicatorStat>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .db
            .prepare_cached(
                "SELECT s.kind, s.value, MIN(s.first_time), MAX(s.last_time), COUNT(DISTINCT s.clinic)
                 FROM sightings s WHERE s.last_time >= ?1
                 GROUP BY s.kind, s.value ORDER BY 5 DESC, 1, 2 LIMIT ?2",
            )
            .map_err(&err)?;
        let rows = q
            .query_map(params![since, limit as i64], |r| {
                Ok(IndicatorStat {
                    kind: r.get(0)?,
                    value: r.get(1)?,
                    first_seen: r.get(2)?,
                    last_seen: r.get(3)?,
                    clinics: r.get::<_, i64>(4)? as u64,
                    clinics_estimated: false,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    fn lead_correlation(&mut self) -> Result<bool, StoreError> {
        // SQLite is one collector's own file.
        Ok(true)
    }

    fn open_incident(&mut self, rule: &str, key: &str) -> Result<Option<Incident>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .db
            .prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE rule = ?1 AND key = ?2
                 AND state != 'closed' ORDER BY id DESC LIMIT 1"
            ))
            .map_err(&err)?;
        q.query_row(params![rule, key], incident_row)
            .optional()
            .map_err(&err)
    }

    fn save_incident(&mut self, i: &Incident) -> Result<i64, StoreError> {
        let err = db_err(&self.path);
        let (clinics, hosts, evidence) = super::incident_json(i);
        if i.id == 0 {
            self.db
                .execute(
                    "INSERT INTO incidents (rule, key, state, severity, title, first_seen, last_seen,
                       clinics, hosts, evidence, created, updated)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    params![
                        i.rule, i.key, i.state, i.severity, i.title, i.first_seen, i.last_seen,
                        clinics, hosts, evidence, i.created, i.updated
                    ],
                )
                .map_err(&err)?;
            Ok(self.db.last_insert_rowid())
        } else {
            self.db
                .execute(
                    "UPDATE incidents SET state = ?2, severity = ?3, title = ?4, first_seen = ?5,
                       last_seen = ?6, clinics = ?7, hosts = ?8, evidence = ?9, updated = ?10
                     WHERE id = ?1",
                    params![
                        i.id,
                        i.state,
                        i.severity,
                        i.title,
                        i.first_seen,
                        i.last_seen,
                        clinics,
                        hosts,
                        evidence,
                        i.updated
                    ],
                )
                .map_err(&err)?;
            Ok(i.id)
        }
    }

    fn incidents(&mut self, state: Option<&str>) -> Result<Vec<Incident>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .db
            .prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE ?1 IS NULL OR state = ?1
                 ORDER BY id DESC"
            ))
            .map_err(&err)?;
        let rows = q.query_map(params![state], incident_row).map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    fn incident(&mut self, id: i64) -> Result<Option<Incident>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .db
            .prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"
            ))
            .map_err(&err)?;
        q.query_row(params![id], incident_row)
            .optional()
            .map_err(&err)
    }

    fn set_incident_state(&mut self, id: i64, state: &str, now: f64) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute(
                "UPDATE incidents SET state = ?2, updated = ?3 WHERE id = ?1",
                params![id, state, now],
            )
            .map_err(db_err(&self.path))?;
        Ok(n > 0)
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.db
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(db_err(&self.path))
    }

    fn record_count(&mut self) -> Result<u64, StoreError> {
        self.db
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(db_err(&self.path))
    }
}
