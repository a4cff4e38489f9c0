//! The probes' own log lines into `tracing`. The probes log through aya-log on rare paths
//! only (the first error of each kind for a hook on a CPU, `sensor-ebpf/src/emit.rs`); the
//! lines arrive in the `AYA_LOGS` ring buffer and are read here by a thread of their own,
//! so they never wait on the event loop, and leave as `tracing` events with the target
//! [`TARGET`] (`RUST_LOG=clinicwatch::kernel=debug` shows them alone).

use std::{
    os::fd::AsRawFd as _,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use clinicwatch_common::hook;
use tracing::warn;

use crate::worker::Worker;

/// The `tracing` target of every kernel log line.
pub const TARGET: &str = "clinicwatch::kernel";

/// How long the reader sleeps in `poll(2)` before it looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);

/// Hands aya-log's records to `tracing`, keeping the probe's module path and line.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let (module, line) = (r.module_path().unwrap_or("-"), r.line().unwrap_or(0));
        let text = named(&r.args().to_string());
        match r.level() {
            log::Level::Error => tracing::error!(target: TARGET, module, line, "{text}"),
            log::Level::Warn => tracing::warn!(target: TARGET, module, line, "{text}"),
            log::Level::Info => tracing::info!(target: TARGET, module, line, "{text}"),
            log::Level::Debug => tracing::debug!(target: TARGET, module, line, "{text}"),
            log::Level::Trace => tracing::trace!(target: TARGET, module, line, "{text}"),
        }
    }

    fn flush(&self) {}
}

/// `hook 1: ...` from a probe (which knows hooks by index) becomes `hook proc_fork: ...`.
fn named(text: &str) -> String {
    let Some((index, rest)) = text.strip_prefix("hook ").and_then(|t| t.split_once(':')) else {
        return text.to_string();
    };
    match index.parse::<usize>().ok().and_then(|i| hook::NAMES.get(i)) {
        Some(name) => format!("hook {name}:{rest}"),
        None => text.to_string(),
    }
}

/// The reader of the probes' log lines; dropping it stops the thread.
pub struct KernelLog {
    _reader: Worker,
}

impl KernelLog {
    /// Takes the object's `AYA_LOGS` map and starts reading it. `None`, said once, when
    /// the object has no such map or the thread cannot start (then the map's descriptor is
    /// closed with the logger, and programs loaded after that which log fail to load).
    pub fn start(ebpf: &mut Ebpf) -> Option<KernelLog> {
        let logger = match EbpfLogger::init_with_logger(ebpf, ToTracing) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "the probes' log lines cannot be read: errors are only counted");
                return None;
            }
        };
        match Worker::spawn("cw-kernel-log", move |stop| read(logger, stop)) {
            Ok(w) => Some(KernelLog { _reader: w }),
            Err(e) => {
                warn!(error = %e, "cannot start the kernel log reader: errors are only counted");
                None
            }
        }
    }
}

/// Reads until `stop`. aya-log unwraps its own decoding, so a record it cannot decode
/// panics inside `flush`: that ends the reading (said once), never the agent.
fn read(mut logger: EbpfLogger<ToTracing>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let fd = logger.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        if !super::ringbuf::wait_readable(fd, POLL) {
            continue; // timeout, or EINTR: look at the flag again
        }
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush()));
        if flushed.is_err() {
            warn!("a kernel log record could not be decoded: no more kernel log lines");
            // The logger holds the map's only descriptor, and programs loaded later (the
            // TLS uprobes) refer to it: keep it open until the stop, reading no more.
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(POLL);
            }
            return;
        }
    }
    // Lines written just before the stop.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush()));
}

#[cfg(test)]
mod tests {
    use super::named;

    #[test]
    fn hooks_are_named_in_kernel_lines() {
        assert_eq!(
            named("hook 1: first quota refusal on this CPU"),
            "hook proc_fork: first quota refusal on this CPU"
        );
        assert_eq!(named("hook 99: odd"), "hook 99: odd");
        assert_eq!(named("something else"), "something else");
    }
}
