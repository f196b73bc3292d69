use std::process::ExitCode;

use clap::Parser;
use switchyard_dc_agent::{Cli, Command, run_cell, run_node};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    switchyard_telemetry::init_tracing(false);
    let result: anyhow::Result<()> = match cli.command {
        Command::Cell(args) => run_cell(args).await.map_err(Into::into),
        Command::Node(args) => run_node(args).await.map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dc-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
