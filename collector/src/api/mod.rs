//! What agents and analysts call: the front door ([`listen`]: TCP accept and the TLS
//! handshake, bounded before anyone has authenticated), the `Ingest` stream of each agent
//! ([`ingest`], with per-host rate limits from [`limit`]), certificate enrollment and
//! renewal ([`enroll`]), and the analysts' `Soc` service ([`soc`]).

pub mod enroll;
pub mod ingest;
pub(crate) mod limit;
pub mod listen;
pub(crate) mod soc;
