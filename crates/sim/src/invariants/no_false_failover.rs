//! No false failover (disaster-recovery family): a site is declared down automatically only
//! on sightings that really happened, and only when it was really dead.
//!
//! The ground truth is the driver's: a site is *dead* while its ingress refuses connections
//! (its cell is down: killed with the whole site, crashed, or flapping); the replicas' path to
//! a site is *unreachable* while a federator-only cut answers "host unreachable" (the site
//! itself still serves, and its DNS server still reaches it). Times below are virtual ms since
//! the run began; `r(c) = c - EPOCH_MS` reads a leader-clock stamp `c` as such, right to within
//! `K` (the bound on any replica's clock error, [`crate::world::DR_SKEW_MS`]). `L` bounds how old
//! a sighting is when a replica stamps it (a DNS server's batch waits for its other probes and
//! for its reports to the replicas before it; the receiver stamps its own time, as the real
//! federator does). `W`, `stale` and `quorum` are the detection configuration.
//!
//! For every committed automatic declaration (actor `system`, not a human's) of site `S`,
//! decided at leader time `T` (the declaration's `at_ms`), on every replica, and once more
//! over the audit chain at the end (a declaration can be reclaimed between two checks):
//!
//! 1. **The rule holds on the committed evidence**: observers in at least `quorum` distinct
//!    failure domains were unhealthy at their last sighting, that sighting within `stale` of
//!    `T`, and their first unhealthy sighting (not reset since) at least `W` before `T`.
//! 2. **Every agreeing sighting was real**: for each such observer, `S` refused it at some
//!    moment in `[r(since) - L - K, r(since) + K]` and in `[r(last) - L - K, r(last) + K]`:
//!    dead, or, for a federator replica only, behind an "unreachable" cut. An unknown probe
//!    (lost, timed out, partitioned, blackholed) must never have become an unhealthy sighting.
//! 3. **The site really was dead, recently**: `S` was dead at some moment in
//!    `[r(T) - stale - L - 2K, r(T) + K]`. So a site merely cut off from the federators (by a
//!    blackhole or by an "unreachable" answer), or partitioned, is never declared down; a
//!    declaration is made while the site is dead or shortly after it was.
//!
//! What is deliberately not required: that the site was dead for the whole window. An unknown
//! sighting keeps an observer's timer (by design: a timeout says nothing about the site), so a
//! site that died, came back while every probe of it in a domain was lost, and died again, is
//! declared on the time since it first died. Point 2 with `W` in point 1 still means the first
//! agreeing sighting in each domain was a real death at least `W - 2K - L` before `T`.

use switchyard_core::SYSTEM_ACTOR;
use switchyard_core::dr::detect::{Evidence, Health};

use super::{DrTruth, Interval, Observed};
use crate::net::EPOCH_MS;
use crate::parts::FEDERATOR_DOMAIN;

pub fn check(o: &Observed) -> Result<(), String> {
    let Some(t) = &o.dr else { return Ok(()) };
    for r in &o.replicas {
        for (site, d) in &r.state.down_sites {
            if d.actor != SYSTEM_ACTOR || d.manual.is_some() {
                continue;
            }
            justified(t, site, d.at_ms, &d.evidence).map_err(|e| {
                format!(
                    "replica {} (applied {}) has {site} declared down at {} ms: {e}",
                    r.id, r.state.last_applied, d.at_ms
                )
            })?;
        }
    }
    Ok(())
}

/// Every automatic declaration in the first replica's audit chain (run once, at the end).
pub fn check_audit(o: &Observed) -> Result<(), String> {
    let (Some(t), Some(r)) = (&o.dr, o.replicas.first()) else { return Ok(()) };
    for rec in r.state.audit.records() {
        if rec.action != "site.declared-down" || rec.actor != SYSTEM_ACTOR {
            continue;
        }
        let detail: serde_json::Value =
            serde_json::from_str(&rec.detail_json).map_err(|e| format!("audit record {}: {e}", rec.seq))?;
        if detail.get("manual").is_some() {
            continue;
        }
        let evidence: Vec<Evidence> = serde_json::from_value(detail["evidence"].clone())
            .map_err(|e| format!("audit record {}: evidence does not parse: {e}", rec.seq))?;
        justified(t, &rec.subject, rec.time_ms, &evidence).map_err(|e| {
            format!("audit record {} declares {} down at {} ms: {e}", rec.seq, rec.subject, rec.time_ms)
        })?;
    }
    Ok(())
}

fn any_in(intervals: &[Interval], from: u64, to: u64) -> bool {
    intervals.iter().any(|iv| iv.overlaps(from, to))
}

fn real(clock_ms: u64) -> u64 {
    clock_ms.saturating_sub(EPOCH_MS)
}

/// Points 1 to 3 of the module's rule for one declaration of `site` at leader time `at_ms`.
pub fn justified(t: &DrTruth, site: &str, at_ms: u64, evidence: &[Evidence]) -> Result<(), String> {
    let (k, l, cfg) = (t.skew_bound_ms, t.latency_ms, &t.detect);
    let none = Vec::new();
    let dead = t.dead.get(site).unwrap_or(&none);
    let unreachable = t.unreachable.get(site).unwrap_or(&none);
    // 1. The rule, on the committed evidence.
    let agreeing: Vec<&Evidence> = evidence
        .iter()
        .filter(|e| e.health == Health::Unhealthy && at_ms.saturating_sub(e.last_at_ms) <= cfg.stale_ms)
        .filter(|e| e.unhealthy_since_ms.is_some_and(|s| at_ms.saturating_sub(s) >= cfg.window_ms))
        .collect();
    let domains: std::collections::BTreeSet<&str> = agreeing.iter().map(|e| e.domain.as_str()).collect();
    if domains.len() < cfg.quorum.max(1) {
        return Err(format!(
            "its evidence agrees in {} failure domain(s) {domains:?}, {} needed",
            domains.len(),
            cfg.quorum
        ));
    }
    // 2. Every agreeing sighting was real.
    for e in &agreeing {
        let refused = |c: u64| {
            let (from, to) = (real(c).saturating_sub(l + k), real(c) + k);
            any_in(dead, from, to) || (e.domain == FEDERATOR_DOMAIN && any_in(unreachable, from, to))
        };
        for (what, c) in [("first", e.unhealthy_since_ms.unwrap_or_default()), ("last", e.last_at_ms)] {
            if !refused(c) {
                return Err(format!(
                    "observer {} ({}) has its {what} unhealthy sighting at {} ms (virtual {} ms), when the site \
                     refused nobody (dead {dead:?}, unreachable from the replicas {unreachable:?})",
                    e.observer,
                    e.domain,
                    c,
                    real(c)
                ));
            }
        }
    }
    // 3. The site really was dead, recently.
    let (from, to) = (real(at_ms).saturating_sub(cfg.stale_ms + l + 2 * k), real(at_ms) + k);
    if !any_in(dead, from, to) {
        return Err(format!(
            "the site was not dead between virtual {from} and {to} ms (dead {dead:?}, unreachable from the \
             replicas {unreachable:?}): a false failover"
        ));
    }
    Ok(())
}
