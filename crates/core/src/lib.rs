//! The pure core of Switchyard: the domain model (sites, app groups, placements, operations,
//! audit records), the replicated state machine that the federator's Raft log drives
//! (`State::apply`), and the engine that decides the next step of every operation.
//!
//! Nothing in this crate does I/O, reads a clock, or draws random numbers. Time enters as the
//! leader-stamped `at_ms` of a proposal, or as the `now_ms` argument of the engine; `apply` is a
//! deterministic function of the state and the log entry, so every replica computes the same
//! state from the same log. Maps are `BTreeMap` so that iteration order is deterministic.

pub mod audit;
pub mod dr;
pub mod drill;
pub mod engine;
pub mod evacuation;
pub mod model;
pub mod operation;
pub mod plan;
pub mod proposal;
pub mod report;
pub mod state;
pub mod views;
pub mod window;

pub use audit::{AuditLog, AuditRecord, ChainError};
pub use engine::{EngineConfig, decide, operation_blocker, validate};
pub use evacuation::{Evacuation, EvacuationGroup, EvacuationStep, GroupStatus};
pub use model::{AppGroup, AppSpec, GroupSpec, HealthSpec, Placement, Resources, Site, SiteShare, SiteSpec, SiteState};
pub use operation::{Operation, OperationKind, Outcome, Phase, Step};
pub use proposal::{Action, Applied, Command, Control, FreezeScope, Proposal, Refusal, Response};
pub use report::{AppReport, CellReport, GroupReport, InstanceReport, NodeReport, ReportRecord};
pub use state::{Freeze, GroupUpdate, State};

/// A committed cell report older than this (relative to the leader-stamped time of a
/// proposal) is not trusted for capacity decisions.
pub const REPORT_FRESH_MS: u64 = 10_000;

/// Actor recorded for decisions the federator takes on its own.
pub const SYSTEM_ACTOR: &str = "system";
