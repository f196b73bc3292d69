//! The fastest a quorum-durable commit can be on this machine, whatever the implementation: a
//! client sends a 600-byte write over plain TCP on loopback to a "leader", which sends it on
//! to one "follower" and appends it to its own file at the same time; each makes it durable
//! with `fdatasync`; the leader answers the client once both copies are durable. No TLS, no
//! framing beyond fixed sizes, no consensus bookkeeping, no serialization: every real Raft
//! commit does at least this. Compared with one `fdatasync` alone, it bounds what "durable
//! commits per second with one client" can reach here.
//!
//! Run: `cargo bench -p switchyard-federator --bench commit_floor` (files in $TMPDIR).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

const N: usize = 2_000;
const ENTRY: usize = 600;

fn append(path: &Path) -> File {
    OpenOptions::new().create(true).append(true).open(path).unwrap()
}

fn durable(f: &mut File, entry: &[u8]) {
    f.write_all(entry).unwrap();
    f.sync_data().unwrap();
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn report(name: &str, started: Instant, fsync_rate: Option<f64>) -> f64 {
    let secs = started.elapsed().as_secs_f64();
    let rate = N as f64 / secs;
    let ratio = fsync_rate.map(|f| format!(", {:.2} × the fsync rate", rate / f)).unwrap_or_default();
    println!("{name}: {rate:.0}/s ({:.0} µs each{ratio})", secs / N as f64 * 1e6);
    rate
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let entry = [b'e'; ENTRY];

    let mut f = append(&dir.path().join("alone"));
    let t = Instant::now();
    for _ in 0..N {
        durable(&mut f, &entry);
    }
    let fsync = report("one append + fdatasync", t, None);

    // The client's round trip to the leader with nothing durable: the network's share.
    let echo = serve(|_| {});
    report("TCP round trip on loopback, nothing durable", rounds(echo.0), Some(fsync));
    echo.1.join().unwrap();

    // Follower: durable, then acknowledge.
    let mut follower_copy = append(&dir.path().join("follower"));
    let follower = serve(move |entry| durable(&mut follower_copy, entry));
    // Leader: forward to the follower and flush its own copy at the same time, answer when both
    // are durable.
    let mut to_follower = connect(follower.0);
    let mut leader_copy = append(&dir.path().join("leader"));
    let leader = serve(move |entry| {
        to_follower.write_all(entry).unwrap();
        durable(&mut leader_copy, entry);
        to_follower.read_exact(&mut [0u8; 8]).unwrap();
    });
    report("client → leader → follower, both copies durable (flushes overlapped)", rounds(leader.0), Some(fsync));
    leader.1.join().unwrap();
    follower.1.join().unwrap();
}

/// A server thread on loopback that takes `N` entries from one connection, runs `handle` on
/// each, then acknowledges it with 8 bytes.
fn serve(mut handle: impl FnMut(&[u8]) + Send + 'static) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; ENTRY];
        for _ in 0..N {
            s.read_exact(&mut buf).unwrap();
            handle(&buf);
            s.write_all(&buf[..8]).unwrap();
        }
    });
    (addr, thread)
}

/// `N` writes, each waiting for its acknowledgement; returns when the first was sent.
fn rounds(addr: std::net::SocketAddr) -> Instant {
    let mut c = connect(addr);
    let (entry, mut ack) = ([b'e'; ENTRY], [0u8; 8]);
    let started = Instant::now();
    for _ in 0..N {
        c.write_all(&entry).unwrap();
        c.read_exact(&mut ack).unwrap();
    }
    started
}
