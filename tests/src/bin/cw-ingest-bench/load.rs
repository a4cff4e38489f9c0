//! The load: agents as the real exporter behaves (one stream each, Hello, then one frame in
//! flight until its ack), against a collector child process per scenario.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clinicwatch_collector::auth::pki;
use clinicwatch_proto::v1::{
    agent_frame::Frame, ingest_client::IngestClient, record::Body, server_frame, AgentFrame, Batch,
    ClassStats, Destination, Finding, Hello, Record, ServerFrame, WindowSummary,
};
use tonic::{
    codec::CompressionEncoding,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

pub struct Options {
    pub agents: usize,
    pub records: u64,
    pub single_records: u64,
    pub batch: u64,
    pub reconnect: usize,
    pub rounds: usize,
    /// A PostgreSQL URL to store into (SQLite in the scenario's folder when `None`).
    pub db: Option<String>,
}

/// A record as an agent sends it: a window summary (one in 50 a finding).
fn record(seq: u64) -> Record {
    let body = if seq.is_multiple_of(50) {
        Body::Finding(Finding {
            rule: "CW-NEW-DESTINATION".into(),
            severity: 3,
            app: "pm-client".into(),
            time: 1.7e9 + seq as f64,
            subject: "203.0.113.7:443".into(),
            summary: "the app connected to a destination never seen in its baseline".into(),
            evidence: [("bytes_sent".to_string(), "52341".to_string())].into(),
        })
    } else {
        Body::Summary(WindowSummary {
            app: "pm-client".into(),
            start: 1.7e9 + seq as f64 * 60.0,
            end: 1.7e9 + seq as f64 * 60.0 + 60.0,
            hour_of_week: (seq % 168) as u32,
            in_practice_hours: true,
            classes: vec![
                ClassStats {
                    class: "pm_data".into(),
                    bytes: 1 << 20,
                    reads: 64,
                    opens: 2,
                    ..Default::default()
                },
                ClassStats {
                    class: "other".into(),
                    bytes: 4096,
                    reads: 3,
                    opens: 3,
                    ..Default::default()
                },
            ],
            destinations: vec![Destination {
                ip: "198.51.100.20".into(),
                port: 443,
                protocol: "tcp".into(),
                name: "api.vendor.example".into(),
                bytes_sent: 20_000,
                bytes_recv: 900_000,
                connects: 4,
            }],
            processes: 3,
            ..Default::default()
        })
    };
    Record {
        seq,
        body: Some(body),
    }
}

pub(crate) struct Agent {
    pub clinic: String,
    pub host: String,
    /// `None`: plaintext.
    pub tls: Option<(Arc<String>, pki::Pem)>,
}

/// Adds the identity metadata to each request.
pub(crate) type Meta =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
pub(crate) type Client =
    IngestClient<tonic::service::interceptor::InterceptedService<Channel, Meta>>;

pub(crate) async fn connect(a: &Agent, port: u16) -> anyhow::Result<Client> {
    let ch = match &a.tls {
        Some((ca, me)) => {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.as_str()))
                .identity(Identity::from_pem(&me.cert, &me.key))
                .domain_name("localhost");
            Channel::from_shared(format!("https://localhost:{port}"))?
                .tls_config(tls)?
                .connect_timeout(Duration::from_secs(30))
                .connect()
                .await?
        }
        None => {
            Channel::from_shared(format!("http://127.0.0.1:{port}"))?
                .connect_timeout(Duration::from_secs(30))
                .connect()
                .await?
        }
    };
    let (clinic, host) = (a.clinic.clone(), a.host.clone());
    let meta: Meta = Box::new(move |mut r: tonic::Request<()>| {
        // Read only by the plaintext collector (identity from metadata); ignored with TLS.
        if let (Ok(c), Ok(h)) = (clinic.parse(), host.parse()) {
            r.metadata_mut().insert("x-clinicwatch-clinic", c);
            r.metadata_mut().insert("x-clinicwatch-host", h);
        }
        Ok(r)
    });
    Ok(IngestClient::with_interceptor(ch, meta)
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_encoding_message_size(clinicwatch_proto::MAX_FRAME_BYTES))
}

/// One agent's stream: Hello, then one batch in flight until its ack.
pub(crate) struct Session {
    tx: tokio::sync::mpsc::Sender<AgentFrame>,
    replies: tonic::Streaming<ServerFrame>,
    /// The last seq sent (and, between batches, acked).
    pub(crate) next: u64,
}

impl Session {
    /// Opens agent `a`'s stream with `hello`; numbering goes on from the collector's ack.
    pub(crate) async fn open(a: &Agent, port: u16, hello: Hello) -> anyhow::Result<Session> {
        let mut c = connect(a, port).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<AgentFrame>(2);
        tx.send(AgentFrame {
            frame: Some(Frame::Hello(hello)),
        })
        .await?;
        let replies = c
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut s = Session {
            tx,
            replies,
            next: 0,
        };
        // The Hello's ack says where the collector stopped: numbering goes on from there.
        s.next = s.ack().await?;
        Ok(s)
    }

    async fn ack(&mut self) -> anyhow::Result<u64> {
        loop {
            match self.replies.message().await?.and_then(|f| f.frame) {
                Some(server_frame::Frame::Ack(ack)) => return Ok(ack.up_to_seq),
                Some(_) => {}
                None => bail!("the collector closed the stream"),
            }
        }
    }

    /// Sends `bodies` as one batch and waits for its ack.
    pub(crate) async fn send(&mut self, bodies: Vec<Body>) -> anyhow::Result<()> {
        let records: Vec<Record> = bodies
            .into_iter()
            .map(|body| {
                self.next += 1;
                Record {
                    seq: self.next,
                    body: Some(body),
                }
            })
            .collect();
        let Some(first_seq) = records.first().map(|r| r.seq) else {
            return Ok(());
        };
        let last = self.next;
        self.tx
            .send(AgentFrame {
                frame: Some(Frame::Batch(Batch {
                    epoch: 1,
                    first_seq,
                    records,
                })),
            })
            .await?;
        while self.ack().await? < last {}
        Ok(())
    }
}

/// One agent's session: Hello, then `bodies` as records in batches of `per`, one frame in
/// flight, numbered on from where the collector says it stopped. Returns how many were
/// acked (all of them, or an error).
pub(crate) async fn deliver(
    a: &Agent,
    port: u16,
    bodies: Vec<Body>,
    per: usize,
) -> anyhow::Result<u64> {
    let hello = Hello {
        clinic_id: a.clinic.clone(),
        host_id: a.host.clone(),
        epoch: 1,
        ..Default::default()
    };
    let mut s = Session::open(a, port, hello).await?;
    let from = s.next;
    let mut bodies = bodies.into_iter().peekable();
    while bodies.peek().is_some() {
        s.send(bodies.by_ref().take(per.max(1)).collect()).await?;
    }
    Ok(s.next - from)
}

/// `total` records as the throughput scenarios send them.
fn bodies(total: u64) -> Vec<Body> {
    (1..=total).filter_map(|seq| record(seq).body).collect()
}

pub(crate) fn cpu_of_children() -> Duration {
    // SAFETY: plain syscall into a local struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub(crate) struct Server {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

pub(crate) fn start_server(
    root: &Path,
    name: &str,
    tls: bool,
    db: Option<&str>,
) -> anyhow::Result<Server> {
    start_server_with(root, name, tls, "", db)
}

/// A collector with `config` as its collector.toml, storing into `db` (a PostgreSQL URL) or
/// a SQLite file in its folder.
pub(crate) fn start_server_with(
    root: &Path,
    name: &str,
    tls: bool,
    config: &str,
    db: Option<&str>,
) -> anyhow::Result<Server> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("collector.toml"), config)?;
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::copy(root.join(f), dir.join(f))?;
    }
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--dir"]).arg(&dir);
    if tls {
        cmd.arg("--tls");
    }
    if let Some(db) = db {
        cmd.arg("--db").arg(db);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", "warn")
        .spawn()
        .context("cannot start the collector")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Some(p) = std::fs::read_to_string(dir.join("port"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break p;
        }
        if Instant::now() > deadline {
            bail!("the collector did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Server { child, port, dir })
}

/// Stops the server; its CPU time (user + system) over its whole life.
pub(crate) fn stop_server(mut s: Server) -> anyhow::Result<Duration> {
    let before = cpu_of_children();
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    s.child.wait()?;
    let _ = std::fs::remove_dir_all(&s.dir);
    Ok(cpu_of_children() - before)
}

struct Throughput {
    name: &'static str,
    records: u64,
    wall: Duration,
    cpu: Duration,
}

/// One throughput scenario.
struct Scenario<'a> {
    name: &'static str,
    tls: bool,
    per_agent: u64,
    per_batch: u64,
    db: Option<&'a str>,
}

fn throughput(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    sc: Scenario,
    agents: &[Agent],
    idle: Duration,
) -> anyhow::Result<Throughput> {
    let Scenario {
        name,
        tls,
        per_agent,
        per_batch,
        db,
    } = sc;
    let server = start_server(root, name, tls, db)?;
    let port = server.port;
    let started = Instant::now();
    let acked: u64 = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for a in agents {
            let a = Agent {
                clinic: a.clinic.clone(),
                host: a.host.clone(),
                tls: if tls { a.tls.clone() } else { None },
            };
            set.spawn(
                async move { deliver(&a, port, bodies(per_agent), per_batch as usize).await },
            );
        }
        let mut total = 0;
        while let Some(r) = set.join_next().await {
            total += r??;
        }
        anyhow::Ok(total)
    })?;
    let wall = started.elapsed();
    let cpu = stop_server(server)?.saturating_sub(idle);
    if acked != per_agent * agents.len() as u64 {
        bail!(
            "{name}: {acked} records acked, not {}",
            per_agent * agents.len() as u64
        );
    }
    Ok(Throughput {
        name,
        records: acked,
        wall,
        cpu,
    })
}

/// A fresh folder `/tmp/NAME-PID` holding a new CA and the collector's certificate
/// (`ca.pem`, `server.pem`, `server.key`, as `start_server` copies them); the CA, to sign
/// the agents' certificates.
/// `n` agents, `per_clinic` to a clinic (`clinic-00000/ws0`...), each with its own client
/// certificate under `ca`.
pub(crate) fn agents_with_certificates(
    ca: &pki::Pem,
    n: usize,
    per_clinic: usize,
) -> anyhow::Result<Vec<Agent>> {
    let ca_pem = Arc::new(ca.cert.clone());
    (0..n)
        .map(|i| {
            let (clinic, host) = (
                format!("clinic-{:05}", i / per_clinic),
                format!("ws{}", i % per_clinic),
            );
            let me = pki::client_cert(ca, &clinic, &host, 2)?;
            Ok(Agent {
                clinic,
                host,
                tls: Some((ca_pem.clone(), me)),
            })
        })
        .collect()
}

pub(crate) fn bench_root(name: &str) -> anyhow::Result<(PathBuf, pki::Pem)> {
    let root = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let ca = pki::new_ca(&format!("{name} CA"))?;
    let server = pki::server_cert(&ca, &["localhost".into()])?;
    std::fs::write(root.join("ca.pem"), &ca.cert)?;
    std::fs::write(root.join("server.pem"), &server.cert)?;
    std::fs::write(root.join("server.key"), &server.key)?;
    Ok((root, ca))
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let (root, ca) = bench_root("cw-ingest-bench")?;
    let t = Instant::now();
    let agents = agents_with_certificates(&ca, o.reconnect.max(o.agents), 3)?;
    eprintln!(
        "{} client certificates in {:.1?}",
        agents.len(),
        t.elapsed()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // An idle collector's CPU (start, nothing, stop), taken off each run's.
    let idle = {
        let s = start_server(&root, "idle", true, o.db.as_deref())?;
        std::thread::sleep(Duration::from_millis(500));
        stop_server(s)?
    };
    let few = &agents[..o.agents];
    // The scenarios in turn, `rounds` times: each one's figure is the median of its rounds,
    // so a slow moment of the machine does not land on one scenario only.
    let scenarios = [
        ("batched, TLS", true, o.records, o.batch),
        ("one per frame, TLS", true, o.single_records, 1),
        ("batched, no TLS", false, o.records, o.batch),
        ("one per frame, no TLS", false, o.single_records, 1),
    ];
    let mut rows: Vec<Vec<Throughput>> = scenarios.iter().map(|_| Vec::new()).collect();
    for round in 0..o.rounds {
        for (i, &(name, tls, per, batch)) in scenarios.iter().enumerate() {
            let sc = Scenario {
                name,
                tls,
                per_agent: per,
                per_batch: batch,
                db: o.db.as_deref(),
            };
            let r = throughput(&rt, &root, sc, few, idle)?;
            eprintln!(
                "  round {round}: {:<24} {:>8} records in {:>6.2} s wall, {:>6.2} s collector CPU",
                r.name,
                r.records,
                r.wall.as_secs_f64(),
                r.cpu.as_secs_f64()
            );
            rows[i].push(r);
        }
    }

    // 5,000 agents reconnecting at once (TLS, one certificate each).
    let server = start_server(&root, "reconnect", true, o.db.as_deref())?;
    let port = server.port;
    let all = Arc::new(agents);
    let started = Instant::now();
    let (latencies, retries) = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..o.reconnect {
            let all = all.clone();
            set.spawn(async move {
                let a = &all[i];
                let t0 = Instant::now();
                let mut retries = 0u32;
                let mut backoff = Duration::from_millis(250);
                loop {
                    match deliver(a, port, bodies(10), 10).await {
                        Ok(_) => return Ok((t0.elapsed(), retries)),
                        Err(_) if retries < 20 => {
                            // As the exporter does: back off and try again.
                            retries += 1;
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                        Err(e) => return Err(e),
                    }
                }
            });
        }
        let mut lat = Vec::new();
        let mut retries = 0u32;
        while let Some(r) = set.join_next().await {
            let (d, n) = r??;
            lat.push(d);
            retries += n;
        }
        anyhow::Ok((lat, retries))
    })?;
    let absorb = started.elapsed();
    let reconnect_cpu = stop_server(server)?.saturating_sub(idle);
    let mut lat = latencies;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64();

    let per_cpu = |r: &Throughput| r.records as f64 / r.cpu.as_secs_f64().max(1e-9);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let store = match &o.db {
        Some(_) => "PostgreSQL (--db)",
        None => "SQLite, synchronous=FULL",
    };
    println!(
        "\ningest: collector events per CPU-second ({store}, zstd; {} agents at once, one frame in flight each; median of {} rounds)",
        o.agents, o.rounds
    );
    println!(
        "{:<24} {:>10} {:>10} {:>12} {:>16} {:>20} {:>14}",
        "scenario", "records", "wall s", "CPU s", "events/CPU-s", "min-max", "events/wall-s"
    );
    let mut medians = Vec::new();
    for rs in &rows {
        let rates: Vec<f64> = rs.iter().map(per_cpu).collect();
        let m = median(rates.clone());
        let (lo, hi) = rates
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        println!(
            "{:<24} {:>10} {:>10.2} {:>12.2} {:>16.0} {:>9.0}-{:<10.0} {:>14.0}",
            rs[0].name,
            rs[0].records,
            median(rs.iter().map(|r| r.wall.as_secs_f64()).collect()),
            median(rs.iter().map(|r| r.cpu.as_secs_f64()).collect()),
            m,
            lo,
            hi,
            median(
                rs.iter()
                    .map(|r| r.records as f64 / r.wall.as_secs_f64().max(1e-9))
                    .collect()
            ),
        );
        medians.push((rs[0].name, m));
    }
    let get = |n: &str| {
        medians
            .iter()
            .find(|(name, _)| *name == n)
            .map_or(0.0, |(_, m)| *m)
    };
    println!(
        "ratios: batched / one-per-frame = {:.1}x with TLS, {:.1}x without; TLS off / on = {:.2}x batched, {:.2}x one-per-frame",
        get("batched, TLS") / get("one per frame, TLS").max(1e-9),
        get("batched, no TLS") / get("one per frame, no TLS").max(1e-9),
        get("batched, no TLS") / get("batched, TLS").max(1e-9),
        get("one per frame, no TLS") / get("one per frame, TLS").max(1e-9),
    );
    println!(
        "reconnect: {} agents at once (TLS handshake with a client certificate each, Hello, 10 records, ack): all acked in {:.2} s; per agent p50 {:.2} s, p99 {:.2} s, max {:.2} s; {} retries; collector CPU {:.2} s",
        o.reconnect,
        absorb.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        retries,
        reconnect_cpu.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
