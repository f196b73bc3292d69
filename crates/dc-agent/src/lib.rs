//! The per-site agent of Switchyard. `dc-agent cell` is a site's cell master: it keeps the
//! registry of the site's nodes, turns the federator's desired state into tasks placed on those
//! nodes, and reports capacity and task status back to the federator. `dc-agent node` runs on
//! every host: it launches the tasks its cell assigns as real OS processes, restarts them with
//! backoff, health-checks them and reports their status.
//!
//! What it never does: apply a desired state older than one it has applied (fencing), stop a
//! workload of a group that is absent from the desired state, stop running tasks because the
//! federator or the cell is unreachable (static stability), or speak anything but mutual TLS.
//! Scheduling decisions live in one pure function ([`schedule::plan`]) with no I/O and no clock:
//! the service scheduler, the DRF allocator and the constraint-aware placer of
//! `switchyard-cell-core`, so they can be tested exhaustively.

pub mod autoscaling;
pub mod backoff;
pub mod cell;
pub mod config;
mod convert;
pub mod error;
mod grpc;
pub mod lb;
pub mod model;
pub mod node;
pub mod persist;
pub mod quotas;
pub mod schedule;
mod shutdown;

pub use cell::{run_cell, run_cell_until};
pub use config::{CellArgs, Cli, Command, NodeArgs};
pub use error::AgentError;
pub use node::{run_node, run_node_until};

/// Version string a cell announces to the federator.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
