//! Enrollments (each host's current key) and enrollment tokens.

use crate::store::conn::{args, Conn, Row};
use crate::store::{Enrollment, HostKey, StoreError, TokenRefusal, TokenRow};

const TOKEN_COLUMNS: &str = "id, clinic, host, expires, uses_left, revoked, created";

fn token(r: &Row) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        id: r.text(0)?,
        clinic: r.text(1)?,
        host: r.text(2)?,
        expires: r.f64(3)?,
        uses_left: r.i64(4)?,
        revoked: r.bool(5)?,
        created: r.f64(6)?,
    })
}

pub fn enrollment(c: &mut dyn Conn, host: &HostKey) -> Result<Option<Enrollment>, StoreError> {
    c.query_opt(
        "SELECT key_sha256, revoked, updated, pending_key FROM enrollments
         WHERE clinic = $1 AND host = $2",
        args![host.clinic, host.host],
    )?
    .map(|r| {
        Ok(Enrollment {
            key_sha256: r.text(0)?,
            revoked: r.bool(1)?,
            updated: r.f64(2)?,
            pending_key_sha256: r.text(3)?,
        })
    })
    .transpose()
}

pub fn set_enrollment(c: &mut dyn Conn, host: &HostKey, e: &Enrollment) -> Result<(), StoreError> {
    c.exec(
        "INSERT INTO enrollments (clinic, host, key_sha256, revoked, updated, pending_key)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (clinic, host) DO UPDATE SET key_sha256 = $3, revoked = $4,
           updated = $5, pending_key = $6",
        args![
            host.clinic,
            host.host,
            e.key_sha256,
            e.revoked,
            e.updated,
            e.pending_key_sha256
        ],
    )
    .map(drop)
}

pub fn put_token(c: &mut dyn Conn, t: &TokenRow) -> Result<(), StoreError> {
    c.exec(
        "INSERT INTO tokens (id, clinic, host, expires, uses_left, revoked, created)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        args![
            t.id,
            t.clinic,
            t.host,
            t.expires,
            t.uses_left,
            t.revoked,
            t.created
        ],
    )
    .map(drop)
}

/// Takes one use of the token atomically: the row is locked (PostgreSQL) or the file
/// write-locked (SQLite) from the read to the commit.
pub fn use_token(
    c: &mut dyn Conn,
    id: &str,
    host: &str,
    now: f64,
) -> Result<Result<TokenRow, TokenRefusal>, StoreError> {
    c.transaction(|c| {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1 FOR UPDATE");
        let row = c
            .query_opt(&sql, args![id])?
            .map(|r| token(&r))
            .transpose()?;
        let verdict = TokenRow::usable(row, host, now);
        if let Ok(t) = &verdict {
            c.exec(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1",
                args![t.id],
            )?;
        }
        Ok(verdict)
    })
}

pub fn tokens(c: &mut dyn Conn) -> Result<Vec<TokenRow>, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created");
    c.query(&sql, &[])?.iter().map(token).collect()
}

pub fn revoke_token(c: &mut dyn Conn, id: &str) -> Result<bool, StoreError> {
    Ok(c.exec("UPDATE tokens SET revoked = TRUE WHERE id = $1", args![id])? == 1)
}
