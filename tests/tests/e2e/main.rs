//! End-to-end tests as root, one binary with a module per area: the agent's findings
//! (`intel`), query profiling through libssl (`query`), delivery to a real collector through
//! outages and faults (`delivery`, `faults`), the agent as its service unit runs it
//! (`service`) and the Debian packages (`package`). The kernel tests that also run in the
//! VMs are the binary `kernel` (tests/tests/kernel.rs), packed alone into the initramfs.

mod delivery;
mod faults;
mod intel;
mod package;
mod query;
mod service;
