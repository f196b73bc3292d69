//! `fed-dns` binary: parses flags and hands over to [`switchyard_dns::run`].

use std::process::ExitCode;

use clap::Parser;
use switchyard_dns::{Args, DnsError};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    switchyard_telemetry::init_tracing(false);
    match switchyard_dns::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(DnsError::Config(e)) => {
            eprint!("fed-dns: {e}");
            ExitCode::from(2)
        }
        Err(e) if e.is_usage() => {
            eprintln!("fed-dns: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = %e, "fed-dns failed");
            eprintln!("fed-dns: {e}");
            ExitCode::FAILURE
        }
    }
}
