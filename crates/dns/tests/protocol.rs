//! Protocol behaviour of fed-dns over real sockets: answers before any table, truncation over
//! UDP with the full answer over TCP, and the error codes for queries it does not serve.

mod common;

use clap::Parser;
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use switchyard_dns::{Args, Config};

const CRM: &str = "crm-web.fed.local.";

async fn start_dns(argv: &[String]) -> anyhow::Result<switchyard_dns::RunningDns> {
    let config = Config::from_args(&Args::try_parse_from(argv)?)?;
    Ok(switchyard_dns::spawn(config).await?)
}

#[tokio::test]
async fn without_any_table_only_the_apex_answers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path(), "switchyard test ca")?;
    // Port 9 (discard) has no federator: the server starts and answers without a table.
    let dns = start_dns(&dns_args(&pki, "127.0.0.1:9".parse()?, &state_dir(dir.path()), false)).await?;
    let addr = dns.local_addr();
    let soa = query_udp(addr, "fed.local.", RecordType::SOA).await?;
    assert!(is_noerror_aa(&soa));
    assert_eq!(soa_serial(&soa), Some(0));
    let ns = query_tcp(addr, "fed.local.", RecordType::NS).await?;
    assert!(is_noerror_aa(&ns));
    assert_eq!(addresses(&ns), Vec::<String>::new());
    assert_eq!(ns.additionals.iter().filter(|r| r.record_type() == RecordType::A).count(), 1, "glue for ns1");
    let crm = query_udp(addr, CRM, RecordType::A).await?;
    assert_eq!(crm.metadata.response_code, ResponseCode::ServFail);
    dns.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_protocol_errors_are_answered() -> anyhow::Result<()> {
    use hickory_proto::op::{Edns, Message, OpCode, Query};
    use hickory_proto::rr::{DNSClass, Name};
    use switchyard_proto::routing::v1::{RoutingEntry, SiteTarget};

    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path(), "switchyard test ca")?;
    let mut big = table(1, 1, "127.0.1.1");
    big.entries.push(RoutingEntry {
        name: "big".into(),
        group: "big".into(),
        ttl_s: 30,
        targets: vec![SiteTarget {
            site: "site-a".into(),
            addresses: (1..=120).map(|i| format!("10.0.{}.{}", i / 200, i % 200 + 1)).collect(),
            weight: 1,
            unhealthy: false,
        }],
        services: vec![],
        txt: vec![],
        cname: String::new(),
    });
    let federator = FakeFederator::start(&pki.federator, big).await?;
    let dns = start_dns(&dns_args(&pki, federator.addr, &state_dir(dir.path()), false)).await?;
    let addr = dns.local_addr();
    eventually("the table", || query_udp(addr, CRM, RecordType::A), |r| addresses(r) == ["127.0.1.1"]).await?;

    // 120 A records do not fit in 1232 bytes: UDP sets TC, TCP carries them all.
    let udp = query_udp(addr, "big.fed.local.", RecordType::A).await?;
    assert!(udp.metadata.truncation, "UDP answer must be truncated");
    let tcp = query_tcp(addr, "big.fed.local.", RecordType::A).await?;
    assert!(!tcp.metadata.truncation);
    assert_eq!(addresses(&tcp).len(), 120);

    let query = |name: &str, class: DNSClass| -> anyhow::Result<Message> {
        let mut q = Query::query(Name::from_ascii(name)?, RecordType::A);
        q.set_query_class(class);
        let mut m = Message::query();
        m.add_query(q);
        Ok(m)
    };
    let chaos = send_udp(addr, query("version.bind.", DNSClass::CH)?).await?;
    assert_eq!(chaos.metadata.response_code, ResponseCode::Refused);

    let mut edns1 = query(CRM, DNSClass::IN)?;
    let mut e = Edns::new();
    e.set_version(1);
    edns1.set_edns(e);
    let badvers = send_udp(addr, edns1).await?;
    // Code 16 is both BADVERS and BADSIG; decoders pick one name for it.
    assert_eq!(u16::from(badvers.metadata.response_code), u16::from(ResponseCode::BADVERS));
    assert!(badvers.edns.is_some(), "BADVERS travels in the OPT record");

    let mut status = query(CRM, DNSClass::IN)?;
    status.metadata.op_code = OpCode::Status;
    assert_eq!(send_udp(addr, status).await?.metadata.response_code, ResponseCode::NotImp);

    let mut two = query(CRM, DNSClass::IN)?;
    two.add_query(Query::query(Name::from_ascii("fed.local.")?, RecordType::SOA));
    assert_eq!(send_udp(addr, two).await?.metadata.response_code, ResponseCode::FormErr);

    dns.shutdown().await?;
    federator.stop().await?;
    Ok(())
}
