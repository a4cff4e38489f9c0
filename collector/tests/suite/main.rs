//! The collector's integration tests, one binary with a module per area (as aya's
//! integration tests are): real gRPC over real TLS on 127.0.0.1, real SQLite files, the
//! private PostgreSQL of `support/pg.rs` (TLS on), a headless Chromium for the page.

mod support;

mod cli;
mod correlate;
mod frames;
mod hardening;
mod ingest;
mod soc;
mod store;
mod web;
