//! A batch into the store, in one transaction: records keyed by (clinic, host, epoch, seq)
//! so that a batch sent again after a lost ack is stored once; findings into their own
//! table; indicators folded into sightings and fleet-wide prevalence.

use std::collections::HashSet;
use std::sync::Mutex;

use clinicwatch_proto::v1::{record::Body, Batch, Record};
use prost::Message;

use crate::store::conn::{args, Conn, Dialect, Param};
use crate::store::indicators::fold;
use clinicwatch_proto::hll::Hll;

use crate::store::prevalence::{self, SketchCache};
use crate::store::{kind, record_time, HostKey, Ingested, StoreError, TimeWindow};

/// Records per PostgreSQL insert statement (3 parameters each, 4 shared).
const ROWS_PER_INSERT: usize = 500;

/// Sketches written by a batch: cached only once it committed.
type Sketched = Vec<(String, String, Hll)>;

pub fn ingest(
    c: &mut dyn Conn,
    cache: &Mutex<SketchCache>,
    host: &HostKey,
    batch: &Batch,
    now: f64,
    window: TimeWindow,
) -> Result<Ingested, StoreError> {
    let done = c.transaction(|c| {
        let new = insert_records(c, host, batch, now)?;
        let fresh: Vec<&Record> = batch
            .records
            .iter()
            .filter(|r| new.contains(&r.seq))
            .collect();
        let correlated: Vec<&Record> = fresh
            .iter()
            .copied()
            .filter(|r| window.contains(record_time(r)))
            .collect();
        insert_findings(c, host, batch.epoch, &correlated, now)?;
        let sketched = fold_indicators(c, cache, host, &correlated, now)?;
        c.exec(
            "UPDATE hosts SET last_seen = $3 WHERE clinic = $1 AND host = $2",
            args![host.clinic, host.host, now],
        )?;
        Ok((
            Ingested {
                stored: fresh.len() as u64,
                duplicates: (batch.records.len() - fresh.len()) as u64,
                up_to_seq: batch.records.last().map_or(0, |r| r.seq),
                new_seqs: fresh.iter().map(|r| r.seq).collect(),
                out_of_window: (fresh.len() - correlated.len()) as u64,
            },
            sketched,
        ))
    });
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    match done {
        Ok((out, sketched)) => {
            for (kind, value, h) in sketched {
                cache.put(&kind, &value, h);
            }
            Ok(out)
        }
        Err(e) => {
            // The cache may hold what was rolled back (another batch's sketch read under a
            // transaction that failed): start it again.
            *cache = SketchCache::default();
            Err(e)
        }
    }
}

/// Inserts the batch's records; the sequence numbers that were new (not duplicates). SQLite
/// takes them one row at a time through one prepared statement (a statement costs no round
/// trip there, and the changed-row count says whether each was new); PostgreSQL in multi-row inserts whose
/// `RETURNING` names the new ones (one round trip per chunk).
fn insert_records(
    c: &mut dyn Conn,
    host: &HostKey,
    batch: &Batch,
    now: f64,
) -> Result<HashSet<u64>, StoreError> {
    let bodies: Vec<Vec<u8>> = batch.records.iter().map(|r| r.encode_to_vec()).collect();
    let mut new = HashSet::new();
    if c.dialect() == Dialect::Sqlite {
        let mut flat: Vec<Param<'_>> = Vec::with_capacity(7 * batch.records.len());
        for (r, body) in batch.records.iter().zip(&bodies) {
            flat.extend_from_slice(args![
                host.clinic,
                host.host,
                batch.epoch,
                r.seq,
                kind(r),
                now,
                *body
            ]);
        }
        let added = c.exec_rows(
            "INSERT INTO records (clinic, host, epoch, seq, kind, received, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            7,
            &flat,
        )?;
        for (r, n) in batch.records.iter().zip(added) {
            if n == 1 {
                new.insert(r.seq);
            }
        }
        return Ok(new);
    }
    let seqs: Vec<i64> = batch
        .records
        .iter()
        .map(|r| r.seq.min(i64::MAX as u64) as i64)
        .collect();
    for start in (0..batch.records.len()).step_by(ROWS_PER_INSERT) {
        let end = (start + ROWS_PER_INSERT).min(batch.records.len());
        let mut sql = String::from(
            "INSERT INTO records (clinic, host, epoch, seq, kind, received, body) VALUES ",
        );
        let mut params: Vec<Param<'_>> = args![host.clinic, host.host, batch.epoch, now].to_vec();
        for i in start..end {
            let n = params.len();
            if i > start {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "($1, $2, $3, ${}, ${}, $4, ${})",
                n + 1,
                n + 2,
                n + 3
            ));
            params.extend_from_slice(&[
                Param::I64(seqs[i]),
                Param::Text(kind(&batch.records[i])),
                Param::Bytes(&bodies[i]),
            ]);
        }
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING seq");
        // A full chunk's text is always the same: prepared once per connection.
        let rows = if end - start == ROWS_PER_INSERT {
            c.query(&sql, &params)?
        } else {
            c.query_once(&sql, &params)?
        };
        for r in rows {
            new.insert(r.u64(0)?);
        }
    }
    Ok(new)
}

fn insert_findings(
    c: &mut dyn Conn,
    host: &HostKey,
    epoch: u64,
    records: &[&Record],
    now: f64,
) -> Result<(), StoreError> {
    for r in records {
        let Some(Body::Finding(f)) = &r.body else {
            continue;
        };
        let evidence = serde_json::to_string(&f.evidence).unwrap_or_default();
        c.exec(
            "INSERT INTO findings (clinic, host, epoch, seq, rule, severity, app, time,
               subject, summary, evidence, received)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT DO NOTHING",
            args![
                host.clinic,
                host.host,
                epoch,
                r.seq,
                f.rule,
                f.severity,
                f.app,
                f.time,
                f.subject,
                f.summary,
                evidence,
                now
            ],
        )?;
    }
    Ok(())
}

/// Sightings (one row per indicator, clinic, host, app and hour) and the fleet-wide
/// indicators with their prevalence. Fleet-wide first seen is when the collector first
/// heard of it, never the time a host claims: a backdated record must not make a new
/// destination look old. The indicator's upsert locks its row until commit, so that another
/// collector's fold or sketch update of the same indicator waits (see `prevalence`).
fn fold_indicators(
    c: &mut dyn Conn,
    cache: &Mutex<SketchCache>,
    host: &HostKey,
    records: &[&Record],
    now: f64,
) -> Result<Sketched, StoreError> {
    let folded = fold(records.iter().copied());
    for ((kind, value, app, bucket), (first, last, n)) in &folded.sightings {
        c.exec(
            "INSERT INTO sightings (kind, value, clinic, host, app, bucket, first_time,
               last_time, windows, received)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (kind, value, clinic, host, app, bucket) DO UPDATE SET
               first_time = LEAST(sightings.first_time, excluded.first_time),
               last_time = GREATEST(sightings.last_time, excluded.last_time),
               windows = sightings.windows + excluded.windows, received = excluded.received",
            args![
                *kind,
                *value,
                host.clinic,
                host.host,
                *app,
                *bucket,
                *first,
                *last,
                *n,
                now
            ],
        )?;
    }
    let mut sketched = Sketched::new();
    for ((kind, value), (_, last)) in &folded.indicators {
        let has_sketch = c
            .query_one(
                "INSERT INTO indicators (kind, value, first_seen, last_seen) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, value) DO UPDATE SET
                   first_seen = LEAST(indicators.first_seen, excluded.first_seen),
                   last_seen = GREATEST(indicators.last_seen, excluded.last_seen)
                 RETURNING clinics_sketch IS NOT NULL",
                args![*kind, *value, now, *last],
            )?
            .bool(0)?;
        let h = if has_sketch {
            add_to_sketch(c, cache, kind, value, &host.clinic)?
        } else {
            add_clinic(c, kind, value, &host.clinic, now)?
        };
        if let Some(h) = h {
            sketched.push((kind.to_string(), value.clone(), h));
        }
    }
    Ok(sketched)
}

/// An indicator already counted by a sketch: the clinic joins it (a write only when the
/// sketch changes, and no read when the cached copy already covers the clinic).
fn add_to_sketch(
    c: &mut dyn Conn,
    cache: &Mutex<SketchCache>,
    kind: &str,
    value: &str,
    clinic: &str,
) -> Result<Option<Hll>, StoreError> {
    let covered = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .covers(kind, value, clinic);
    if covered {
        return Ok(None);
    }
    let stored = c
        .query_one(
            "SELECT clinics_sketch FROM indicators WHERE kind = $1 AND value = $2",
            args![kind, value],
        )?
        .bytes_opt(0)?;
    let mut h = prevalence::sketch_for_update(kind, value, stored.as_deref());
    if h.insert_hash(prevalence::clinic_hash(clinic)) {
        c.exec(
            "UPDATE indicators SET clinics_sketch = $3 WHERE kind = $1 AND value = $2",
            args![kind, value, h.to_bytes()],
        )?;
    }
    Ok(Some(h))
}

/// An indicator counted exactly: the clinic's row, and the move to a sketch once more than
/// [`prevalence::EXACT_CLINICS`] clinics saw it.
fn add_clinic(
    c: &mut dyn Conn,
    kind: &str,
    value: &str,
    clinic: &str,
    now: f64,
) -> Result<Option<Hll>, StoreError> {
    let added = c.exec(
        "INSERT INTO indicator_clinics (kind, value, clinic, first_seen)
         VALUES ($1, $2, $3, $4) ON CONFLICT (kind, value, clinic) DO NOTHING",
        args![kind, value, clinic, now],
    )?;
    if added == 0 {
        return Ok(None);
    }
    let clinics: Vec<String> = c
        .query(
            "SELECT clinic FROM indicator_clinics WHERE kind = $1 AND value = $2 LIMIT $3",
            args![kind, value, prevalence::EXACT_CLINICS + 1],
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_, _>>()?;
    if clinics.len() as i64 <= prevalence::EXACT_CLINICS {
        return Ok(None);
    }
    let h = prevalence::fold(&clinics);
    c.exec(
        "UPDATE indicators SET clinics_sketch = $3 WHERE kind = $1 AND value = $2",
        args![kind, value, h.to_bytes()],
    )?;
    c.exec(
        "DELETE FROM indicator_clinics WHERE kind = $1 AND value = $2",
        args![kind, value],
    )?;
    Ok(Some(h))
}
