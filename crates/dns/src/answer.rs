//! Answer selection: a pure function from (table, question) to the sections of a response.
//! No I/O, no clock, no randomness; the same inputs always give the same records in the same
//! order, so caches and tests see stable answers.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::config::ZoneConfig;
use crate::table::{Entry, Table, Target};

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

/// How many CNAMEs in a row an answer follows inside the zone before it stops.
const CNAME_CHAIN_MAX: usize = 8;

/// Answers `qtype` for `qname` (any case) from `table` (`None` before the first table).
/// `selector` chooses among weighted targets (see [`pick`]); callers pass a counter that moves
/// by one per query so that the answers' shares follow the weights.
///
/// - outside the zone, or a zone transfer: REFUSED (not authoritative);
/// - apex: SOA (serial = table version) and NS, with glue in the additional section;
/// - the name server's host name: its configured addresses;
/// - a routed name, A or AAAA: the addresses of one target chosen by weight among those with an
///   address of that family, healthy ones first (see [`pick`]);
/// - TXT and SRV: the name's records; an alias: its CNAME, followed inside the zone;
/// - ANY: every record set owned by the name, with the addresses of every weighted target;
/// - a name that exists without the type: NODATA; an unknown name: NXDOMAIN; both carry the SOA;
/// - no table yet: the apex SOA/NS and the name server's addresses still answer (they come from
///   flags), everything else is SERVFAIL.
///
/// Records owned by the query name carry the name exactly as the query spelled it (0x20).
pub fn answer(table: Option<&Table>, zone: &ZoneConfig, qname: &Name, qtype: RecordType, selector: u64) -> Answer {
    let mut owner = qname.clone();
    owner.set_fqdn(true);
    let lower = owner.to_lowercase();
    if !zone.origin.zone_of(&lower) {
        return Answer::error(ResponseCode::Refused);
    }
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Answer::error(ResponseCode::Refused);
    }
    let version = table.map_or(0, Table::version);
    let is_apex = lower == zone.origin;
    let ns_host = zone.name_server_addresses(&lower);
    let is_ns_host = ns_host.is_some();

    let mut out = Answer {
        rcode: ResponseCode::NoError,
        authoritative: true,
        answers: vec![],
        authority: vec![],
        additional: vec![],
    };
    let mut exists = is_apex || is_ns_host;
    if is_apex {
        if wants(qtype, RecordType::SOA) {
            let mut soa = soa_record(zone, version);
            soa.name = owner.clone();
            out.answers.push(soa);
        }
        if wants(qtype, RecordType::NS) {
            for (name, addresses) in zone.name_servers() {
                out.answers.push(Record::from_rdata(owner.clone(), NS_TTL_S, RData::NS(NS(name.clone()))));
                if zone.origin.zone_of(name) {
                    out.additional.extend(address_records(name, NS_TTL_S, addresses, RecordType::ANY));
                }
            }
        }
    }
    if let Some(addresses) = ns_host {
        // A name server's addresses win over a routed entry of the same name.
        out.answers.extend(address_records(&owner, NS_TTL_S, addresses, qtype));
    } else if !is_apex {
        let Some(table) = table else {
            return Answer::error(ResponseCode::ServFail);
        };
        let mut current = lower;
        let mut current_owner = owner;
        for _ in 0..=CNAME_CHAIN_MAX {
            let Some(entry) = table.entry(&current) else {
                exists = table.is_empty_non_terminal(&current);
                break;
            };
            exists = true;
            let Some(target) = &entry.cname else {
                if let Err(rcode) = entry_records(table, zone, entry, &current_owner, qtype, selector, &mut out) {
                    return Answer::error(rcode);
                }
                break;
            };
            out.answers.push(Record::from_rdata(
                current_owner.clone(),
                entry.ttl_s,
                RData::CNAME(CNAME(target.clone())),
            ));
            if matches!(qtype, RecordType::CNAME | RecordType::ANY) || !zone.origin.zone_of(target) {
                // Complete: the alias itself was asked for, or the resolver follows it out of
                // the zone.
                return out;
            }
            current = target.clone();
            current_owner = target.clone();
        }
    } else if table.is_none() && out.answers.is_empty() {
        return Answer::error(ResponseCode::ServFail);
    }

    if out.answers.last().is_some_and(|r| r.record_type() != RecordType::CNAME) {
        return out;
    }
    // NODATA or NXDOMAIN, possibly at the end of an alias chain (whose CNAMEs stay in the
    // answer; the rcode describes the last name of the chain, RFC 6604).
    out.rcode = if exists { ResponseCode::NoError } else { ResponseCode::NXDomain };
    out.authority.push(soa_record(zone, version));
    out.additional.clear();
    out
}

/// The records of a non-alias entry for `qtype`, owned by `owner`, into `out`. Err: the answer
/// is that rcode instead (no healthy target under the `servfail` policy).
fn entry_records(
    table: &Table,
    zone: &ZoneConfig,
    entry: &Entry,
    owner: &Name,
    qtype: RecordType,
    selector: u64,
    out: &mut Answer,
) -> Result<(), ResponseCode> {
    match qtype {
        RecordType::A | RecordType::AAAA => {
            let v6 = qtype == RecordType::AAAA;
            match pick(entry, v6, zone.all_unhealthy, selector) {
                Pick::Target(t) => out.answers.extend(address_records(owner, entry.ttl_s, &dedup(&t.addresses), qtype)),
                Pick::None => {}
                Pick::ServFail => return Err(ResponseCode::ServFail),
            }
        }
        RecordType::ANY => {
            out.answers.extend(address_records(owner, entry.ttl_s, &routed_addresses(entry), RecordType::ANY));
        }
        _ => {}
    }
    if wants(qtype, RecordType::TXT) {
        for text in &entry.txt {
            let txt = TXT::new(vec![text.clone()]);
            out.answers.push(Record::from_rdata(owner.clone(), entry.ttl_s, RData::TXT(txt)));
        }
    }
    if wants(qtype, RecordType::SRV) {
        for s in &entry.services {
            let srv = SRV::new(s.priority, s.weight, s.port, s.target.clone());
            out.answers.push(Record::from_rdata(owner.clone(), entry.ttl_s, RData::SRV(srv)));
            // The targets' addresses, so a client needs no second query (RFC 2782).
            if let Some(host) = table.entry(&s.target) {
                for r in address_records(&host.name, host.ttl_s, &routed_addresses(host), RecordType::ANY) {
                    if !out.additional.contains(&r) {
                        out.additional.push(r);
                    }
                }
            }
        }
    }
    Ok(())
}

/// What to answer for a name none of whose weighted targets is healthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AllUnhealthy {
    /// Answer as if every weighted target were healthy: a health observer that blinks, or an
    /// outage of every site at once, never empties an answer (the default).
    #[default]
    FailOpen,
    /// Answer SERVFAIL, so resolvers keep what they cached and retry.
    Servfail,
}

/// The target an A or AAAA answer comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick<'a> {
    Target(&'a Target),
    /// No target with weight > 0 has an address of the family: NODATA.
    None,
    /// No such target is healthy and the policy says SERVFAIL.
    ServFail,
}

/// The targets an A (`v6` false) or AAAA answer chooses from.
#[derive(Debug, PartialEq, Eq)]
pub enum Candidates<'a> {
    /// In table order; empty when no target with weight > 0 has an address of the family.
    Targets(Vec<&'a Target>),
    /// None of them is healthy and the policy says SERVFAIL.
    ServFail,
}

/// Targets with weight > 0 and an address of the family: the healthy ones if there are any,
/// otherwise all of them (`fail-open`) or SERVFAIL.
pub fn candidates(entry: &Entry, v6: bool, policy: AllUnhealthy) -> Candidates<'_> {
    let eligible: Vec<&Target> =
        entry.targets.iter().filter(|t| t.weight > 0 && t.addresses.iter().any(|a| a.is_ipv6() == v6)).collect();
    if eligible.iter().any(|t| t.healthy) {
        return Candidates::Targets(eligible.into_iter().filter(|t| t.healthy).collect());
    }
    match policy {
        _ if eligible.is_empty() => Candidates::Targets(eligible),
        AllUnhealthy::FailOpen => Candidates::Targets(eligible),
        AllUnhealthy::Servfail => Candidates::ServFail,
    }
}

/// Chooses the target for an A (`v6` false) or AAAA answer: one of the [`candidates`] by
/// weight at position `selector`. Over any `W` consecutive selectors (`W` the candidates' total
/// weight) each target is chosen exactly its weight's number of times, interleaved rather than
/// in runs.
pub fn pick(entry: &Entry, v6: bool, policy: AllUnhealthy, selector: u64) -> Pick<'_> {
    match candidates(entry, v6, policy) {
        Candidates::ServFail => Pick::ServFail,
        Candidates::Targets(targets) => {
            let weights: Vec<u64> = targets.iter().map(|t| u64::from(t.weight)).collect();
            match weighted_index(&weights, selector) {
                Some(i) => Pick::Target(targets[i]),
                None => Pick::None,
            }
        }
    }
}

/// Strides tried for spreading consecutive selectors over the slots; the first one that does
/// not divide the total weight is coprime with it (they are primes), which makes the spreading a
/// permutation of each window of `total` selectors. Their product exceeds `u64::MAX`, so one
/// always qualifies.
const STRIDES: [u64; 4] = [7_919, 104_729, 1_299_709, 15_485_863];

/// Index into `weights` (all > 0) for `selector`: slot `(selector mod W) × stride mod W`, where
/// slots `0..w0` belong to index 0, the next `w1` to index 1, and so on. `None` when empty.
pub fn weighted_index(weights: &[u64], selector: u64) -> Option<usize> {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return None;
    }
    let stride =
        STRIDES.iter().copied().find(|s| !total.is_multiple_of(*s)).expect("one stride is coprime with any u64");
    let slot = (u128::from(selector % total) * u128::from(stride) % u128::from(total)) as u64;
    let mut end = 0;
    for (i, w) in weights.iter().enumerate() {
        end += w;
        if slot < end {
            return Some(i);
        }
    }
    unreachable!("slot {slot} is below the total weight {total}")
}

fn dedup(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(addresses.len());
    for a in addresses {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
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
        let a = answer(Some(&t), &zone, &name("_web._tcp.crm-web.site-1.fed.local."), RecordType::SRV, 0);
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
        let a = answer(Some(&t), &zone, &name("web.crm-web.site-1.fed.local."), RecordType::A, 0);
        assert_eq!(ips(&a.answers), ["127.0.1.11", "127.0.1.12"]);
        let a = answer(Some(&t), &zone, &name("web.crm-web.site-1.fed.local."), RecordType::SRV, 0);
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
        // The parents exist (empty non-terminals), so they are NODATA, not NXDOMAIN.
        let a = answer(Some(&t), &zone, &name("_tcp.crm-web.site-1.fed.local."), RecordType::A, 0);
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
    fn an_a_answer_is_one_weighted_target_in_proportion_to_its_weight() {
        let t = table();
        let z = zone_config(&[]);
        // site-a weight 1 (127.0.1.1, listed twice), site-b weight 0, site-c weight 2.
        let mut seen = std::collections::BTreeMap::new();
        for selector in 0..3_000 {
            let a = answer(Some(&t), &z, &name("crm-web.fed.local."), RecordType::A, selector);
            assert_eq!(a.rcode, ResponseCode::NoError);
            assert!(a.authoritative && a.authority.is_empty() && a.additional.is_empty());
            assert!(a.answers.iter().all(|r| r.ttl == 45 && r.name.to_ascii() == "crm-web.fed.local."));
            *seen.entry(ips(&a.answers)).or_insert(0) += 1;
        }
        let site_a = vec!["127.0.1.1".to_string()];
        let site_c = vec!["127.0.3.1".to_string(), "127.0.1.1".to_string()];
        assert_eq!(seen.len(), 2, "weight-0 site-b never answers: {seen:?}");
        assert_eq!((seen[&site_a], seen[&site_c]), (1_000, 2_000), "exact shares over whole periods");
        // Consecutive selectors interleave the targets instead of answering in runs.
        let picks: Vec<Vec<String>> =
            (0..6).map(|s| ips(&answer(Some(&t), &z, &name("crm-web.fed.local."), RecordType::A, s).answers)).collect();
        assert!(picks.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])), "{picks:?}");
    }

    #[test]
    fn weighted_index_gives_exact_shares_for_any_weights() {
        for weights in
            [vec![1u64], vec![25, 75], vec![1, 1, 1], vec![3, 0, 7], vec![7_919, 1], vec![104_729 * 7_919, 2]]
        {
            let total: u64 = weights.iter().sum();
            let window = total.min(20_000);
            let mut counts = vec![0u64; weights.len()];
            for s in 0..window {
                counts[weighted_index(&weights, 1_000_000 + s).unwrap()] += 1;
            }
            if window == total {
                assert_eq!(counts, weights, "over one full period each index gets its weight");
            }
            assert_eq!(counts.iter().zip(&weights).filter(|(c, w)| **w == 0 && **c > 0).count(), 0);
        }
        assert_eq!(weighted_index(&[], 5), None);
        assert_eq!(weighted_index(&[0, 0], 5), None);
    }

    fn health_table(healthy: [bool; 2]) -> Table {
        let mut e =
            entry("crm-web", 30, vec![target("site-a", &["127.0.1.1"], 3), target("site-b", &["127.0.2.1"], 1)]);
        e.targets[0].unhealthy = !healthy[0];
        e.targets[1].unhealthy = !healthy[1];
        Table::from_proto(proto(3, 3, vec![e])).unwrap()
    }

    #[test]
    fn unhealthy_targets_get_no_answers_while_a_healthy_one_remains() {
        let z = zone_config(&[]);
        let t = health_table([false, true]);
        for s in 0..40 {
            let a = answer(Some(&t), &z, &name("crm-web.fed.local."), RecordType::A, s);
            assert_eq!(ips(&a.answers), ["127.0.2.1"]);
        }
    }

    #[test]
    fn all_unhealthy_fails_open_by_default_or_servfails_by_policy() {
        let t = health_table([false, false]);
        let open = zone_config(&[]);
        let answered: std::collections::BTreeSet<Vec<String>> = (0..8)
            .map(|s| ips(&answer(Some(&t), &open, &name("crm-web.fed.local."), RecordType::A, s).answers))
            .collect();
        assert_eq!(answered.len(), 2, "fail-open answers with every weighted target: {answered:?}");
        let closed = ZoneConfig { all_unhealthy: AllUnhealthy::Servfail, ..zone_config(&[]) };
        let a = answer(Some(&t), &closed, &name("crm-web.fed.local."), RecordType::A, 0);
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::ServFail, 0));
        // The policy only matters when every target is unhealthy.
        let a = answer(Some(&health_table([true, false])), &closed, &name("crm-web.fed.local."), RecordType::A, 0);
        assert_eq!(ips(&a.answers), ["127.0.1.1"]);
        // A family no target has is NODATA under either policy.
        let a = answer(Some(&t), &closed, &name("crm-web.fed.local."), RecordType::AAAA, 0);
        assert_eq!((a.rcode, a.answers.len(), a.authority.len()), (ResponseCode::NoError, 0, 1));
    }

    #[test]
    fn aaaa_records_only_carry_ipv6() {
        let t = table();
        let a = answer(Some(&t), &zone_config(&[]), &name("crm-web.fed.local."), RecordType::AAAA, 0);
        assert_eq!((a.rcode, ips(&a.answers)), (ResponseCode::NoError, vec!["2001:db8::1".to_string()]));
    }

    #[test]
    fn queries_are_case_insensitive_and_answers_keep_the_query_spelling() {
        let t = table();
        let a = answer(Some(&t), &zone_config(&[]), &name("CRM-Web.FED.local."), RecordType::A, 0);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(!a.answers.is_empty());
        assert!(a.answers.iter().all(|r| r.name.to_ascii() == "CRM-Web.FED.local."), "{:?}", a.answers);
        let soa = answer(Some(&t), &zone_config(&[]), &name("Fed.Local."), RecordType::SOA, 0);
        assert_eq!(soa.answers.len(), 1);
        assert_eq!(soa.answers[0].name.to_ascii(), "Fed.Local.");
    }

    fn alias_table() -> Table {
        let mut www = entry("www", 60, vec![]);
        www.cname = "crm-web".into();
        let mut out = entry("out", 60, vec![]);
        out.cname = "crm.example.com.".into();
        let mut dangling = entry("dangling", 60, vec![]);
        dangling.cname = "gone".into();
        let mut info = entry("crm-web", 45, vec![target("site-a", &["127.0.1.1"], 1)]);
        info.txt = vec!["site=site-a weight=1 healthy=yes".into()];
        Table::from_proto(proto(5, 5, vec![www, out, dangling, info])).unwrap()
    }

    #[test]
    fn aliases_answer_their_cname_and_follow_it_inside_the_zone() {
        let t = alias_table();
        let z = zone_config(&[]);
        let a = answer(Some(&t), &z, &name("WWW.fed.local."), RecordType::A, 0);
        assert_eq!(a.rcode, ResponseCode::NoError);
        let types: Vec<RecordType> = a.answers.iter().map(Record::record_type).collect();
        assert_eq!(types, [RecordType::CNAME, RecordType::A]);
        assert_eq!(a.answers[0].name.to_ascii(), "WWW.fed.local.");
        assert_eq!(a.answers[1].name.to_ascii(), "crm-web.fed.local.");
        let only = answer(Some(&t), &z, &name("www.fed.local."), RecordType::CNAME, 0);
        assert_eq!(only.answers.len(), 1);
        let RData::CNAME(target) = &only.answers[0].data else { panic!("not a CNAME") };
        assert_eq!(target.0.to_ascii(), "crm-web.fed.local.");
        // Out of the zone: just the CNAME, the resolver follows it.
        let out = answer(Some(&t), &z, &name("out.fed.local."), RecordType::A, 0);
        assert_eq!((out.rcode, out.answers.len(), out.authority.len()), (ResponseCode::NoError, 1, 0));
        // A dangling alias: the CNAME, then NXDOMAIN for its target with the SOA (RFC 6604).
        let d = answer(Some(&t), &z, &name("dangling.fed.local."), RecordType::A, 0);
        assert_eq!((d.rcode, d.answers.len(), d.authority.len()), (ResponseCode::NXDomain, 1, 1));
        // The alias target exists but has no such type: the CNAME plus NODATA.
        let n = answer(Some(&t), &z, &name("www.fed.local."), RecordType::SRV, 0);
        assert_eq!((n.rcode, n.answers.len(), n.authority.len()), (ResponseCode::NoError, 1, 1));
    }

    #[test]
    fn txt_records_are_served_and_validated() {
        let t = alias_table();
        let a = answer(Some(&t), &zone_config(&[]), &name("crm-web.fed.local."), RecordType::TXT, 0);
        assert_eq!(a.answers.len(), 1);
        let RData::TXT(txt) = &a.answers[0].data else { panic!("not TXT") };
        assert_eq!(txt.to_string(), "site=site-a weight=1 healthy=yes");
        let mut long = entry("x", 5, vec![]);
        long.txt = vec!["a".repeat(256)];
        let err = Table::from_proto(proto(1, 1, vec![long])).unwrap_err();
        assert!(err.to_string().contains("256 bytes"), "{err}");
        let mut both = entry("y", 5, vec![target("a", &["127.0.0.1"], 1)]);
        both.cname = "z".into();
        let err = Table::from_proto(proto(1, 1, vec![both])).unwrap_err();
        assert!(err.to_string().contains("only data"), "{err}");
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
            let a = answer(Some(&t), &z, &name(qname), qtype, 0);
            assert_eq!(a.rcode, ResponseCode::NoError, "{qname} {qtype} is NODATA");
            assert!(a.answers.is_empty() && a.authoritative);
            assert_eq!(a.authority.len(), 1);
            assert_eq!(soa_serial(&a.authority[0]), 7);
            assert_eq!(a.authority[0].ttl, SOA_TTL_S);
        }
        for qname in ["nope.fed.local.", "x.crm-web.fed.local.", "www.fed.local."] {
            let a = answer(Some(&t), &z, &name(qname), RecordType::A, 0);
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
            let a = answer(Some(&t), &zone_config(&[]), &name(qname), qtype, 0);
            assert_eq!(a.rcode, ResponseCode::Refused, "{qname} {qtype}");
            assert!(!a.authoritative && a.answers.is_empty() && a.authority.is_empty());
        }
    }

    #[test]
    fn apex_soa_serial_is_the_table_version() {
        let z = zone_config(&[]);
        let a = answer(Some(&table()), &z, &name("fed.local."), RecordType::SOA, 0);
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
        let a = answer(Some(&t), &z, &name("fed.local."), RecordType::NS, 0);
        assert_eq!(a.rcode, ResponseCode::NoError);
        let RData::NS(ns) = &a.answers[0].data else { panic!("not NS") };
        assert_eq!(ns.0.to_ascii(), "ns1.fed.local.");
        assert_eq!(ips(&a.additional), vec!["192.0.2.53", "2001:db8::53"]);
        assert!(a.additional.iter().all(|r| r.name.to_ascii() == "ns1.fed.local."));

        let host = answer(Some(&t), &z, &name("NS1.fed.local."), RecordType::A, 0);
        assert_eq!(ips(&host.answers), vec!["192.0.2.53"]);
        let host6 = answer(Some(&t), &z, &name("ns1.fed.local."), RecordType::AAAA, 0);
        assert_eq!(ips(&host6.answers), vec!["2001:db8::53"]);
    }

    #[test]
    fn the_ns_set_lists_every_name_server_with_glue_for_those_in_the_zone() {
        let mut z = zone_config(&["192.0.2.53"]);
        z.other_ns = vec![
            crate::config::NameServer { name: name("ns2.fed.local."), addresses: vec!["192.0.2.54".parse().unwrap()] },
            crate::config::NameServer { name: name("ns.other.example."), addresses: vec![] },
        ];
        let t = table();
        let a = answer(Some(&t), &z, &name("fed.local."), RecordType::NS, 0);
        let named: Vec<String> = a
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::NS(ns) => ns.0.to_ascii(),
                other => panic!("not NS: {other:?}"),
            })
            .collect();
        assert_eq!(named, ["ns1.fed.local.", "ns2.fed.local.", "ns.other.example."]);
        assert_eq!(ips(&a.additional), vec!["192.0.2.53", "192.0.2.54"], "glue only for names inside the zone");
        let peer = answer(Some(&t), &z, &name("NS2.fed.local."), RecordType::A, 0);
        assert_eq!(peer.rcode, ResponseCode::NoError);
        assert_eq!(ips(&peer.answers), vec!["192.0.2.54"]);
        let peer6 = answer(Some(&t), &z, &name("ns2.fed.local."), RecordType::AAAA, 0);
        assert_eq!((peer6.rcode, peer6.answers.len()), (ResponseCode::NoError, 0), "NODATA, not NXDOMAIN");
    }

    #[test]
    fn any_returns_every_record_set_of_the_name() {
        let z = zone_config(&["192.0.2.53"]);
        let t = table();
        let apex = answer(Some(&t), &z, &name("fed.local."), RecordType::ANY, 0);
        let types: Vec<RecordType> = apex.answers.iter().map(Record::record_type).collect();
        assert_eq!(types, vec![RecordType::SOA, RecordType::NS]);
        let routed = answer(Some(&t), &z, &name("crm-web.fed.local."), RecordType::ANY, 0);
        assert_eq!(ips(&routed.answers), vec!["127.0.1.1", "2001:db8::1", "127.0.3.1"], "every weighted target");
    }

    #[test]
    fn without_a_table_only_the_apex_and_name_server_answer() {
        let z = zone_config(&["192.0.2.53"]);
        let soa = answer(None, &z, &name("fed.local."), RecordType::SOA, 0);
        assert_eq!((soa.rcode, soa.authoritative), (ResponseCode::NoError, true));
        assert_eq!(soa_serial(&soa.answers[0]), 0);
        let ns = answer(None, &z, &name("fed.local."), RecordType::NS, 0);
        assert_eq!((ns.rcode, ns.answers.len(), ns.additional.len()), (ResponseCode::NoError, 1, 1));
        let host = answer(None, &z, &name("ns1.fed.local."), RecordType::A, 0);
        assert_eq!(ips(&host.answers), vec!["192.0.2.53"]);
        for (qname, qtype) in [
            ("crm-web.fed.local.", RecordType::A),
            ("nope.fed.local.", RecordType::AAAA),
            ("fed.local.", RecordType::A),
            ("fed.local.", RecordType::TXT),
        ] {
            let a = answer(None, &z, &name(qname), qtype, 0);
            assert_eq!(a.rcode, ResponseCode::ServFail, "{qname} {qtype}");
            assert!(!a.authoritative && a.answers.is_empty());
        }
        assert_eq!(answer(None, &z, &name("example.com."), RecordType::A, 0).rcode, ResponseCode::Refused);
    }

    #[test]
    fn name_server_host_wins_over_a_routed_entry_of_the_same_name() {
        let t = Table::from_proto(proto(1, 1, vec![entry("ns1", 30, vec![target("a", &["127.0.9.9"], 1)])])).unwrap();
        let a = answer(Some(&t), &zone_config(&["192.0.2.53"]), &name("ns1.fed.local."), RecordType::A, 0);
        assert_eq!(ips(&a.answers), vec!["192.0.2.53"]);
    }
}
