//! The pure decision logic of a site's resource manager, the Mesos + Marathon class system
//! every cell runs: Dominant Resource Fairness allocation across roles with weights, quotas and
//! reservations; constraint-aware task placement; deployment planning (scale, rolling upgrade,
//! kill, suspend) with health checks and restart backoff; and autoscaling policies.
//!
//! Everything here is synchronous and deterministic: no tokio, no clock, no I/O, no
//! randomness. Time is an argument (`now_ms`); iteration is over ordered maps. The cell master
//! (`dc-agent`) owns sockets, processes and persistence, and calls in here to decide.

pub mod autoscale;
pub mod backoff;
pub mod constraints;
pub mod deploy;
pub mod drf;
pub mod health;
pub mod model;
pub mod placement;
pub mod seeded;
