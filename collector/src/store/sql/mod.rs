//! The store's logic, once for both databases: each backend hands out a [`Conn`] and keeps
//! its prevalence-sketch cache; everything else (the statements, dedup, prevalence,
//! enrollment, incidents) is here.

mod enroll;
mod hosts;
mod incidents;
mod ingest;
mod queries;

use std::sync::Mutex;

use clinicwatch_proto::v1::{Batch, Heartbeat, Hello};

use super::conn::Conn;
use super::prevalence::SketchCache;
use super::{
    Enrollment, HostKey, HostRow, Incident, IndicatorStat, Ingested, Pruned, SightingRow, Store,
    StoreError, StoredFinding, TimeWindow, TokenRefusal, TokenRow,
};

/// What a database backend provides.
pub trait Backend: Send + Sync {
    /// Runs `f` on a connection (SQLite's one, or one from the PostgreSQL pool).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError>;
    /// Prevalence sketches this collector has seen (see `prevalence`).
    fn sketches(&self) -> &Mutex<SketchCache>;
    /// See [`Store::lead_correlation`].
    fn lead_correlation(&self) -> Result<bool, StoreError>;
}

impl<B: Backend> Store for B {
    fn hello(&self, host: &HostKey, hello: &Hello, now: f64) -> Result<u64, StoreError> {
        self.with(|c| hosts::hello(c, host, hello, now))
    }
    fn stored_up_to(&self, host: &HostKey, epoch: u64) -> Result<u64, StoreError> {
        self.with(|c| hosts::stored_up_to(c, host, epoch))
    }
    fn enrollment(&self, host: &HostKey) -> Result<Option<Enrollment>, StoreError> {
        self.with(|c| enroll::enrollment(c, host))
    }
    fn set_enrollment(&self, host: &HostKey, e: &Enrollment) -> Result<(), StoreError> {
        self.with(|c| enroll::set_enrollment(c, host, e))
    }
    fn put_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        self.with(|c| enroll::put_token(c, t))
    }
    fn use_token(
        &self,
        id: &str,
        host: &str,
        now: f64,
    ) -> Result<Result<TokenRow, TokenRefusal>, StoreError> {
        self.with(|c| enroll::use_token(c, id, host, now))
    }
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.with(enroll::tokens)
    }
    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| enroll::revoke_token(c, id))
    }
    fn heartbeat(&self, host: &HostKey, hb: &Heartbeat, now: f64) -> Result<(), StoreError> {
        self.with(|c| hosts::heartbeat(c, host, hb, now))
    }
    fn ingest(
        &self,
        host: &HostKey,
        batch: &Batch,
        now: f64,
        window: TimeWindow,
    ) -> Result<Ingested, StoreError> {
        super::validate(batch)?;
        self.with(|c| ingest::ingest(c, self.sketches(), host, batch, now, window))
    }
    fn findings_since(&self, since: f64) -> Result<Vec<StoredFinding>, StoreError> {
        self.with(|c| queries::findings_since(c, since))
    }
    fn hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        self.with(hosts::hosts)
    }
    fn prune(&self, summaries_before: f64, findings_before: f64) -> Result<Pruned, StoreError> {
        self.with(|c| queries::prune(c, summaries_before, findings_before))
    }
    fn sightings_since(
        &self,
        since: f64,
        app: Option<&str>,
    ) -> Result<Vec<SightingRow>, StoreError> {
        self.with(|c| queries::sightings_since(c, since, app))
    }
    fn indicator_stats(&self, keys: &[(String, String)]) -> Result<Vec<IndicatorStat>, StoreError> {
        self.with(|c| queries::indicator_stats(c, keys))
    }
    fn top_indicators(&self, since: f64, limit: usize) -> Result<Vec<IndicatorStat>, StoreError> {
        self.with(|c| queries::top_indicators(c, since, limit))
    }
    fn lead_correlation(&self) -> Result<bool, StoreError> {
        Backend::lead_correlation(self)
    }
    fn open_incident(&self, rule: &str, key: &str) -> Result<Option<Incident>, StoreError> {
        self.with(|c| incidents::open_incident(c, rule, key))
    }
    fn save_incident(&self, inc: &Incident) -> Result<i64, StoreError> {
        self.with(|c| incidents::save_incident(c, inc))
    }
    fn incidents(&self, state: Option<&str>) -> Result<Vec<Incident>, StoreError> {
        self.with(|c| incidents::incidents(c, state))
    }
    fn incident(&self, id: i64) -> Result<Option<Incident>, StoreError> {
        self.with(|c| incidents::incident(c, id))
    }
    fn set_incident_state(&self, id: i64, state: &str, now: f64) -> Result<bool, StoreError> {
        self.with(|c| incidents::set_incident_state(c, id, state, now))
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query("SELECT 1", &[]).map(drop))
    }
    fn record_count(&self) -> Result<u64, StoreError> {
        self.with(|c| c.query_one("SELECT COUNT(*) FROM records", &[])?.u64(0))
    }
}
