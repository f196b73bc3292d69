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
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = echo.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; ENTRY];
        for _ in 0..N {
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf[..8]).unwrap();
        }
    });
    let mut c = connect(echo_addr);
    let mut ack = [0u8; 8];
    let t = Instant::now();
    for _ in 0..N {
        c.write_all(&entry).unwrap();
        c.read_exact(&mut ack).unwrap();
    }
    report("TCP round trip on loopback, nothing durable", t, Some(fsync));
    server.join().unwrap();

    // Follower: durable, then acknowledge.
    let follower = TcpListener::bind("127.0.0.1:0").unwrap();
    let follower_addr = follower.local_addr().unwrap();
    let follower_file = dir.path().join("follower");
    let follower = std::thread::spawn(move || {
        let (mut s, _) = follower.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut f = append(&follower_file);
        let mut buf = [0u8; ENTRY];
        for _ in 0..N {
            s.read_exact(&mut buf).unwrap();
            durable(&mut f, &buf);
            s.write_all(&buf[..8]).unwrap();
        }
    });
    // Leader: forward to the follower and flush its own copy at the same time, answer when both
    // are durable.
    let leader = TcpListener::bind("127.0.0.1:0").unwrap();
    let leader_addr = leader.local_addr().unwrap();
    let leader_file = dir.path().join("leader");
    let leader = std::thread::spawn(move || {
        let (mut client, _) = leader.accept().unwrap();
        client.set_nodelay(true).unwrap();
        let mut to_follower = connect(follower_addr);
        let mut f = append(&leader_file);
        let mut buf = [0u8; ENTRY];
        let mut ack = [0u8; 8];
        for _ in 0..N {
            client.read_exact(&mut buf).unwrap();
            to_follower.write_all(&buf).unwrap();
            durable(&mut f, &buf);
            to_follower.read_exact(&mut ack).unwrap();
            client.write_all(&ack).unwrap();
        }
    });
    let mut c = connect(leader_addr);
    let t = Instant::now();
    for _ in 0..N {
        c.write_all(&entry).unwrap();
        c.read_exact(&mut ack).unwrap();
    }
    report("client → leader → follower, both copies durable (flushes overlapped)", t, Some(fsync));
    leader.join().unwrap();
    follower.join().unwrap();
}
