//! Standards conformance of fed-dns, checked with real DNS clients (`dig` from BIND and `kdig`
//! from Knot) over UDP and TCP: record types, AA, NXDOMAIN versus NODATA with the SOA, EDNS(0)
//! buffer sizes and BADVERS, truncation and TCP fallback, 0x20 case preservation, REFUSED
//! outside the zone, no recursion, weighted answers, and a SOA serial that stays monotonic
//! across a restart. `scripts/test` installs both clients.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use clap::Parser;
use common::*;
use hickory_proto::rr::RecordType;
use switchyard_dns::{Args, Config};
use switchyard_proto::routing::v1::{RoutingTable, ServiceRecord};

async fn start_dns(argv: &[String]) -> anyhow::Result<switchyard_dns::RunningDns> {
    let config = Config::from_args(&Args::try_parse_from(argv)?)?;
    Ok(switchyard_dns::spawn(config).await?)
}

/// Every record type the zone serves.
fn full_table(version: u64) -> RoutingTable {
    let mut web =
        routed("crm-web", vec![site("site-a", &["127.0.1.1", "2001:db8::1"], 75), site("site-b", &["127.0.2.1"], 25)]);
    web.txt = vec!["site=site-a weight=75 healthy=yes".into(), "site=site-b weight=25 healthy=yes".into()];
    // Each group's own TTL, not one for the zone.
    web.ttl_s = 20;
    let mut www = routed("www", vec![]);
    www.cname = "crm-web".into();
    let mut srv = routed("_web._tcp.crm-web.site-a", vec![]);
    srv.services = vec![ServiceRecord { priority: 0, weight: 1, port: 31_000, target: "n1.site-a".into() }];
    let mut host = routed("n1.site-a", vec![site("site-a", &["127.0.1.11"], 1)]);
    host.ttl_s = 45;
    let big = routed(
        "big",
        vec![site(
            "site-a",
            &(1..=120)
                .map(|i| format!("10.0.0.{i}"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            1,
        )],
    );
    RoutingTable { version, epoch: version, zone: "fed.local.".into(), entries: vec![web, www, srv, host, big] }
}

/// Runs a DNS client against `server` and returns what it printed.
fn client(program: &str, server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(program)
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(if program == "kdig" { ["+time=2", "+retry=0"] } else { ["+time=2", "+tries=1"] })
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test installs it): {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dig(server: SocketAddr, args: &[&str]) -> String {
    client("dig", server, args)
}

fn kdig(server: SocketAddr, args: &[&str]) -> String {
    client("kdig", server, args)
}

/// The `flags:` of dig's or kdig's header line, as a list.
fn flags(out: &str) -> Vec<String> {
    // The header's line comes first (dig: `flags:`, kdig: `Flags:`).
    let line = out
        .lines()
        .map(str::to_ascii_lowercase)
        .find(|l| l.contains("flags:"))
        .unwrap_or_else(|| panic!("no flags in:\n{out}"));
    let after = line.split("flags:").nth(1).unwrap();
    after.split(';').next().unwrap().split_whitespace().map(str::to_string).collect()
}

fn status(out: &str) -> String {
    let at = out.find("status: ").unwrap_or_else(|| panic!("no status in:\n{out}"));
    out[at + 8..].split(',').next().unwrap().trim().to_string()
}

/// The TTLs of the records in dig's ANSWER section.
fn answer_ttls(out: &str) -> Vec<u32> {
    let Some(start) = out.find(";; ANSWER SECTION:") else { return vec![] };
    out[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().nth(1).and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("TTL in {l:?}")))
        .collect()
}

/// Records of one section of dig's output (`ANSWER`, `AUTHORITY`, `ADDITIONAL`) as
/// (owner, type, data).
fn section(out: &str, name: &str) -> Vec<(String, String, String)> {
    let header = format!(";; {name} SECTION:");
    let Some(start) = out.find(&header) else { return vec![] };
    out[start + header.len()..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with(';'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[3].to_string(), f[4..].join(" "))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fed_dns_conforms_to_dns_clients_expectations() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path(), "switchyard test ca")?;
    let state = state_dir(dir.path());
    let federator = FakeFederator::start(&pki.federator, full_table(7)).await?;
    // The fed-dns of another site is the zone's second name server.
    let mut argv = dns_args(&pki, federator.addr, &state, false);
    argv.extend(["--other-ns".to_string(), "ns2=127.0.0.2".to_string()]);
    let dns = start_dns(&argv).await?;
    let s = dns.local_addr();
    eventually("the table", || query_udp(s, "fed.local.", RecordType::SOA), |r| soa_serial(r) == Some(7)).await?;

    // SOA and NS at the apex: authoritative, no recursion offered, serial = table version.
    let soa = dig(s, &["fed.local.", "SOA"]);
    assert_eq!(status(&soa), "NOERROR");
    let f = flags(&soa);
    assert!(f.contains(&"aa".into()) && !f.contains(&"ra".into()), "{f:?}");
    let records = section(&soa, "ANSWER");
    assert_eq!(records[0].1, "SOA");
    assert!(records[0].2.contains(" 7 "), "serial 7: {records:?}");
    let ns = dig(s, &["fed.local.", "NS"]);
    let mut servers: Vec<String> = section(&ns, "ANSWER").into_iter().map(|r| r.2).collect();
    servers.sort();
    assert_eq!(servers, ["ns1.fed.local.", "ns2.fed.local."], "{ns}");
    let mut glue: Vec<(String, String)> =
        section(&ns, "ADDITIONAL").into_iter().filter(|r| r.1 == "A").map(|r| (r.0, r.2)).collect();
    glue.sort();
    assert_eq!(
        glue,
        [("ns1.fed.local.".to_string(), "127.0.0.1".to_string()), ("ns2.fed.local.".into(), "127.0.0.2".into())],
        "glue:\n{ns}"
    );

    // A and AAAA; CNAME followed in the zone; TXT; SRV with the target's address alongside.
    let a = dig(s, &["crm-web.fed.local.", "A"]);
    assert!(section(&a, "ANSWER").iter().all(|r| r.1 == "A"), "{a}");
    assert_eq!(answer_ttls(&a), [20], "the group's TTL:\n{a}");
    let host_a = dig(s, &["n1.site-a.fed.local.", "A"]);
    assert_eq!(answer_ttls(&host_a), [45], "that name's own TTL:\n{host_a}");
    let aaaa = dig(s, &["crm-web.fed.local.", "AAAA"]);
    assert_eq!(section(&aaaa, "ANSWER"), [("crm-web.fed.local.".into(), "AAAA".into(), "2001:db8::1".into())]);
    let alias = dig(s, &["www.fed.local.", "A"]);
    let types: Vec<String> = section(&alias, "ANSWER").into_iter().map(|r| r.1).collect();
    assert_eq!(types[0], "CNAME", "{alias}");
    assert!(types[1..].iter().all(|t| t == "A") && types.len() > 1, "{alias}");
    let txt = dig(s, &["crm-web.fed.local.", "TXT"]);
    assert_eq!(section(&txt, "ANSWER").len(), 2, "{txt}");
    assert!(txt.contains("\"site=site-a weight=75 healthy=yes\""), "{txt}");
    let srv = dig(s, &["_web._tcp.crm-web.site-a.fed.local.", "SRV"]);
    assert_eq!(section(&srv, "ANSWER")[0].2, "0 1 31000 n1.site-a.fed.local.");
    assert_eq!(section(&srv, "ADDITIONAL").iter().filter(|r| r.2 == "127.0.1.11").count(), 1, "{srv}");

    // NXDOMAIN versus NODATA, both authoritative with the SOA in the authority section.
    let nx = dig(s, &["nope.fed.local.", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN");
    assert!(flags(&nx).contains(&"aa".into()));
    assert_eq!(section(&nx, "AUTHORITY")[0].1, "SOA");
    let nodata = dig(s, &["crm-web.fed.local.", "MX"]);
    assert_eq!(status(&nodata), "NOERROR");
    assert!(section(&nodata, "ANSWER").is_empty());
    assert_eq!(section(&nodata, "AUTHORITY")[0].1, "SOA");
    // An empty non-terminal exists: NODATA, never NXDOMAIN.
    assert_eq!(status(&dig(s, &["_tcp.crm-web.site-a.fed.local.", "A"])), "NOERROR");

    // Outside the zone: REFUSED, not authoritative; zone transfers likewise.
    let refused = dig(s, &["example.com.", "A"]);
    assert_eq!(status(&refused), "REFUSED");
    assert!(!flags(&refused).contains(&"aa".into()));
    let axfr = dig(s, &["fed.local.", "AXFR"]);
    assert!(axfr.contains("Transfer failed"), "{axfr}");

    // EDNS(0): the server's buffer size is 1232 at most; an unknown version gets BADVERS.
    let edns = dig(s, &["+bufsize=4096", "crm-web.fed.local.", "A"]);
    assert!(edns.contains("udp: 1232"), "{edns}");
    let small = dig(s, &["+bufsize=700", "crm-web.fed.local.", "A"]);
    assert!(small.contains("udp: 700"), "{small}");
    let badvers = dig(s, &["+edns=1", "+noednsneg", "crm-web.fed.local.", "A"]);
    assert_eq!(status(&badvers), "BADVERS", "{badvers}");
    let plain = dig(s, &["+noedns", "crm-web.fed.local.", "A"]);
    assert!(!plain.contains("OPT PSEUDOSECTION"), "no EDNS asked, none answered");

    // Truncation over UDP, the full answer over TCP (dig retries by itself).
    let truncated = dig(s, &["+ignore", "+noedns", "big.fed.local.", "A"]);
    assert!(flags(&truncated).contains(&"tc".into()), "{truncated}");
    let full = dig(s, &["big.fed.local.", "A"]);
    assert_eq!(section(&full, "ANSWER").len(), 120, "TCP fallback carries all of them");
    let tcp = dig(s, &["+tcp", "crm-web.fed.local.", "AAAA"]);
    assert_eq!(section(&tcp, "ANSWER").len(), 1);

    // 0x20: the question and the answers keep the query's spelling.
    let mixed = dig(s, &["CrM-wEb.FeD.LoCaL.", "A"]);
    assert!(mixed.contains(";CrM-wEb.FeD.LoCaL.\t"), "{mixed}");
    assert!(section(&mixed, "ANSWER").iter().all(|r| r.0 == "CrM-wEb.FeD.LoCaL."), "{mixed}");

    // kdig agrees, over UDP with EDNS and over TCP.
    let k = kdig(s, &["+edns", "crm-web.fed.local.", "AAAA"]);
    assert!(k.contains("NOERROR") && k.contains("2001:db8::1"), "{k}");
    assert!(flags(&k).contains(&"aa".into()), "{k}");
    let k = kdig(s, &["+tcp", "Nope.Fed.Local.", "A"]);
    assert!(k.contains("NXDOMAIN"), "{k}");
    let k = kdig(s, &["+tcp", "fed.local.", "SOA"]);
    assert!(k.contains("SOA") && k.contains(" 7 "), "{k}");

    // Weighted answers: 75/25 over many queries through a real client, within tolerance.
    let mut site_b = 0;
    let rounds = 200;
    for _ in 0..rounds {
        let out = dig(s, &["+short", "crm-web.fed.local.", "A"]);
        if out.trim() == "127.0.2.1" {
            site_b += 1;
        } else {
            assert_eq!(out.trim(), "127.0.1.1");
        }
    }
    let share = f64::from(site_b) / f64::from(rounds);
    assert!((0.18..=0.32).contains(&share), "site-b has weight 25 % and got {:.1} %", share * 100.0);

    // The serial is monotonic across a restart: served from disk at 7 before any federator
    // answers, then 8 once one does.
    dns.shutdown().await?;
    federator.stop().await?;
    let dns = start_dns(&dns_args(&pki, "127.0.0.1:9".parse()?, &state, false)).await?;
    let s = dns.local_addr();
    let again = dig(s, &["fed.local.", "SOA"]);
    assert!(section(&again, "ANSWER")[0].2.contains(" 7 "), "restarted with the last-known-good serial:\n{again}");
    assert_eq!(dig(s, &["+short", "www.fed.local.", "CNAME"]).trim(), "crm-web.fed.local.");
    dns.shutdown().await?;
    let federator = FakeFederator::start(&pki.federator, full_table(8)).await?;
    let dns = start_dns(&dns_args(&pki, federator.addr, &state, false)).await?;
    let s = dns.local_addr();
    eventually("serial 8", || query_udp(s, "fed.local.", RecordType::SOA), |r| soa_serial(r) == Some(8)).await?;
    dns.shutdown().await?;
    federator.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_site_is_unhealthy_answers_fail_open_unless_told_to_servfail() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path(), "switchyard test ca")?;
    let mut sick = routed("crm-web", vec![site("site-a", &["127.0.1.1"], 50), site("site-b", &["127.0.2.1"], 50)]);
    sick.targets.iter_mut().for_each(|t| t.unhealthy = true);
    let mut half = routed("half", vec![site("site-a", &["127.0.1.1"], 50), site("site-b", &["127.0.2.1"], 50)]);
    half.targets[0].unhealthy = true;
    let table = RoutingTable { version: 3, epoch: 3, zone: "fed.local.".into(), entries: vec![sick, half] };
    let federator = FakeFederator::start(&pki.federator, table).await?;
    for (policy, state) in [("fail-open", "state-open"), ("servfail", "state-closed")] {
        let mut argv = dns_args(&pki, federator.addr, &dir.path().join(state), false);
        argv.extend(["--all-unhealthy".to_string(), policy.to_string()]);
        let dns = start_dns(&argv).await?;
        let s = dns.local_addr();
        eventually("the table", || query_udp(s, "fed.local.", RecordType::SOA), |r| soa_serial(r) == Some(3)).await?;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let out = dig(s, &["crm-web.fed.local.", "A"]);
            if policy == "fail-open" {
                assert_eq!(status(&out), "NOERROR", "{out}");
                seen.extend(section(&out, "ANSWER").into_iter().map(|r| r.2));
            } else {
                assert_eq!(status(&out), "SERVFAIL", "{out}");
            }
            // Under either policy the healthy site alone answers while one is healthy.
            assert_eq!(dig(s, &["+short", "half.fed.local.", "A"]).trim(), "127.0.2.1");
        }
        if policy == "fail-open" {
            assert_eq!(seen.len(), 2, "every weighted site keeps answering: {seen:?}");
        }
        dns.shutdown().await?;
    }
    federator.stop().await?;
    Ok(())
}
