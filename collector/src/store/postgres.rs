//! The shared backend: PostgreSQL, for deployments where several collectors (behind one
//! address) share one database. Every collector may receive any host: dedup and resume work
//! across them because both are decided by the database (primary keys, `ON CONFLICT`), and a
//! batch is committed (durable, with PostgreSQL's default `synchronous_commit`) before it is
//! acked.
//!
//! Connections come from a pool (tokio-postgres under deadpool), so that the streams of
//! different hosts commit in parallel; each call takes one for its length. A broken
//! connection is dropped by the pool and the failed call is `unavailable`, so the agent
//! resends. TLS is `verify-full` by default (see `pg_target`). The store's calls block
//! (they run off the async threads): each runs its statements on the collector's runtime,
//! or on a small runtime of the store's own when it was opened outside one (the CLI).

use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::{IsNull, ToSql, Type};

use super::conn::{Conn, Dialect, Param, Row, Value};
use super::pg_target::Target;
use super::prevalence::SketchCache;
use super::sql::Backend;
use super::StoreError;

pub use super::pg_target::shown;

mod migrations {
    refinery::embed_migrations!("migrations/postgres");
}

/// Held by the collector that runs correlation passes ("correl").
const CORRELATION_LOCK: i64 = 0x636f_7272_656c;
/// Serialises migrations between collectors starting together ("clinic").
const SCHEMA_LOCK: i64 = 0x636c_696e_6963;
/// Connections per store. The collector opens two stores (ingest, background work), so a
/// collector holds at most twice this, plus the correlation lock's own connection.
pub const POOL_SIZE: usize = 16;

/// Where the store's statements run.
enum Rt {
    Shared(tokio::runtime::Handle),
    /// Opened outside a runtime; shut down without waiting when the store goes.
    Owned(Option<tokio::runtime::Runtime>),
}

pub struct PgStore {
    target: Target,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pool: Pool,
    rt: Rt,
    /// The connection that holds the correlation lock (or tries to), apart from the pool,
    /// and whether it holds it.
    lead: Mutex<Option<(tokio_postgres::Client, bool)>>,
    sketches: Mutex<SketchCache>,
}

impl PgStore {
    /// Connects, with TLS as the URL says, and brings the schema to this version. Connects
    /// time out after 10 s, TCP keepalives and a 30 s user timeout notice a dead server,
    /// and statements are cut after 60 s, so that a stalled database fails calls
    /// (`unavailable`, the agent resends) rather than holding streams.
    pub fn connect(spec: &str) -> Result<PgStore, StoreError> {
        let mut target = Target::parse(spec)?;
        target
            .config
            .connect_timeout(Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(30))
            .options("-c statement_timeout=60000");
        let tls = target.connector()?;
        let manager = Manager::from_config(
            target.config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(15)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| StoreError::Config {
                path: target.shown.clone(),
                why: e.to_string(),
            })?;
        let rt = match tokio::runtime::Handle::try_current() {
            Ok(h) => Rt::Shared(h),
            Err(_) => Rt::Owned(Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("cw-pg")
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Config {
                        path: target.shown.clone(),
                        why: format!("runtime: {e}"),
                    })?,
            )),
        };
        let s = PgStore {
            target,
            tls,
            pool,
            rt,
            lead: Mutex::new(None),
            sketches: Mutex::default(),
        };
        s.migrate()?;
        Ok(s)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Rt::Shared(h) => h.block_on(f),
            Rt::Owned(Some(rt)) => rt.block_on(f),
            Rt::Owned(None) => unreachable!("the runtime goes only with the store"),
        }
    }

    fn err(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        |source| StoreError::Db {
            path: self.target.shown.clone(),
            source: Box::new(source),
        }
    }

    /// A connection of its own (not from the pool), its I/O driven on the store's runtime.
    fn dedicated(&self) -> Result<tokio_postgres::Client, StoreError> {
        self.block_on(async {
            let (client, conn) = self
                .target
                .config
                .connect(self.tls.clone())
                .await
                .map_err(self.err())?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok(client)
        })
    }

    /// Applies the migrations not yet applied, one collector at a time. Once the schema is
    /// current nothing is locked but refinery's own history table, so that a collector
    /// starting never waits on, or deadlocks with, other collectors' batches.
    fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.dedicated()?;
        let shown = self.target.shown.clone();
        self.block_on(async {
            client
                .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
                .await
                .map_err(self.err())?;
            let ran = migrations::migrations::runner()
                .run_async(&mut client)
                .await
                .map_err(|e| StoreError::Migration {
                    path: shown,
                    why: super::chain(&e),
                });
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
                .await;
            ran.map(drop)
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Rt::Owned(rt) = &mut self.rt {
            if let Some(rt) = rt.take() {
                rt.shutdown_background();
            }
        }
    }
}

impl Backend for PgStore {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let client = self.block_on(self.pool.get()).map_err(|e| StoreError::Db {
            path: self.target.shown.clone(),
            source: Box::new(e),
        })?;
        let mut conn = PgConn {
            client: &client,
            store: self,
            broken: false,
        };
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut conn)));
        let out = match out {
            Ok(out) => out,
            Err(panic) => {
                // It may be mid-transaction (`transaction` rolls back, but a panic outside
                // one may leave anything): never hand it out again.
                drop(Object::take(client));
                std::panic::resume_unwind(panic)
            }
        };
        if conn.broken {
            // Its transaction could not be rolled back: never hand it out again.
            drop(Object::take(client));
        }
        out
    }

    fn sketches(&self) -> &Mutex<SketchCache> {
        &self.sketches
    }

    /// A session-level advisory lock on a connection of its own: held for as long as that
    /// connection lives, taken over by another collector when it ends.
    fn lead_correlation(&self) -> Result<bool, StoreError> {
        let mut lead = self.lead.lock().unwrap_or_else(|p| p.into_inner());
        match lead.as_ref() {
            Some((c, true)) if !c.is_closed() => return Ok(true),
            Some((c, false)) if !c.is_closed() => {}
            _ => *lead = Some((self.dedicated()?, false)),
        }
        let Some((client, leading)) = lead.as_mut() else {
            unreachable!("set above")
        };
        *leading = self
            .block_on(client.query_one("SELECT pg_try_advisory_lock($1)", &[&CORRELATION_LOCK]))
            .map_err(self.err())?
            .get(0);
        Ok(*leading)
    }
}

struct PgConn<'a> {
    client: &'a Object,
    store: &'a PgStore,
    /// A ROLLBACK failed on a connection still open.
    broken: bool,
}

impl PgConn<'_> {
    fn params<'p>(p: &'p [Param<'p>]) -> Vec<&'p (dyn ToSql + Sync)> {
        p.iter().map(|x| x as &(dyn ToSql + Sync)).collect()
    }
}

impl Conn for PgConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&mut self, sql: &str, p: &[Param<'_>]) -> Result<u64, StoreError> {
        let c = self.client;
        self.store
            .block_on(async {
                let st = c.prepare_cached(sql).await?;
                c.execute(&st, &Self::params(p)).await
            })
            .map_err(self.store.err())
    }

    fn query(&mut self, sql: &str, p: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let c = self.client;
        let rows = self
            .store
            .block_on(async {
                let st = c.prepare_cached(sql).await?;
                c.query(&st, &Self::params(p)).await
            })
            .map_err(self.store.err())?;
        rows.iter().map(row).collect()
    }

    fn query_once(&mut self, sql: &str, p: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let c = self.client;
        let rows = self
            .store
            .block_on(c.query(sql, &Self::params(p)))
            .map_err(self.store.err())?;
        rows.iter().map(row).collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let done = self
            .store
            .block_on(self.client.batch_execute(sql))
            .map_err(self.store.err());
        if done.is_err() && sql == "ROLLBACK" && !self.client.is_closed() {
            self.broken = true;
        }
        done
    }
}

/// A row as [`Value`]s, by the columns' types.
fn row(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let bad = |i: usize, e: tokio_postgres::Error| StoreError::Data(format!("column {i}: {e}"));
    let mut out = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|v| Value::I64(v.into()))),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|v| Value::I64(v.into()))),
            Type::INT8 => r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::I64)),
            Type::FLOAT4 => r
                .try_get::<_, Option<f32>>(i)
                .map(|v| v.map(|v| Value::F64(v.into()))),
            Type::FLOAT8 => r.try_get::<_, Option<f64>>(i).map(|v| v.map(Value::F64)),
            Type::BOOL => r.try_get::<_, Option<bool>>(i).map(|v| v.map(Value::Bool)),
            Type::BYTEA => r
                .try_get::<_, Option<Vec<u8>>>(i)
                .map(|v| v.map(Value::Bytes)),
            _ => r
                .try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text)),
        }
        .map_err(|e| bad(i, e))?;
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

/// A parameter as the type the server asks for: integers fit to `INT2`/`INT4` columns
/// (checked), integers to `DOUBLE PRECISION`, and a mismatch is an error, never bytes of
/// the wrong type.
impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        fn put<T: ToSql>(
            v: T,
            ty: &Type,
            out: &mut bytes::BytesMut,
        ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            if T::accepts(ty) {
                v.to_sql(ty, out)
            } else {
                Err(format!("cannot send a {} as {ty}", std::any::type_name::<T>()).into())
            }
        }
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::I64(v) => match *ty {
                Type::INT2 => put(i16::try_from(v)?, ty, out),
                Type::INT4 => put(i32::try_from(v)?, ty, out),
                Type::FLOAT8 => put(v as f64, ty, out),
                _ => put(v, ty, out),
            },
            Param::F64(v) => put(v, ty, out),
            Param::Text(s) => put(s, ty, out),
            Param::Bytes(b) => put(b, ty, out),
            Param::Bool(b) => put(b, ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}
