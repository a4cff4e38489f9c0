//! What the fleet reported: `hosts`, `incidents` and `indicators`.

use std::path::Path;

use clinicwatch_collector::store;

use super::{
    args::{IncidentsCmd, StoreArgs},
    dir::open_store,
    utc,
};

pub(super) async fn incidents(dir: &Path, cmd: IncidentsCmd, sa: StoreArgs) -> anyhow::Result<()> {
    let st = open_store(dir, sa).await?;
    tokio::task::spawn_blocking(move || {
        let st = st.as_ref();
        match cmd {
            IncidentsCmd::List { state, json } => list_incidents(st, &state, json),
            IncidentsCmd::Show { id } => show_incident(st, id),
            IncidentsCmd::Ack { id } => set_incident_state(st, id, "acknowledged"),
            IncidentsCmd::Close { id } => set_incident_state(st, id, "closed"),
        }
    })
    .await?
}

/// `incidents list`: those in `state` (or all), newest first.
fn list_incidents(st: &dyn store::Store, state: &str, json: bool) -> anyhow::Result<()> {
    let filter = match state {
        "all" => None,
        "new" | "acknowledged" | "closed" => Some(state),
        other => anyhow::bail!("--state `{other}`: new, acknowledged, closed or all"),
    };
    for i in st.incidents(filter)? {
        if json {
            println!("{}", serde_json::to_string(&i)?);
        } else {
            println!(
                "#{:<5} {:<12} {:<8} {:<36} {:>4} clinics  {} .. {}  {}",
                i.id,
                i.state,
                i.severity,
                i.rule,
                i.clinics.len(),
                utc(i.first_seen),
                utc(i.last_seen),
                i.key
            );
        }
    }
    Ok(())
}

fn show_incident(st: &dyn store::Store, id: i64) -> anyhow::Result<()> {
    let i = st
        .incident(id)?
        .ok_or_else(|| anyhow::anyhow!("no incident #{id}"))?;
    println!("incident #{} [{}] {} {}", i.id, i.state, i.severity, i.rule);
    println!("  {}", i.title);
    println!("  group: {}", i.key);
    println!(
        "  seen: {} .. {} (event time)",
        utc(i.first_seen),
        utc(i.last_seen)
    );
    println!("  opened {}, updated {}", utc(i.created), utc(i.updated));
    println!("  clinics ({}): {}", i.clinics.len(), i.clinics.join(", "));
    println!("  hosts ({}): {}", i.hosts.len(), i.hosts.join(", "));
    for (k, v) in &i.evidence {
        println!("  {k}: {v}");
    }
    Ok(())
}

/// `incidents ack` and `incidents close`.
fn set_incident_state(st: &dyn store::Store, id: i64, state: &str) -> anyhow::Result<()> {
    let now = clinicwatch_collector::calls::now();
    if !st.set_incident_state(id, state, now)? {
        anyhow::bail!("no incident #{id}");
    }
    println!("incident #{id}: {state}");
    Ok(())
}

pub(super) async fn hosts(dir: &Path, json: bool, sa: StoreArgs) -> anyhow::Result<()> {
    let st = open_store(dir, sa).await?;
    let hosts = tokio::task::spawn_blocking(move || st.hosts()).await??;
    let now = clinicwatch_collector::calls::now();
    for h in hosts {
        if json {
            println!(
                "{}",
                serde_json::json!({"clinic": h.clinic, "host": h.host, "hostname": h.hostname,
                    "agent_version": h.agent_version, "kernel": h.kernel, "last_seen": h.last_seen,
                    "spooled": h.spooled, "dropped": h.dropped})
            );
        } else {
            println!(
                "{:<20} {:<16} last seen {} ({:.0} s ago)  agent {}  kernel {}  spooled {}  dropped {}",
                h.clinic,
                h.host,
                utc(h.last_seen),
                (now - h.last_seen).max(0.0),
                h.agent_version,
                h.kernel,
                h.spooled,
                h.dropped
            );
        }
    }
    Ok(())
}

/// `indicators top`: by distinct clinics over the last `hours`.
pub(super) async fn top_indicators(
    dir: &Path,
    hours: f64,
    limit: usize,
    sa: StoreArgs,
) -> anyhow::Result<()> {
    let st = open_store(dir, sa).await?;
    let since = clinicwatch_collector::calls::now() - hours * 3600.0;
    let top = tokio::task::spawn_blocking(move || st.top_indicators(since, limit)).await??;
    for i in top {
        println!(
            "{:>6} clinics  {:<10} {:<40} {} .. {}",
            i.clinics,
            i.kind,
            i.value,
            utc(i.first_seen),
            utc(i.last_seen)
        );
    }
    Ok(())
}
