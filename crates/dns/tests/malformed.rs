//! Malformed and hostile input never crashes or stalls fed-dns: compression loops, truncated
//! headers, absurd EDNS sizes, wrong counts over UDP; TCP length prefixes of 0 and 65535,
//! clients that send a byte at a time or nothing at all. After each, real queries are still
//! answered over both transports.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use switchyard_dns::{Args, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const CRM: &str = "crm-web.fed.local.";

async fn still_answers(addr: SocketAddr) -> anyhow::Result<()> {
    let udp = tokio::time::timeout(Duration::from_secs(2), query_udp(addr, CRM, RecordType::A)).await??;
    anyhow::ensure!(addresses(&udp) == ["127.0.1.1"], "UDP answer {udp:?}");
    let tcp = tokio::time::timeout(Duration::from_secs(2), query_tcp(addr, CRM, RecordType::A)).await??;
    anyhow::ensure!(addresses(&tcp) == ["127.0.1.1"], "TCP answer {tcp:?}");
    Ok(())
}

/// Sends `packet` over UDP; returns the answer if one comes within 500 ms.
async fn udp_raw(addr: SocketAddr, packet: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(packet, addr).await?;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await {
        Ok(n) => Ok(Some(buf[..n?].to_vec())),
        Err(_) => Ok(None),
    }
}

fn header(id: u16, qd: u16, ar: u16) -> Vec<u8> {
    let mut h = id.to_be_bytes().to_vec();
    h.extend_from_slice(&[0x01, 0x00]);
    h.extend_from_slice(&qd.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h.extend_from_slice(&ar.to_be_bytes());
    h
}

fn question(name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn opt(payload: u16) -> Vec<u8> {
    let mut o = vec![0, 0, 41];
    o.extend_from_slice(&payload.to_be_bytes());
    o.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_packets_and_connections_never_stop_the_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path(), "switchyard test ca")?;
    let federator = FakeFederator::start(&pki.federator, table(1, 1, "127.0.1.1")).await?;
    // One UDP worker: a packet that killed it would leave no other worker to answer for it.
    let mut args = dns_args(&pki, federator.addr, &state_dir(dir.path()), false);
    args.extend(["--udp-workers".to_string(), "1".to_string()]);
    let config = Config::from_args(&Args::try_parse_from(args)?)?;
    let dns = switchyard_dns::spawn(config).await?;
    let addr = dns.local_addr();
    eventually("the table", || query_udp(addr, CRM, RecordType::A), |r| addresses(r) == ["127.0.1.1"]).await?;

    // UDP: each gets FORMERR (header readable) or nothing, and the server carries on.
    let mut compression_loop = header(1, 1, 0);
    compression_loop.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]); // the name points at itself
    let mut two_questions = header(2, 2, 0);
    two_questions.extend(question(CRM));
    two_questions.extend(question(CRM));
    let mut no_question = header(3, 0, 0);
    no_question.extend_from_slice(&[]);
    let mut label_too_long = header(4, 1, 0);
    label_too_long.push(64);
    label_too_long.extend_from_slice(&[b'a'; 64]);
    label_too_long.extend_from_slice(&[0, 0, 1, 0, 1]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", vec![0x12, 0x34, 0x01]),
        ("header only, one question promised", header(5, 1, 0)),
        ("compression loop", compression_loop),
        ("two questions", two_questions),
        ("no question", no_question),
        ("64-byte label", label_too_long),
    ];
    for (what, packet) in &cases {
        if let Some(answer) = udp_raw(addr, packet).await? {
            assert!(answer.len() >= 12 && answer[2] & 0x80 != 0, "{what}: a response, if any");
            let rcode = answer[3] & 0x0F;
            assert!(rcode == 1 || rcode == 0, "{what}: rcode {rcode}");
            assert_eq!(&answer[..2], &packet[..2], "{what}: same id");
        }
        still_answers(addr).await.map_err(|e| anyhow::anyhow!("after {what}: {e}"))?;
    }
    // Absurd EDNS sizes are clamped: 0 and 65535 both get an answer of at most 1232 bytes
    // that advertises a size between 512 and 1232.
    for payload in [0u16, 1, 65535] {
        let mut q = header(9, 1, 1);
        q.extend(question(CRM));
        q.extend(opt(payload));
        let answer = udp_raw(addr, &q).await?.expect("an answer");
        assert!(answer.len() <= 1232);
        let m = Message::from_vec(&answer)?;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let advertised = m.edns.expect("EDNS echoed").max_payload();
        assert!((512..=1232).contains(&advertised), "payload {payload} -> advertised {advertised}");
    }

    // TCP: a zero length, a 65535 length with a few bytes behind it, a byte-at-a-time client,
    // and 64 connections that send nothing. None of them holds back other clients.
    let mut zero = TcpStream::connect(addr).await?;
    zero.write_all(&[0, 0]).await?;
    let mut huge = TcpStream::connect(addr).await?;
    huge.write_all(&[0xFF, 0xFF, 0x12, 0x34]).await?;
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(addr).await?);
    }
    still_answers(addr).await?;
    let mut slow = TcpStream::connect(addr).await?;
    let mut q = header(0x4242, 1, 0);
    q.extend(question(CRM));
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    for byte in &framed {
        slow.write_all(&[*byte]).await?;
        slow.flush().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Others are served while this one dribbles.
    }
    still_answers(addr).await?;
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), slow.read_exact(&mut len)).await??;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    slow.read_exact(&mut body).await?;
    assert_eq!(Message::from_vec(&body)?.metadata.id, 0x4242, "the slow client is answered too");
    // The zero-length and oversized prefixes got no answer and did not wedge the listener.
    let mut buf = [0u8; 2];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), zero.read_exact(&mut buf)).await.map_or(true, |r| r.is_err())
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), huge.read_exact(&mut buf)).await.map_or(true, |r| r.is_err())
    );
    drop(idle);
    still_answers(addr).await?;

    dns.shutdown().await?;
    federator.stop().await?;
    Ok(())
}
