//! The simulation's short run: a few hundred seeds of faults and operations on a 3-replica
//! federation (and some on 5 replicas), every invariant checked after every step. The long run
//! is `cargo run -p switchyard-sim --release -- --seeds 0..10000` (see docs/simulation.md).

use switchyard_sim::{Options, run_seed};

/// Seeds per test: four tests share the range so the test runner spreads them over cores.
const CHUNK: u64 = 80;

fn short() -> Options {
    Options { steps: 150, ..Options::default() }
}

fn run_range(from: u64, to: u64, opts: &Options) {
    let (mut acked, mut entries, mut writes) = (0, 0, 0);
    for seed in from..to {
        match run_seed(seed, opts) {
            Ok(s) => {
                acked += s.acked_writes;
                entries += s.write_entries;
                writes += s.writes_in_entries;
            }
            Err(v) => panic!("{v}"),
        }
    }
    // The runs must exercise something: operators' writes get through despite the faults...
    assert!(acked as u64 > (to - from), "only {acked} acknowledged writes over {} seeds", to - from);
    // ...and some log entries carry several writes (executors, cells and operators writing
    // at once), so the invariants are checked over batched entries too.
    assert!(writes > entries, "{writes} writes in {entries} entries: no entry was a batch");
}

#[test]
fn seeds_0_to_80() {
    run_range(0, CHUNK, &short());
}

#[test]
fn seeds_80_to_160() {
    run_range(CHUNK, 2 * CHUNK, &short());
}

#[test]
fn seeds_160_to_240() {
    run_range(2 * CHUNK, 3 * CHUNK, &short());
}

#[test]
fn seeds_240_to_320() {
    run_range(3 * CHUNK, 4 * CHUNK, &short());
}

#[test]
fn five_replicas_seeds_0_to_30() {
    run_range(0, 30, &Options { replicas: 5, ..short() });
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run_seed(42, &short()).expect("seed 42 passes");
    let b = run_seed(42, &short()).expect("seed 42 passes");
    assert_eq!(a.digest, b.digest, "two runs of seed 42 differ");
    let c = run_seed(43, &short()).expect("seed 43 passes");
    assert_ne!(a.digest, c.digest, "seeds 42 and 43 ran identically");
}
