//! The agent's integration tests, one binary with a module per area (no kernel, no root):
//! the detectors on synthesized event streams, and the exporter against a real collector
//! over mutual TLS.

mod detectors;
mod exporter;
