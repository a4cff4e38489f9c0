//! The agent's offline commands: baselines, findings, replay ([`report`]).

pub mod report;
