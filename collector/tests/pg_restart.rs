//! PostgreSQL restarted under load (its own test binary: it restarts the binary's private
//! server): a host sending batches without pause through a real collector over mutual TLS
//! gets `unavailable` while the database is down, resends from where the collector says it
//! stored, and every record is stored exactly once.

// The suite's support, shared: this test stops the private PostgreSQL it restarts, so it
// runs in a binary (and a PostgreSQL) of its own.
#[path = "suite/support/mod.rs"]
mod support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clinicwatch_collector::{auth::pki, config::Config, store};
use clinicwatch_proto::v1::server_frame;
use support::*;

/// What the sender and the test tell each other.
#[derive(Default)]
struct Progress {
    /// The highest seq the collector acked.
    acked: AtomicU64,
    /// The database was restarted.
    restarted: AtomicBool,
}

/// Sends records `1..=total` in batches of ten as an agent does: Hello, then batches each
/// waiting for its ack; after an error, reconnects and resumes after what the collector
/// acked. The last hundred wait for the restart, so that a fast machine cannot deliver
/// everything before it. Returns the number of sessions it took.
async fn deliver(url: &str, p: &Pki, me: &pki::Pem, total: u64, progress: &Progress) -> u64 {
    let mut sessions = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "not delivered in 120 s");
        sessions += 1;
        let Ok(mut c) = client(url, &p.ca, Some(me)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(hello("clinic-a", "ws1", 1)).await.unwrap();
        let Ok(r) = c
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        else {
            continue;
        };
        let mut replies = r.into_inner();
        let mut acked = match replies.message().await {
            Ok(Some(f)) => match f.frame {
                Some(server_frame::Frame::Ack(a)) => a.up_to_seq,
                _ => 0,
            },
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut failed = false;
        while acked < total && !failed {
            progress.acked.store(acked, Ordering::SeqCst);
            while acked + 100 >= total && !progress.restarted.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let n = 10.min(total - acked);
            if tx.send(batch(1, acked + 1, n)).await.is_err() {
                break;
            }
            loop {
                match replies.message().await {
                    Ok(Some(f)) => {
                        if let Some(server_frame::Frame::Ack(a)) = f.frame {
                            acked = a.up_to_seq;
                            break;
                        }
                    }
                    _ => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if acked >= total {
            return sessions;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_loses_and_duplicates_nothing() {
    let Some(url) = blocking(|| support::pg::database("postgresql_restarted_under_load")) else {
        return;
    };
    let p = new_pki();
    let u = url.clone();
    let (st, bg) = blocking(move || {
        (
            store::open(&u).unwrap(),
            store::open_background(&u).unwrap(),
        )
    });
    let srv = serve_stores(&p, Config::default(), st, bg).await;
    let me = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let total = 3000;
    let progress = Arc::new(Progress::default());
    let sender = {
        let (url, p2, me, pr) = (srv.url.clone(), p.clone(), me.clone(), progress.clone());
        tokio::spawn(async move { deliver(&url, &p2, &me, total, &pr).await })
    };
    // Restart the database while batches flow: once a few hundred records are stored.
    let started = Instant::now();
    while progress.acked.load(Ordering::SeqCst) < 300 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no batch acked in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let u = url.clone();
    blocking(move || support::pg::restart(&u)).expect("restart PostgreSQL");
    progress.restarted.store(true, Ordering::SeqCst);
    let sessions = sender.await.unwrap();
    assert!(
        sessions > 1,
        "the restart cut the stream ({sessions} session)"
    );
    let u = url.clone();
    let (records, findings) = blocking(move || {
        let s = store::open(&u).unwrap();
        (
            s.record_count().unwrap(),
            s.findings_since(f64::MIN).unwrap().len() as u64,
        )
    });
    assert_eq!(records, total, "every record stored once");
    assert_eq!(findings, total / 3, "every finding stored once");
    srv.shutdown().await;
    let u = url.clone();
    blocking(move || support::pg::stop(&u));
}
