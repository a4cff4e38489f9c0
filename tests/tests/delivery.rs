//! End-to-end delivery, as root: the agent's findings and summaries reach a real collector
//! over mutual TLS, through an outage (collector down: the agent spools) and an agent
//! restart, each stored exactly once.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clinicwatch_agent::{Config, Event};
use clinicwatch_collector::{ingest::IngestService, pki, store::SqliteStore};
use clinicwatch_proto::v1::ingest_server::IngestServer;
use clinicwatch_tests::*;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_cw-workload");

fn collector(
    rt: &tokio::runtime::Runtime,
    port: u16,
    ca: &pki::Pem,
    server: &pki::Pem,
    db: &std::path::Path,
) -> Arc<Mutex<SqliteStore>> {
    let store = Arc::new(Mutex::new(SqliteStore::open(db).unwrap()));
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server.cert, &server.key))
        .client_ca_root(Certificate::from_pem(&ca.cert));
    let svc = IngestService {
        store: store.clone(),
    };
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("the collector's port");
    rt.spawn(async move {
        let _ = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(IngestServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    store
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn findings_reach_the_collector_once_through_an_outage_and_a_restart() {
    if !require_root("findings_reach_the_collector_once_through_an_outage_and_a_restart") {
        return;
    }
    let fx = Fixture::new(WORKLOAD, "delivery");
    let ca = pki::new_ca("test CA").unwrap();
    let server = pki::server_cert(&ca, &["localhost".into()]).unwrap();
    let me = pki::client_cert(&ca, "clinic-a", "ws1", 30).unwrap();
    for (name, text) in [
        ("ca.pem", &ca.cert),
        ("cert.pem", &me.cert),
        ("key.pem", &me.key),
    ] {
        std::fs::write(fx.dir.join(name), text).unwrap();
    }
    // A port for the collector, not listening yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "[agent]\nsnapshot_interval_secs = 0\nstate_dir = \"{state}\"\n\
         [intel]\nwindow_secs = 2\nlearning_days = 0\npractice_hours = [\"daily 00:00-24:00\"]\n\
         [export]\ncollector = \"https://localhost:{port}\"\nclinic = \"clinic-a\"\nhost = \"ws1\"\n\
         ca_file = \"{dir}/ca.pem\"\ncert_file = \"{dir}/cert.pem\"\nkey_file = \"{dir}/key.pem\"\n\
         [[app]]\nname = \"pm-client\"\nexe = \"{exe}\"\n",
        state = fx.state_dir().display(),
        dir = fx.dir.display(),
        exe = fx.app.display(),
    );
    let cfg = Config::from_toml(&text).unwrap();

    // Collector down: the agent finds (a shell under the app) and spools.
    let (agent, rx) = start_agent(&cfg);
    run(&fx.app, &["shell"]);
    let finding = expect_event(
        &rx,
        Duration::from_secs(10),
        "the shell finding",
        |e| matches!(e, Event::Finding(f) if f.rule == "CW-SUSPICIOUS-CHILD"),
    );
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();
    let findings_of = |rx: &Events| -> Vec<Event> {
        collect(rx, Duration::from_millis(300))
            .into_iter()
            .filter(|e| matches!(e, Event::Finding(_)))
            .collect()
    };
    let mut raised = findings_of(&rx);
    assert!(raised.contains(&finding));

    // Restarted, still without a collector; then the collector comes up.
    let (agent, rx2) = start_agent(&cfg);
    std::thread::sleep(Duration::from_secs(1));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = collector(&rt, port, &ca, &server, &fx.dir.join("collector.db"));
    let stored_findings = || store.lock().unwrap().findings_since(0.0).unwrap();
    wait_until(
        "the findings at the collector",
        Duration::from_secs(40),
        || stored_findings().len() > raised.len(),
    );
    // Give the exporter time to send anything more (summaries) and resend nothing.
    std::thread::sleep(Duration::from_secs(3));
    agent.stop();
    // The second run raised its own finding: the agent restarted.
    let second = findings_of(&rx2);
    assert!(second
        .iter()
        .any(|e| matches!(e, Event::Finding(f) if f.rule == "CW-AGENT-RESTART")));
    raised.extend(second);
    let got = stored_findings();
    assert_eq!(got.len(), raised.len(), "each finding once: {got:?}");
    assert!(got
        .iter()
        .all(|f| f.clinic == "clinic-a" && f.host == "ws1"));
    assert!(got.iter().any(|f| f.rule == "CW-SUSPICIOUS-CHILD"));
    let records = store.lock().unwrap().record_count().unwrap();
    assert!(
        records > got.len() as u64,
        "summaries arrived too ({records} records)"
    );

    // A third start resends nothing already stored.
    let (agent, rx3) = start_agent(&cfg);
    let expected = raised.len() + 1; // its own restart finding
    wait_until("the third run's finding", Duration::from_secs(20), || {
        stored_findings().len() >= expected
    });
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();
    // `collect` returns everything the run emitted.
    raised.extend(findings_of(&rx3));
    assert_eq!(
        stored_findings().len(),
        raised.len(),
        "no duplicate after a restart"
    );
}
