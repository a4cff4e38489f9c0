//! The kernel side, seen from userspace: loading the probes ([`sensor`]), the hook table
//! that picks a hook per capability for this kernel ([`capabilities`]), struct offsets from
//! BTF ([`btf`]), the TLS libraries uprobes attach to ([`tls`]), `/proc`, tracefs and the
//! LSM list ([`procfs`]), the capabilities the agent needs ([`privileges`]), and the probes'
//! own log lines into `tracing` ([`klog`]).

pub(crate) mod attach;
pub mod btf;
pub mod capabilities;
pub mod klog;
pub mod privileges;
pub mod procfs;
pub(crate) mod ringbuf;
pub mod sensor;
pub(crate) mod tls;
