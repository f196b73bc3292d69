//! Publishing a site's endpoints to its load balancer. One seam, [`LoadBalancer`], with two
//! implementations: [`HaproxyRuntime`] (HAProxy's runtime API over its admin socket) and
//! [`FakeLoadBalancer`] (in memory, for tests of callers). What to change is decided by the
//! pure [`plan_backend`]; [`sync_backend`] reads, plans and applies, carrying on past a failed
//! command so one bad server never blocks the others.

mod fake;
mod haproxy;
mod plan;

use std::net::IpAddr;

pub use fake::FakeLoadBalancer;
pub use haproxy::HaproxyRuntime;
pub use plan::{LbCommand, plan_backend};

/// A server of a backend as the load balancer reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u16,
    /// Administratively in maintenance: receives no traffic.
    pub maintenance: bool,
    /// Draining: keeps its sessions, gets no new ones.
    pub draining: bool,
}

/// A server as the cell wants it: one running task of an app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Server name (the task id, restricted to `[A-Za-z0-9._-]`).
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    /// 0..=256 (HAProxy's range); 0 takes no new traffic.
    pub weight: u16,
    /// Healthy and ready: takes traffic. A known but not-ready endpoint is drained.
    pub ready: bool,
}

/// Largest weight HAProxy accepts.
pub const MAX_WEIGHT: u16 = 256;

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("load balancer unreachable at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("load balancer refused `{command}`: {response}")]
    Rejected { command: String, response: String },
    #[error("unexpected answer to `{command}`: {response}")]
    Protocol { command: String, response: String },
    #[error("invalid endpoint: {0}")]
    Invalid(String),
}

/// The seam to a site's load balancer.
pub trait LoadBalancer: Send + Sync {
    /// Servers of `backend` as the load balancer has them now.
    fn servers(&self, backend: &str) -> impl Future<Output = Result<Vec<ServerState>, LbError>> + Send;
    /// Carries out one command.
    fn execute(&self, command: &LbCommand) -> impl Future<Output = Result<(), LbError>> + Send;
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub applied: Vec<LbCommand>,
    pub failed: Vec<(LbCommand, LbError)>,
}

/// Brings `backend` to `desired`: reads its servers, plans the difference and applies every
/// command, recording failures instead of stopping at the first. Idempotent: a second call with
/// the same desired endpoints does nothing.
pub async fn sync_backend<L: LoadBalancer>(lb: &L, backend: &str, desired: &[Endpoint]) -> Result<SyncReport, LbError> {
    sync_backend_keeping(lb, backend, desired, &[]).await
}

/// [`sync_backend`], leaving the servers named in `keep` exactly as they are (their state is
/// unknown to the caller: neither added, changed nor removed).
pub async fn sync_backend_keeping<L: LoadBalancer>(
    lb: &L,
    backend: &str,
    desired: &[Endpoint],
    keep: &[String],
) -> Result<SyncReport, LbError> {
    let current: Vec<ServerState> =
        lb.servers(backend).await?.into_iter().filter(|s| !keep.contains(&s.name)).collect();
    let mut report = SyncReport::default();
    for command in plan_backend(backend, &current, desired)? {
        match lb.execute(&command).await {
            Ok(()) => report.applied.push(command),
            Err(e) => report.failed.push((command, e)),
        }
    }
    Ok(report)
}

#[doc(hidden)]
pub mod conformance;
