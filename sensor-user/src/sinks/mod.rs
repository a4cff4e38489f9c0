//! Where events and records go on the host: JSON lines and subscribers ([`output`]), the
//! durable bounded queue before delivery ([`spool`]), what waits when the disk is full
//! ([`unspooled`]), and the private durable files they are written through ([`statefile`]).

pub(crate) mod output;
pub mod spool;
pub(crate) mod statefile;
pub(crate) mod unspooled;
