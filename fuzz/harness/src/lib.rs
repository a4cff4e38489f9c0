//! The entry points of the fuzz targets: one per parser that reads bytes the agent or the
//! collector does not control. `fuzz/fuzz_targets/<name>.rs` calls [`TARGETS`]`[name]` under
//! libFuzzer (nightly, `cargo xtask fuzz`); `tests/corpus.rs` replays every file of
//! `fuzz/corpus/<name>/` through the same function on the stable toolchain, so `cargo test`
//! catches a regression without the fuzzer.
//!
//! Each entry point does with its input what the agent or the collector does with it, then
//! checks what must hold whatever the input (a panic is a finding): the parsers never panic,
//! and what they accept keeps its promises.

use std::hash::{Hash as _, Hasher as _};

use clinicwatch_agent::{
    event::DecodeStats,
    kernel::btf::Btf,
    kernel::procfs,
    pipeline::decode::{self, KernelEvent},
    pipeline::dns,
    pipeline::handler,
    pipeline::query::{self, Templater, Write},
};
use clinicwatch_common::{ARGV_LEN, TLS_STATUS_LEN};
use clinicwatch_proto::{
    limits,
    v1::{agent_frame::Frame, AgentFrame, Batch},
};
use prost::Message as _;

pub mod seeds;

/// A fuzz target: its name (binary `fuzz/fuzz_targets/<name>.rs`, corpus
/// `fuzz/corpus/<name>/`), what it feeds, and its entry point.
pub struct Target {
    pub name: &'static str,
    pub what: &'static str,
    pub run: fn(&[u8]),
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "ring_buffer",
        what: "one ring-buffer record: `decode::decode`, then what the handler reads from it",
        run: ring_buffer,
    },
    Target {
        name: "dns",
        what: "the UDP payload of a DNS answer: `dns::answers` and `dns::Names::learn`",
        run: dns,
    },
    Target {
        name: "tls_plaintext",
        what: "TLS plaintext: an `SSL_write` start (`query::parse`, `Templater::template`) \
               and an `SSL_read` status line (`handler::http_status`)",
        run: tls_plaintext,
    },
    Target {
        name: "btf",
        what: "a BTF blob: `Btf::parse`, then every offset the programs need",
        run: btf,
    },
    Target {
        name: "frames",
        what: "an `AgentFrame` as the collector receives it: prost decoding, then the limits \
               its `store::validate` / `validate_hello` apply, and `limits::cost`",
        run: frames,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A ring-buffer record, as the agent's reader hands it to the decoder.
pub fn ring_buffer(data: &[u8]) {
    let r = decode::decode(data);
    let mut stats = DecodeStats::default();
    decode::count(&mut stats, &r);
    assert_eq!(
        stats.decoded + stats.dropped(),
        1,
        "a record is decoded or counted"
    );
    let Ok(ev) = r else { return };
    // What `Handler::handle` reads from each kind without the kernel or the process table.
    match ev {
        KernelEvent::Exec(e) => {
            let len = (e.argv_len as usize).min(ARGV_LEN);
            for arg in procfs::split_args(&e.argv[..len]) {
                assert!(!arg.is_empty() && !arg.contains('\0'), "{arg:?}");
            }
            absolute(&handler::path_string(&e.exe));
        }
        KernelEvent::FileOpen(e) | KernelEvent::FileMmap(e) => {
            absolute(&handler::path_string(&e.path))
        }
        KernelEvent::ProtectedOpen(e) => {
            absolute(&handler::path_string(&e.path));
            absolute(&handler::path_string(&e.exe));
            assert!(procfs::open_flags(e.flags).starts_with("O_"));
        }
        KernelEvent::FlowClose(e) => {
            let c = handler::flow_counters(e.cookie, &e.stats);
            assert_eq!(c.flow, e.cookie);
        }
        KernelEvent::Dns(e) => dns(&e.data[..(e.len as usize).min(e.data.len())]),
        KernelEvent::TlsWrite(e) => tls_write(&e.data[..(e.captured as usize).min(e.data.len())]),
        KernelEvent::TlsRead(e) => {
            let _ = handler::http_status(&e.status[..(e.captured as usize).min(e.status.len())]);
        }
        KernelEvent::Fork(_) | KernelEvent::Exit(_) | KernelEvent::Connect(_) => {}
    }
}

fn absolute(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
}

/// A DNS answer received by a watched flow.
pub fn dns(data: &[u8]) {
    let answer = dns::answers(data);
    // Large enough that no address of one answer is forgotten for another.
    let mut names = dns::Names::new(1 << 16);
    let (app, flow) = (3, 42);
    let named = names.learn(app, flow, 0, data);
    let Some((qname, ips)) = answer else {
        assert_eq!(named, 0);
        assert_eq!(names.counters.refused, 1);
        return;
    };
    assert_eq!(named, ips.len(), "`learn` names what `answers` gives");
    assert_eq!(qname, qname.to_ascii_lowercase(), "names are lowercase");
    for ip in &ips {
        assert_eq!(names.name(app, ip), Some(qname.as_str()), "{ip}");
        assert_eq!(names.name(app + 1, ip), None, "names are per application");
    }
    // The same answer again on the same flow is a repeat: it teaches nothing, and, agreeing
    // with the first, withdraws nothing.
    assert_eq!(names.learn(app, flow, 1, data), 0);
    assert_eq!(
        (names.counters.repeated, names.counters.conflicting),
        (1, 0)
    );
    for ip in &ips {
        assert_eq!(names.name(app, ip), Some(qname.as_str()), "{ip}");
    }
}

/// TLS plaintext: the start of a write (a request), and the start of a read (a status line,
/// of which the kernel keeps [`TLS_STATUS_LEN`] bytes).
pub fn tls_plaintext(data: &[u8]) {
    tls_write(data);
    if let Some(code) = handler::http_status(&data[..data.len().min(TLS_STATUS_LEN)]) {
        assert!((100..600).contains(&code));
    }
}

/// A fixed keyed hash, so that a run is reproducible.
fn templater() -> Templater {
    Templater::new(
        Box::new(|s: &str| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.hash(&mut h);
            h.finish()
        }),
        &[],
    )
}

fn tls_write(data: &[u8]) {
    match query::parse(data) {
        Write::Http1(r) => {
            let mut t = templater();
            let first = t.template(&r);
            assert_eq!(first.method, r.method);
            assert_eq!(first.host, first.host.to_ascii_lowercase());
            assert!(first.path.starts_with('/'), "{:?}", first.path);
            // Only route words (lowercase, without extra words here) and placeholders:
            // nothing the request named verbatim otherwise.
            let (path, query) = first
                .path
                .split_once('?')
                .unwrap_or((first.path.as_str(), ""));
            for part in path.split('/').chain(query.split('&')) {
                let placeholder = part.starts_with('{') && part.ends_with('}');
                assert!(
                    placeholder
                        || part
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{part:?} in {:?}",
                    first.path
                );
            }
            // The same request again: the same route (a query string's names may turn into
            // `{k}` once the route has seen enough of them, so only the path is compared).
            let again = t.template(&r);
            assert_eq!(path, again.path.split('?').next().unwrap());
        }
        Write::Http2 { requests } => {
            assert!(requests as usize * 9 <= data.len(), "{requests} frames");
        }
        Write::Other => {}
    }
}

/// A BTF blob, as the agent reads `/sys/kernel/btf/vmlinux`.
pub fn btf(data: &[u8]) {
    let Ok(btf) = Btf::parse(data) else { return };
    let _ = btf.kernel_offsets();
    let _ = btf.offset_of("task_struct", "nonexistent");
}

/// One frame of an agent's stream, as the collector's ingest reads it. The collector's
/// `store::validate` and `store::validate_hello` are `limits::check_batch` and
/// `limits::check_hello` (the corpus test checks that they agree on every corpus frame):
/// calling these keeps the collector's SQLite and PostgreSQL out of the fuzz build.
pub fn frames(data: &[u8]) {
    let Ok(frame) = AgentFrame::decode(data) else {
        return;
    };
    match frame.frame {
        Some(Frame::Hello(h)) => {
            let _ = limits::check_hello(&h);
        }
        Some(Frame::Batch(b)) => {
            if limits::check_batch(&b).is_err() {
                return;
            }
            // What is accepted keeps the promises the store and the rate limit rely on.
            assert!(!b.records.is_empty() && b.records.len() <= limits::MAX_BATCH_RECORDS);
            assert_eq!(b.records[0].seq, b.first_seq);
            assert!(b.records.windows(2).all(|w| w[0].seq < w[1].seq));
            for r in &b.records {
                assert!(limits::record_time(r).is_finite());
                assert!(limits::cost(r) >= 1);
            }
            let again = Batch::decode(b.encode_to_vec().as_slice()).expect("re-encoded batch");
            assert_eq!(again, b, "an accepted batch round-trips");
        }
        Some(Frame::Heartbeat(_)) | None => {}
    }
}
