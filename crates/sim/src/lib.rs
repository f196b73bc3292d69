//! Deterministic simulation of a whole federation in one process.
//!
//! The federator replicas are real: openraft with the federator's own redb storage code (on an
//! in-memory disk that survives a simulated crash), the real `State::apply` and the real pure
//! engine driving operations. Cells and DNS servers are small models that use the real
//! fencing and admission rules. Everything talks over a simulated network where a seeded
//! generator decides losses, delays (and so reordering) and partitions; time is tokio's virtual
//! clock, and every replica's wall clock can be skewed. The same seed replays the same run.

pub mod disk;
pub mod invariants;
pub mod net;
pub mod parts;
pub mod world;

pub use world::{DrSummary, Options, Summary, Violation, run_seed};
