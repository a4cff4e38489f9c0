//! clinicwatch collector: the central service of the security operations centre.
//!
//! The folders are the stages of the data path, in order (`ARCHITECTURE.md` walks them):
//! [`api`] (the TLS front door, the Ingest, Enroll and Soc gRPC services, per-host limits)
//! → [`store`] (SQLite or PostgreSQL, written once, with migrations) → [`correlate`]
//! (fleet rules into incidents) → [`alert`] (OCSF, CEF, webhook). [`http`] serves the page,
//! `/api/*` and `/metrics`; [`auth`] holds the CA and who a certificate speaks for.
//! Shared by several stages, each in a module of its own: [`calls`] (the clock, the
//! blocking-store bridge), [`status`] (the one error→Status map), [`metrics`] (counters).
//! [`server`] wires them; [`config`] is `collector.toml`.

pub mod alert;
pub mod api;
pub mod auth;
pub mod calls;
pub mod config;
pub mod correlate;
pub mod http;
pub mod metrics;
pub mod server;
pub(crate) mod status;
pub mod store;
