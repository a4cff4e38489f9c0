//! Hosts as last heard from: Hello, heartbeats, where each epoch's records stand.

use clinicwatch_proto::v1::{Heartbeat, Hello};

use crate::store::conn::{args, Conn};
use crate::store::{HostKey, HostRow, StoreError};

pub fn hello(c: &mut dyn Conn, host: &HostKey, hello: &Hello, now: f64) -> Result<u64, StoreError> {
    c.exec(
        "INSERT INTO hosts (clinic, host, hostname, agent_version, kernel, epoch, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (clinic, host) DO UPDATE SET hostname = $3, agent_version = $4,
           kernel = $5, epoch = $6, last_seen = $7",
        args![
            host.clinic,
            host.host,
            hello.hostname,
            hello.agent_version,
            hello.kernel,
            hello.epoch,
            now
        ],
    )?;
    stored_up_to(c, host, hello.epoch)
}

pub fn stored_up_to(c: &mut dyn Conn, host: &HostKey, epoch: u64) -> Result<u64, StoreError> {
    c.query_one(
        "SELECT COALESCE(MAX(seq), 0) FROM records WHERE clinic = $1 AND host = $2 AND epoch = $3",
        args![host.clinic, host.host, epoch],
    )?
    .u64(0)
}

pub fn heartbeat(
    c: &mut dyn Conn,
    host: &HostKey,
    hb: &Heartbeat,
    now: f64,
) -> Result<(), StoreError> {
    c.exec(
        "UPDATE hosts SET last_seen = $3, spooled = $4, dropped = $5
         WHERE clinic = $1 AND host = $2",
        args![host.clinic, host.host, now, hb.spooled, hb.dropped],
    )
    .map(drop)
}

pub fn hosts(c: &mut dyn Conn) -> Result<Vec<HostRow>, StoreError> {
    c.query(
        "SELECT clinic, host, COALESCE(hostname, ''), COALESCE(agent_version, ''),
           COALESCE(kernel, ''), COALESCE(epoch, 0), COALESCE(last_seen, 0), spooled, dropped
         FROM hosts ORDER BY clinic, host",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(HostRow {
            clinic: r.text(0)?,
            host: r.text(1)?,
            hostname: r.text(2)?,
            agent_version: r.text(3)?,
            kernel: r.text(4)?,
            epoch: r.u64(5)?,
            last_seen: r.f64(6)?,
            spooled: r.u64(7)?,
            dropped: r.u64(8)?,
        })
    })
    .collect()
}
