//! DNS over UDP at the wire level, without I/O.
//!
//! - The **fast path** answers the queries a GSLB server mostly gets, A or AAAA for a routed
//!   name with a positive answer, from answers encoded once per table version ([`Prepared`]):
//!   the response is the query's header and question (so the name keeps the query's case) plus
//!   prebuilt answer records whose owner is a compression pointer to the question, chosen by
//!   weight with the same [`weighted_index`] the general path uses. No allocation, no name
//!   parsing beyond one pass over the labels.
//! - Everything else (other types, NXDOMAIN, NODATA, apex, aliases, EDNS versions, malformed
//!   packets, answers too large for the client) takes the **general path**: hickory parses the
//!   message, [`reply`] decides, hickory encodes, and an answer too large for UDP is truncated
//!   (TC set, header, question and OPT only).
//!
//! Both paths give the same answer for the same table and selector; a test compares them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::serialize::binary::BinEncodable;

use crate::answer::{Candidates, candidates, weighted_index};
use crate::config::ZoneConfig;
use crate::handler::{UDP_PAYLOAD_MAX, reply};
use crate::table::Table;

const HEADER_LEN: usize = 12;
/// Longest name in wire form.
const NAME_WIRE_MAX: usize = 255;
/// Payload size a client without EDNS may receive (RFC 1035).
const PLAIN_UDP_MAX: usize = 512;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// FxHash: names are short and the map is rebuilt per table, so a keyed hash buys nothing.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The prebuilt answers of one name for one family: one choice per weighted candidate.
#[derive(Debug, Default)]
struct Choices {
    weights: Vec<u64>,
    /// Per candidate: (record count, encoded records).
    answers: Vec<(u16, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct FastName {
    a: Option<Choices>,
    aaaa: Option<Choices>,
}

/// Fast-path answers for one table version, keyed by the lower-case wire-form name.
#[derive(Debug, Default)]
pub struct Prepared {
    names: FxMap<Box<[u8]>, FastName>,
}

impl Prepared {
    /// Encodes the fast-path answers of `table`. Names the fast path must not answer (the apex,
    /// the name servers' hosts, aliases, names without a positive answer, names whose healthy
    /// set is empty under the SERVFAIL policy) are left out and go to the general path.
    pub fn build(table: &Table, zone: &ZoneConfig) -> Self {
        let mut names = FxMap::default();
        for entry in table.entries() {
            if entry.cname.is_some() || zone.name_server_addresses(&entry.name).is_some() || entry.name == zone.origin {
                continue;
            }
            let choices = |v6: bool| -> Option<Choices> {
                let Candidates::Targets(targets) = candidates(entry, v6, zone.all_unhealthy) else { return None };
                if targets.is_empty() {
                    return None;
                }
                let mut c = Choices::default();
                for t in targets {
                    let mut seen: Vec<IpAddr> = Vec::new();
                    let mut bytes = Vec::new();
                    for ip in t.addresses.iter().filter(|a| a.is_ipv6() == v6) {
                        if seen.contains(ip) {
                            continue;
                        }
                        seen.push(*ip);
                        // Owner: pointer to the question name at offset 12.
                        bytes.extend_from_slice(&[0xC0, 0x0C]);
                        bytes.extend_from_slice(&(if v6 { TYPE_AAAA } else { TYPE_A }).to_be_bytes());
                        bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
                        bytes.extend_from_slice(&entry.ttl_s.to_be_bytes());
                        match ip {
                            IpAddr::V4(v4) => {
                                bytes.extend_from_slice(&4u16.to_be_bytes());
                                bytes.extend_from_slice(&v4.octets());
                            }
                            IpAddr::V6(v6) => {
                                bytes.extend_from_slice(&16u16.to_be_bytes());
                                bytes.extend_from_slice(&v6.octets());
                            }
                        }
                    }
                    c.weights.push(u64::from(t.weight));
                    c.answers.push((seen.len() as u16, bytes));
                }
                Some(c)
            };
            let fast = FastName { a: choices(false), aaaa: choices(true) };
            if fast.a.is_some() || fast.aaaa.is_some() {
                names.insert(entry.name.to_bytes().expect("a validated name encodes").into_boxed_slice(), fast);
            }
        }
        Self { names }
    }

    /// Names the fast path answers.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Writes the response to `query` into `out` and returns true when the fast path can answer
    /// it; returns false (leaving `out` in any state) when the general path must.
    pub fn respond(&self, query: &[u8], selector: u64, out: &mut Vec<u8>) -> bool {
        let Some(q) = parse(query) else { return false };
        let Some(name) = self.names.get(&q.lower[..q.lower_len]) else { return false };
        let choices = match q.qtype {
            TYPE_A => name.a.as_ref(),
            TYPE_AAAA => name.aaaa.as_ref(),
            _ => None,
        };
        let Some(choices) = choices else { return false };
        let Some(i) = weighted_index(&choices.weights, selector) else { return false };
        let (count, records) = &choices.answers[i];
        let limit = match q.edns {
            Some(e) => usize::from(e.payload.clamp(512, UDP_PAYLOAD_MAX)),
            None => PLAIN_UDP_MAX,
        };
        let opt_len = if q.edns.is_some() { 11 } else { 0 };
        if q.question_end + records.len() + opt_len > limit {
            return false;
        }
        out.clear();
        out.extend_from_slice(&query[..2]);
        // QR, opcode 0, AA, RD as asked; RA 0, CD as asked, rcode 0.
        out.push(0x84 | (query[2] & 0x01));
        out.push(query[3] & 0x10);
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, u8::from(q.edns.is_some())]);
        out.extend_from_slice(&query[HEADER_LEN..q.question_end]);
        out.extend_from_slice(records);
        if let Some(e) = q.edns {
            out.extend_from_slice(&[0, 0, 41]);
            out.extend_from_slice(&e.payload.clamp(512, UDP_PAYLOAD_MAX).to_be_bytes());
            out.extend_from_slice(&[0, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
        }
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EdnsInfo {
    payload: u16,
    dnssec_ok: bool,
}

/// A query the fast path may answer: one question, standard opcode, class IN, at most an OPT
/// record (version 0) after it, nothing else.
struct FastQuery {
    lower: [u8; NAME_WIRE_MAX],
    lower_len: usize,
    qtype: u16,
    question_end: usize,
    edns: Option<EdnsInfo>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn parse(b: &[u8]) -> Option<FastQuery> {
    if b.len() < HEADER_LEN + 5 {
        return None;
    }
    // QR 0 and opcode 0 (QUERY); TC 0.
    if b[2] & 0xFA != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (u16_at(b, 4)?, u16_at(b, 6)?, u16_at(b, 8)?, u16_at(b, 10)?);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut q = FastQuery { lower: [0; NAME_WIRE_MAX], lower_len: 0, qtype: 0, question_end: 0, edns: None };
    let mut at = HEADER_LEN;
    loop {
        let len = usize::from(*b.get(at)?);
        if len > 63 {
            // Compression pointers and extended labels belong to the general path.
            return None;
        }
        if q.lower_len + len + 1 > NAME_WIRE_MAX {
            return None;
        }
        let label = b.get(at..at + 1 + len)?;
        for (i, c) in label.iter().enumerate() {
            q.lower[q.lower_len + i] = if i == 0 { *c } else { c.to_ascii_lowercase() };
        }
        q.lower_len += len + 1;
        at += len + 1;
        if len == 0 {
            break;
        }
    }
    q.qtype = u16_at(b, at)?;
    if u16_at(b, at + 2)? != CLASS_IN {
        return None;
    }
    at += 4;
    q.question_end = at;
    if ar == 1 {
        // OPT: root owner, type 41, class = payload size, TTL = ext-rcode, version, flags.
        if *b.get(at)? != 0 || u16_at(b, at + 1)? != TYPE_OPT {
            return None;
        }
        let payload = u16_at(b, at + 3)?;
        let (ext_rcode, version, flags) = (*b.get(at + 5)?, *b.get(at + 6)?, u16_at(b, at + 7)?);
        if ext_rcode != 0 || version != 0 {
            return None;
        }
        let rdlen = usize::from(u16_at(b, at + 9)?);
        at += 11 + rdlen;
        q.edns = Some(EdnsInfo { payload, dnssec_ok: flags & 0x8000 != 0 });
    }
    (at == b.len()).then_some(q)
}

/// The general path: the full response to any datagram, or `None` when nothing should be sent
/// (not even a header could be read, or it is itself a response). Malformed queries whose header
/// survives get FORMERR.
pub fn general_response(
    query: &[u8],
    table: Option<&Table>,
    zone: &ZoneConfig,
    selector: u64,
) -> Option<(Vec<u8>, ResponseCode)> {
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return formerr(query),
    };
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    let question = (request.queries.len() == 1).then(|| &request.queries[0]);
    let decided = reply(&request.metadata, question, request.edns.as_ref(), table, zone, selector);
    let limit = match &decided.edns {
        Some(e) => usize::from(e.max_payload()),
        None => PLAIN_UDP_MAX,
    };
    let mut response = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
    response.metadata = decided.metadata;
    // A response echoes the question it answers; a request without exactly one gets none back.
    if question.is_some() {
        response.queries = request.queries.clone();
    }
    response.answers = decided.answer.answers;
    response.authorities = decided.answer.authority;
    response.additionals = decided.answer.additional;
    response.edns = decided.edns;
    let rcode = response.metadata.response_code;
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some((bytes, rcode));
    }
    Some((response.truncate().to_vec().ok()?, rcode))
}

/// FORMERR for a datagram hickory cannot parse, if its header is readable and it is a query.
fn formerr(query: &[u8]) -> Option<(Vec<u8>, ResponseCode)> {
    if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
        return None;
    }
    let opcode = query[2] & 0x78;
    let mut out = vec![0u8; HEADER_LEN];
    out[..2].copy_from_slice(&query[..2]);
    out[2] = 0x80 | opcode | (query[2] & 0x01);
    out[3] = 1; // FORMERR
    Some((out, ResponseCode::FormErr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::{entry, proto, target};
    use hickory_proto::op::{Edns, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn zone() -> ZoneConfig {
        ZoneConfig::new(
            Name::from_ascii("fed.local.").unwrap(),
            Name::from_ascii("ns1.fed.local.").unwrap(),
            vec!["127.0.0.53".parse().unwrap()],
        )
    }

    fn table() -> Table {
        let mut sick = entry("sick", 30, vec![target("a", &["127.0.5.1"], 1), target("b", &["127.0.5.2"], 1)]);
        sick.targets[0].unhealthy = true;
        Table::from_proto(proto(
            9,
            9,
            vec![
                entry(
                    "crm-web",
                    45,
                    vec![
                        target("site-a", &["127.0.1.1", "2001:db8::1", "127.0.1.1"], 1),
                        target("site-b", &["127.0.2.1"], 0),
                        target("site-c", &["127.0.3.1", "127.0.3.2"], 3),
                    ],
                ),
                entry("v4only", 30, vec![target("a", &["127.0.4.1"], 1)]),
                sick,
            ],
        ))
        .unwrap()
    }

    fn query(name: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, hickory_proto::op::OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((payload, dnssec_ok)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn the_fast_path_answers_exactly_as_the_general_path_does() {
        let (t, z) = (table(), zone());
        let prepared = Prepared::build(&t, &z);
        assert_eq!(prepared.len(), 3, "crm-web, v4only and sick have positive answers");
        let mut out = Vec::new();
        let mut fast_answers = 0;
        for name in ["crm-web.fed.local.", "CRM-Web.Fed.Local.", "v4only.fed.local.", "sick.fed.local."] {
            for qtype in [RecordType::A, RecordType::AAAA] {
                for edns in [None, Some((4096, false)), Some((512, true)), Some((100, false))] {
                    for selector in 0..9 {
                        let q = query(name, qtype, edns);
                        let (general, _) = general_response(&q, Some(&t), &z, selector).unwrap();
                        if !prepared.respond(&q, selector, &mut out) {
                            // Only NODATA (AAAA of the IPv4-only names) may fall back here.
                            assert!(!name.starts_with("crm") && qtype == RecordType::AAAA, "{name} {qtype}");
                            continue;
                        }
                        fast_answers += 1;
                        let (fast, slow) = (Message::from_vec(&out).unwrap(), Message::from_vec(&general).unwrap());
                        assert_eq!(fast.metadata, slow.metadata, "{name} {qtype} {edns:?}");
                        assert_eq!(fast.queries, slow.queries);
                        assert_eq!(fast.queries[0].name().to_ascii(), name, "the question keeps its case");
                        assert_eq!(fast.answers, slow.answers, "{name} {qtype} {edns:?} selector {selector}");
                        assert_eq!(fast.edns.is_some(), slow.edns.is_some());
                        if let (Some(a), Some(b)) = (&fast.edns, &slow.edns) {
                            assert_eq!((a.max_payload(), a.flags().dnssec_ok), (b.max_payload(), b.flags().dnssec_ok));
                        }
                    }
                }
            }
        }
        assert!(fast_answers > 200, "{fast_answers}");
    }

    #[test]
    fn the_fast_path_declines_what_it_does_not_serve() {
        let (t, z) = (table(), zone());
        let prepared = Prepared::build(&t, &z);
        let mut out = Vec::new();
        for (why, q) in [
            ("unknown name", query("nope.fed.local.", RecordType::A, None)),
            ("TXT", query("crm-web.fed.local.", RecordType::TXT, None)),
            ("apex", query("fed.local.", RecordType::A, None)),
            ("name server", query("ns1.fed.local.", RecordType::A, None)),
            ("out of zone", query("crm-web.example.", RecordType::A, None)),
        ] {
            assert!(!prepared.respond(&q, 0, &mut out), "{why}");
        }
        let good = query("crm-web.fed.local.", RecordType::A, Some((1232, false)));
        assert!(prepared.respond(&good, 0, &mut out));
        let mut edns1 = good.clone();
        let opt = good.len() - 11;
        edns1[opt + 6] = 1;
        let mut trailing = query("crm-web.fed.local.", RecordType::A, None);
        trailing.push(0);
        let mut response = query("crm-web.fed.local.", RecordType::A, None);
        response[2] |= 0x80;
        let mut notify = query("crm-web.fed.local.", RecordType::A, None);
        notify[2] |= 4 << 3;
        for (why, q) in
            [("EDNS version 1", edns1), ("trailing byte", trailing), ("a response", response), ("opcode", notify)]
        {
            assert!(!prepared.respond(&q, 0, &mut out), "{why}");
        }
    }

    #[test]
    fn the_general_path_answers_errors_and_never_answers_responses() {
        let (t, z) = (table(), zone());
        let mut bad_version = query("crm-web.fed.local.", RecordType::A, Some((1232, false)));
        let opt = bad_version.len() - 11;
        bad_version[opt + 6] = 1;
        let (bytes, rcode) = general_response(&bad_version, Some(&t), &z, 0).unwrap();
        assert_eq!(rcode, ResponseCode::BADVERS);
        assert!(Message::from_vec(&bytes).unwrap().edns.is_some());
        let mut response = query("crm-web.fed.local.", RecordType::A, None);
        response[2] |= 0x80;
        assert!(general_response(&response, Some(&t), &z, 0).is_none());
        let garbage = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1];
        let (bytes, rcode) = general_response(&garbage, Some(&t), &z, 0).unwrap();
        assert_eq!((rcode, &bytes[..2], bytes[3] & 0x0F), (ResponseCode::FormErr, &[0x12, 0x34][..], 1));
        assert!(general_response(&[1, 2, 3], Some(&t), &z, 0).is_none(), "no header, no answer");
    }

    /// Bounded mutation fuzzing of both paths (the `fuzz_request` example runs it unbounded).
    #[test]
    fn mutated_queries_never_panic_or_overflow() {
        let (t, z) = (table(), zone());
        let seeds = [
            query("crm-web.fed.local.", RecordType::A, Some((1232, true))),
            query("sick.fed.local.", RecordType::AAAA, None),
            query("nope.fed.local.", RecordType::SRV, Some((65535, false))),
        ];
        let mut fuzzer = fuzz::Fuzzer::new(&t, &z, 0x9E37_79B9_7F4A_7C15);
        for i in 0..30_000u64 {
            fuzzer.run_one(&seeds[(i % 3) as usize], i);
        }
    }
}

/// Mutation fuzzing of the UDP request path, shared by the unit test and the
/// `fuzz_request` example (which runs it for as long as asked).
pub mod fuzz {
    use super::*;

    /// Mutates queries and checks both paths' properties on each: no panic, every response
    /// fits the client's limit and keeps the query id, nothing answers a response.
    pub struct Fuzzer<'a> {
        table: &'a Table,
        zone: &'a ZoneConfig,
        prepared: Prepared,
        rng: u64,
        out: Vec<u8>,
    }

    impl<'a> Fuzzer<'a> {
        pub fn new(table: &'a Table, zone: &'a ZoneConfig, seed: u64) -> Self {
            Self { table, zone, prepared: Prepared::build(table, zone), rng: seed | 1, out: Vec::new() }
        }

        fn next(&mut self) -> u64 {
            // xorshift64: deterministic for a seed, so a failure replays.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng
        }

        /// One to four random edits of `seed`: a byte changed, the tail cut, a byte appended,
        /// a compression pointer planted in the name.
        pub fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
            let mut q = seed.to_vec();
            for _ in 0..1 + self.next() % 4 {
                match self.next() % 4 {
                    0 if !q.is_empty() => {
                        let at = (self.next() as usize) % q.len();
                        q[at] = self.next() as u8;
                    }
                    1 => {
                        let keep = (self.next() as usize) % (q.len() + 1);
                        q.truncate(keep);
                    }
                    2 => {
                        let b = self.next() as u8;
                        q.push(b);
                    }
                    _ if q.len() > HEADER_LEN + 1 => {
                        let at = HEADER_LEN + (self.next() as usize) % (q.len() - HEADER_LEN - 1);
                        q[at] = 0xC0;
                        q[at + 1] = self.next() as u8 % 40;
                    }
                    _ => {}
                }
            }
            q
        }

        /// Mutates `seed`, runs both paths with `selector` and panics if a property fails.
        pub fn run_one(&mut self, seed: &[u8], selector: u64) {
            let q = self.mutate(seed);
            let mut out = std::mem::take(&mut self.out);
            if self.prepared.respond(&q, selector, &mut out) {
                assert!(out.len() <= usize::from(UDP_PAYLOAD_MAX), "fast answer of {} bytes to {q:?}", out.len());
                assert_eq!(out[..2], q[..2], "fast answer keeps the id of {q:?}");
            }
            self.out = out;
            if let Some((bytes, _)) = general_response(&q, Some(self.table), self.zone, selector) {
                assert!(q.len() >= HEADER_LEN && q[2] & 0x80 == 0, "answered a non-query {q:?}");
                assert!(bytes.len() <= usize::from(UDP_PAYLOAD_MAX), "answer of {} bytes to {q:?}", bytes.len());
                assert_eq!(bytes[..2], q[..2], "answer keeps the id of {q:?}");
            }
        }
    }
}
