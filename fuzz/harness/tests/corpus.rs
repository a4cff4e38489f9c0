//! The fuzz corpus on the stable toolchain: every file of `fuzz/corpus/<target>/` goes
//! through its target's entry point (a crash or a hang the fuzzer once found stays fixed),
//! the `seed-*` files are exactly what `seeds.rs` makes, and the seeds and captured inputs
//! are inputs their parser accepts (a corpus of refused inputs would teach the fuzzer
//! little).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use clinicwatch_agent::{
    kernel::btf::Btf, pipeline::decode, pipeline::dns, pipeline::handler, pipeline::query,
};
use clinicwatch_collector::store;
use clinicwatch_fuzz::{seeds, TARGETS};
use clinicwatch_proto::{
    limits,
    v1::{agent_frame::Frame, AgentFrame},
};
use prost::Message as _;

/// Far more than any input takes (milliseconds in a debug build): past it, a hang.
const LIMIT: Duration = Duration::from_secs(20);

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target)
}

fn files(target: &str) -> Vec<PathBuf> {
    let dir = corpus(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap()
}

#[test]
fn every_corpus_file_replays_without_a_panic_or_a_hang() {
    let mut slowest = (Duration::ZERO, String::new());
    for t in TARGETS {
        let files = files(t.name);
        assert!(!files.is_empty(), "no corpus for `{}`", t.name);
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let name = f.display().to_string();
            let (tx, rx) = mpsc::channel();
            let run = t.run;
            let start = Instant::now();
            // On a thread of its own, named after the file (a panic names it), so that a
            // hang fails this test instead of hanging it.
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    run(&data);
                    let _ = tx.send(());
                })
                .unwrap();
            match rx.recv_timeout(LIMIT) {
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{name}: still running after {LIMIT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{name}: panicked"),
            }
            if start.elapsed() > slowest.0 {
                slowest = (start.elapsed(), name);
            }
        }
    }
    eprintln!("slowest input: {} ({:?})", slowest.1, slowest.0);
}

#[test]
fn the_seed_files_are_what_seeds_rs_makes() {
    let write = std::env::var_os("CLINICWATCH_WRITE_SEEDS").is_some();
    let all = seeds::all();
    for s in &all {
        let path = corpus(s.target).join(&s.name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &s.bytes).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == s.bytes,
            "{} differs from what seeds.rs makes: `CLINICWATCH_WRITE_SEEDS=1 cargo test -p \
             clinicwatch-fuzz --test corpus` rewrites the seeds",
            path.display()
        );
    }
    for t in TARGETS {
        for f in files(t.name) {
            let name = file_name(&f);
            let made = all.iter().any(|s| s.target == t.name && s.name == name);
            if name.starts_with("seed-") && !made {
                assert!(write, "{} is no longer made by seeds.rs", f.display());
                std::fs::remove_file(&f).unwrap();
            }
        }
    }
}

#[test]
fn the_collector_validates_frames_as_the_limits_the_fuzzer_checks() {
    let (mut hellos, mut batches) = (0, 0);
    for f in files("frames") {
        let Ok(frame) = AgentFrame::decode(std::fs::read(&f).unwrap().as_slice()) else {
            continue;
        };
        match frame.frame {
            Some(Frame::Hello(h)) => {
                hellos += 1;
                assert_eq!(
                    store::validate_hello(&h).is_ok(),
                    limits::check_hello(&h).is_ok(),
                    "{}",
                    f.display()
                );
            }
            Some(Frame::Batch(b)) => {
                batches += 1;
                assert_eq!(
                    store::validate(&b).is_ok(),
                    limits::check_batch(&b).is_ok(),
                    "{}",
                    f.display()
                );
            }
            _ => {}
        }
    }
    assert!(hellos > 0 && batches > 0);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_seeds_are_inputs_their_parser_accepts() {
    let mut kinds = Vec::new();
    for s in seeds::all() {
        let b = s.bytes.as_slice();
        let what = format!("{}/{}", s.target, s.name);
        match s.target {
            "ring_buffer" => {
                decode::decode(b).unwrap_or_else(|e| panic!("{what}: {e}"));
                kinds.push(u32::from_ne_bytes(b[..4].try_into().unwrap()));
            }
            "dns" => assert!(dns::answers(b).is_some(), "{what}"),
            "tls_plaintext" => assert!(
                query::parse(b) != query::Write::Other || handler::http_status(b).is_some(),
                "{what}"
            ),
            "btf" => assert_eq!(
                Btf::parse(b).unwrap().kernel_offsets().unwrap(),
                seeds::VMLINUX_SUBSET_OFFSETS,
                "{what}"
            ),
            "frames" => match AgentFrame::decode(b).unwrap().frame {
                Some(Frame::Hello(h)) => store::validate_hello(&h).unwrap(),
                Some(Frame::Batch(batch)) => store::validate(&batch).unwrap(),
                Some(Frame::Heartbeat(_)) => {}
                None => panic!("{what}: empty frame"),
            },
            other => panic!("a seed for unknown target `{other}`"),
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [1, 2, 3, 10, 11, 12, 20, 21, 22, 30, 31],
        "a record of every kind"
    );
    assert_eq!(
        dns::answers(&std::fs::read(corpus("dns").join("seed-cname-chain")).unwrap()),
        Some((
            "www.vendor.example".to_string(),
            vec![ip("203.0.113.10"), ip("203.0.113.11")]
        )),
        "the CNAME chain is followed through compressed names"
    );
}

#[test]
fn the_captured_inputs_are_what_their_names_say() {
    let read = |t: &str, f: &str| std::fs::read(corpus(t).join(f)).unwrap();
    // Answers of the resolver of the machine they were captured on (EDNS, compression).
    assert_eq!(
        dns::answers(&read("dns", "real-a-index-crates-io")),
        Some(("index.crates.io".to_string(), vec![ip("203.0.113.80")]))
    );
    assert_eq!(
        dns::answers(&read("dns", "real-aaaa-nodata-index-crates-io")),
        Some(("index.crates.io".to_string(), vec![]))
    );
    assert_eq!(
        dns::answers(&read("dns", "real-nxdomain")),
        Some(("nonexistent.crates.io".to_string(), vec![]))
    );
    // What Python's urllib writes; a TLS ClientHello (a tunnel through a proxy) is no query.
    match query::parse(&read("tls_plaintext", "real-python-urllib-get")) {
        query::Write::Http1(r) => assert_eq!(r.host, "pm.vendor.example"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        query::parse(&read("tls_plaintext", "real-tls13-clienthello")),
        query::Write::Other
    );
    // The `.BTF` section of the agent's own eBPF object, as rustc and bpf-linker make it:
    // every kind they emit parses, and it holds no kernel struct.
    let btf = Btf::parse(&read("btf", "real-sensor-ebpf")).expect("the agent's own BTF");
    assert!(btf.offset_of("task_struct", "pid").is_err());
}
