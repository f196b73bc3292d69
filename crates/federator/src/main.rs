use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use switchyard_federator::FederatorConfig;

/// Switchyard federator: the replicated controller of a multi-site federation.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path of the TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the configuration and exit without starting.
    #[arg(long)]
    check: bool,
    /// Seed this replica's empty data directory from a backup taken with `fedctl cluster
    /// backup`, as a new cluster with this replica as its only voter, then exit. Start it
    /// normally afterwards and add the other replicas with `fedctl cluster add`.
    #[arg(long, value_name = "BACKUP")]
    restore_from: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    switchyard_telemetry::init_tracing(args.log_json);
    let config = match FederatorConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(backup) = &args.restore_from {
        let bytes = match std::fs::read(backup) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", backup.display());
                return ExitCode::from(2);
            }
        };
        let address = config.advertise_addr();
        return match switchyard_federator::raft::restore(&config.data_dir, &bytes, config.node_id, &address) {
            Ok(r) => {
                println!(
                    "restored {} into {}: log index {} (term {}), {} groups, {} audit records; node {} at {address} is the only voter",
                    backup.display(),
                    config.data_dir.display(),
                    r.last_log_index,
                    r.last_log_term,
                    r.groups,
                    r.audit_records,
                    config.node_id
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check {
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    let running = match switchyard_federator::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    wait_for_shutdown().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
