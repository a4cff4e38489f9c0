//! clinicwatch collector: the central service of the security operations centre.
//!
//! Built so far: [`store`], the durable record store with per-host deduplication that
//! ingest acks against. The gRPC ingest (mTLS, acks after the durable write), correlation
//! across clinics and the SOC surface come next; see ARCHITECTURE.md.

pub mod ingest;
pub mod pki;
pub mod store;
