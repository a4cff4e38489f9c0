//! Waiting on a ring buffer of the probes (the events, the log lines): `poll(2)` on its
//! descriptor, so that a reader sleeps until there is data or its timeout passes.

use std::time::Duration;

/// Waits until `fd` is readable or `timeout` passes; whether it is readable (a timeout or
/// an interrupted wait is `false`).
pub(crate) fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) > 0 }
}
