//! clinicwatch agent: loads the kernel probes, follows the watched applications' process
//! trees, reports their file and network activity, judges it, and delivers what it found.
//!
//! The folders are the stages of the data path, in order (`ARCHITECTURE.md` walks them):
//! [`kernel`] (load, hook table, BTF, uprobe targets) → ring buffer → [`pipeline`] (decode,
//! one interpreter per event family, process table) → [`event`] (the vocabulary every later
//! stage shares) → [`intel`] (windows, baselines, detectors, privacy) → [`sinks`] (output,
//! spool) → [`delivery`] (records, gRPC client, enrollment). [`agent`] wires them, [`config`]
//! configures them, [`cli`] holds the offline commands.

pub mod agent;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod event;
pub mod intel;
pub mod kernel;
pub mod pipeline;
pub mod sinks;
pub(crate) mod worker;

pub use agent::Agent;
pub use config::Config;
pub use event::Event;
