//! Trust: the collector's CA and the certificates it issues ([`pki`]), and who a call's
//! certificate speaks for and whether it may still act ([`identity`]).

pub mod identity;
pub mod pki;
