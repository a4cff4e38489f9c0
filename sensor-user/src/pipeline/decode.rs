//! Ring-buffer records to typed kernel events. Lengths are checked before anything is read;
//! a short, oversized or unknown record is an error the caller counts and drops. Never panics.

use std::mem::size_of;

use crate::event::DecodeStats;
use clinicwatch_common::{
    kind, ConnectEvent, DnsEvent, EventHeader, ExecEvent, ExitEvent, FileEvent, FlowCloseEvent,
    ForkEvent, ProtectedOpenEvent, TlsReadEvent, TlsWriteEvent,
};

/// A record as the kernel wrote it. Records are handled one at a time and never stored,
/// so the size difference between variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy)]
pub enum KernelEvent {
    Exec(ExecEvent),
    Fork(ForkEvent),
    Exit(ExitEvent),
    /// First open or first read of a file (see `FileEvent::origin`).
    FileOpen(FileEvent),
    FileMmap(FileEvent),
    ProtectedOpen(ProtectedOpenEvent),
    Connect(ConnectEvent),
    FlowClose(FlowCloseEvent),
    /// A DNS answer received by a watched flow.
    Dns(DnsEvent),
    /// The start of a TLS plaintext write (a request): parsed at once, never kept.
    TlsWrite(TlsWriteEvent),
    /// A TLS plaintext read that starts with an HTTP status line.
    TlsRead(TlsReadEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than an event header")]
    Truncated { len: usize },
    #[error("record of kind {kind} is {len} bytes, expected {expected}")]
    BadSize {
        kind: u32,
        len: usize,
        expected: usize,
    },
    #[error("record header says {declared} bytes but {len} arrived")]
    SizeMismatch { declared: u32, len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

/// Counts `r` in `stats`: decoded, or dropped by reason.
pub fn count(stats: &mut DecodeStats, r: &Result<KernelEvent, DecodeError>) {
    match r {
        Ok(_) => stats.decoded += 1,
        Err(DecodeError::Truncated { .. }) => stats.truncated += 1,
        Err(DecodeError::BadSize { .. } | DecodeError::SizeMismatch { .. }) => stats.bad_size += 1,
        Err(DecodeError::UnknownKind(_)) => stats.unknown_kind += 1,
    }
}

/// Reads a `T` from the start of `buf`, which must be exactly `size_of::<T>()` bytes.
fn read_exact<T: Copy>(kind: u32, buf: &[u8]) -> Result<T, DecodeError> {
    if buf.len() != size_of::<T>() {
        return Err(DecodeError::BadSize {
            kind,
            len: buf.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: the length matches and every `T` here is plain integers and arrays, valid for any
    // bit pattern; `read_unaligned` copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const T) })
}

pub fn decode(buf: &[u8]) -> Result<KernelEvent, DecodeError> {
    if buf.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Truncated { len: buf.len() });
    }
    let hdr: EventHeader = read_exact(0, &buf[..size_of::<EventHeader>()])?;
    if hdr.size as usize != buf.len() {
        return Err(DecodeError::SizeMismatch {
            declared: hdr.size,
            len: buf.len(),
        });
    }
    let k = hdr.kind;
    Ok(match k {
        kind::EXEC => KernelEvent::Exec(read_exact(k, buf)?),
        kind::FORK => KernelEvent::Fork(read_exact(k, buf)?),
        kind::EXIT => KernelEvent::Exit(read_exact(k, buf)?),
        kind::FILE_OPEN => KernelEvent::FileOpen(read_exact(k, buf)?),
        kind::FILE_MMAP => KernelEvent::FileMmap(read_exact(k, buf)?),
        kind::PROTECTED_OPEN => KernelEvent::ProtectedOpen(read_exact(k, buf)?),
        kind::NET_CONNECT => KernelEvent::Connect(read_exact(k, buf)?),
        kind::NET_CLOSE => KernelEvent::FlowClose(read_exact(k, buf)?),
        kind::DNS_ANSWER | kind::DNS_QUERY => KernelEvent::Dns(read_exact(k, buf)?),
        kind::TLS_WRITE => KernelEvent::TlsWrite(read_exact(k, buf)?),
        kind::TLS_READ => KernelEvent::TlsRead(read_exact(k, buf)?),
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32, size: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&size.to_ne_bytes());
        v.extend_from_slice(&123u64.to_ne_bytes());
        v.extend_from_slice(&7u32.to_ne_bytes());
        v.extend_from_slice(&7u32.to_ne_bytes());
        v
    }

    fn record(kind: u32, len: usize) -> Vec<u8> {
        let mut v = header(kind, len as u32);
        v.resize(len, 0);
        v
    }

    #[test]
    fn decodes_a_well_formed_record() {
        let mut buf = record(kind::EXIT, size_of::<ExitEvent>());
        buf[24..28].copy_from_slice(&(3u32 << 8).to_ne_bytes());
        match decode(&buf) {
            Ok(KernelEvent::Exit(e)) => {
                assert_eq!(e.hdr.pid, 7);
                assert_eq!(e.exit_code, 3 << 8);
            }
            _ => panic!("expected an exit event"),
        }
    }

    #[test]
    fn truncated_oversized_and_unknown_records_are_counted_and_dropped() {
        let mut stats = DecodeStats::default();
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![1, 2, 3],
            header(kind::EXEC, 24)[..20].to_vec(),
            // header only, for a kind that needs more
            record(kind::EXEC, 24),
            // one byte short of an exit event
            record(kind::EXIT, size_of::<ExitEvent>() - 1),
            // larger than any event
            record(kind::FORK, 64 * 1024),
            // declared size disagrees with the bytes that arrived
            {
                let mut v = record(kind::FORK, size_of::<ForkEvent>());
                v.push(0);
                v
            },
            record(999, 64),
            record(0, 24),
        ];
        for c in &cases {
            let r = decode(c);
            assert!(r.is_err(), "{} bytes decoded", c.len());
            count(&mut stats, &r);
        }
        assert_eq!(stats.dropped(), cases.len() as u64);
        assert_eq!(stats.truncated, 3);
        assert_eq!(stats.unknown_kind, 2);
        assert_eq!(stats.bad_size, 4);
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: no dependency, same bytes every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut stats = DecodeStats::default();
        for len in 0..4096usize {
            let mut buf = vec![0u8; len % 2400];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if len % 3 == 0 && buf.len() >= 8 {
                // plausible header: a real kind and a matching size
                let k = [1u32, 2, 3, 10, 11, 12, 20, 21][len % 8];
                buf[..4].copy_from_slice(&k.to_ne_bytes());
                let n = buf.len() as u32;
                buf[4..8].copy_from_slice(&n.to_ne_bytes());
            }
            count(&mut stats, &decode(&buf));
        }
        assert_eq!(stats.decoded + stats.dropped(), 4096);
    }
}
