//! Property tests for frame decoding and batch validation: mutated and random frames never
//! panic the decoder, the validator or the store; whatever is accepted is stored exactly and
//! reads back unchanged; and, over a real TLS stream, every hostile frame gets an ack or a
//! clear refusal and the collector keeps serving.

use clinicwatch_testkit::TempDir;

use clinicwatch_collector::store::{self, validate, HostKey, StoreError};
use clinicwatch_proto::v1::{agent_frame::Frame, record::Body, AgentFrame, Batch, Record};
use prost::Message as _;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("CLINICWATCH_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{test}: CLINICWATCH_FUZZ_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A valid batch of 1 to 40 records with random gaps.
fn random_batch(r: &mut Rng, epoch: u64) -> Batch {
    let n = 1 + r.below(40);
    let mut seq = 1 + r.below(1000);
    let first = seq;
    let records = (0..n)
        .map(|_| {
            let rec = Record {
                seq,
                body: Some(crate::support::records(seq, 1).remove(0).body.unwrap()),
            };
            seq += 1 + r.below(3);
            rec
        })
        .collect();
    Batch {
        epoch,
        first_seq: first,
        records,
    }
}

/// One mutation of `bytes`: flip bits, cut, splice random bytes, duplicate a slice.
fn mutate(r: &mut Rng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        bytes.push(r.next() as u8);
        return;
    }
    let at = r.below(bytes.len() as u64) as usize;
    match r.below(5) {
        0 => bytes[at] ^= 1 << r.below(8),
        1 => bytes.truncate(at),
        2 => {
            let junk: Vec<u8> = (0..1 + r.below(16)).map(|_| r.next() as u8).collect();
            bytes.splice(at..at, junk);
        }
        3 => {
            let end = (at + 1 + r.below(32) as usize).min(bytes.len());
            let slice = bytes[at..end].to_vec();
            bytes.extend_from_slice(&slice);
        }
        _ => bytes[at] = r.next() as u8,
    }
}

#[test]
fn mutated_frames_never_panic_and_what_is_accepted_is_stored_exactly() {
    let mut r = Rng::from_env("mutated_frames");
    let dir = TempDir::new("frames");
    let st = store::open(&dir.join("c.db").display().to_string()).unwrap();
    let host = HostKey {
        clinic: "c".into(),
        host: "h".into(),
    };
    let (mut decoded, mut accepted, mut refused) = (0, 0, 0);
    for i in 0..3000u64 {
        let frame = AgentFrame {
            frame: Some(Frame::Batch(random_batch(&mut r, i))),
        };
        let mut bytes = frame.encode_to_vec();
        for _ in 0..1 + r.below(4) {
            mutate(&mut r, &mut bytes);
        }
        let Ok(f) = AgentFrame::decode(bytes.as_slice()) else {
            continue;
        };
        decoded += 1;
        let Some(Frame::Batch(b)) = f.frame else {
            continue;
        };
        match validate(&b) {
            Ok(()) => {
                let before = st.record_count().unwrap();
                let got = st
                    .ingest(&host, &b, 1.0, store::TimeWindow::UNBOUNDED)
                    .unwrap();
                assert_eq!(got.stored + got.duplicates, b.records.len() as u64);
                assert_eq!(st.record_count().unwrap(), before + got.stored);
                accepted += 1;
            }
            Err(StoreError::Invalid(why)) => {
                assert!(!why.is_empty());
                let before = st.record_count().unwrap();
                assert!(st
                    .ingest(&host, &b, 1.0, store::TimeWindow::UNBOUNDED)
                    .is_err());
                assert_eq!(
                    st.record_count().unwrap(),
                    before,
                    "nothing of a refused batch"
                );
                refused += 1;
            }
            Err(e) => panic!("validation said {e}"),
        }
    }
    eprintln!(
        "3000 mutated frames: {decoded} decoded, {accepted} batches accepted, {refused} refused"
    );
    assert!(
        accepted > 0 && refused > 0,
        "the mutations reach both outcomes"
    );
}

#[test]
fn valid_batches_round_trip_and_order_violations_are_always_refused() {
    let mut r = Rng::from_env("round_trip");
    for _ in 0..2000 {
        let b = random_batch(&mut r, 1);
        assert!(validate(&b).is_ok(), "{b:?}");
        let back = Batch::decode(b.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, b);
        if b.records.len() >= 2 {
            let mut bad = b.clone();
            let i = 1 + r.below(bad.records.len() as u64 - 1) as usize;
            bad.records[i].seq = bad.records[i - 1].seq - r.below(2); // equal or lower
            assert!(
                matches!(validate(&bad), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
        let mut no_body = b.clone();
        let i = r.below(no_body.records.len() as u64) as usize;
        no_body.records[i].body = None;
        assert!(validate(&no_body).is_err());
        if let Some(Body::Finding(f)) = &mut b.clone().records[0].body {
            f.time = f64::NAN;
            let mut nan = b.clone();
            nan.records[0].body = Some(Body::Finding(f.clone()));
            assert!(validate(&nan).is_err(), "a NaN time is refused");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_over_tls_get_an_answer_and_the_collector_keeps_serving() {
    let mut r = Rng::from_env("hostile_frames");
    let p = crate::support::new_pki();
    let dir = TempDir::new("frames-tls");
    let srv = crate::support::serve(&p, &dir.join("c.db")).await;
    let me = clinicwatch_collector::auth::pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let hello = crate::support::hello("clinic-a", "ws1", 1).encode_to_vec();
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..150 {
        let mut bytes = AgentFrame {
            frame: Some(Frame::Batch(random_batch(&mut r, 1))),
        }
        .encode_to_vec();
        for _ in 0..1 + r.below(3) {
            mutate(&mut r, &mut bytes);
        }
        let ch = crate::support::channel(&srv.url, &p.ca, Some(&me))
            .await
            .unwrap();
        let outcome = match crate::support::raw::send(ch, vec![hello.clone(), bytes]).await {
            Ok(_) => "acked or ignored".to_string(),
            Err(s) => {
                assert!(
                    matches!(
                        s.code(),
                        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                    ),
                    "unexpected refusal: {s}"
                );
                format!("{:?}", s.code())
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!("150 hostile frames: {outcomes:?}");
    // Still serving, and still storing correctly.
    let mut c = crate::support::client(&srv.url, &p.ca, Some(&me))
        .await
        .unwrap();
    let acks = crate::support::exchange(
        &mut c,
        vec![
            crate::support::hello("clinic-a", "ws1", 2),
            crate::support::batch(2, 1, 5),
        ],
    )
    .await
    .unwrap();
    assert_eq!(acks, vec![0, 5]);
    srv.shutdown().await;
}
