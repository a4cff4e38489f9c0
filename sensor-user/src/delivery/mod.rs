//! What leaves the host and how: records shaped to the collector's limits ([`records`]),
//! the gRPC client that drains the spool ([`client`]) over the TLS channel of [`channel`],
//! refused records kept aside ([`quarantine`]), and the host's certificate: enrollment and
//! renewal ([`enroll`]), one-step enrollment from the command line ([`bootstrap`]).

pub mod bootstrap;
pub(crate) mod channel;
pub mod client;
pub mod enroll;
pub(crate) mod quarantine;
pub mod records;
