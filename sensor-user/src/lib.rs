//! clinicwatch agent: loads the kernel probes, follows the watched applications' process
//! trees, and reports their file and network activity.
//!
//! Data path: [`sensor`] (load, offsets from [`btf`], hooks chosen by [`capabilities`]) →
//! ring buffer → [`decode`] → [`handler`] (process table in [`proctable`]) → [`output`].

pub mod agent;
pub mod bootstrap;
pub mod btf;
pub mod capabilities;
pub(crate) mod channel;
pub mod config;
pub mod decode;
pub mod dns;
pub mod enroll;
pub mod event;
pub mod export;
pub mod exporter;
pub mod handler;
pub mod intel;
pub mod output;
pub mod privileges;
pub mod procfs;
pub mod proctable;
pub mod quarantine;
pub mod query;
pub mod report;
pub mod sensor;
pub mod spool;
pub mod statefile;
pub mod tls;
pub mod unspooled;
pub mod worker;

pub use agent::Agent;
pub use config::Config;
pub use event::Event;
