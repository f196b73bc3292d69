//! A minimal DNS A query over UDP, used only to tell whether `fed-dns` serves a name yet.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

pub struct Answer {
    pub rcode: u8,
    pub answers: u16,
}

pub fn query_a(server: SocketAddr, name: &str, timeout: Duration) -> std::io::Result<Answer> {
    const ID: u16 = 0x5359;
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&ID.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // no flags, one question
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).ok().filter(|l| (1..=63).contains(l));
        let len = len.ok_or_else(|| std::io::Error::other(format!("bad DNS label {label:?}")))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    let sock = UdpSocket::bind(if server.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" })?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(&q, server)?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf)?;
    if n < 12 || buf[..2] != ID.to_be_bytes() {
        return Err(std::io::Error::other("malformed DNS response"));
    }
    Ok(Answer { rcode: buf[3] & 0x0f, answers: u16::from_be_bytes([buf[6], buf[7]]) })
}
