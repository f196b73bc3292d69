//! Automatic disaster recovery, its pure decisions: detection by a quorum of independent
//! observers ([`detect`]) and the guard rails and target choice of a site's failover
//! ([`guard`]).

pub mod detect;
pub mod guard;
