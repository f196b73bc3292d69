//! The disaster-recovery family's short run: seeds where observers probe the sites, the leader
//! declares sites down and fails their groups over, while faults kill whole sites, cut only the
//! federators off from a site, and flap sites. Every invariant is checked after every step,
//! no false failover among them; after healing, every group served by a declared-down site has
//! failed over or is held by a recorded guard rail. The long run is
//! `cargo run -p switchyard-sim --release -- --dr --seeds 0..2000` (see docs/simulation.md).

use switchyard_sim::{DrSummary, Options, run_seed};

/// Seeds per test: the tests share the range so the test runner spreads them over cores.
const CHUNK: u64 = 50;

fn dr() -> Options {
    Options { steps: 150, dr: true, ..Options::default() }
}

fn run_range(from: u64, to: u64) -> DrSummary {
    let mut total = DrSummary::default();
    for seed in from..to {
        match run_seed(seed, &dr()) {
            Ok(s) => {
                total.site_kills += s.dr.site_kills;
                total.federator_cuts += s.dr.federator_cuts;
                total.federator_cuts_unreachable += s.dr.federator_cuts_unreachable;
                total.federator_cuts_quiet += s.dr.federator_cuts_quiet;
                total.declarations += s.dr.declarations;
                total.failovers += s.dr.failovers;
                total.brake_trips += s.dr.brake_trips;
            }
            Err(v) => panic!("{v}"),
        }
    }
    // The runs must exercise detection and failover: sites are declared down and groups fail
    // over, and federator-only cuts of live sites (some answering "unreachable", so the
    // federator domain alone saw the site unhealthy) declare nothing.
    assert!(total.site_kills > 0, "no site was killed: {total:?}");
    assert!(total.declarations > 0, "no site was declared down: {total:?}");
    assert!(total.failovers > 0, "no group failed over: {total:?}");
    assert!(total.federator_cuts_quiet > 0, "no federator-only cut of a live site: {total:?}");
    assert!(total.federator_cuts_unreachable > 0, "no federator-only cut answered unreachable: {total:?}");
    total
}

#[test]
fn dr_seeds_0_to_50() {
    run_range(0, CHUNK);
}

#[test]
fn dr_seeds_50_to_100() {
    run_range(CHUNK, 2 * CHUNK);
}

#[test]
fn dr_seeds_100_to_150() {
    run_range(2 * CHUNK, 3 * CHUNK);
}

#[test]
fn dr_seeds_150_to_200() {
    run_range(3 * CHUNK, 4 * CHUNK);
}

#[test]
fn a_dr_seed_replays_the_same_run() {
    let a = run_seed(7, &dr()).expect("seed 7 passes");
    let b = run_seed(7, &dr()).expect("seed 7 passes");
    assert_eq!(a.digest, b.digest, "two runs of DR seed 7 differ");
    assert_eq!(a.dr, b.dr);
}
