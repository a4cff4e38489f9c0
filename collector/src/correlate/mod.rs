//! Correlation across clinics: one practice's finding is a lead; the same indicator, the
//! same finding or the same surge in many practices at once is a campaign, and becomes one
//! incident listing the clinics and hosts.
//!
//! - what a stored record says about indicators (destinations, children) is
//!   `store::indicators`: the store keeps them per clinic and hour, with fleet-wide first
//!   seen and prevalence, as it stores the record.
//! - [`rules`]: correlation rules as data (`default_rules.toml`).
//! - [`engine`]: a pass over the recent past, idempotent, run by one collector at a time.

pub(crate) mod engine;
pub mod rules;

pub use engine::{Engine, PassReport};
