//! The federator: the Raft-replicated controller above the sites' cells. It commits every
//! decision (configuration, cell observations, operation steps) through the Raft log into the
//! pure `switchyard_core::State`, streams desired state to cells and the routing table to DNS
//! servers, and serves the operator API.
//!
//! It never decides anything inside I/O code: what to do next comes from
//! `switchyard_core::engine`, and state changes only in `State::apply`. It never talks to a
//! node or a task directly; cells own their sites.

pub mod api;
pub mod batch;
pub mod cell_link;
pub mod config;
pub mod convert;
pub mod executor;
pub mod node;
pub mod observe;
pub mod raft;
pub mod routing;

pub use config::FederatorConfig;
pub use node::{Federator, Running, start};
