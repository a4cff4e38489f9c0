//! The subcommands of `clinicwatch-collector`, one handler each, grouped by what they
//! manage; [`run`] dispatches the parsed command line to them.

pub(crate) mod args;
mod certs;
mod dir;
mod fleet;
mod serve;

use args::{CaCmd, Cli, Cmd, IndicatorsCmd};

/// Runs the subcommand of `cli`.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.dir;
    match cli.cmd {
        Cmd::Ca {
            cmd: CaCmd::Init { name, days },
        } => certs::ca_init(&dir, &name, days),
        Cmd::EnrollToken {
            clinic,
            days,
            uses,
            host,
            store,
        } => certs::enroll_token(&dir, clinic, days, uses, host, store).await,
        Cmd::Tokens { cmd, store } => certs::tokens(&dir, cmd, store).await,
        Cmd::Issue {
            clinic,
            host,
            soc,
            name,
            days,
            out,
            store,
        } => {
            let req = certs::Issue {
                clinic,
                host,
                soc,
                name,
                days,
                out,
            };
            certs::issue(&dir, req, store).await
        }
        Cmd::Unenroll {
            clinic,
            host,
            config,
            db,
        } => certs::unenroll(&dir, clinic, host, config, db).await,
        Cmd::Incidents { cmd, store } => fleet::incidents(&dir, cmd, store).await,
        Cmd::Hosts { json, store } => fleet::hosts(&dir, json, store).await,
        Cmd::Indicators {
            cmd: IndicatorsCmd::Top { hours, limit },
            store,
        } => fleet::top_indicators(&dir, hours, limit, store).await,
        Cmd::Serve { config, listen, db } => serve::serve(&dir, config, listen, db).await,
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of unix seconds.
fn utc(t: f64) -> String {
    const SHOWN: &[time::format_description::FormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(t.max(0.0) as i64)
        .ok()
        .and_then(|d| d.format(SHOWN).ok())
        .unwrap_or_else(|| format!("{t}"))
}
