//! What correlation and the SOC read back, and retention.

use crate::store::conn::{args, Conn};
use crate::store::{prevalence, IndicatorStat, Pruned, SightingRow, StoreError, StoredFinding};

pub fn findings_since(c: &mut dyn Conn, since: f64) -> Result<Vec<StoredFinding>, StoreError> {
    c.query(
        "SELECT clinic, host, rule, severity, app, time, subject, summary, evidence
         FROM findings WHERE time >= $1 ORDER BY time, clinic, host",
        args![since],
    )?
    .iter()
    .map(|r| {
        Ok(StoredFinding {
            clinic: r.text(0)?,
            host: r.text(1)?,
            rule: r.text(2)?,
            severity: i32::try_from(r.i64(3)?).unwrap_or(0),
            app: r.text(4)?,
            time: r.f64(5)?,
            subject: r.text(6)?,
            summary: r.text(7)?,
            evidence: r.json(8)?,
        })
    })
    .collect()
}

/// Summaries, health and sightings received before `summaries_before`, findings before
/// `findings_before`, and indicators not seen since `summaries_before` (bounded rows; one is
/// new again after).
pub fn prune(
    c: &mut dyn Conn,
    summaries_before: f64,
    findings_before: f64,
) -> Result<Pruned, StoreError> {
    c.transaction(|c| {
        let (s, f) = (summaries_before, findings_before);
        let mut records = c.exec(
            "DELETE FROM records WHERE kind <> 'finding' AND received < $1",
            args![s],
        )?;
        records += c.exec(
            "DELETE FROM records WHERE kind = 'finding' AND received < $1",
            args![f],
        )?;
        let findings = c.exec("DELETE FROM findings WHERE received < $1", args![f])?;
        records += c.exec("DELETE FROM sightings WHERE received < $1", args![s])?;
        records += c.exec(
            "DELETE FROM indicator_clinics WHERE (kind, value) IN
               (SELECT kind, value FROM indicators WHERE last_seen < $1)",
            args![s],
        )?;
        records += c.exec("DELETE FROM indicators WHERE last_seen < $1", args![s])?;
        Ok(Pruned { records, findings })
    })
}

pub fn sightings_since(
    c: &mut dyn Conn,
    since: f64,
    app: Option<&str>,
) -> Result<Vec<SightingRow>, StoreError> {
    c.query(
        "SELECT kind, value, clinic, host, app, first_time, last_time FROM sightings
         WHERE last_time >= $1 AND (CAST($2 AS TEXT) IS NULL OR app = $2)",
        args![since, app],
    )?
    .iter()
    .map(|r| {
        Ok(SightingRow {
            kind: r.text(0)?,
            value: r.text(1)?,
            clinic: r.text(2)?,
            host: r.text(3)?,
            app: r.text(4)?,
            first_time: r.f64(5)?,
            last_time: r.f64(6)?,
        })
    })
    .collect()
}

/// Fleet-wide first seen and prevalence: exact from the clinic rows, or the sketch's
/// estimate once an indicator has more than [`prevalence::EXACT_CLINICS`] clinics.
pub fn indicator_stats(
    c: &mut dyn Conn,
    keys: &[(String, String)],
) -> Result<Vec<IndicatorStat>, StoreError> {
    let mut out = Vec::new();
    for (kind, value) in keys {
        let Some(r) = c.query_opt(
            "SELECT first_seen, last_seen, clinics_sketch FROM indicators
             WHERE kind = $1 AND value = $2",
            args![kind, value],
        )?
        else {
            continue;
        };
        let clinics: Vec<String> = c
            .query(
                "SELECT clinic FROM indicator_clinics WHERE kind = $1 AND value = $2",
                args![kind, value],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_, _>>()?;
        let sketch = r.bytes_opt(2)?;
        let (n, estimated) = prevalence::count(kind, value, sketch.as_deref(), &clinics)?;
        out.push(IndicatorStat {
            kind: kind.clone(),
            value: value.clone(),
            first_seen: r.f64(0)?,
            last_seen: r.f64(1)?,
            clinics: n,
            clinics_estimated: estimated,
        });
    }
    Ok(out)
}

/// Indicators seen by the most clinics since `since` (event time).
pub fn top_indicators(
    c: &mut dyn Conn,
    since: f64,
    limit: usize,
) -> Result<Vec<IndicatorStat>, StoreError> {
    c.query(
        "SELECT kind, value, MIN(first_time), MAX(last_time), COUNT(DISTINCT clinic)
         FROM sightings WHERE last_time >= $1
         GROUP BY kind, value ORDER BY 5 DESC, 1, 2 LIMIT $2",
        args![since, limit as i64],
    )?
    .iter()
    .map(|r| {
        Ok(IndicatorStat {
            kind: r.text(0)?,
            value: r.text(1)?,
            first_seen: r.f64(2)?,
            last_seen: r.f64(3)?,
            clinics: r.u64(4)?,
            clinics_estimated: false,
        })
    })
    .collect()
}
