//! Answer selection: a pure function from (table, question) to the sections of a response.
//! No I/O, no clock, no randomness; the same inputs always give the same records in the same
//! order, so caches and tests see stable answers.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::config::ZoneConfig;
use crate::table::{Entry, Table};

/// TTL of the SOA record, and of the SOA in negative answers (RFC 2308: min(TTL, MINIMUM)).
pub const SOA_TTL_S: u32 = 30;
/// SOA timers: refresh, retry, expire, minimum (negative-caching TTL).
pub const SOA_REFRESH_S: i32 = 60;
pub const SOA_RETRY_S: i32 = 30;
pub const SOA_EXPIRE_S: i32 = 86_400;
pub const SOA_MINIMUM_S: u32 = 30;
/// TTL of the NS records and of the name server's own addresses; they come from flags and
/// change only with a restart.
pub const NS_TTL_S: u32 = 300;

/// The sections of one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// AA flag: set on everything answered from the zone, including NXDOMAIN and NODATA.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Answer {
    /// A bare error response: no records, not authoritative.
    pub fn error(rcode: ResponseCode) -> Self {
        Self { rcode, authoritative: false, answers: vec![], authority: vec![], additional: vec![] }
    }
}

/// The SOA serial for a table version: the version modulo 2^32. RFC 1982 serial arithmetic keeps
/// secondaries correct across the wrap as long as one step is below 2^31.
pub fn serial(version: u64) -> u32 {
    (version & u64::from(u32::MAX)) as u32
}

/// Answers `qtype` for `qname` (any case) from `table` (`None` before the first table).
///
/// - outside the zone, or a zone transfer: REFUSED (not authoritative);
/// - apex: SOA (serial = table version) and NS, with glue in the additional section;
/// - the name server's host name: its configured addresses;
/// - a routed name: A/AAAA of every target with weight > 0, deduplicated, in table order;
/// - ANY: every record set owned by the name (they are few and small);
/// - a name that exists without the type: NODATA; an unknown name: NXDOMAIN; both carry the SOA;
/// - no table yet: the apex SOA/NS and the name server's addresses still answer (they come from
///   flags), everything else is SERVFAIL.
pub fn answer(table: Option<&Table>, zone: &ZoneConfig, qname: &Name, qtype: RecordType) -> Answer {
    let mut qname = qname.to_lowercase();
    qname.set_fqdn(true);
    if !zone.origin.zone_of(&qname) {
        return Answer::error(ResponseCode::Refused);
    }
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Answer::error(ResponseCode::Refused);
    }
    let version = table.map_or(0, Table::version);
    let is_apex = qname == zone.origin;
    let is_ns_host = qname == zone.ns_name;

    let mut answers = Vec::new();
    let mut additional = Vec::new();
    let mut exists = is_apex || is_ns_host;
    if is_apex {
        if wants(qtype, RecordType::SOA) {
            answers.push(soa_record(zone, version));
        }
        if wants(qtype, RecordType::NS) {
            answers.push(Record::from_rdata(zone.origin.clone(), NS_TTL_S, RData::NS(NS(zone.ns_name.clone()))));
            if zone.origin.zone_of(&zone.ns_name) {
                additional.extend(address_records(&zone.ns_name, NS_TTL_S, &zone.ns_addresses, RecordType::ANY));
            }
        }
    }
    if is_ns_host {
        // The name server's own addresses win over a routed entry of the same name.
        answers.extend(address_records(&zone.ns_name, NS_TTL_S, &zone.ns_addresses, qtype));
    } else if !is_apex {
        let Some(table) = table else {
            return Answer::error(ResponseCode::ServFail);
        };
        if let Some(entry) = table.entry(&qname) {
            exists = true;
            answers.extend(address_records(&entry.name, entry.ttl_s, &routed_addresses(entry), qtype));
            if wants(qtype, RecordType::SRV) {
                for s in &entry.services {
                    let srv = SRV::new(s.priority, s.weight, s.port, s.target.clone());
                    answers.push(Record::from_rdata(entry.name.clone(), entry.ttl_s, RData::SRV(srv)));
                    // The targets' addresses, so a client needs no second query (RFC 2782).
                    if let Some(host) = table.entry(&s.target) {
                        for r in address_records(&host.name, host.ttl_s, &routed_addresses(host), RecordType::ANY) {
                            if !additional.contains(&r) {
                                additional.push(r);
                            }
                        }
                    }
                }
            }
        } else {
            exists = table.is_empty_non_terminal(&qname);
        }
    } else if table.is_none() && answers.is_empty() {
        return Answer::error(ResponseCode::ServFail);
    }

    if !answers.is_empty() {
        return Answer { rcode: ResponseCode::NoError, authoritative: true, answers, authority: vec![], additional };
    }
    let rcode = if exists { ResponseCode::NoError } else { ResponseCode::NXDomain };
    Answer { rcode, authoritative: true, answers, authority: vec![soa_record(zone, version)], additional: vec![] }
}

/// Addresses that receive traffic for `entry`: every address of every target with weight > 0,
/// first occurrence kept, in table order.
pub fn routed_addresses(entry: &Entry) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for target in entry.targets.iter().filter(|t| t.weight > 0) {
        for address in &target.addresses {
            if !out.contains(address) {
                out.push(*address);
            }
        }
    }
    out
}

fn wants(qtype: RecordType, have: RecordType) -> bool {
    qtype == have || qtype == RecordType::ANY
}

fn address_records(owner: &Name, ttl_s: u32, addresses: &[IpAddr], qtype: RecordType) -> Vec<Record> {
    addresses
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) if wants(qtype, RecordType::A) => Some(RData::A(A(*v4))),
            IpAddr::V6(v6) if wants(qtype, RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(owner.clone(), ttl_s, rdata))
        .collect()
}

fn soa_record(zone: &ZoneConfig, version: u64) -> Record {
    let rname = Name::from_ascii("hostmaster")
        .and_then(|n| n.append_domain(&zone.origin))
        .expect("hostmaster.<zone> is a valid name for any valid zone");
    let soa =
        SOA::new(zone.ns_name.clone(), rname, serial(version), SOA_REFRESH_S, SOA_RETRY_S, SOA_EXPIRE_S, SOA_MINIMUM_S);
    Record::from_rdata(zone.origin.clone(), SOA_TTL_S, RData::SOA(soa))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::{entry, proto, target};
    use switchyard_proto::routing::v1 as pb;

    fn zone_config(ns_addresses: &[&str]) -> ZoneConfig {
        ZoneConfig::new(
            Name::from_ascii("fed.local.").unwrap(),
            Name::from_ascii("ns1.fed.local.").unwrap(),
            ns_addresses.iter().map(|a| a.parse().unwrap()).collect(),
        )
    }

    fn table() -> Table {
        Table::from_proto(proto(
            7,
            3,
            vec![
                entry(
                    "crm-web",
                    45,
                    vec![
                        target("site-a", &["127.0.1.1", "2001:db8::1", "127.0.1.1"], 1),
                        target("site-b", &["127.0.2.1"], 0),
                        target("site-c", &["127.0.3.1", "127.0.1.1"], 2),
                    ],
                ),
                entry("drained", 30, vec![target("site-b", &["127.0.2.1"], 0)]),
                entry("www.shop", 30, vec![target("site-a", &["127.0.4.1"], 1)]),
            ],
        ))
        .unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn ips(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                other => panic!("not an address: {other:?}"),
            })
            .collect()
    }

    fn soa_serial(record: &Record) -> u32 {
        match &record.data {
            RData::SOA(soa) => soa.serial,
            other => panic!("not a SOA: {other:?}"),
        }
    }

    fn service_table() -> Table {
        let srv = |port: u32, target: &str| pb::ServiceRecord { priority: 0, weight: 1, port, target: target.into() };
        let mut svc = entry("_web._tcp.crm-web.site-1", 5, vec![]);
        svc.services = vec![srv(31_000, "n1.site-1"), srv(31_001, "n2.site-1"), srv(31_002, "n1.site-1")];
        Table::from_proto(proto(
            9,
            9,
            vec![
                entry("web.crm-web.site-1", 5, vec![target("site-1", &["127.0.1.11", "127.0.1.12"], 1)]),
                svc,
                entry("n1.site-1", 5, vec![target("site-1", &["127.0.1.11"], 1)]),
                entry("n2.site-1", 5, vec![target("site-1", &["127.0.1.12"], 1)]),
            ],
        ))
        .unwrap()
    }

    #[test]
    fn srv_records_name_each_instance_with_its_hosts_addresses_alongside() {
        let t = service_table();
        let zone = zone_config(&["127.0.0.53"]);
        let a = answer(Some(&t), &zone, &name("_web._tcp.crm-web.site-1.fed.local."), RecordType::SRV);
        assert_eq!(a.rcode, ResponseCode::NoError);
        let srv: Vec<(u16, String)> = a
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => (s.port, s.target.to_ascii()),
                other => panic!("not SRV: {other:?}"),
            })
            .collect();
        assert_eq!(
            srv,
            [
                (31_000, "n1.site-1.fed.local.".into()),
                (31_001, "n2.site-1.fed.local.".into()),
                (31_002, "n1.site-1.fed.local.".into())
            ]
        );
        assert_eq!(ips(&a.additional), ["127.0.1.11", "127.0.1.12"], "each host's address once");
        // The app name answers A with every instance's address; an SRV query there is NODATA.
        let a = answer(Some(&t), &zone, &name("web.crm-web.site-1.fed.local."), RecordType::A);
        assert_eq!(ips(&a.answers), ["127.0.1.11", "127.0.1.12"]);
        let a = answer(Some(&t), &zone, &name("web.crm-web.site-1.fed.local."), RecordType::SRV);
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
        // The parents exist (empty non-terminals), so they are NODATA, not NXDOMAIN.
        let a = answer(Some(&t), &zone, &name("_tcp.crm-web.site-1.fed.local."), RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
    }

    #[test]
    fn a_bad_srv_record_refuses_the_whole_table() {
        let mut svc = entry("_web._tcp.g.s", 5, vec![]);
        svc.services = vec![pb::ServiceRecord { priority: 0, weight: 1, port: 70_000, target: "n1.s".into() }];
        let err = Table::from_proto(proto(1, 1, vec![svc])).unwrap_err();
        assert!(err.to_string().contains("port 70000 is outside 1-65535"), "{err}");
    }

    #[test]
    fn a_records_of_weighted_targets_deduplicated_in_table_order() {
        let t = table();
        let a = answer(Some(&t), &zone_config(&[]), &name("crm-web.fed.local."), RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative);
        assert_eq!(ips(&a.answers), vec!["127.0.1.1", "127.0.3.1"], "weight-0 site-b is excluded");
        assert!(a.answers.iter().all(|r| r.ttl == 45 && r.name.to_ascii() == "crm-web.fed.local."));
        assert!(a.authority.is_empty() && a.additional.is_empty());
    }

    #[test]
    fn aaaa_records_only_carry_ipv6() {
        let t = table();
        let a = answer(Some(&t), &zone_config(&[]), &name("crm-web.fed.local."), RecordType::AAAA);
        assert_eq!((a.rcode, ips(&a.answers)), (ResponseCode::NoError, vec!["2001:db8::1".to_string()]));
    }

    #[test]
    fn queries_are_case_insensitive() {
        let t = table();
        let a = answer(Some(&t), &zone_config(&[]), &name("CRM-Web.FED.local."), RecordType::A);
        assert_eq!(ips(&a.answers), vec!["127.0.1.1", "127.0.3.1"]);
        let soa = answer(Some(&t), &zone_config(&[]), &name("Fed.Local."), RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
    }

    #[test]
    fn nodata_and_nxdomain_carry_the_soa() {
        let t = table();
        let z = zone_config(&[]);
        for (qname, qtype) in [
            ("crm-web.fed.local.", RecordType::MX),
            ("drained.fed.local.", RecordType::A),
            ("shop.fed.local.", RecordType::A),
            ("fed.local.", RecordType::A),
            ("ns1.fed.local.", RecordType::A),
        ] {
            let a = answer(Some(&t), &z, &name(qname), qtype);
            assert_eq!(a.rcode, ResponseCode::NoError, "{qname} {qtype} is NODATA");
            assert!(a.answers.is_empty() && a.authoritative);
            assert_eq!(a.authority.len(), 1);
            assert_eq!(soa_serial(&a.authority[0]), 7);
            assert_eq!(a.authority[0].ttl, SOA_TTL_S);
        }
        for qname in ["nope.fed.local.", "x.crm-web.fed.local.", "www.fed.local."] {
            let a = answer(Some(&t), &z, &name(qname), RecordType::A);
            assert_eq!(a.rcode, ResponseCode::NXDomain, "{qname}");
            assert!(a.authoritative && a.answers.is_empty());
            assert_eq!(soa_serial(&a.authority[0]), 7);
        }
    }

    #[test]
    fn names_outside_the_zone_and_transfers_are_refused() {
        let t = table();
        for (qname, qtype) in [
            ("example.com.", RecordType::A),
            ("local.", RecordType::SOA),
            (".", RecordType::NS),
            ("fed.local.", RecordType::AXFR),
            ("fed.local.", RecordType::IXFR),
        ] {
            let a = answer(Some(&t), &zone_config(&[]), &name(qname), qtype);
            assert_eq!(a.rcode, ResponseCode::Refused, "{qname} {qtype}");
            assert!(!a.authoritative && a.answers.is_empty() && a.authority.is_empty());
        }
    }

    #[test]
    fn apex_soa_serial_is_the_table_version() {
        let z = zone_config(&[]);
        let a = answer(Some(&table()), &z, &name("fed.local."), RecordType::SOA);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative);
        let RData::SOA(soa) = &a.answers[0].data else { panic!("not a SOA") };
        assert_eq!(soa.serial, 7);
        assert_eq!(soa.mname.to_ascii(), "ns1.fed.local.");
        assert_eq!(soa.rname.to_ascii(), "hostmaster.fed.local.");
        assert_eq!((soa.refresh, soa.retry, soa.expire, soa.minimum), (60, 30, 86_400, 30));
        assert_eq!(a.answers[0].ttl, SOA_TTL_S);
        assert_eq!(serial(u64::from(u32::MAX) + 5), 4);
    }

    #[test]
    fn apex_ns_with_glue_and_ns_host_addresses() {
        let z = zone_config(&["192.0.2.53", "2001:db8::53"]);
        let t = table();
        let a = answer(Some(&t), &z, &name("fed.local."), RecordType::NS);
        assert_eq!(a.rcode, ResponseCode::NoError);
        let RData::NS(ns) = &a.answers[0].data else { panic!("not NS") };
        assert_eq!(ns.0.to_ascii(), "ns1.fed.local.");
        assert_eq!(ips(&a.additional), vec!["192.0.2.53", "2001:db8::53"]);
        assert!(a.additional.iter().all(|r| r.name.to_ascii() == "ns1.fed.local."));

        let host = answer(Some(&t), &z, &name("NS1.fed.local."), RecordType::A);
        assert_eq!(ips(&host.answers), vec!["192.0.2.53"]);
        let host6 = answer(Some(&t), &z, &name("ns1.fed.local."), RecordType::AAAA);
        assert_eq!(ips(&host6.answers), vec!["2001:db8::53"]);
    }

    #[test]
    fn any_returns_every_record_set_of_the_name() {
        let z = zone_config(&["192.0.2.53"]);
        let t = table();
        let apex = answer(Some(&t), &z, &name("fed.local."), RecordType::ANY);
        let types: Vec<RecordType> = apex.answers.iter().map(Record::record_type).collect();
        assert_eq!(types, vec![RecordType::SOA, RecordType::NS]);
        let routed = answer(Some(&t), &z, &name("crm-web.fed.local."), RecordType::ANY);
        assert_eq!(ips(&routed.answers), vec!["127.0.1.1", "2001:db8::1", "127.0.3.1"]);
    }

    #[test]
    fn without_a_table_only_the_apex_and_name_server_answer() {
        let z = zone_config(&["192.0.2.53"]);
        let soa = answer(None, &z, &name("fed.local."), RecordType::SOA);
        assert_eq!((soa.rcode, soa.authoritative), (ResponseCode::NoError, true));
        assert_eq!(soa_serial(&soa.answers[0]), 0);
        let ns = answer(None, &z, &name("fed.local."), RecordType::NS);
        assert_eq!((ns.rcode, ns.answers.len(), ns.additional.len()), (ResponseCode::NoError, 1, 1));
        let host = answer(None, &z, &name("ns1.fed.local."), RecordType::A);
        assert_eq!(ips(&host.answers), vec!["192.0.2.53"]);
        for (qname, qtype) in [
            ("crm-web.fed.local.", RecordType::A),
            ("nope.fed.local.", RecordType::AAAA),
            ("fed.local.", RecordType::A),
            ("fed.local.", RecordType::TXT),
        ] {
            let a = answer(None, &z, &name(qname), qtype);
            assert_eq!(a.rcode, ResponseCode::ServFail, "{qname} {qtype}");
            assert!(!a.authoritative && a.answers.is_empty());
        }
        assert_eq!(answer(None, &z, &name("example.com."), RecordType::A).rcode, ResponseCode::Refused);
    }

    #[test]
    fn name_server_host_wins_over_a_routed_entry_of_the_same_name() {
        let t = Table::from_proto(proto(1, 1, vec![entry("ns1", 30, vec![target("a", &["127.0.9.9"], 1)])])).unwrap();
        let a = answer(Some(&t), &zone_config(&["192.0.2.53"]), &name("ns1.fed.local."), RecordType::A);
        assert_eq!(ips(&a.answers), vec!["192.0.2.53"]);
    }
}
