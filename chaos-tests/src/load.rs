//! HTTP load the way real clients send it: each client resolves a name through fed-dns at most
//! once per the answer's TTL (its own resolver cache), then sends the request to the resolved
//! site's ingress with the name as Host header. Every request is recorded with where it went,
//! so tests can check what clients did after DNS moved. Bounded in count and time.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http_get_host;

/// What a client's resolver holds for one name: the address and until when it may use it.
struct Cached {
    addr: String,
    until: Instant,
}

/// The A record `name` resolves to through fed-dns (following a CNAME), and the smallest TTL
/// on the way; the first address when there are several.
pub fn resolve(dns: &str, name: &str) -> Result<(String, u64), String> {
    let (ip, port) = dns.rsplit_once(':').ok_or_else(|| format!("{dns:?} is not HOST:PORT"))?;
    let out = Command::new("dig")
        .args([&format!("@{ip}"), "-p", port, name, "A", "+noall", "+answer", "+comments", "+time=1", "+tries=2"])
        .output()
        .map_err(|e| format!("cannot run dig: {e}"))?;
    read_dig_answer(&String::from_utf8_lossy(&out.stdout), out.status.code())
}

/// The first A record and the smallest TTL in what `dig +noall +answer +comments` printed, or
/// why there is none. dig prints a timed-out try (";; communications error ... timed out") on
/// standard output even when its retry is answered: comment lines are skipped, not parsed.
fn read_dig_answer(text: &str, exit: Option<i32>) -> Result<(String, u64), String> {
    let mut ttl = u64::MAX;
    let mut addr = None;
    let mut status = None;
    for line in text.lines() {
        if let Some(at) = line.find("status: ") {
            status = line[at + 8..].split(',').next().map(str::to_string);
        }
        if line.starts_with(';') {
            continue;
        }
        // `name. TTL IN TYPE DATA`
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        ttl = ttl.min(f[1].parse().map_err(|_| format!("unreadable answer line {line:?}"))?);
        if f[3] == "A" && addr.is_none() {
            addr = Some(f[4].to_string());
        }
    }
    let printed = text.trim().replace('\n', " | ");
    match (addr, status) {
        (Some(addr), _) => Ok((addr, ttl)),
        (None, Some(status)) => Err(format!("status {status}, no A record: {printed}")),
        (None, None) => Err(format!("no reply (dig exit {exit:?}): {printed}")),
    }
}

/// One request a client sent.
#[derive(Clone, Debug)]
pub struct Sent {
    pub at: Instant,
    pub host: String,
    /// The address it resolved the host to (the ingress it went to).
    pub addr: String,
    /// The site that answered, if one did with 200.
    pub answered_by: Option<String>,
}

#[derive(Default)]
pub struct LoadReport {
    pub requests: u64,
    pub failures: u64,
    /// The first failures, described.
    pub failed: Vec<String>,
    pub resolutions: u64,
    /// Answers per (host, site that answered).
    pub answered: BTreeMap<(String, String), u64>,
    /// The site that answered each host last.
    pub last_site: BTreeMap<String, String>,
    /// Every request, in order.
    pub sent: Vec<Sent>,
}

/// What a client loop asks for and how long it may run.
#[derive(Clone)]
pub struct Load {
    pub dns: String,
    pub zone: String,
    /// Labels inside the zone, asked round-robin.
    pub hosts: Vec<String>,
    /// Every site's ingress listens on this port (at the site's own address).
    pub ingress_port: String,
    pub stop: Arc<AtomicBool>,
    pub max_requests: u64,
    pub max_time: Duration,
    /// Pause between requests.
    pub pace: Duration,
}

/// A bounded client loop (at most `max_requests`, at most `max_time`, or until `stop`).
pub fn run_load(load: Load) -> LoadReport {
    let started = Instant::now();
    let mut cache: BTreeMap<String, Cached> = BTreeMap::new();
    let mut r = LoadReport::default();
    let fail = |r: &mut LoadReport, what: String| {
        r.failures += 1;
        if r.failed.len() < 20 {
            r.failed.push(format!("{:.1}s: {what}", started.elapsed().as_secs_f64()));
        }
    };
    for i in 0..load.max_requests {
        if load.stop.load(Ordering::Relaxed) || started.elapsed() > load.max_time {
            break;
        }
        let label = &load.hosts[i as usize % load.hosts.len()];
        let host = format!("{label}.{}", load.zone);
        let now = Instant::now();
        if cache.get(label).is_none_or(|c| c.until <= now) {
            r.resolutions += 1;
            match resolve(&load.dns, &format!("{host}.")) {
                Ok((addr, ttl)) => {
                    cache.insert(label.clone(), Cached { addr, until: now + Duration::from_secs(ttl) });
                }
                Err(why) => {
                    r.requests += 1;
                    fail(&mut r, format!("{host}: no A record from fed-dns: {why}"));
                    continue;
                }
            }
        }
        let resolved = cache[label].addr.clone();
        let addr = format!("{resolved}:{}", load.ingress_port);
        r.requests += 1;
        let mut sent = Sent { at: Instant::now(), host: label.clone(), addr: resolved, answered_by: None };
        match http_get_host(&addr, &host) {
            Some((200, body)) => {
                let site = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["site"].as_str().map(String::from));
                let site = site.unwrap_or_else(|| format!("unreadable answer {body:?}"));
                *r.answered.entry((label.clone(), site.clone())).or_default() += 1;
                r.last_site.insert(label.clone(), site.clone());
                sent.answered_by = Some(site);
            }
            Some((code, body)) => fail(&mut r, format!("{host} via {addr}: HTTP {code} {}", body.trim())),
            None => fail(&mut r, format!("{host} via {addr}: no HTTP answer")),
        }
        r.sent.push(sent);
        std::thread::sleep(load.pace);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::read_dig_answer;

    #[test]
    fn a_retried_query_is_an_answer_and_an_empty_one_says_why() {
        let retried = ";; communications error to 127.0.0.1#5300: timed out\n;; Got answer:\n\
                       ;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n\
                       search.fed.local.\t30\tIN\tA\t127.0.2.1\n";
        assert_eq!(read_dig_answer(retried, Some(0)), Ok(("127.0.2.1".to_string(), 30)));
        let chain = "www.fed.local. 5 IN CNAME crm-web.fed.local.\ncrm-web.fed.local. 30 IN A 127.0.1.1\n";
        assert_eq!(read_dig_answer(chain, Some(0)), Ok(("127.0.1.1".to_string(), 5)));
        let nodata = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 2\n";
        assert!(read_dig_answer(nodata, Some(0)).unwrap_err().starts_with("status NOERROR, no A record"));
        let servfail = ";; ->>HEADER<<- opcode: QUERY, status: SERVFAIL, id: 3\n";
        assert!(read_dig_answer(servfail, Some(0)).unwrap_err().starts_with("status SERVFAIL"));
        let silent = ";; communications error to 127.0.0.1#5300: timed out\n;; no servers could be reached\n";
        assert!(read_dig_answer(silent, Some(9)).unwrap_err().starts_with("no reply (dig exit Some(9))"));
    }
}
