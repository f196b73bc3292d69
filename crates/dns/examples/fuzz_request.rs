//! Mutation fuzzing of fed-dns's UDP request path (fast and general), for as long as asked.
//!
//! Run: `cargo run --release -p switchyard-dns --example fuzz_request -- [SECONDS] [SEED]`
//! (default 60 s, a seed from the clock). A failure panics with the offending packet; rerun
//! with the printed seed to replay it exactly.

use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use switchyard_dns::ZoneConfig;
use switchyard_dns::table::{Table, TableDoc};
use switchyard_dns::wire::fuzz::Fuzzer;

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x2b2b, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encodes")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let doc: TableDoc = serde_json::from_value(serde_json::json!({
        "version": 3, "epoch": 3, "zone": "fed.local.",
        "entries": [
            {"name": "crm-web", "group": "crm", "ttl_s": 30, "txt": ["site=a"], "targets": [
                {"site": "a", "addresses": ["127.0.1.1", "2001:db8::1"], "weight": 3},
                {"site": "b", "addresses": ["127.0.2.1"], "weight": 1, "unhealthy": true}]},
            {"name": "www", "group": "crm", "ttl_s": 30, "targets": [], "cname": "crm-web"},
            {"name": "_web._tcp.crm-web.a", "group": "crm", "ttl_s": 5, "targets": [],
             "services": [{"priority": 0, "weight": 1, "port": 8080, "target": "n1.a"}]},
            {"name": "n1.a", "group": "", "ttl_s": 5, "targets": [{"site": "a", "addresses": ["127.0.1.11"], "weight": 1}]}
        ]
    }))
    .expect("table document");
    let table = Table::from_doc(&doc).expect("valid table");
    let zone = ZoneConfig::new(
        Name::from_ascii("fed.local.").expect("zone"),
        Name::from_ascii("ns1.fed.local.").expect("ns"),
        vec!["127.0.0.53".parse().expect("address")],
    );
    let seeds = [
        query("crm-web.fed.local.", RecordType::A, Some(1232)),
        query("CRM-web.fed.local.", RecordType::AAAA, None),
        query("www.fed.local.", RecordType::A, Some(4096)),
        query("_web._tcp.crm-web.a.fed.local.", RecordType::SRV, None),
        query("fed.local.", RecordType::SOA, Some(512)),
        query("nope.fed.local.", RecordType::TXT, None),
    ];
    println!("fuzzing the request path for {seconds} s with seed {seed}");
    let mut fuzzer = Fuzzer::new(&table, &zone, seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runs: u64 = 0;
    while Instant::now() < deadline {
        for _ in 0..10_000 {
            fuzzer.run_one(&seeds[(runs % seeds.len() as u64) as usize], runs);
            runs += 1;
        }
    }
    println!("{runs} mutated queries, no property violated");
}
