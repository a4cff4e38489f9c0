//! One connection contract over both databases, so that the store's logic (ingest, dedup,
//! prevalence, enrollment, incidents) is written once in `sql/`. Statements are written in
//! PostgreSQL's spelling (`$1` placeholders, `LEAST`/`GREATEST`, `FOR UPDATE`) and
//! [`sqlite_spelling`] turns them into SQLite's; that is the whole of the dialect gap the
//! statements here need, kept in one function so that it stays visible.
//!
//! Values cross as [`Param`] (borrowed) and come back as [`Value`] (owned): a small set
//! (integers, reals, text, bytes, booleans, NULL) that both databases store exactly.

use super::StoreError;

/// A statement parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param<'a> {
    Null,
    I64(i64),
    F64(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
    Bool(bool),
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}
impl<'a> From<&&'a String> for Param<'a> {
    fn from(v: &&'a String) -> Self {
        Param::Text(v)
    }
}
impl<'a> From<&&'a str> for Param<'a> {
    fn from(v: &&'a str) -> Self {
        Param::Text(v)
    }
}
impl<'a> From<&'a Vec<u8>> for Param<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Param::Bytes(v)
    }
}
impl<'a> From<&Option<&'a str>> for Param<'a> {
    fn from(v: &Option<&'a str>) -> Self {
        v.map_or(Param::Null, Param::Text)
    }
}
impl<'a> From<&&'a [u8]> for Param<'a> {
    fn from(v: &&'a [u8]) -> Self {
        Param::Bytes(v)
    }
}
impl From<&i64> for Param<'_> {
    fn from(v: &i64) -> Self {
        Param::I64(*v)
    }
}
impl From<&i32> for Param<'_> {
    fn from(v: &i32) -> Self {
        Param::I64(i64::from(*v))
    }
}
/// Unsigned counters and sequence numbers: clamped to the signed 64 bits both store.
impl From<&u64> for Param<'_> {
    fn from(v: &u64) -> Self {
        Param::I64((*v).min(i64::MAX as u64) as i64)
    }
}
impl From<&f64> for Param<'_> {
    fn from(v: &f64) -> Self {
        Param::F64(*v)
    }
}
impl From<&bool> for Param<'_> {
    fn from(v: &bool) -> Self {
        Param::Bool(*v)
    }
}

/// `args![a, b, c]`: a parameter list, each taken by reference.
macro_rules! args {
    ($($e:expr),* $(,)?) => {
        &[$($crate::store::conn::Param::from(&$e)),*][..]
    };
}
pub(crate) use args;

/// A column value as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    I64(i64),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

/// A result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> &Value {
        self.0.get(i).unwrap_or(&Value::Null)
    }

    fn wrong(&self, i: usize, want: &str) -> StoreError {
        StoreError::Data(format!(
            "column {i}: expected {want}, found {:?}",
            self.at(i)
        ))
    }

    pub fn i64(&self, i: usize) -> Result<i64, StoreError> {
        match self.at(i) {
            Value::I64(v) => Ok(*v),
            Value::Bool(b) => Ok(i64::from(*b)),
            _ => Err(self.wrong(i, "an integer")),
        }
    }

    /// A count or sequence number (never negative when written by this store).
    pub fn u64(&self, i: usize) -> Result<u64, StoreError> {
        self.i64(i).map(|v| v.max(0) as u64)
    }

    pub fn f64(&self, i: usize) -> Result<f64, StoreError> {
        match self.at(i) {
            Value::F64(v) => Ok(*v),
            // SQLite gives back an integer for a real that was written as one.
            Value::I64(v) => Ok(*v as f64),
            _ => Err(self.wrong(i, "a number")),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.at(i) {
            Value::Text(s) => Ok(s.clone()),
            _ => Err(self.wrong(i, "text")),
        }
    }

    /// SQLite keeps booleans as integers.
    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        match self.at(i) {
            Value::Bool(b) => Ok(*b),
            Value::I64(v) => Ok(*v != 0),
            _ => Err(self.wrong(i, "a boolean")),
        }
    }

    pub fn bytes_opt(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.at(i) {
            Value::Null => Ok(None),
            Value::Bytes(b) => Ok(Some(b.clone())),
            _ => Err(self.wrong(i, "bytes")),
        }
    }

    /// A JSON column, or its default when the text does not parse (rows written by this
    /// store always do).
    pub fn json<T: serde::de::DeserializeOwned + Default>(
        &self,
        i: usize,
    ) -> Result<T, StoreError> {
        Ok(serde_json::from_str(&self.text(i)?).unwrap_or_default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A database connection the store's logic runs on. Calls block (the collector makes them
/// off its async threads).
pub trait Conn {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; the rows it changed.
    fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError>;
    /// Runs a statement once per row of `flat` (`width` parameters each, one after the
    /// other); the rows each run changed. A backend may prepare it once for all of them
    /// (SQLite does: a batch's records go in through one statement handle).
    fn exec_rows(
        &mut self,
        sql: &str,
        width: usize,
        flat: &[Param<'_>],
    ) -> Result<Vec<u64>, StoreError> {
        flat.chunks(width.max(1))
            .map(|p| self.exec(sql, p))
            .collect()
    }
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError>;
    /// A statement whose text changes from call to call (a multi-row insert): not kept in
    /// the connection's statement cache.
    fn query_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError>;
    /// Statements without parameters (transaction control).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
}

impl dyn Conn + '_ {
    pub fn query_opt(&mut self, sql: &str, p: &[Param<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, p)?.into_iter().next())
    }

    pub fn query_one(&mut self, sql: &str, p: &[Param<'_>]) -> Result<Row, StoreError> {
        self.query_opt(sql, p)?
            .ok_or_else(|| StoreError::Data(format!("no row from `{}`", first_line(sql))))
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back otherwise.
    /// SQLite's is `IMMEDIATE` (it takes the write lock at once, so that a read-then-write
    /// such as taking a token's use cannot fail half-way on a busy file).
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.batch(match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })?;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *self)));
        let ran = match ran {
            Ok(r) => r,
            Err(panic) => {
                // Never leave the transaction open on a connection that is used again.
                let _ = self.batch("ROLLBACK");
                std::panic::resume_unwind(panic)
            }
        };
        let done = ran.and_then(|v| self.batch("COMMIT").map(|()| v));
        if done.is_err() {
            // Nothing to roll back after a failed COMMIT in PostgreSQL; SQLite may still
            // hold the transaction open. A broken connection is dropped by its pool.
            let _ = self.batch("ROLLBACK");
        }
        done
    }
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or("")
}

/// A statement in SQLite's spelling: `$N` → `?N`, `LEAST`/`GREATEST` → scalar `MIN`/`MAX`,
/// and no `FOR UPDATE` (SQLite's write transaction already excludes every other writer).
pub fn sqlite_spelling(sql: &str) -> String {
    let sql = sql
        .replace("LEAST(", "MIN(")
        .replace("GREATEST(", "MAX(")
        .replace(" FOR UPDATE", "");
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_spelling_becomes_sqlite_spelling() {
        assert_eq!(
            sqlite_spelling(
                "SELECT LEAST(a, $1), GREATEST(b, $12) FROM t WHERE x = '$' AND id = $2 FOR UPDATE"
            ),
            "SELECT MIN(a, ?1), MAX(b, ?12) FROM t WHERE x = '$' AND id = ?2"
        );
    }

    #[test]
    fn rows_read_what_either_database_gives_back() {
        let r = Row(vec![
            Value::I64(3),
            Value::I64(1),
            Value::F64(2.5),
            Value::Null,
            Value::Text("[\"a\"]".into()),
        ]);
        assert_eq!(r.f64(0).unwrap(), 3.0);
        assert!(r.bool(1).unwrap());
        assert_eq!(r.bytes_opt(3).unwrap(), None);
        assert_eq!(r.json::<Vec<String>>(4).unwrap(), ["a"]);
        let e = r.text(2).unwrap_err().to_string();
        assert!(e.contains("column 2: expected text"), "{e}");
        assert!(
            r.i64(9).is_err(),
            "a missing column is an error, not a zero"
        );
    }
}
