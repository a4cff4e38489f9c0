//! The embedded backend: SQLite in WAL mode with `synchronous = FULL`, so a batch is on disk
//! when `ingest` returns (and is acked). One connection per store, behind a mutex: SQLite
//! has one writer at a time anyway, and the collector opens a second store for its
//! background work (see `open_background`). The schema comes from `migrations/sqlite`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{types::ValueRef, Connection, ToSql};

use super::conn::{sqlite_spelling, Conn, Dialect, Param, Row, Value};
use super::prevalence::SketchCache;
use super::sql::Backend;
use super::StoreError;

mod migrations {
    refinery::embed_migrations!("migrations/sqlite");
}

/// Per connection: not part of the schema.
const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA cache_size = -131072;
";

/// The connection and the statements it was given, in SQLite's spelling (translated once).
struct Inner {
    db: Connection,
    spelled: Spelled,
}

/// Statement text → its SQLite spelling, keyed by where the text lies and its length: the
/// store's statements are constants, so the key is found without hashing their text. The
/// text is kept and compared on each hit, so a different statement at a reused address is
/// translated afresh, never mistaken for the one before. (What a batched record had lost
/// in `cargo xtask bench ingest` was mostly the statement handle looked up per record;
/// `exec_rows` won that back.)
type Spelled = HashMap<(usize, usize), (String, String)>;

/// Statements kept translated; past it, the map starts again.
const SPELLED_MAX: usize = 512;

pub struct SqliteStore {
    path: String,
    db: Mutex<Inner>,
    sketches: Mutex<SketchCache>,
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

impl SqliteStore {
    /// Opens (or makes) the file and brings its schema to this version.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let p = path.display().to_string();
        if path != Path::new(":memory:") {
            private_file(path).map_err(|e| StoreError::Db {
                path: p.clone(),
                source: Box::new(e),
            })?;
        }
        let mut db = Connection::open(path).map_err(db_err(&p))?;
        db.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err(&p))?;
        // Every statement of the store stays prepared (the default keeps 16).
        db.set_prepared_statement_cache_capacity(64);
        db.execute_batch(PRAGMAS).map_err(db_err(&p))?;
        legacy_columns(&db).map_err(db_err(&p))?;
        migrations::migrations::runner()
            .run(&mut db)
            .map_err(|e| StoreError::Migration {
                path: p.clone(),
                why: super::chain(&e),
            })?;
        Ok(SqliteStore {
            path: p,
            db: Mutex::new(Inner {
                db,
                spelled: HashMap::new(),
            }),
            sketches: Mutex::default(),
        })
    }
}

/// Files from before migrations, made by a 0.1 build older than two columns (whose store
/// added them with `ALTER TABLE` when it opened the file): the columns are added, so that
/// the first migration (`CREATE TABLE IF NOT EXISTS`) finds the schema it describes.
fn legacy_columns(db: &Connection) -> rusqlite::Result<()> {
    for (table, column, ddl) in [
        (
            "indicators",
            "clinics_sketch",
            "ALTER TABLE indicators ADD COLUMN clinics_sketch BLOB",
        ),
        (
            "enrollments",
            "pending_key",
            "ALTER TABLE enrollments ADD COLUMN pending_key TEXT NOT NULL DEFAULT ''",
        ),
    ] {
        let (has_table, has_column): (i64, i64) = db.query_row(
            "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1),
                    (SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if has_table == 1 && has_column == 0 {
            db.execute_batch(ddl)?;
        }
    }
    Ok(())
}

impl Backend for SqliteStore {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut inner = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let Inner { db, spelled } = &mut *inner;
        if !db.is_autocommit() {
            // A call that panicked inside its transaction: nothing of it is kept.
            let _ = db.execute_batch("ROLLBACK");
        }
        f(&mut SqliteConn {
            db,
            spelled,
            path: &self.path,
        })
    }

    fn sketches(&self) -> &Mutex<SketchCache> {
        &self.sketches
    }

    fn lead_correlation(&self) -> Result<bool, StoreError> {
        // SQLite is one collector's own file.
        Ok(true)
    }
}

struct SqliteConn<'a> {
    db: &'a mut Connection,
    spelled: &'a mut Spelled,
    path: &'a str,
}

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(Borrowed(match *self {
            Param::Null => ValueRef::Null,
            Param::I64(v) => ValueRef::Integer(v),
            Param::F64(v) => ValueRef::Real(v),
            Param::Text(s) => ValueRef::Text(s.as_bytes()),
            Param::Bytes(b) => ValueRef::Blob(b),
            Param::Bool(b) => ValueRef::Integer(i64::from(b)),
        }))
    }
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::I64(i),
        ValueRef::Real(f) => Value::F64(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
    }
}

/// `sql` in SQLite's spelling, translated once per statement text.
fn spelled<'m>(cache: &'m mut Spelled, sql: &str) -> &'m str {
    let key = (sql.as_ptr() as usize, sql.len());
    if cache.get(&key).is_none_or(|(text, _)| text != sql) {
        if cache.len() >= SPELLED_MAX {
            cache.clear();
        }
        cache.insert(key, (sql.to_string(), sqlite_spelling(sql)));
    }
    cache.get(&key).map_or("", |(_, s)| s.as_str())
}

fn collect(st: &mut rusqlite::Statement<'_>, p: &[Param<'_>]) -> rusqlite::Result<Vec<Row>> {
    let n = st.column_count();
    let mut rows = st.query(rusqlite::params_from_iter(p))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(Row((0..n)
            .map(|i| r.get_ref(i).map(value))
            .collect::<Result<_, _>>()?));
    }
    Ok(out)
}

impl SqliteConn<'_> {
    /// The rows of a statement; `cached` keeps it in the connection's statement cache (a
    /// one-off statement would only evict others from that small cache).
    fn rows(&mut self, sql: &str, p: &[Param<'_>], cached: bool) -> rusqlite::Result<Vec<Row>> {
        if cached {
            let sql = spelled(self.spelled, sql);
            collect(&mut *self.db.prepare_cached(sql)?, p)
        } else {
            collect(&mut self.db.prepare(&sqlite_spelling(sql))?, p)
        }
    }
}

impl Conn for SqliteConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(&mut self, sql: &str, p: &[Param<'_>]) -> Result<u64, StoreError> {
        let sql = spelled(self.spelled, sql);
        let n = self
            .db
            .prepare_cached(sql)
            .and_then(|mut st| st.execute(rusqlite::params_from_iter(p)))
            .map_err(db_err(self.path))?;
        Ok(n as u64)
    }

    fn exec_rows(
        &mut self,
        sql: &str,
        width: usize,
        flat: &[Param<'_>],
    ) -> Result<Vec<u64>, StoreError> {
        let sql = spelled(self.spelled, sql);
        let mut st = self.db.prepare_cached(sql).map_err(db_err(self.path))?;
        flat.chunks(width.max(1))
            .map(|p| {
                st.execute(rusqlite::params_from_iter(p))
                    .map(|n| n as u64)
                    .map_err(db_err(self.path))
            })
            .collect()
    }

    fn query(&mut self, sql: &str, p: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let path = self.path;
        self.rows(sql, p, true).map_err(db_err(path))
    }

    fn query_once(&mut self, sql: &str, p: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let path = self.path;
        self.rows(sql, p, false).map_err(db_err(path))
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.db.execute_batch(sql).map_err(db_err(self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_translated_once_and_another_at_the_same_address_afresh() {
        let mut cache = Spelled::new();
        let mut text = String::from("SELECT LEAST(a, $1) FROM t");
        assert_eq!(spelled(&mut cache, &text), "SELECT MIN(a, ?1) FROM t");
        assert_eq!(spelled(&mut cache, &text), "SELECT MIN(a, ?1) FROM t");
        assert_eq!(cache.len(), 1);
        // Same buffer, same length, other text: the key matches, the text does not.
        let before = text.as_ptr();
        text.replace_range(7..12, "COUNT");
        assert_eq!(text.as_ptr(), before);
        assert_eq!(spelled(&mut cache, &text), "SELECT COUNT(a, ?1) FROM t");
        assert_eq!(cache.len(), 1);
    }
}
