//! One test per bug the simulation found, pinned to the seed that found it (with the options
//! it ran with), so the bug cannot come back unnoticed.

use switchyard_sim::{Options, run_seed};

fn short() -> Options {
    Options { steps: 150, ..Options::default() }
}

/// A group freeze made the committed state unserializable (a freeze scope was a JSON object
/// key), so every snapshot build panicked: logs were never compacted and a lagging replica
/// could not be caught up. Seed 0 sets a group freeze before the first snapshot.
#[test]
fn seed_0_group_freeze_before_a_snapshot() {
    if let Err(v) = run_seed(0, &short()) {
        panic!("{v}");
    }
}
