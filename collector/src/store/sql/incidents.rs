//! Incidents: what fleet correlation opens, updates and the SOC works through.

use crate::store::conn::{args, Conn, Row};
use crate::store::{incident_json, Incident, StoreError, INCIDENT_COLUMNS};

fn from_row(r: &Row) -> Result<Incident, StoreError> {
    Ok(Incident {
        id: r.i64(0)?,
        rule: r.text(1)?,
        key: r.text(2)?,
        state: r.text(3)?,
        severity: r.text(4)?,
        title: r.text(5)?,
        first_seen: r.f64(6)?,
        last_seen: r.f64(7)?,
        clinics: r.json(8)?,
        hosts: r.json(9)?,
        evidence: r.json(10)?,
        created: r.f64(11)?,
        updated: r.f64(12)?,
    })
}

pub fn open_incident(
    c: &mut dyn Conn,
    rule: &str,
    key: &str,
) -> Result<Option<Incident>, StoreError> {
    let sql = format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE rule = $1 AND key = $2
         AND state <> 'closed' ORDER BY id DESC LIMIT 1"
    );
    c.query_opt(&sql, args![rule, key])?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Inserts (id 0) or updates; the incident's id.
pub fn save_incident(c: &mut dyn Conn, i: &Incident) -> Result<i64, StoreError> {
    let (clinics, hosts, evidence) = incident_json(i);
    if i.id == 0 {
        c.query_one(
            "INSERT INTO incidents (rule, key, state, severity, title, first_seen, last_seen,
               clinics, hosts, evidence, created, updated)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
            args![
                i.rule,
                i.key,
                i.state,
                i.severity,
                i.title,
                i.first_seen,
                i.last_seen,
                clinics,
                hosts,
                evidence,
                i.created,
                i.updated
            ],
        )?
        .i64(0)
    } else {
        c.exec(
            "UPDATE incidents SET state = $2, severity = $3, title = $4, first_seen = $5,
               last_seen = $6, clinics = $7, hosts = $8, evidence = $9, updated = $10
             WHERE id = $1",
            args![
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
        )?;
        Ok(i.id)
    }
}

/// Newest first; `state` filters.
pub fn incidents(c: &mut dyn Conn, state: Option<&str>) -> Result<Vec<Incident>, StoreError> {
    let sql = format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents
         WHERE CAST($1 AS TEXT) IS NULL OR state = $1 ORDER BY id DESC"
    );
    c.query(&sql, args![state])?.iter().map(from_row).collect()
}

pub fn incident(c: &mut dyn Conn, id: i64) -> Result<Option<Incident>, StoreError> {
    let sql = format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1");
    c.query_opt(&sql, args![id])?
        .as_ref()
        .map(from_row)
        .transpose()
}

pub fn set_incident_state(
    c: &mut dyn Conn,
    id: i64,
    state: &str,
    now: f64,
) -> Result<bool, StoreError> {
    Ok(c.exec(
        "UPDATE incidents SET state = $2, updated = $3 WHERE id = $1",
        args![id, state, now],
    )? > 0)
}
