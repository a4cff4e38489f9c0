//! clinicwatch collector: the central gRPC service of the security operations centre.
//!
//! Not built yet. Ingest (mTLS, dedup, durable acks) and storage come with the delivery
//! issue; correlation across clinics and the SOC surface after it. See
//! `../shared/DESIGN.md` and ARCHITECTURE.md for where it fits.
