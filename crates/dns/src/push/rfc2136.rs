//! Pushing the routing table into an enterprise DNS server (BIND, Knot, PowerDNS) as RFC 2136
//! dynamic updates signed with TSIG (hmac-sha256).
//!
//! The pure part decides: [`desired`] turns a table into the record sets each name should hold
//! in the target zone, [`changes`] compares them with what was last confirmed pushed, and
//! [`update_message`] encodes a batch of changes. Every change replaces all record sets the
//! pusher manages at a name (delete, then add, in one message), so applying it twice leaves
//! the zone as applying it once. The I/O part ([`send_update`]) sends one signed message over
//! TCP and checks the answer and its signature.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::answer::{AllUnhealthy, Candidates, candidates};
use crate::table::Table;

/// Record types the pusher owns at every name it manages; others are left alone.
pub const MANAGED: [RecordType; 5] =
    [RecordType::A, RecordType::AAAA, RecordType::CNAME, RecordType::TXT, RecordType::SRV];
/// Time allowed for connecting, sending and reading the answer of one update.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one name should hold in the target zone: its records in a canonical order (empty means
/// the name should hold none of the managed types).
pub type Desired = BTreeMap<Name, Vec<Record>>;

/// Moves `name` from the fed-dns zone `from` into the target zone `to`; names outside `from`
/// are kept as they are.
fn reanchor(name: &Name, from: &Name, to: &Name) -> Name {
    if !from.zone_of(name) {
        return name.clone();
    }
    let keep = name.num_labels() - from.num_labels();
    let labels: Vec<&[u8]> = name.iter().take(usize::from(keep)).collect();
    let relative = Name::from_labels(labels).expect("labels of a valid name");
    relative.append_domain(to).map(|n| n.to_lowercase()).unwrap_or_else(|_| to.clone())
}

/// The record sets every name of `table` should hold in `zone`. Addresses are those of every
/// target that would receive traffic (weight > 0, healthy ones while any is healthy, all of
/// them otherwise): plain DNS has no weights, so each gets an equal share per address.
pub fn desired(table: &Table, zone: &Name) -> Desired {
    let mut out = Desired::new();
    for entry in table.entries() {
        let owner = reanchor(&entry.name, table.zone(), zone);
        let mut records = Vec::new();
        if let Some(target) = &entry.cname {
            let target = reanchor(target, table.zone(), zone);
            records.push(Record::from_rdata(owner.clone(), entry.ttl_s, RData::CNAME(CNAME(target))));
        } else {
            for v6 in [false, true] {
                // Plain DNS answers from these until the next push: fail open, never empty.
                let Candidates::Targets(targets) = candidates(entry, v6, AllUnhealthy::FailOpen) else { continue };
                let mut seen: Vec<IpAddr> = Vec::new();
                for ip in targets.iter().flat_map(|t| t.addresses.iter()).filter(|a| a.is_ipv6() == v6) {
                    if !seen.contains(ip) {
                        seen.push(*ip);
                    }
                }
                seen.sort();
                for ip in seen {
                    let rdata = match ip {
                        IpAddr::V4(a) => RData::A(A(a)),
                        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
                    };
                    records.push(Record::from_rdata(owner.clone(), entry.ttl_s, rdata));
                }
            }
            for text in &entry.txt {
                records.push(Record::from_rdata(owner.clone(), entry.ttl_s, RData::TXT(TXT::new(vec![text.clone()]))));
            }
            for s in &entry.services {
                let target = reanchor(&s.target, table.zone(), zone);
                records.push(Record::from_rdata(
                    owner.clone(),
                    entry.ttl_s,
                    RData::SRV(SRV::new(s.priority, s.weight, s.port, target)),
                ));
            }
        }
        out.insert(owner, records);
    }
    out
}

/// One name to rewrite: its new records (empty: remove every managed record set there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: Name,
    pub records: Vec<Record>,
}

/// The changes that take the zone from `pushed` (what the server confirmed last) to `desired`,
/// in name order: names whose records differ, and names no longer in the table (removed).
pub fn changes(desired: &Desired, pushed: &Desired) -> Vec<Change> {
    let mut out: Vec<Change> = desired
        .iter()
        .filter(|(name, records)| pushed.get(*name) != Some(*records))
        .map(|(name, records)| Change { name: name.clone(), records: records.clone() })
        .collect();
    out.extend(
        pushed
            .iter()
            .filter(|(name, records)| !desired.contains_key(*name) && !records.is_empty())
            .map(|(name, _)| Change { name: name.clone(), records: vec![] }),
    );
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// An UPDATE for `zone` applying `batch`: for each name, delete every managed record set, then
/// add the new records.
pub fn update_message(id: u16, zone: &Name, batch: &[Change]) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Update);
    let mut zone_query = Query::new();
    zone_query.set_name(zone.clone()).set_query_class(DNSClass::IN).set_query_type(RecordType::SOA);
    message.add_zone(zone_query);
    for change in batch {
        for rtype in MANAGED {
            let mut delete = Record::from_rdata(change.name.clone(), 0, RData::Update0(rtype));
            delete.dns_class = DNSClass::ANY;
            message.add_update(delete);
        }
        for record in &change.records {
            message.add_update(record.clone());
        }
    }
    message
}

/// Why an update was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The server could not be reached or the exchange broke; nothing is known to have changed.
    #[error("cannot reach {server}: {detail}")]
    Transport { server: SocketAddr, detail: String },
    /// The server answered and refused the update (NOTAUTH for a bad key, REFUSED, NOTZONE...).
    #[error("{server} answered {rcode}{hint}")]
    Refused { server: SocketAddr, rcode: String, hint: &'static str },
    /// The answer's TSIG signature does not verify: the answer cannot be trusted.
    #[error("{server} answered with a TSIG signature that does not verify: {detail}")]
    BadSignature { server: SocketAddr, detail: String },
}

impl UpdateError {
    /// Whether the server itself rejected the content (so retrying the same batch as a whole
    /// will not help, but its names one by one might).
    pub fn is_refusal(&self) -> bool {
        matches!(self, UpdateError::Refused { .. })
    }
}

/// Sends `message` signed by `signer` (time `now_s`, UNIX seconds) to `server` over TCP and
/// checks the answer: NOERROR with a valid signature.
pub async fn send_update(
    server: SocketAddr,
    mut message: Message,
    signer: &TSigner,
    now_s: u64,
) -> Result<(), UpdateError> {
    let transport = |detail: String| UpdateError::Transport { server, detail };
    let mut verifier = message
        .finalize(signer, now_s)
        .map_err(|e| transport(format!("cannot sign the update: {e}")))?
        .ok_or_else(|| transport("signing produced no verifier".into()))?;
    let bytes = message.to_vec().map_err(|e| transport(format!("cannot encode the update: {e}")))?;
    let len =
        u16::try_from(bytes.len()).map_err(|_| transport(format!("update of {} bytes is too large", bytes.len())))?;
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        stream.set_nodelay(true)?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| transport(format!("no answer within {EXCHANGE_TIMEOUT:?}")))?
        .map_err(|e| transport(e.to_string()))?;
    let parsed = Message::from_vec(&answer).map_err(|e| transport(format!("unreadable answer: {e}")))?;
    if parsed.metadata.id != message.metadata.id {
        return Err(transport("the answer is for another message id".into()));
    }
    let rcode = parsed.metadata.response_code;
    if rcode != ResponseCode::NoError {
        let hint = match rcode {
            ResponseCode::NotAuth => " (the server does not accept this TSIG key, or the key may not update the zone)",
            ResponseCode::Refused => " (updates from this key or address are not allowed for the zone)",
            ResponseCode::NotZone => " (a name is outside the zone)",
            _ => "",
        };
        return Err(UpdateError::Refused { server, rcode: mnemonic(rcode), hint });
    }
    verifier.verify(&answer).map_err(|e| UpdateError::BadSignature { server, detail: e.to_string() })?;
    Ok(())
}

/// The RFC mnemonic of a response code (`REFUSED`, `NOTAUTH`...), as DNS tools print it.
pub fn mnemonic(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::{entry, proto, target};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn table(site_b_weight: u32) -> Table {
        let mut web = entry(
            "crm-web",
            30,
            vec![target("site-a", &["127.0.1.1", "2001:db8::1"], 75), target("site-b", &["127.0.2.1"], site_b_weight)],
        );
        web.txt = vec!["hello".into()];
        let mut www = entry("www", 60, vec![]);
        www.cname = "crm-web".into();
        Table::from_proto(proto(3, 3, vec![web, www])).unwrap()
    }

    #[test]
    fn names_move_into_the_target_zone_with_every_serving_address() {
        let d = desired(&table(25), &name("gslb.corp.example."));
        let web = &d[&name("crm-web.gslb.corp.example.")];
        let data: Vec<String> = web.iter().map(|r| format!("{} {}", r.record_type(), r.data)).collect();
        assert_eq!(data, ["A 127.0.1.1", "A 127.0.2.1", "AAAA 2001:db8::1", "TXT hello"]);
        let RData::CNAME(target) = &d[&name("www.gslb.corp.example.")][0].data else { panic!("not a CNAME") };
        assert_eq!(target.0.to_ascii(), "crm-web.gslb.corp.example.");
        // Weight 0 removes a site's address.
        let drained = desired(&table(0), &name("gslb.corp.example."));
        assert_eq!(drained[&name("crm-web.gslb.corp.example.")].len(), 3);
    }

    #[test]
    fn changes_cover_new_changed_and_removed_names_only() {
        let zone = name("fed.local.");
        let before = desired(&table(25), &zone);
        assert!(changes(&before, &before).is_empty(), "nothing to do when the server has it all");
        let after = desired(&table(0), &zone);
        let c = changes(&after, &before);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, name("crm-web.fed.local."));
        let mut gone = after.clone();
        gone.remove(&name("www.fed.local."));
        let c = changes(&gone, &after);
        assert_eq!(c, [Change { name: name("www.fed.local."), records: vec![] }]);
        let everything = changes(&after, &Desired::new());
        assert_eq!(everything.len(), 2, "a fresh pusher rewrites every name");
    }

    #[test]
    fn an_update_deletes_every_managed_rrset_then_adds() {
        let zone = name("fed.local.");
        let d = desired(&table(25), &zone);
        let batch = changes(&d, &Desired::new());
        let m = update_message(7, &zone, &batch);
        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert_eq!(m.queries[0].name(), &zone);
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        let deletes = m.authorities.iter().filter(|r| r.dns_class == DNSClass::ANY && r.ttl == 0).count();
        assert_eq!(deletes, 2 * MANAGED.len());
        assert_eq!(m.authorities.len(), deletes + 4 + 1);
        // Encodes and decodes as an UPDATE.
        let back = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(back.authorities.len(), m.authorities.len());
    }
}
