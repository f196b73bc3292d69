//! What one durable write to the federator's redb costs on this disk, next to the disk's own
//! fdatasync, to see how much of a Raft commit is storage.
//!
//! Run: `cargo bench -p switchyard-federator --bench storage` (writes into $TMPDIR).

use std::io::Write;
use std::time::Instant;

use redb::{Database, Durability, TableDefinition};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const N: u64 = 500;

fn rate(name: &str, started: Instant, n: u64) {
    let secs = started.elapsed().as_secs_f64();
    println!("{name}: {:.0}/s ({:.0} µs each)", n as f64 / secs, secs / n as f64 * 1e6);
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let entry = vec![b'e'; 600];

    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("raw")).unwrap();
    let t = Instant::now();
    for _ in 0..N {
        f.write_all(&entry).unwrap();
        f.sync_data().unwrap();
    }
    rate("raw append + fdatasync", t, N);

    // Two writers on two files at once, as a leader and a follower on one disk: whether their
    // flushes overlap or queue behind each other bounds a quorum commit on this machine.
    let t = Instant::now();
    std::thread::scope(|s| {
        for name in ["raw-a", "raw-b"] {
            let (path, entry) = (dir.path().join(name), &entry);
            s.spawn(move || {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
                for _ in 0..N {
                    f.write_all(entry).unwrap();
                    f.sync_data().unwrap();
                }
            });
        }
    });
    rate("raw append + fdatasync, two files at once (per file)", t, N);

    let db = Database::create(dir.path().join("a.redb")).unwrap();
    let t = Instant::now();
    for i in 0..N {
        let tx = db.begin_write().unwrap();
        tx.open_table(LOG).unwrap().insert(i, entry.as_slice()).unwrap();
        tx.commit().unwrap();
    }
    rate("redb: one entry per durable commit", t, N);

    let t = Instant::now();
    for i in N..2 * N {
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(Durability::None).unwrap();
        tx.open_table(META).unwrap().insert("committed", b"0123456789".as_slice()).unwrap();
        tx.commit().unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(LOG).unwrap().insert(i, entry.as_slice()).unwrap();
        tx.commit().unwrap();
    }
    rate("redb: non-durable meta write, then a durable entry commit", t, N);

    let t = Instant::now();
    for i in 0..N / 10 {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(LOG).unwrap();
            for k in 0..10 {
                table.insert(2 * N + i * 10 + k, entry.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    rate("redb: 10 entries per durable commit (entries/s)", t, N);
}
