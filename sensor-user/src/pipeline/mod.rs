//! Kernel records become events: [`decode`] checks and types each ring-buffer record,
//! [`handler`] interprets it (names, ancestry, paths, counters) with the process table of
//! [`proctable`]; [`dns`] names destinations from answers and [`query`] reduces TLS
//! plaintext to query templates.

pub mod decode;
pub mod dns;
pub mod handler;
pub(crate) mod proctable;
pub mod query;
