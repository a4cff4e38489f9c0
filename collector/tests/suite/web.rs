//! The SOC page in a real browser: headless Chromium (Debian's `chromium`) loads `/` from
//! the collector, the page fetches `/api/incidents` and `/api/hosts`, and the rendered DOM
//! shows the incident, its clinics, the timeline and host health.

use clinicwatch_testkit::TempDir;

use std::process::Command;

use crate::support::*;
use clinicwatch_collector::store::Incident;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_incident_in_a_headless_browser() {
    let Some(browser) = chromium() else {
        if std::env::var("CLINICWATCH_EXPECT_CHROMIUM").as_deref() == Ok("1") {
            panic!("Chromium is needed (`cargo xtask setup` installs Debian's `chromium`)");
        }
        clinicwatch_testkit::skip(
            "the_page_shows_the_incident_in_a_headless_browser",
            "no Chromium",
        );
        return;
    };
    let p = new_pki();
    let dir = TempDir::new("web");
    let srv = serve(&p, &dir.join("c.db")).await;
    let me = clinicwatch_collector::auth::pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let mut c = client(&srv.url, &p.ca, Some(&me)).await.unwrap();
    exchange(&mut c, vec![hello("clinic-a", "ws1", 1), batch(1, 1, 2)])
        .await
        .unwrap();
    let now = clinicwatch_collector::calls::now();
    blocking(|| {
        srv.store
            .save_incident(&Incident {
                rule: "CW-FLEET-RARE-DESTINATION".into(),
                key: "dest_name:exfil.example".into(),
                state: "new".into(),
                severity: "critical".into(),
                title: "A destination new to the fleet".into(),
                first_seen: now - 3000.0,
                last_seen: now - 600.0,
                clinics: vec!["clinic-a".into(), "clinic-<b>".into()],
                hosts: vec!["clinic-a/ws1".into()],
                created: now,
                updated: now,
                ..Default::default()
            })
            .unwrap()
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(clinicwatch_collector::http::serve(
        l,
        srv.metrics.clone(),
        Some(srv.store.clone()),
        Vec::new(),
    ));
    let profile = dir.join("chromium-profile");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("http://{addr}/"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-loaded=\"yes\""),
        "the page did not finish loading: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "CW-FLEET-RARE-DESTINATION",
        "dest_name:exfil.example",
        "1 open incidents",
        "clinic-&lt;b&gt;",
        "incident-bar",
        "<td>ws1</td>",
    ] {
        assert!(dom.contains(want), "`{want}` is not on the page:\n{dom}");
    }
    assert!(!dom.contains("<b>"), "text is not markup: {dom}");
    srv.shutdown().await;
}

/// The plain-HTTP side's limits, over real sockets: a `Host` that is not ours is 421; at
/// most 64 connections at once (the next is closed at accept); a connection that sends no
/// request head is closed after 5 s, which frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_refuses_foreign_hosts_and_caps_connections_and_idle_heads() {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let metrics = std::sync::Arc::new(clinicwatch_collector::metrics::Metrics::new());
    tokio::spawn(clinicwatch_collector::http::serve_metrics(l, metrics));
    let get = |host: &'static str| http_get(addr, "/metrics", host);
    assert!(get("127.0.0.1").await.starts_with("HTTP/1.1 200"));
    let r = get("rebind.attacker.example:9464").await;
    assert!(r.starts_with("HTTP/1.1 421"), "{r}");
    let cap = clinicwatch_collector::http::MAX_CONNECTIONS;
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let over = get("127.0.0.1").await;
    assert!(
        over.is_empty(),
        "the connection over the cap is closed: {over}"
    );
    let started = std::time::Instant::now();
    let mut first = idle.swap_remove(0);
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).await.unwrap_or(0);
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(4) && waited < std::time::Duration::from_secs(15),
        "an idle connection is closed after the head timeout ({waited:?}, {n} bytes)"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        get("127.0.0.1").await.starts_with("HTTP/1.1 200"),
        "slots are free again"
    );
}
