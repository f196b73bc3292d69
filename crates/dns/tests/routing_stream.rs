//! fed-dns against a fake federator on loopback: tables stream in over mutual TLS, answers
//! follow them over UDP and TCP, the SOA serial follows the version, stale tables are fenced
//! off, every answer comes from one whole table while they change, and after a restart with
//! the federator gone the last-known-good table still answers.

mod common;

use std::time::Duration;

use clap::Parser;
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use switchyard_dns::{Args, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CRM: &str = "crm-web.fed.local.";

async fn start_dns(argv: &[String]) -> anyhow::Result<switchyard_dns::RunningDns> {
    let config = Config::from_args(&Args::try_parse_from(argv)?)?;
    Ok(switchyard_dns::spawn(config).await?)
}

async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut body = String::new();
    tokio::time::timeout(WAIT_MAX, stream.read_to_string(&mut body)).await??;
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_routing_stream_and_survive_a_restart() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path(), "switchyard test ca")?;
    let state = state_dir(dir.path());
    let federator = FakeFederator::start(&pki.federator, table(1, 1, "127.0.1.1")).await?;
    let argv = dns_args(&pki, federator.addr, &state, true);
    let dns = start_dns(&argv).await?;
    let addr = dns.local_addr();

    // v1 over UDP, then the same answer over TCP.
    let reply =
        eventually("v1 over UDP", || query_udp(addr, CRM, RecordType::A), |r| addresses(r) == ["127.0.1.1"]).await?;
    assert!(is_noerror_aa(&reply), "{reply:?}");
    assert!(reply.edns.is_some(), "an EDNS query gets an EDNS answer");
    assert!(reply.answers.iter().all(|r| r.ttl == 30));
    let soa = query_udp(addr, "fed.local.", RecordType::SOA).await?;
    assert_eq!(soa_serial(&soa), Some(1));
    let tcp = query_tcp(addr, CRM, RecordType::A).await?;
    assert_eq!(addresses(&tcp), ["127.0.1.1"]);
    assert!(is_noerror_aa(&tcp));

    // The federator saw this server, authenticated by its certificate.
    let calls = federator.calls();
    assert!(!calls.is_empty());
    assert_eq!(calls[0].0, "dns:dns-1");
    assert_eq!(calls[0].1.server_id, "dns-1");

    // v2 moves the group: the answer changes and the serial follows, on both transports.
    federator.publish(table(2, 2, "127.0.2.1"));
    eventually("v2 over UDP", || query_udp(addr, CRM, RecordType::A), |r| addresses(r) == ["127.0.2.1"]).await?;
    eventually("serial 2 over TCP", || query_tcp(addr, "fed.local.", RecordType::SOA), |r| soa_serial(r) == Some(2))
        .await?;
    assert_eq!(addresses(&query_tcp(addr, CRM, RecordType::A).await?), ["127.0.2.1"]);

    // Negative answers are authoritative and carry the SOA.
    let nx = query_udp(addr, "nope.fed.local.", RecordType::A).await?;
    assert_eq!(
        (nx.metadata.response_code, nx.metadata.authoritative, soa_serial(&nx)),
        (ResponseCode::NXDomain, true, Some(2))
    );
    let nodata = query_tcp(addr, CRM, RecordType::AAAA).await?;
    assert_eq!(
        (nodata.metadata.response_code, nodata.answers.len(), soa_serial(&nodata)),
        (ResponseCode::NoError, 0, Some(2))
    );
    let refused = query_udp(addr, "example.com.", RecordType::A).await?;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);

    // An older table is fenced off: the answer and the serial stay at v2.
    federator.publish(table(1, 1, "127.0.9.9"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        assert_eq!(addresses(&query_udp(addr, CRM, RecordType::A).await?), ["127.0.2.1"]);
        assert_eq!(soa_serial(&query_udp(addr, "fed.local.", RecordType::SOA).await?), Some(2));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dns.table().map(|t| t.version()), Some(2));

    let metrics = scrape(dns.metrics_addr().expect("metrics enabled")).await?;
    for needle in [
        "dns_table_version 2",
        "dns_table_applied_total 2",
        "dns_table_rejected_total{reason=\"older_version\"} 1",
        "dns_queries_total{rcode=\"noerror\"}",
        "dns_queries_total{rcode=\"nxdomain\"} 1",
        "dns_queries_total{rcode=\"refused\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle:?} missing from /metrics:\n{metrics}");
    }

    // The federator goes away for good; fed-dns restarts on the same state directory and answers
    // v2 at once, from disk.
    federator.stop().await?;
    dns.shutdown().await?;
    let restarted = start_dns(&dns_args(&pki, "127.0.0.1:9".parse()?, &state, false)).await?;
    let addr = restarted.local_addr();
    let reply = query_udp(addr, CRM, RecordType::A).await?;
    assert_eq!(addresses(&reply), ["127.0.2.1"]);
    assert!(is_noerror_aa(&reply));
    assert_eq!(soa_serial(&query_tcp(addr, "fed.local.", RecordType::SOA).await?), Some(2));
    restarted.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_sites_are_reported_to_the_federator_with_this_servers_identity() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path(), "switchyard test ca")?;
    let federator = FakeFederator::start(&pki.federator, table(1, 1, "127.0.1.1")).await?;
    // site-a's ingress listens; site-b's port is closed.
    let up = std::net::TcpListener::bind("127.0.0.1:0")?;
    let down = free_port();
    let mut argv = dns_args(&pki, federator.addr, &state_dir(dir.path()), false);
    argv.extend([
        "--observe".into(),
        format!("site-a={}", up.local_addr()?),
        "--observe".into(),
        format!("site-b=127.0.0.1:{down}"),
        "--observer-domain".into(),
        "rack-9".into(),
    ]);
    let dns = start_dns(&argv).await?;
    let deadline = std::time::Instant::now() + WAIT_MAX;
    let (peer, batch) = loop {
        if let Some(b) = federator.observations().into_iter().next() {
            break b;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no observations reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(peer, "dns:dns-1", "reported under this server's certificate");
    assert_eq!(batch.domain, "rack-9");
    let seen: Vec<(&str, &str)> = batch.sites.iter().map(|s| (s.site.as_str(), s.health.as_str())).collect();
    assert_eq!(seen, [("site-a", "healthy"), ("site-b", "unhealthy")], "{batch:?}");
    assert!(batch.sites[1].detail.contains("refused"), "{:?}", batch.sites[1]);
    // Bad flags are refused before anything starts.
    let mut bad = dns_args(&pki, federator.addr, &state_dir(dir.path()), false);
    bad.extend(["--observe".into(), "site-a".into()]);
    let err = Config::from_args(&Args::try_parse_from(&bad)?).unwrap_err().to_string();
    assert!(err.contains("--observe \"site-a\" is not SITE=HOST:PORT"), "{err}");
    dns.shutdown().await?;
    federator.stop().await?;
    Ok(())
}

/// Version `v` of a table whose every answer names its version: `flip` has the A address
/// 127.0.x.y with x.y = v, and an AAAA 2001:db8::v only in even versions, so that an AAAA
/// query gets an answer naming an even version or a NODATA whose SOA serial must be odd.
fn versioned(v: u64) -> switchyard_proto::routing::v1::RoutingTable {
    let mut addresses = vec![format!("127.0.{}.{}", v / 250, v % 250 + 1)];
    if v.is_multiple_of(2) {
        addresses.push(format!("2001:db8::{v:x}"));
    }
    let flip = routed("flip", vec![site("site-a", &addresses.iter().map(String::as_str).collect::<Vec<_>>(), 1)]);
    switchyard_proto::routing::v1::RoutingTable { version: v, epoch: v, zone: "fed.local.".into(), entries: vec![flip] }
}

/// The version an answer names, from `flip`'s A or AAAA address.
fn version_of(address: &str) -> u64 {
    if let Some(hex) = address.strip_prefix("2001:db8::") {
        return u64::from_str_radix(hex, 16).expect("hex");
    }
    let octets: Vec<u64> = address.split('.').map(|o| o.parse().expect("octet")).collect();
    octets[2] * 250 + octets[3] - 1
}

/// While tables replace each other as fast as the stream delivers them, every single answer
/// comes from one whole table (a NODATA's SOA serial agrees with the records that are absent)
/// and the version a client sees never goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_answer_comes_from_one_whole_table_while_versions_change() -> anyhow::Result<()> {
    const LAST: u64 = 300;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path(), "switchyard test ca")?;
    let federator = FakeFederator::start(&pki.federator, versioned(1)).await?;
    let dns = start_dns(&dns_args(&pki, federator.addr, &state_dir(dir.path()), false)).await?;
    let addr = dns.local_addr();
    let flip = "flip.fed.local.";
    eventually("version 1", || query_udp(addr, flip, RecordType::A), |r| addresses(r) == ["127.0.0.2"]).await?;

    let publisher = {
        let tables = (2..=LAST).map(versioned).collect::<Vec<_>>();
        let federator = std::sync::Arc::new(federator);
        let f = federator.clone();
        (
            tokio::spawn(async move {
                for t in tables {
                    f.publish(t);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }),
            federator,
        )
    };
    let (mut seen, mut nodata, mut positive) = (1u64, 0u32, 0u32);
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    let mut n = 0u64;
    while seen < LAST {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "gave up at version {seen} of {LAST}");
        n += 1;
        let qtype = if n.is_multiple_of(2) { RecordType::AAAA } else { RecordType::A };
        let reply = query_udp(addr, flip, qtype).await?;
        anyhow::ensure!(reply.metadata.response_code == ResponseCode::NoError, "query {n}: {reply:?}");
        let got = addresses(&reply);
        let version = match (qtype, got.as_slice()) {
            (RecordType::AAAA, []) => {
                nodata += 1;
                let serial = u64::from(soa_serial(&reply).expect("a NODATA carries the SOA"));
                anyhow::ensure!(!serial.is_multiple_of(2), "no AAAA, yet serial {serial} is a version that has one");
                serial
            }
            (RecordType::AAAA, [one]) => {
                positive += 1;
                let v = version_of(one);
                anyhow::ensure!(v.is_multiple_of(2), "an AAAA from version {v}, which has none");
                v
            }
            (_, [one]) => version_of(one),
            _ => anyhow::bail!("query {n}: {qtype} answered {got:?}"),
        };
        anyhow::ensure!(version >= seen, "query {n}: version {version} after {seen}");
        seen = version;
    }
    eprintln!("{n} queries, {nodata} NODATA and {positive} AAAA answers while versions went 1 to {LAST}");
    anyhow::ensure!(nodata > 0 && positive > 0, "both kinds of AAAA reply were seen");
    let (task, federator) = publisher;
    task.await?;
    dns.shutdown().await?;
    std::sync::Arc::into_inner(federator).expect("the publisher is done").stop().await?;
    Ok(())
}
