//! clinicwatch collector: the central service of the security operations centre.
//!
//! - [`server`]: the gRPC server (Ingest over mutual TLS, Enroll, gRPC health) and its
//!   background tasks; [`config`]: `collector.toml`.
//! - [`ingest`]: one stream per agent, identity from the client certificate, acks after the
//!   durable write; [`limit`]: per-host rate limits; [`metrics`]: Prometheus counters.
//! - [`store`]: the record store (SQLite, or PostgreSQL for several collectors).
//! - [`pki`] and [`enroll`]: the CA, enrollment tokens and certificate issue.
//!
//! Correlation across clinics and the SOC surface come next; see ARCHITECTURE.md.

pub mod calls;
pub mod config;
pub mod correlate;
pub mod enroll;
pub mod identity;
pub mod ingest;
pub mod limit;
pub mod listen;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod siem;
pub mod soc;
pub mod status;
pub mod store;
pub mod web;
