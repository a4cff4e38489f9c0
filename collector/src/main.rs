//! `clinicwatch-collector`: `ca init`, `enroll-token`, `unenroll`, `issue` (a host
//! certificate by hand), `serve`.

mod cli;

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // The journal (or a log file) gets plain text; colour only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    cli::run(cli::args::Cli::parse()).await
}
