//! Where agents' records land, behind one trait with two backends:
//! - [`SqliteStore`]: embedded SQLite in WAL mode with `synchronous = FULL` (the default; one
//!   collector).
//! - [`PgStore`]: PostgreSQL, for deployments where several collectors share one database
//!   (a pool of connections, TLS `verify-full`).
//!
//! The logic (statements, dedup, prevalence, enrollment, incidents) is written once in
//! `sql/`, over the connection contract of `conn`; the schemas are migrations
//! (`migrations/{sqlite,postgres}`, applied by refinery when a store opens).
//!
//! Records are keyed by (clinic, host, epoch, seq): a batch sent again after a lost ack is
//! stored once and counted as duplicates. A batch is durable when `ingest` returns, which is
//! when the collector acks it. Findings are also kept in their own table for queries;
//! summaries and health stay as encoded records.

pub(crate) mod conn;
pub(crate) mod indicators;
mod pg_target;
mod postgres;
pub mod prevalence;
mod sql;
mod sqlite;
mod validate;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use validate::{validate, validate_hello, MAX_BATCH_RECORDS};

use clinicwatch_proto::v1::{record::Body, Batch, Heartbeat, Hello, Record};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The batch is malformed; nothing of it was stored (`invalid_argument`).
    #[error("invalid batch: {0}")]
    Invalid(String),
    #[error("store `{path}`: {}", chain(source.as_ref()))]
    Db {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store's URL or TLS settings cannot work (the collector does not start).
    #[error("store `{path}`: {why}")]
    Config { path: String, why: String },
    /// The schema could not be brought to this version.
    #[error("store `{path}`: migrating the schema: {why}")]
    Migration { path: String, why: String },
    /// A row that does not read as this version wrote it.
    #[error("store data: {0}")]
    Data(String),
}

/// An error with its causes, `a: b: c` (a driver's "error performing TLS handshake" says
/// why only in its source), without repeating a cause its parent already shows.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// Who sent it: taken from the client certificate, never from the frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    pub clinic: String,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ingested {
    pub stored: u64,
    pub duplicates: u64,
    /// Every record of the epoch up to here is stored: what the collector acks.
    pub up_to_seq: u64,
    /// The sequence numbers stored by this call (not duplicates), in order.
    pub new_seqs: Vec<u64>,
    /// Of those, records whose own time lies outside the plausible window: stored, never
    /// correlated.
    pub out_of_window: u64,
}

/// Event times the collector finds plausible, around its own clock. A record outside is
/// stored and acked (so that it never blocks delivery), counted, and kept out of findings
/// and indicators, so that it can neither join nor suppress an incident: a host that claims
/// 1970 or 2100 changes nothing fleet-wide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeWindow {
    pub earliest: f64,
    pub latest: f64,
}

impl TimeWindow {
    /// Every time is plausible (tests and the replay of old data).
    pub const UNBOUNDED: TimeWindow = TimeWindow {
        earliest: f64::NEG_INFINITY,
        latest: f64::INFINITY,
    };

    /// From `earliest` to `latest` (unix seconds).
    pub fn between(earliest: f64, latest: f64) -> TimeWindow {
        TimeWindow { earliest, latest }
    }

    pub fn contains(&self, t: f64) -> bool {
        t >= self.earliest && t <= self.latest
    }
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
    /// Evidence values as JSON text, by key.
    pub evidence: std::collections::BTreeMap<String, String>,
}

/// Where an indicator was seen: one row per (kind, value, clinic, host, app, hour).
#[derive(Debug, Clone, PartialEq)]
pub struct SightingRow {
    pub kind: String,
    pub value: String,
    pub clinic: String,
    pub host: String,
    pub app: String,
    /// Event time (the records' own), first and last in that hour.
    pub first_time: f64,
    pub last_time: f64,
}

/// An indicator fleet-wide: first seen (event time) and how many clinics ever saw it (or,
/// for `top_indicators`, saw it since the time asked).
#[derive(Debug, Clone, PartialEq)]
pub struct IndicatorStat {
    pub kind: String,
    pub value: String,
    pub first_seen: f64,
    pub last_seen: f64,
    pub clinics: u64,
    /// `clinics` is a sketch's estimate (more than [`prevalence::EXACT_CLINICS`] clinics).
    pub clinics_estimated: bool,
}

/// A campaign as the SOC sees it: one correlation rule, one group (an indicator, or the
/// fleet), the clinics and hosts involved.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Incident {
    /// 0 before it is first saved.
    pub id: i64,
    pub rule: String,
    /// What the rule grouped by, e.g. `dest_name:evil.example`.
    pub key: String,
    /// `new`, `acknowledged` or `closed`.
    pub state: String,
    pub severity: String,
    pub title: String,
    /// Event time of the first and last evidence.
    pub first_seen: f64,
    pub last_seen: f64,
    pub clinics: Vec<String>,
    /// `clinic/host`.
    pub hosts: Vec<String>,
    pub evidence: std::collections::BTreeMap<String, String>,
    pub created: f64,
    pub updated: f64,
}

/// A host as last heard from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostRow {
    pub clinic: String,
    pub host: String,
    pub hostname: String,
    pub agent_version: String,
    pub kernel: String,
    pub epoch: u64,
    pub last_seen: f64,
    /// From the last heartbeat: records waiting in its spool, summaries its spool dropped.
    pub spooled: u64,
    pub dropped: u64,
}

/// What the collector remembers of an enrolled host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Enrollment {
    /// SHA-256 (hex) of the public key of its current certificate; empty when revoked.
    pub key_sha256: String,
    /// `clinicwatch-collector unenroll`: every certificate of the host is refused until it
    /// enrolls again with a token.
    pub revoked: bool,
    pub updated: f64,
    /// Renewal is two-phase: the key of the certificate issued last, not yet used. Both keys
    /// are accepted until a stream opens with this one; then the old one is refused. A
    /// renewal whose reply was lost leaves the host with its old, still valid, certificate.
    pub pending_key_sha256: String,
}

/// An enrollment token as the collector keeps it: the token itself (an HMAC over these
/// fields) is shown once and never stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenRow {
    /// The token's nonce (hex): what `tokens revoke` names.
    pub id: String,
    pub clinic: String,
    /// Empty: any host id; else the only host id it enrolls.
    pub host: String,
    pub expires: f64,
    pub uses_left: i64,
    pub revoked: bool,
    pub created: f64,
}

/// Why a well-signed token is not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the enrollment token is unknown to this collector's database")]
    Unknown,
    #[error("the enrollment token was revoked")]
    Revoked,
    #[error("the enrollment token was used as many times as it allows")]
    UsedUp,
    #[error("the enrollment token expired")]
    Expired,
    #[error("the enrollment token is for host `{0}` only")]
    OtherHost(String),
}

impl TokenRow {
    /// Whether `row` may enroll one more host at `now` (the stores then take one use).
    pub fn usable(row: Option<TokenRow>, host: &str, now: f64) -> Result<TokenRow, TokenRefusal> {
        let t = row.ok_or(TokenRefusal::Unknown)?;
        if !t.host.is_empty() && t.host != host {
            Err(TokenRefusal::OtherHost(t.host))
        } else if t.revoked {
            Err(TokenRefusal::Revoked)
        } else if t.uses_left <= 0 {
            Err(TokenRefusal::UsedUp)
        } else if now >= t.expires {
            Err(TokenRefusal::Expired)
        } else {
            Ok(t)
        }
    }
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub records: u64,
    pub findings: u64,
}

/// A record store. Every method is blocking (the ingest service calls them off the async
/// threads); `ingest` returns only once the batch is durable. Calls may run in parallel
/// (PostgreSQL's run on connections of a pool; SQLite's take turns on its connection).
pub trait Store: Send + Sync {
    /// Records a Hello; returns the highest seq stored for its epoch (the agent resumes
    /// after it: it sends in order and resends from its last ack, so everything below is
    /// stored, or was dropped by its full spool, which it reports).
    fn hello(&self, host: &HostKey, hello: &Hello, now: f64) -> Result<u64, StoreError>;
    /// The highest seq stored for the host's epoch (0 if none).
    fn stored_up_to(&self, host: &HostKey, epoch: u64) -> Result<u64, StoreError>;
    /// The host's enrollment, if it ever enrolled (hosts given a certificate by hand with
    /// `issue` have none).
    fn enrollment(&self, host: &HostKey) -> Result<Option<Enrollment>, StoreError>;
    /// Records the host's current key (or its revocation).
    fn set_enrollment(&self, host: &HostKey, e: &Enrollment) -> Result<(), StoreError>;
    /// Records a new enrollment token.
    fn put_token(&self, t: &TokenRow) -> Result<(), StoreError>;
    /// Takes one use of token `id`, atomically, or says why it cannot be used.
    fn use_token(
        &self,
        id: &str,
        host: &str,
        now: f64,
    ) -> Result<Result<TokenRow, TokenRefusal>, StoreError>;
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;
    /// Revokes token `id`; false when there is no such token.
    fn revoke_token(&self, id: &str) -> Result<bool, StoreError>;
    /// Notes a heartbeat: the host is alive, with this much waiting in its spool.
    fn heartbeat(&self, host: &HostKey, hb: &Heartbeat, now: f64) -> Result<(), StoreError>;
    /// Stores a batch durably, in one transaction; a record already stored is a
    /// duplicate; records outside `window` are stored but not correlated.
    fn ingest(
        &self,
        host: &HostKey,
        batch: &Batch,
        now: f64,
        window: TimeWindow,
    ) -> Result<Ingested, StoreError>;
    fn findings_since(&self, since: f64) -> Result<Vec<StoredFinding>, StoreError>;
    fn hosts(&self) -> Result<Vec<HostRow>, StoreError>;
    /// Deletes summaries and health received before `summaries_before` and findings (raised)
    /// before `findings_before`.
    fn prune(&self, summaries_before: f64, findings_before: f64) -> Result<Pruned, StoreError>;
    /// Sightings whose last time is at or after `since`, of one app or of all.
    fn sightings_since(
        &self,
        since: f64,
        app: Option<&str>,
    ) -> Result<Vec<SightingRow>, StoreError>;
    /// Fleet-wide first seen and prevalence of these (kind, value) pairs (unknown ones are
    /// left out).
    fn indicator_stats(&self, keys: &[(String, String)]) -> Result<Vec<IndicatorStat>, StoreError>;
    /// Indicators seen by the most clinics since `since` (event time).
    fn top_indicators(&self, since: f64, limit: usize) -> Result<Vec<IndicatorStat>, StoreError>;
    /// Whether this collector runs correlation passes: with several collectors on one
    /// PostgreSQL, one holds an advisory lock (taken over if its connection ends); alone, yes.
    fn lead_correlation(&self) -> Result<bool, StoreError>;
    /// The open (not closed) incident of this rule and key.
    fn open_incident(&self, rule: &str, key: &str) -> Result<Option<Incident>, StoreError>;
    /// Inserts (id 0) or updates an incident; returns its id.
    fn save_incident(&self, inc: &Incident) -> Result<i64, StoreError>;
    /// Incidents, newest first; `state` filters.
    fn incidents(&self, state: Option<&str>) -> Result<Vec<Incident>, StoreError>;
    fn incident(&self, id: i64) -> Result<Option<Incident>, StoreError>;
    /// Sets an incident's state; false if there is no such incident.
    fn set_incident_state(&self, id: i64, state: &str, now: f64) -> Result<bool, StoreError>;
    /// A cheap round trip: is the store answering?
    fn ping(&self) -> Result<(), StoreError>;
    /// Rows in the record table.
    fn record_count(&self) -> Result<u64, StoreError>;
}

/// The columns an incident is read from, in `Incident` order.
pub(crate) const INCIDENT_COLUMNS: &str = "id, rule, key, state, severity, title, first_seen, \
    last_seen, clinics, hosts, evidence, created, updated";

/// An incident's lists and evidence as JSON text.
pub(crate) fn incident_json(i: &Incident) -> (String, String, String) {
    let j = |v: serde_json::Result<String>| v.unwrap_or_else(|_| "[]".into());
    (
        j(serde_json::to_string(&i.clinics)),
        j(serde_json::to_string(&i.hosts)),
        serde_json::to_string(&i.evidence).unwrap_or_else(|_| "{}".into()),
    )
}

/// How a record is filed.
pub(crate) fn kind(r: &Record) -> &'static str {
    match &r.body {
        Some(Body::Summary(_)) => "summary",
        Some(Body::Finding(_)) => "finding",
        Some(Body::Health(_)) => "health",
        None => "none",
    }
}

/// The time a record speaks of (unix seconds): a summary's end, a finding's or health's time.
pub use clinicwatch_proto::limits::record_time;

fn is_postgres(spec: &str) -> bool {
    let key_value = spec.split_whitespace().any(|kv| {
        kv.split_once('=').is_some_and(|(k, _)| {
            matches!(
                k.trim(),
                "host" | "hostaddr" | "port" | "dbname" | "user" | "password"
            )
        })
    });
    spec.starts_with("postgres://") || spec.starts_with("postgresql://") || key_value
}

/// The store's URL fit to log: a SQLite path as it is, a PostgreSQL URL without password.
pub fn shown(spec: &str) -> String {
    if is_postgres(spec) {
        postgres::shown(spec)
    } else {
        spec.to_string()
    }
}

/// A second connection to the same store, for the collector's background work (correlation
/// passes, retention, the SOC's queries) so that it never waits on, or holds up, the
/// connection that stores agents' batches. `None` for an in-memory SQLite database, which a
/// second connection would not see.
pub fn open_background(spec: &str) -> Result<Option<Box<dyn Store>>, StoreError> {
    if spec == ":memory:" || spec.is_empty() {
        return Ok(None);
    }
    open(spec).map(Some)
}

/// Opens the store a URL names: `postgres://…` or `postgresql://…` (or a libpq key=value
/// string: `host=… dbname=…`) for PostgreSQL, anything else is a SQLite file path.
pub fn open(spec: &str) -> Result<Box<dyn Store>, StoreError> {
    if is_postgres(spec) {
        Ok(Box::new(PgStore::connect(spec)?))
    } else {
        Ok(Box::new(SqliteStore::open(std::path::Path::new(spec))?))
    }
}
