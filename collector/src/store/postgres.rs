//! The shared backend: PostgreSQL, for deployments where several collectors (behind one
//! address) share one database. Every collector may receive any host: dedup and resume work
//! across them because both are decided by the database (primary keys, `ON CONFLICT`), and a
//! batch is committed (durable, with PostgreSQL's default `synchronous_commit`) before it is
//! acked. A lost connection is re-made on the next call; the failed call is `unavailable`,
//! so the agent resends.

use clinicwatch_proto::v1::{record::Body, Batch, Heartbeat, Hello};
use postgres::{Client, NoTls};
use prost::Message;

use super::prevalence::{self, SketchCache};
use super::{
    kind, record_time, validate, Enrollment, HostKey, HostRow, Incident, IndicatorStat, Ingested,
    Pruned, SightingRow, Store, StoreError, StoredFinding, TimeWindow, TokenRefusal, TokenRow,
    INCIDENT_COLUMNS,
};

/// Held by the collector that runs correlation passes ("correl").
const CORRELATION_LOCK: i64 = 0x636f_7272_656c;

fn incident_row(r: &postgres::Row) -> Incident {
    Incident {
        id: r.get(0),
        rule: r.get(1),
        key: r.get(2),
        state: r.get(3),
        severity: r.get(4),
        title: r.get(5),
        first_seen: r.get(6),
        last_seen: r.get(7),
        clinics: serde_json::from_str(r.get::<_, &str>(8)).unwrap_or_default(),
        hosts: serde_json::from_str(r.get::<_, &str>(9)).unwrap_or_default(),
        evidence: serde_json::from_str(r.get::<_, &str>(10)).unwrap_or_default(),
        created: r.get(11),
        updated: r.get(12),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hosts (
    clinic TEXT NOT NULL, host TEXT NOT NULL, hostname TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '', kernel TEXT NOT NULL DEFAULT '',
    epoch BIGINT NOT NULL DEFAULT 0, last_seen DOUBLE PRECISION NOT NULL DEFAULT 0,
    spooled BIGINT NOT NULL DEFAULT 0, dropped BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (clinic, host)
);
CREATE TABLE IF NOT EXISTS records (
    clinic TEXT NOT NULL, host TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL,
    kind TEXT NOT NULL, received DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL,
    PRIMARY KEY (clinic, host, epoch, seq)
);
CREATE TABLE IF NOT EXISTS findings (
    clinic TEXT NOT NULL, host TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL,
    rule TEXT NOT NULL, severity INTEGER NOT NULL, app TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL, subject TEXT NOT NULL, summary TEXT NOT NULL,
    evidence TEXT NOT NULL, received DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (clinic, host, epoch, seq)
);
CREATE INDEX IF NOT EXISTS findings_time ON findings (time);
CREATE INDEX IF NOT EXISTS findings_received ON findings (received);
CREATE TABLE IF NOT EXISTS sightings (
    kind TEXT NOT NULL, value TEXT NOT NULL, clinic TEXT NOT NULL, host TEXT NOT NULL,
    app TEXT NOT NULL, bucket BIGINT NOT NULL, first_time DOUBLE PRECISION NOT NULL,
    last_time DOUBLE PRECISION NOT NULL, windows BIGINT NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, value, clinic, host, app, bucket)
);
CREATE INDEX IF NOT EXISTS sightings_last ON sightings (last_time);
CREATE TABLE IF NOT EXISTS indicators (
    kind TEXT NOT NULL, value TEXT NOT NULL, first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL, clinics_sketch BYTEA,
    PRIMARY KEY (kind, value)
);
ALTER TABLE indicators ADD COLUMN IF NOT EXISTS clinics_sketch BYTEA;
CREATE TABLE IF NOT EXISTS indicator_clinics (
    kind TEXT NOT NULL, value TEXT NOT NULL, clinic TEXT NOT NULL,
    first_seen DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, value, clinic)
);
CREATE TABLE IF NOT EXISTS incidents (
    id BIGSERIAL PRIMARY KEY, rule TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL,
    severity TEXT NOT NULL, title TEXT NOT NULL, first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL, clinics TEXT NOT NULL, hosts TEXT NOT NULL,
    evidence TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (rule, key, state);
CREATE TABLE IF NOT EXISTS enrollments (
    clinic TEXT NOT NULL, host TEXT NOT NULL, key_sha256 TEXT NOT NULL,
    revoked BOOLEAN NOT NULL, updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (clinic, host)
);
CREATE INDEX IF NOT EXISTS records_received ON records (kind, received);
ALTER TABLE enrollments ADD COLUMN IF NOT EXISTS pending_key TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, clinic TEXT NOT NULL, host TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL, uses_left BIGINT NOT NULL, revoked BOOLEAN NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
";

/// True when the schema's newest objects exist (update it with `SCHEMA`).
const SCHEMA_CURRENT: &str = "SELECT to_regclass('tokens') IS NOT NULL AND EXISTS (
    SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
      AND table_name = 'enrollments' AND column_name = 'pending_key') AND EXISTS (
    SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
      AND table_name = 'indicators' AND column_name = 'clinics_sketch')";

/// Serialises schema creation between collectors starting together.
const SCHEMA_LOCK: i64 = 0x636c_696e_6963; // "clinic"

fn pg_token(r: &postgres::Row) -> TokenRow {
    TokenRow {
        id: r.get(0),
        clinic: r.get(1),
        host: r.get(2),
        expires: r.get(3),
        uses_left: r.get(4),
        revoked: r.get(5),
        created: r.get(6),
    }
}

pub struct PgStore {
    config: postgres::Config,
    /// Where errors say they came from: the server, user and database, never the password.
    shown: String,
    client: Option<Client>,
    /// This connection holds the correlation lock.
    leading: bool,
    sketches: SketchCache,
}

/// A PostgreSQL URL fit to show: `postgres://user@host:port/db`, without the password
/// (whichever form it was given in).
pub fn shown(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(n) => n.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
            let port = if ports.is_empty() {
                String::new()
            } else {
                format!(":{}", ports.join(","))
            };
            format!(
                "postgres://{}@{}{port}/{}",
                c.get_user().unwrap_or(""),
                hosts.join(","),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "(a PostgreSQL URL that does not parse)".into(),
    }
}

impl PgStore {
    /// Connects and makes the schema if needed. The connection times out after 10 s, TCP
    /// keepalives and a 30 s user timeout notice a dead server, and statements are cut
    /// after 60 s, so that a stalled database fails calls (`unavailable`, the agent resends)
    /// rather than hanging every stream behind the store's lock.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        let shown = shown(url);
        let mut config: postgres::Config = url.parse().map_err(|source| StoreError::Db {
            path: shown.clone(),
            source: Box::new(source),
        })?;
        config
            .connect_timeout(std::time::Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(30))
            .tcp_user_timeout(std::time::Duration::from_secs(30))
            .options("-c statement_timeout=60000");
        let mut s = PgStore {
            config,
            shown,
            client: None,
            leading: false,
            sketches: SketchCache::default(),
        };
        s.client()?;
        Ok(s)
    }

    fn err(&self) -> impl Fn(postgres::Error) -> StoreError + '_ {
        |source| StoreError::Db {
            path: self.shown.clone(),
            source: Box::new(source),
        }
    }

    /// The connection, made again if it was lost.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let mut c = self
                .config
                .connect(NoTls)
                .map_err(|source| StoreError::Db {
                    path: self.shown.clone(),
                    source: Box::new(source),
                })?;
            // The schema's DDL locks tables (even `IF NOT EXISTS`), which would wait on, or
            // deadlock with, other collectors' batches: it runs only when the schema is not
            // already current (its newest objects exist), serialised between collectors.
            let current: bool = c.query_one(SCHEMA_CURRENT, &[]).map_err(self.err())?.get(0);
            if !current {
                let mut tx = c.transaction().map_err(self.err())?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                    .map_err(self.err())?;
                tx.batch_execute(SCHEMA).map_err(self.err())?;
                tx.commit().map_err(self.err())?;
            }
            self.client = Some(c);
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => unreachable!("just connected"),
        }
    }

    /// Runs `f` on the connection; a failure drops the connection if it is broken.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let shown = self.shown.clone();
        let c = self.client()?;
        f(c).map_err(|source| StoreError::Db {
            path: shown,
            source: Box::new(source),
        })
    }
}

impl Drop for PgStore {
    /// The client's own drop blocks on its runtime, which panics on an async thread: close
    /// it on a plain thread there.
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("cw-pg-close".into())
                    .spawn(move || drop(c));
            }
        }
    }
}

fn i64_of(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Store for PgStore {
    fn hello(&mut self, host: &HostKey, hello: &Hello, now: f64) -> Result<u64, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO hosts (clinic, host, hostname, agent_version, kernel, epoch, last_seen)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (clinic, host) DO UPDATE SET hostname = $3, agent_version = $4,
                   kernel = $5, epoch = $6, last_seen = $7",
                &[
                    &host.clinic,
                    &host.host,
                    &hello.hostname,
                    &hello.agent_version,
                    &hello.kernel,
                    &i64_of(hello.epoch),
                    &now,
                ],
            )?;
            Ok(())
        })?;
        self.stored_up_to(host, hello.epoch)
    }

    fn stored_up_to(&mut self, host: &HostKey, epoch: u64) -> Result<u64, StoreError> {
        self.with(|c| {
            let row = c.query_one(
                "SELECT COALESCE(MAX(seq), 0) FROM records
                 WHERE clinic = $1 AND host = $2 AND epoch = $3",
                &[&host.clinic, &host.host, &i64_of(epoch)],
            )?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn enrollment(&mut self, host: &HostKey) -> Result<Option<Enrollment>, StoreError> {
        self.with(|c| {
            let row = c.query_opt(
                "SELECT key_sha256, revoked, updated, pending_key FROM enrollments
                 WHERE clinic = $1 AND host = $2",
                &[&host.clinic, &host.host],
            )?;
            Ok(row.map(|r| Enrollment {
                key_sha256: r.get(0),
                revoked: r.get(1),
                updated: r.get(2),
                pending_key_sha256: r.get(3),
            }))
        })
    }

    fn set_enrollment(&mut self, host: &HostKey, e: &Enrollment) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO enrollments (clinic, host, key_sha256, revoked, updated, pending_key)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (clinic, host) DO UPDATE SET key_sha256 = $3, revoked = $4,
                   updated = $5, pending_key = $6",
                &[
                    &host.clinic,
                    &host.host,
                    &e.key_sha256,
                    &e.revoked,
                    &e.updated,
                    &e.pending_key_sha256,
                ],
            )
            .map(|_| ())
        })
    }

    fn put_token(&mut self, t: &TokenRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (id, clinic, host, expires, uses_left, revoked, created)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &t.id,
                    &t.clinic,
                    &t.host,
                    &t.expires,
                    &t.uses_left,
                    &t.revoked,
                    &t.created,
                ],
            )
            .map(|_| ())
        })
    }

    fn use_token(
        &mut self,
        id: &str,
        host: &str,
        now: f64,
    ) -> Result<Result<TokenRow, TokenRefusal>, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let row = tx
                .query_opt(
                    "SELECT id, clinic, host, expires, uses_left, revoked, created FROM tokens
                     WHERE id = $1 FOR UPDATE",
                    &[&id],
                )?
                .map(|r| pg_token(&r));
            let verdict = TokenRow::usable(row, host, now);
            if let Ok(t) = &verdict {
                tx.execute(
                    "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1",
                    &[&t.id],
                )?;
            }
            tx.commit()?;
            Ok(verdict)
        })
    }

    fn tokens(&mut self) -> Result<Vec<TokenRow>, StoreError> {
        self.with(|c| {
            Ok(c.query(
                "SELECT id, clinic, host, expires, uses_left, revoked, created FROM tokens
                 ORDER BY created",
                &[],
            )?
            .iter()
            .map(pg_token)
            .collect())
        })
    }

    fn revoke_token(&mut self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("UPDATE tokens SET revoked = TRUE WHERE id = $1", &[&id])
                .map(|n| n == 1)
        })
    }

    fn heartbeat(&mut self, host: &HostKey, hb: &Heartbeat, now: f64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE hosts SET last_seen = $3, spooled = $4, dropped = $5
                 WHERE clinic = $1 AND host = $2",
                &[
                    &host.clinic,
                    &host.host,
                    &now,
                    &i64_of(hb.spooled),
                    &i64_of(hb.dropped),
                ],
            )
            .map(|_| ())
        })
    }

    fn ingest(
        &mut self,
        host: &HostKey,
        batch: &Batch,
        now: f64,
        window: TimeWindow,
    ) -> Result<Ingested, StoreError> {
        validate(batch)?;
        let seqs: Vec<i64> = batch.records.iter().map(|r| r.seq as i64).collect();
        let kinds: Vec<&str> = batch.records.iter().map(kind).collect();
        let bodies: Vec<Vec<u8>> = batch.records.iter().map(|r| r.encode_to_vec()).collect();
        let epoch = i64_of(batch.epoch);
        let sketches = std::mem::take(&mut self.sketches);
        let mut sketched_now = Vec::new();
        let result = self.with(|c| {
            let mut tx = c.transaction()?;
            // One statement for the batch; RETURNING names the records that were new.
            let stored = tx.query(
                "INSERT INTO records (clinic, host, epoch, seq, kind, received, body)
                 SELECT $1, $2, $3, s, k, $4, b FROM UNNEST($5::BIGINT[], $6::TEXT[], $7::BYTEA[]) AS t(s, k, b)
                 ON CONFLICT DO NOTHING RETURNING seq",
                &[&host.clinic, &host.host, &epoch, &now, &seqs, &kinds, &bodies],
            )?;
            let new: std::collections::HashSet<i64> = stored.iter().map(|r| r.get(0)).collect();
            let findings: Vec<_> = batch
                .records
                .iter()
                .filter(|r| new.contains(&(r.seq as i64)) && window.contains(record_time(r)))
                .filter_map(|r| match &r.body {
                    Some(Body::Finding(f)) => Some((r.seq as i64, f)),
                    _ => None,
                })
                .collect();
            if !findings.is_empty() {
                let st = tx.prepare(
                    "INSERT INTO findings (clinic, host, epoch, seq, rule, severity, app, time,
                       subject, summary, evidence, received)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT DO NOTHING",
                )?;
                for (seq, f) in findings {
                    let evidence = serde_json::to_string(&f.evidence).unwrap_or_default();
                    tx.execute(
                        &st,
                        &[
                            &host.clinic, &host.host, &epoch, &seq, &f.rule, &f.severity, &f.app,
                            &f.time, &f.subject, &f.summary, &evidence, &now,
                        ],
                    )?;
                }
            }
            let folded = crate::correlate::indicators::fold(
                batch
                    .records
                    .iter()
                    .filter(|r| new.contains(&(r.seq as i64)) && window.contains(record_time(r))),
            );
            if !folded.sightings.is_empty() {
                let put = tx.prepare(
                    "INSERT INTO sightings (kind, value, clinic, host, app, bucket, first_time,
                       last_time, windows, received)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (kind, value, clinic, host, app, bucket) DO UPDATE SET
                       first_time = LEAST(sightings.first_time, excluded.first_time),
                       last_time = GREATEST(sightings.last_time, excluded.last_time),
                       windows = sightings.windows + excluded.windows, received = excluded.received",
                )?;
                let ind = tx.prepare(
                    "INSERT INTO indicators (kind, value, first_seen, last_seen) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (kind, value) DO UPDATE SET
                       first_seen = LEAST(indicators.first_seen, excluded.first_seen),
                       last_seen = GREATEST(indicators.last_seen, excluded.last_seen)
                     RETURNING clinics_sketch IS NOT NULL",
                )?;
                let ind_clinic = tx.prepare(
                    "INSERT INTO indicator_clinics (kind, value, clinic, first_seen)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (kind, value, clinic) DO NOTHING",
                )?;
                for ((kind, value, app, bucket), (first, last, n)) in &folded.sightings {
                    let kind = kind.to_string();
                    tx.execute(
                        &put,
                        &[&kind, value, &host.clinic, &host.host, app, bucket, first, last, n, &now],
                    )?;
                }
                // The upsert locks the indicator's row until commit: another collector's
                // fold or sketch update of the same indicator waits (see `prevalence`).
                // Fleet-wide first seen is when the collector first heard of it, never the
                // time a host claims: a backdated record must not make a new one look old.
                for ((kind, value), (_, last)) in &folded.indicators {
                    let kind = kind.to_string();
                    let sketched: bool = tx.query_one(&ind, &[&kind, value, &now, last])?.get(0);
                    if sketched {
                        if sketches.covers(&kind, value, &host.clinic) {
                            continue;
                        }
                        let stored: Option<Vec<u8>> = tx
                            .query_one(
                                "SELECT clinics_sketch FROM indicators WHERE kind = $1 AND value = $2",
                                &[&kind, value],
                            )?
                            .get(0);
                        let mut h = prevalence::sketch_for_update(&kind, value, stored.as_deref());
                        if h.insert_hash(prevalence::clinic_hash(&host.clinic)) {
                            tx.execute(
                                "UPDATE indicators SET clinics_sketch = $3 WHERE kind = $1 AND value = $2",
                                &[&kind, value, &h.to_bytes()],
                            )?;
                        }
                        sketched_now.push((kind, value.clone(), h));
                    } else if tx.execute(&ind_clinic, &[&kind, value, &host.clinic, &now])? == 1 {
                        let clinics: Vec<String> = tx
                            .query(
                                "SELECT clinic FROM indicator_clinics WHERE kind = $1 AND value = $2
                                 LIMIT $3",
                                &[&kind, value, &(prevalence::EXACT_CLINICS + 1)],
                            )?
                            .iter()
                            .map(|r| r.get(0))
                            .collect();
                        if clinics.len() as i64 > prevalence::EXACT_CLINICS {
                            let h = prevalence::fold(&clinics);
                            tx.execute(
                                "UPDATE indicators SET clinics_sketch = $3 WHERE kind = $1 AND value = $2",
                                &[&kind, value, &h.to_bytes()],
                            )?;
                            tx.execute(
                                "DELETE FROM indicator_clinics WHERE kind = $1 AND value = $2",
                                &[&kind, value],
                            )?;
                            sketched_now.push((kind, value.clone(), h));
                        }
                    }
                }
            }
            tx.execute(
                "UPDATE hosts SET last_seen = $3 WHERE clinic = $1 AND host = $2",
                &[&host.clinic, &host.host, &now],
            )?;
            tx.commit()?;
            Ok(Ingested {
                stored: new.len() as u64,
                duplicates: (batch.records.len() - new.len()) as u64,
                up_to_seq: 0,
                out_of_window: batch
                    .records
                    .iter()
                    .filter(|r| new.contains(&(r.seq as i64)) && !window.contains(record_time(r)))
                    .count() as u64,
                new_seqs: batch
                    .records
                    .iter()
                    .map(|r| r.seq)
                    .filter(|s| new.contains(&(*s as i64)))
                    .collect(),
            })
        });
        // Sketches enter the cache only once their batch committed; a failed batch drops
        // the cache (it may hold what was rolled back).
        if result.is_ok() {
            self.sketches = sketches;
            for (kind, value, h) in sketched_now {
                self.sketches.put(&kind, &value, h);
            }
        }
        let mut out = result?;
        out.up_to_seq = batch.records.last().map_or(0, |r| r.seq);
        Ok(out)
    }

    fn findings_since(&mut self, since: f64) -> Result<Vec<StoredFinding>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT clinic, host, rule, severity, app, time, subject, summary, evidence
                 FROM findings WHERE time >= $1 ORDER BY time, clinic, host",
                &[&since],
            )?;
            Ok(rows
                .iter()
                .map(|r| StoredFinding {
                    clinic: r.get(0),
                    host: r.get(1),
                    rule: r.get(2),
                    severity: r.get(3),
                    app: r.get(4),
                    time: r.get(5),
                    subject: r.get(6),
                    summary: r.get(7),
                    evidence: serde_json::from_str(r.get::<_, &str>(8)).unwrap_or_default(),
                })
                .collect())
        })
    }

    fn hosts(&mut self) -> Result<Vec<HostRow>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT clinic, host, hostname, agent_version, kernel, epoch, last_seen, spooled,
                   dropped FROM hosts ORDER BY clinic, host",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| HostRow {
                    clinic: r.get(0),
                    host: r.get(1),
                    hostname: r.get(2),
                    agent_version: r.get(3),
                    kernel: r.get(4),
                    epoch: r.get::<_, i64>(5) as u64,
                    last_seen: r.get(6),
                    spooled: r.get::<_, i64>(7) as u64,
                    dropped: r.get::<_, i64>(8) as u64,
                })
                .collect())
        })
    }

    fn prune(&mut self, summaries_before: f64, findings_before: f64) -> Result<Pruned, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let mut records = tx.execute(
                "DELETE FROM records WHERE kind <> 'finding' AND received < $1",
                &[&summaries_before],
            )?;
            records += tx.execute(
                "DELETE FROM records WHERE kind = 'finding' AND received < $1",
                &[&findings_before],
            )?;
            let findings = tx.execute(
                "DELETE FROM findings WHERE received < $1",
                &[&findings_before],
            )?;
            records += tx.execute(
                "DELETE FROM sightings WHERE received < $1",
                &[&summaries_before],
            )?;
            // Indicators not seen for as long go too (bounded rows; one is new again after).
            records += tx.execute(
                "DELETE FROM indicator_clinics ic USING indicators i
                 WHERE ic.kind = i.kind AND ic.value = i.value AND i.last_seen < $1",
                &[&summaries_before],
            )?;
            records += tx.execute(
                "DELETE FROM indicators WHERE last_seen < $1",
                &[&summaries_before],
            )?;
            tx.commit()?;
            Ok(Pruned { records, findings })
        })
    }

    fn sightings_since(
        &mut self,
        since: f64,
        app: Option<&str>,
    ) -> Result<Vec<SightingRow>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT kind, value, clinic, host, app, first_time, last_time FROM sightings
                 WHERE last_time >= $1 AND ($2::TEXT IS NULL OR app = $2)",
                &[&since, &app],
            )?;
            Ok(rows
                .iter()
                .map(|r| SightingRow {
                    kind: r.get(0),
                    value: r.get(1),
                    clinic: r.get(2),
                    host: r.get(3),
                    app: r.get(4),
                    first_time: r.get(5),
                    last_time: r.get(6),
                })
                .collect())
        })
    }

    fn indicator_stats(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<IndicatorStat>, StoreError> {
        self.with(|c| {
            let st = c.prepare(
                "SELECT first_seen, last_seen, clinics_sketch,
                   ARRAY(SELECT k.clinic FROM indicator_clinics k WHERE k.kind = i.kind AND k.value = i.value)
                 FROM indicators i WHERE i.kind = $1 AND i.value = $2",
            )?;
            let mut out = Vec::new();
            for (kind, value) in keys {
                if let Some(r) = c.query_opt(&st, &[kind, value])? {
                    let row: (f64, f64, Option<Vec<u8>>, Vec<String>) =
                        (r.get(0), r.get(1), r.get(2), r.get(3));
                    out.push((kind, value, row));
                }
            }
            Ok(out)
        })?
        .into_iter()
        .map(|(kind, value, (first_seen, last_seen, sketch, rows))| {
            let (clinics, clinics_estimated) =
                prevalence::count(kind, value, sketch.as_deref(), &rows)?;
            Ok(IndicatorStat {
                kind: kind.clone(),
                value: value.clone(),
                first_seen,
                last_seen,
                clinics,
                clinics_estimated,
            })
        })
        .collect()
    }

    fn top_indicators(
        &mut self,
        since: f64,
        limit: usize,
    ) -> Result<Vec<IndicatorStat>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT kind, value, MIN(first_time), MAX(last_time), COUNT(DISTINCT clinic)
                 FROM sightings WHERE last_time >= $1
                 GROUP BY kind, value ORDER BY 5 DESC, 1, 2 LIMIT $2",
                &[&since, &(limit as i64)],
            )?;
            Ok(rows
                .iter()
                .map(|r| IndicatorStat {
                    kind: r.get(0),
                    value: r.get(1),
                    first_seen: r.get(2),
                    last_seen: r.get(3),
                    clinics: r.get::<_, i64>(4) as u64,
                    clinics_estimated: false,
                })
                .collect())
        })
    }

    fn lead_correlation(&mut self) -> Result<bool, StoreError> {
        if self.leading && self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(true);
        }
        self.leading = false;
        let got = self.with(|c| {
            c.query_one("SELECT pg_try_advisory_lock($1)", &[&CORRELATION_LOCK])
                .map(|r| r.get::<_, bool>(0))
        })?;
        self.leading = got;
        Ok(got)
    }

    fn open_incident(&mut self, rule: &str, key: &str) -> Result<Option<Incident>, StoreError> {
        self.with(|c| {
            let r = c.query_opt(
                &format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE rule = $1 AND key = $2
                     AND state <> 'closed' ORDER BY id DESC LIMIT 1"
                ),
                &[&rule, &key],
            )?;
            Ok(r.as_ref().map(incident_row))
        })
    }

    fn save_incident(&mut self, i: &Incident) -> Result<i64, StoreError> {
        let (clinics, hosts, evidence) = super::incident_json(i);
        self.with(|c| {
            if i.id == 0 {
                let r = c.query_one(
                    "INSERT INTO incidents (rule, key, state, severity, title, first_seen,
                       last_seen, clinics, hosts, evidence, created, updated)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
                    &[
                        &i.rule,
                        &i.key,
                        &i.state,
                        &i.severity,
                        &i.title,
                        &i.first_seen,
                        &i.last_seen,
                        &clinics,
                        &hosts,
                        &evidence,
                        &i.created,
                        &i.updated,
                    ],
                )?;
                Ok(r.get(0))
            } else {
                c.execute(
                    "UPDATE incidents SET state = $2, severity = $3, title = $4, first_seen = $5,
                       last_seen = $6, clinics = $7, hosts = $8, evidence = $9, updated = $10
                     WHERE id = $1",
                    &[
                        &i.id,
                        &i.state,
                        &i.severity,
                        &i.title,
                        &i.first_seen,
                        &i.last_seen,
                        &clinics,
                        &hosts,
                        &evidence,
                        &i.updated,
                    ],
                )?;
                Ok(i.id)
            }
        })
    }

    fn incidents(&mut self, state: Option<&str>) -> Result<Vec<Incident>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents
                     WHERE $1::TEXT IS NULL OR state = $1 ORDER BY id DESC"
                ),
                &[&state],
            )?;
            Ok(rows.iter().map(incident_row).collect())
        })
    }

    fn incident(&mut self, id: i64) -> Result<Option<Incident>, StoreError> {
        self.with(|c| {
            let r = c.query_opt(
                &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"),
                &[&id],
            )?;
            Ok(r.as_ref().map(incident_row))
        })
    }

    fn set_incident_state(&mut self, id: i64, state: &str, now: f64) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE incidents SET state = $2, updated = $3 WHERE id = $1",
                &[&id, &state, &now],
            )
            .map(|n| n > 0)
        })
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.with(|c| c.simple_query("SELECT 1").map(|_| ()))
    }

    fn record_count(&mut self) -> Result<u64, StoreError> {
        self.with(|c| {
            let r = c.query_one("SELECT COUNT(*) FROM records", &[])?;
            Ok(r.get::<_, i64>(0) as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_shown_in_any_form() {
        for (url, want) in [
            (
                "postgres://cw:s3cret@db.example:5432/cw",
                "postgres://cw@db.example:5432/cw",
            ),
            (
                "postgres://cw@db.example/cw?password=s3cret",
                "postgres://cw@db.example:5432/cw",
            ),
            (
                "host=/run/pg user=cw password=s3cret dbname=cw",
                "postgres://cw@/run/pg/cw",
            ),
            (
                "host=db user=cw password = 's3 cret' dbname=cw",
                "postgres://cw@db/cw",
            ),
        ] {
            let got = super::shown(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("s3"));
        }
        assert!(!super::shown("postgres://cw:s3cret@[bad").contains("s3cret"));
    }
}
