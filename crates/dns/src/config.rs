//! Command-line flags and their validation. Every problem is collected and reported at once,
//! before any socket is bound or any file is written.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use hickory_proto::rr::Name;
use switchyard_tls::TlsFiles;
use tonic::transport::Uri;

use crate::answer::AllUnhealthy;
use crate::names::parse_zone;

/// `fed-dns` command line.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "fed-dns", version, about = "Authoritative DNS for a Switchyard federation zone")]
pub struct Args {
    /// Zone served, e.g. `fed.local.` (made absolute if the trailing dot is missing).
    #[arg(long)]
    pub zone: String,
    /// Address for DNS over UDP and TCP, e.g. `0.0.0.0:53`. Port 0 picks one free port for both.
    #[arg(long)]
    pub listen: String,
    /// Federator replicas' routing endpoints, `https://HOST:PORT`, comma-separated: the stream
    /// follows one and moves to the next when it fails.
    #[arg(long)]
    pub federator: String,
    /// Federation CA certificate (PEM).
    #[arg(long)]
    pub tls_ca: PathBuf,
    /// This server's certificate (PEM), issued to `dns:<server-id>`.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// This server's private key (PEM).
    #[arg(long)]
    pub tls_key: PathBuf,
    /// Directory for the last-known-good routing table (created if missing).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Identifier sent to the federator in `Watch`.
    #[arg(long, default_value = "dns-1")]
    pub server_id: String,
    /// Name server host name, relative to the zone (or absolute with a trailing dot).
    #[arg(long, default_value = "ns1")]
    pub ns_name: String,
    /// Address of the name server host (glue); may be repeated for IPv4 and IPv6. Defaults to the
    /// `--listen` address unless that is a wildcard.
    #[arg(long)]
    pub ns_address: Vec<String>,
    /// Another name server of the zone (the fed-dns at another site), published in the apex NS
    /// set beside this one: `NAME=ADDRESS[,ADDRESS]`, the name as for `--ns-name`; the
    /// addresses are its glue (needed when the name is inside the zone). May be repeated.
    #[arg(long)]
    pub other_ns: Vec<String>,
    /// Address for the Prometheus `/metrics` endpoint; off when absent.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// What a name answers when none of its weighted sites is healthy: `fail-open` answers as
    /// if they all were (an observer that blinks never empties an answer), `servfail` refuses.
    #[arg(long, value_enum, default_value = "fail-open")]
    pub all_unhealthy: AllUnhealthy,
    /// UDP worker threads, each with its own socket on the port (`SO_REUSEPORT`); default: one
    /// per CPU this process may run on.
    #[arg(long)]
    pub udp_workers: Option<usize>,
    /// TOML file of enterprise DNS servers (RFC 2136 + TSIG) and HAProxy load balancers to push
    /// every routing table to (see runbooks/dns-and-lb.md).
    #[arg(long)]
    pub push_config: Option<PathBuf>,
    /// Observe a site for failure detection: `SITE=HOST:PORT` (its ingress), probed every
    /// `--observe-interval-ms` and reported to every federator replica. May be repeated.
    #[arg(long)]
    pub observe: Vec<String>,
    /// How often the `--observe` sites are probed and reported, in milliseconds (50-60000).
    #[arg(long, default_value_t = 1000)]
    pub observe_interval_ms: u64,
    /// This server's failure domain as an observer (where it runs); default `dns-<server-id>`.
    #[arg(long)]
    pub observer_domain: Option<String>,
}

/// Observation intervals accepted (`--observe-interval-ms`), as the federator's `probe_interval_ms`.
pub const OBSERVE_INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=60_000;

/// Most UDP worker threads accepted.
pub const UDP_WORKERS_MAX: usize = 64;

/// What the zone apex publishes besides the routing table: the name server and its glue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// Lower-case absolute zone name.
    pub origin: Name,
    /// Lower-case absolute host name of this name server.
    pub ns_name: Name,
    /// Addresses published for `ns_name` (in the zone) and as glue.
    pub ns_addresses: Vec<IpAddr>,
    /// The zone's other name servers, after this one in the apex NS set.
    pub other_ns: Vec<NameServer>,
    /// Answer policy for names none of whose weighted targets is healthy.
    pub all_unhealthy: AllUnhealthy,
}

impl ZoneConfig {
    /// Builds a zone configuration from already-valid parts, with the fail-open policy.
    pub fn new(origin: Name, ns_name: Name, ns_addresses: Vec<IpAddr>) -> Self {
        Self {
            origin: origin.to_lowercase(),
            ns_name: ns_name.to_lowercase(),
            ns_addresses,
            other_ns: Vec::new(),
            all_unhealthy: AllUnhealthy::FailOpen,
        }
    }

    /// The apex NS set: this server first, then the others, each with its addresses.
    pub fn name_servers(&self) -> impl Iterator<Item = (&Name, &[IpAddr])> {
        std::iter::once((&self.ns_name, self.ns_addresses.as_slice()))
            .chain(self.other_ns.iter().map(|n| (&n.name, n.addresses.as_slice())))
    }

    /// The addresses of `name` if it is one of the zone's name servers (lower-case, absolute).
    pub fn name_server_addresses(&self, name: &Name) -> Option<&[IpAddr]> {
        self.name_servers().find(|(n, _)| *n == name).map(|(_, a)| a)
    }
}

/// A name server of the zone other than this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameServer {
    /// Lower-case absolute host name.
    pub name: Name,
    /// Its addresses, published (in the zone) and as glue.
    pub addresses: Vec<IpAddr>,
}

/// The federator endpoint and the name its certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatorEndpoint {
    pub uri: Uri,
    /// TLS server name: the URL's host (an IP literal without brackets works too).
    pub server_name: String,
}

/// Validated configuration of one `fed-dns` process.
#[derive(Clone, Debug)]
pub struct Config {
    pub zone: ZoneConfig,
    pub listen: SocketAddr,
    /// The first replica (kept for logs and callers that need one).
    pub federator: FederatorEndpoint,
    /// Every replica, in the order given.
    pub federators: Vec<FederatorEndpoint>,
    pub tls: TlsFiles,
    pub state_dir: PathBuf,
    pub server_id: String,
    pub metrics_listen: Option<SocketAddr>,
    /// UDP worker threads (`--udp-workers`).
    pub udp_workers: usize,
    /// Push targets (`--push-config`); empty when none.
    pub push: crate::push::PushConfig,
    /// Sites to observe (`--observe`): (site, `host:port`).
    pub observe: Vec<(String, String)>,
    pub observer_domain: String,
    /// How often the observed sites are probed and reported (`--observe-interval-ms`).
    pub observe_interval: std::time::Duration,
}

/// Every problem found in the flags, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid fed-dns configuration ({} problem(s)):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Validates `args` as a whole. Reads nothing but file metadata.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |p: String| problems.push(p);

        let origin = parse_zone(&args.zone).map_err(|e| problem(format!("--zone {:?} {e}", args.zone))).ok();
        let listen = args
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| problem(format!("--listen {:?} is not IP:PORT (e.g. 127.0.0.1:5353)", args.listen)))
            .ok();
        let federators: Option<Vec<FederatorEndpoint>> =
            args.federator.split(',').map(|f| parse_federator(f.trim()).map_err(&mut problem).ok()).collect();
        let federator = federators.as_ref().and_then(|f| f.first().cloned());
        for (flag, path) in [("--tls-ca", &args.tls_ca), ("--tls-cert", &args.tls_cert), ("--tls-key", &args.tls_key)] {
            if !path.is_file() {
                problem(format!("{flag} {} is not a readable file", path.display()));
            }
        }
        if args.state_dir.exists() && !args.state_dir.is_dir() {
            problem(format!("--state-dir {} exists and is not a directory", args.state_dir.display()));
        }
        if !valid_server_id(&args.server_id) {
            problem(format!("--server-id {:?} is invalid: use 1-128 characters from [A-Za-z0-9-_./@]", args.server_id));
        }
        let ns_name = origin
            .as_ref()
            .and_then(|zone| parse_ns_name(&args.ns_name, zone).map_err(|e| problem(format!("--ns-name {e}"))).ok());
        let mut ns_addresses = Vec::new();
        for text in &args.ns_address {
            match text.parse::<IpAddr>() {
                Ok(ip) if !ns_addresses.contains(&ip) => ns_addresses.push(ip),
                Ok(_) => {}
                Err(_) => problem(format!("--ns-address {text:?} is not an IPv4 or IPv6 address")),
            }
        }
        if args.ns_address.is_empty()
            && let Some(listen) = listen
            && !listen.ip().is_unspecified()
        {
            ns_addresses.push(listen.ip());
        }
        let mut other_ns: Vec<NameServer> = Vec::new();
        if let Some(zone) = &origin {
            for text in &args.other_ns {
                match parse_other_ns(text, zone) {
                    Ok(ns) if ns_name.as_ref() == Some(&ns.name) => {
                        problem(format!("--other-ns {text:?} names this server (--ns-name)"));
                    }
                    Ok(ns) if other_ns.iter().any(|o| o.name == ns.name) => {
                        problem(format!("--other-ns {text:?} names {} a second time", ns.name));
                    }
                    Ok(ns) => other_ns.push(ns),
                    Err(e) => problem(format!("--other-ns {text:?}: {e}")),
                }
            }
        }
        let metrics_listen = match &args.metrics_listen {
            None => None,
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(addr) => {
                    if let Some(listen) = listen
                        && addr.port() != 0
                        && addr.port() == listen.port()
                        && (addr.ip() == listen.ip() || addr.ip().is_unspecified() || listen.ip().is_unspecified())
                    {
                        problem(format!(
                            "--metrics-listen {addr} collides with the DNS TCP listener --listen {listen}"
                        ));
                    }
                    Some(addr)
                }
                Err(_) => {
                    problem(format!("--metrics-listen {text:?} is not IP:PORT"));
                    None
                }
            },
        };

        let udp_workers = match args.udp_workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()).min(UDP_WORKERS_MAX),
            Some(n) if (1..=UDP_WORKERS_MAX).contains(&n) => n,
            Some(n) => {
                problem(format!("--udp-workers {n} is outside 1-{UDP_WORKERS_MAX}"));
                1
            }
        };

        let push = match (&args.push_config, &origin) {
            (Some(path), Some(zone)) => crate::push::PushConfig::load(path, zone)
                .map_err(|ps| {
                    for p in ps {
                        problem(p);
                    }
                })
                .unwrap_or_default(),
            _ => crate::push::PushConfig::default(),
        };

        let mut observe = Vec::new();
        for text in &args.observe {
            match text.split_once('=') {
                Some((site, addr))
                    if !site.is_empty() && addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
                {
                    observe.push((site.to_string(), addr.to_string()));
                }
                _ => problem(format!("--observe {text:?} is not SITE=HOST:PORT")),
            }
        }
        let observer_domain = args.observer_domain.clone().unwrap_or_else(|| format!("dns-{}", args.server_id));
        if !OBSERVE_INTERVAL_MS.contains(&args.observe_interval_ms) {
            problem(format!(
                "--observe-interval-ms {} is outside {}-{} ms",
                args.observe_interval_ms,
                OBSERVE_INTERVAL_MS.start(),
                OBSERVE_INTERVAL_MS.end()
            ));
        }
        let observe_interval = std::time::Duration::from_millis(args.observe_interval_ms);

        match (origin, listen, federator, ns_name) {
            (Some(origin), Some(listen), Some(federator), Some(ns_name)) if problems.is_empty() => Ok(Self {
                observe,
                observer_domain,
                observe_interval,
                zone: ZoneConfig {
                    all_unhealthy: args.all_unhealthy,
                    other_ns,
                    ..ZoneConfig::new(origin, ns_name, ns_addresses)
                },
                udp_workers,
                push,
                listen,
                federator,
                federators: federators.unwrap_or_default(),
                tls: TlsFiles { ca: args.tls_ca.clone(), cert: args.tls_cert.clone(), key: args.tls_key.clone() },
                state_dir: args.state_dir.clone(),
                server_id: args.server_id.clone(),
                metrics_listen,
            }),
            _ => Err(ConfigError { problems }),
        }
    }

    /// Path of the last-known-good routing table.
    pub fn routing_file(&self) -> PathBuf {
        crate::table::routing_file(&self.state_dir)
    }
}

fn parse_federator(text: &str) -> Result<FederatorEndpoint, String> {
    let bad = |why: &str| format!("--federator {text:?} {why}; expected https://HOST:PORT");
    let uri = text.parse::<Uri>().map_err(|_| bad("is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("must use https (the routing stream is always mutual TLS)"));
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("has no host"))?;
    if uri.port_u16().is_none() {
        return Err(bad("has no port"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(bad("must not carry a path"));
    }
    let server_name = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok(FederatorEndpoint { uri, server_name })
}

fn parse_ns_name(text: &str, zone: &Name) -> Result<Name, String> {
    if let Some(absolute) = text.strip_suffix('.') {
        return parse_zone(absolute).map_err(|e| format!("{text:?} {e}"));
    }
    crate::names::parse_relative(text, zone).map_err(|e| format!("{text:?} {e}"))
}

/// `NAME=ADDRESS[,ADDRESS]` (or `NAME=` for a name outside the zone, which needs no glue).
fn parse_other_ns(text: &str, zone: &Name) -> Result<NameServer, String> {
    let (name, addresses) = text.split_once('=').ok_or("expected NAME=ADDRESS[,ADDRESS]")?;
    let name = parse_ns_name(name, zone)?.to_lowercase();
    let mut parsed: Vec<IpAddr> = Vec::new();
    for a in addresses.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let ip: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 or IPv6 address"))?;
        if !parsed.contains(&ip) {
            parsed.push(ip);
        }
    }
    if parsed.is_empty() && zone.zone_of(&name) {
        return Err(format!("{name} is inside the zone, so it needs an address (glue)"));
    }
    Ok(NameServer { name, addresses: parsed })
}

fn valid_server_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '@'))
}

/// Creates the state directory if needed; part of start-up, after validation.
pub(crate) fn ensure_state_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> Args {
        for f in ["ca.pem", "dns.pem", "dns-key.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        Args {
            zone: "Fed.Local".into(),
            listen: "127.0.0.1:5353".into(),
            federator: "https://127.0.0.1:7000".into(),
            tls_ca: dir.join("ca.pem"),
            tls_cert: dir.join("dns.pem"),
            tls_key: dir.join("dns-key.pem"),
            state_dir: dir.join("state"),
            server_id: "dns-1".into(),
            ns_name: "ns1".into(),
            ns_address: vec![],
            other_ns: vec![],
            metrics_listen: None,
            all_unhealthy: AllUnhealthy::FailOpen,
            udp_workers: None,
            push_config: None,
            observe: vec![],
            observer_domain: None,
            observe_interval_ms: 1000,
        }
    }

    #[test]
    fn valid_flags_are_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::from_args(&args(dir.path())).unwrap();
        assert_eq!(cfg.zone.origin.to_ascii(), "fed.local.");
        assert_eq!(cfg.zone.ns_name.to_ascii(), "ns1.fed.local.");
        assert_eq!(cfg.zone.ns_addresses, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(cfg.federator.server_name, "127.0.0.1");

        let mut a = args(dir.path());
        a.federator = "https://[::1]:7000".into();
        a.listen = "0.0.0.0:53".into();
        a.ns_address = vec!["192.0.2.1".into(), "2001:db8::1".into()];
        let cfg = Config::from_args(&a).unwrap();
        assert_eq!(cfg.federator.server_name, "::1");
        assert_eq!(cfg.zone.ns_addresses.len(), 2);

        a.ns_address.clear();
        assert!(Config::from_args(&a).unwrap().zone.ns_addresses.is_empty(), "a wildcard listen gives no glue");
    }

    #[test]
    fn every_problem_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.zone = "bad..zone".into();
        a.listen = "nope".into();
        a.federator = "http://127.0.0.1:7000".into();
        a.tls_key = dir.path().join("missing.pem");
        a.server_id = "bad id".into();
        a.ns_address = vec!["not-an-ip".into()];
        a.metrics_listen = Some("also-bad".into());
        let err = Config::from_args(&a).unwrap_err();
        assert_eq!(err.problems.len(), 7, "{err}");
        let text = err.to_string();
        for needle in
            ["--zone", "--listen", "--federator", "--tls-key", "--server-id", "--ns-address", "--metrics-listen"]
        {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn other_name_servers_are_parsed_and_each_mistake_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.other_ns = vec!["NS2=127.0.0.2,::2".into(), "ns.other.example.=".into(), "ns3.fed.local.=127.0.0.3".into()];
        let cfg = Config::from_args(&a).unwrap();
        let servers: Vec<(String, Vec<String>)> =
            cfg.zone.name_servers().map(|(n, a)| (n.to_ascii(), a.iter().map(ToString::to_string).collect())).collect();
        assert_eq!(
            servers,
            [
                ("ns1.fed.local.".to_string(), vec!["127.0.0.1".to_string()]),
                ("ns2.fed.local.".to_string(), vec!["127.0.0.2".to_string(), "::2".to_string()]),
                ("ns.other.example.".to_string(), vec![]),
                ("ns3.fed.local.".to_string(), vec!["127.0.0.3".to_string()]),
            ]
        );
        for (bad, needle) in [
            ("ns2", "expected NAME=ADDRESS"),
            ("ns2=", "needs an address (glue)"),
            ("ns2=not-an-ip", "\"not-an-ip\" is not an IPv4 or IPv6 address"),
            ("ns1=127.0.0.9", "names this server"),
            ("bad..name=127.0.0.2", "--other-ns \"bad..name=127.0.0.2\""),
        ] {
            let mut a = args(dir.path());
            a.other_ns = vec![bad.into()];
            let err = Config::from_args(&a).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
        let mut a = args(dir.path());
        a.other_ns = vec!["ns2=127.0.0.2".into(), "NS2.fed.local.=127.0.0.3".into()];
        assert!(Config::from_args(&a).unwrap_err().to_string().contains("a second time"));
    }

    #[test]
    fn federator_url_needs_host_port_and_no_path() {
        for bad in ["https://host", "https://:7000", "https://h:7000/x", "127.0.0.1:7000", ""] {
            assert!(parse_federator(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_federator("https://fed-1.example:7000").unwrap().server_name, "fed-1.example");
    }

    #[test]
    fn the_observe_interval_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        assert_eq!(Config::from_args(&a).unwrap().observe_interval, std::time::Duration::from_secs(1));
        for bad in [0, 49, 60_001] {
            a.observe_interval_ms = bad;
            let err = Config::from_args(&a).unwrap_err().to_string();
            assert!(err.contains(&format!("--observe-interval-ms {bad} is outside 50-60000 ms")), "{err}");
        }
        a.observe_interval_ms = 200;
        assert_eq!(Config::from_args(&a).unwrap().observe_interval, std::time::Duration::from_millis(200));
    }

    #[test]
    fn metrics_port_may_not_shadow_dns_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.metrics_listen = Some("127.0.0.1:5353".into());
        assert!(Config::from_args(&a).unwrap_err().to_string().contains("collides"));
        a.metrics_listen = Some("127.0.0.1:9153".into());
        assert!(Config::from_args(&a).is_ok());
    }
}
