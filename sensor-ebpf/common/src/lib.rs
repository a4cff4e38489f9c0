//! The kernel/user contract of clinicwatch.
//!
//! Every type that crosses the ring buffer or a map lives here: `#[repr(C)]`, integers and
//! fixed arrays only, explicit padding, no `bool`, no enums. Sizes are asserted at compile
//! time so a layout change on one side cannot go unnoticed on the other. Names of maps and
//! programs are constants so the agent and an unprivileged test can check the built object.
#![no_std]

pub mod event;
pub mod maps;
pub mod names;
pub mod offsets;

pub use event::*;
pub use maps::*;
pub use offsets::KernelOffsets;
