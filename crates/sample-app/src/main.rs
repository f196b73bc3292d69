//! A tiny HTTP/1.1 service used as the workload of local federations and tests. It binds
//! `HOST:PORT` (defaults 127.0.0.1:8080), answers `GET /health` with `ok`, `GET /metrics` with
//! Prometheus text (requests in flight, the concurrency signal autoscaling reads, and requests
//! served), `GET /work?ms=N` after N milliseconds of simulated work, `GET /replication/lag` with
//! the number in the file `SAMPLE_REPLICATION_LAG_FILE` names (a stand-in replica's lag in ms,
//! which tests change at will; 404 without it). `/health` answers 503 while the file named by
//! `SAMPLE_UNHEALTHY_FILE` exists (`{site}` in the name is this instance's site), so tests can
//! make one group sick at one site. Any other GET gets a JSON description of
//! where it runs, taken from the `SWITCHYARD_*` environment the node sets.
//! Standard library only; one thread per connection; SIGTERM ends it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Connections served at once; beyond that new ones get 503 instead of a thread.
const MAX_CONNECTIONS: usize = 256;
/// Longest request head accepted.
const MAX_HEAD_BYTES: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest simulated work one request may ask for.
const MAX_WORK_MS: u64 = 30_000;

/// Application requests (not /health or /metrics) being served now, and served in all.
#[derive(Default)]
struct Stats {
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// Milliseconds spent serving them (for the mean response time).
    served_ms: AtomicU64,
}

/// A consistent reading of [`Stats`] for one reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StatsView {
    in_flight: usize,
    served: u64,
    served_ms: u64,
}

/// What to do for one request: the reply, how long to work before sending it, and whether it is
/// application traffic (counted in the concurrency signal).
#[derive(Debug, PartialEq, Eq)]
struct Handled {
    reply: Reply,
    work: Duration,
    counted: bool,
}

/// Where this instance runs, as the node described it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Placement {
    site: String,
    instance: String,
    app: String,
    group: String,
    node: String,
}

impl Placement {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self {
            site: var("SWITCHYARD_SITE"),
            instance: var("SWITCHYARD_TASK_ID"),
            app: var("SWITCHYARD_APP"),
            group: var("SWITCHYARD_GROUP"),
            node: var("SWITCHYARD_NODE"),
        }
    }

    fn to_json(&self) -> String {
        format!(
            "{{\"site\":\"{}\",\"instance\":\"{}\",\"app\":\"{}\",\"group\":\"{}\",\"node\":\"{}\"}}",
            json_escape(&self.site),
            json_escape(&self.instance),
            json_escape(&self.app),
            json_escape(&self.group),
            json_escape(&self.node)
        )
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn new(status: u16, reason: &'static str, content_type: &'static str, body: String) -> Self {
        Self { status, reason, content_type, body }
    }

    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self::new(status, reason, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Decides the answer to one request line (`GET /path HTTP/1.1`). Pure, so it is tested alone.
fn handle_request(request_line: &str, placement: &Placement, stats: StatsView) -> Handled {
    let plain = |reply| Handled { reply, work: Duration::ZERO, counted: false };
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return plain(Reply::text(400, "Bad Request", "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return plain(Reply::text(505, "HTTP Version Not Supported", "only HTTP/1.x is spoken here"));
    }
    if method != "GET" && method != "HEAD" {
        return plain(Reply::text(405, "Method Not Allowed", "only GET and HEAD are supported"));
    }
    let (path, query) = target.split('#').next().unwrap_or("/").split_once('?').unwrap_or((target, ""));
    match path {
        "/health" => plain(Reply::text(200, "OK", "ok")),
        "/metrics" => plain(Reply::new(200, "OK", "text/plain; version=0.0.4", metrics_text(placement, stats))),
        "/work" => {
            let ms = query.split('&').find_map(|kv| kv.strip_prefix("ms=")).map(str::parse::<u64>);
            match ms {
                Some(Ok(ms)) if ms <= MAX_WORK_MS => Handled {
                    reply: Reply::new(200, "OK", "application/json", format!("{}\n", placement.to_json())),
                    work: Duration::from_millis(ms),
                    counted: true,
                },
                _ => plain(Reply::text(400, "Bad Request", &format!("/work needs ms=0..{MAX_WORK_MS}"))),
            }
        }
        _ => Handled {
            reply: Reply::new(200, "OK", "application/json", format!("{}\n", placement.to_json())),
            work: Duration::ZERO,
            counted: true,
        },
    }
}

fn metrics_text(p: &Placement, stats: StatsView) -> String {
    let labels = format!(
        "app=\"{}\",group=\"{}\",instance=\"{}\"",
        json_escape(&p.app),
        json_escape(&p.group),
        json_escape(&p.instance)
    );
    format!(
        "# HELP switchyard_sample_in_flight_requests Application requests being served now (concurrency).\n\
         # TYPE switchyard_sample_in_flight_requests gauge\n\
         switchyard_sample_in_flight_requests{{{labels}}} {}\n\
         # HELP switchyard_sample_requests_total Application requests served.\n\
         # TYPE switchyard_sample_requests_total counter\n\
         switchyard_sample_requests_total{{{labels}}} {}\n\
         # HELP switchyard_sample_request_ms_total Milliseconds spent serving application requests.\n\
         # TYPE switchyard_sample_request_ms_total counter\n\
         switchyard_sample_request_ms_total{{{labels}}} {}\n",
        stats.in_flight, stats.served, stats.served_ms
    )
}

/// The answer to `/replication/lag` given what the lag file held (None: no file configured).
fn lag_reply(file: Option<Result<String, String>>) -> Reply {
    match file {
        None => Reply::text(404, "Not Found", "no replica here (SAMPLE_REPLICATION_LAG_FILE is not set)"),
        Some(Err(e)) => Reply::text(503, "Service Unavailable", &format!("lag unknown: {e}")),
        Some(Ok(text)) => match text.trim().parse::<u64>() {
            Ok(ms) => Reply::text(200, "OK", &ms.to_string()),
            Err(_) => {
                Reply::text(503, "Service Unavailable", &format!("lag unknown: {:?} is not a number", text.trim()))
            }
        },
    }
}

fn serve(stream: TcpStream, placement: &Placement, stats: &Stats) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // The limit bounds memory even for a request line without a newline.
    let mut reader = BufReader::new(stream.try_clone()?.take(MAX_HEAD_BYTES as u64 + 1));
    let mut request_line = String::new();
    let mut head_bytes = reader.read_line(&mut request_line)?;
    // The rest of the head is read and ignored, so the client sees a clean close.
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        head_bytes += n;
        if n == 0 || line == "\r\n" || line == "\n" || head_bytes > MAX_HEAD_BYTES {
            break;
        }
    }
    if head_bytes > MAX_HEAD_BYTES {
        let reply = Reply::text(431, "Request Header Fields Too Large", "request head too large");
        let mut stream = stream;
        stream.write_all(&reply.to_bytes(false))?;
        return stream.flush();
    }
    let view = StatsView {
        in_flight: stats.in_flight.load(Ordering::Acquire),
        served: stats.served.load(Ordering::Acquire),
        served_ms: stats.served_ms.load(Ordering::Acquire),
    };
    let lag_file = std::env::var("SAMPLE_REPLICATION_LAG_FILE").ok();
    let sick = std::env::var("SAMPLE_UNHEALTHY_FILE")
        .ok()
        .is_some_and(|f| std::path::Path::new(&f.replace("{site}", &placement.site)).exists());
    let handled = match request_line.split_whitespace().nth(1) {
        Some("/health") if sick => Handled {
            reply: Reply::text(503, "Service Unavailable", "sick (SAMPLE_UNHEALTHY_FILE exists)"),
            work: Duration::ZERO,
            counted: false,
        },
        Some("/replication/lag") => Handled {
            reply: lag_reply(lag_file.as_deref().map(|f| std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}")))),
            work: Duration::ZERO,
            counted: false,
        },
        _ => handle_request(request_line.trim_end(), placement, view),
    };
    let started = std::time::Instant::now();
    if handled.counted {
        stats.in_flight.fetch_add(1, Ordering::AcqRel);
    }
    std::thread::sleep(handled.work);
    let head_only = request_line.starts_with("HEAD ");
    let mut stream = stream;
    let result = stream.write_all(&handled.reply.to_bytes(head_only)).and_then(|()| stream.flush());
    if handled.counted {
        stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        stats.served.fetch_add(1, Ordering::AcqRel);
        stats.served_ms.fetch_add(started.elapsed().as_millis() as u64, Ordering::AcqRel);
    }
    result
}

fn main() -> std::process::ExitCode {
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_string());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("sample-app: PORT {port:?} is not a port number");
        return std::process::ExitCode::FAILURE;
    };
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sample-app: cannot listen on {addr}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let placement = Arc::new(Placement::from_env());
    let bound = listener.local_addr().map_or(addr, |a| a.to_string());
    println!("sample-app listening on http://{bound} (instance {:?})", placement.instance);
    let active = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(Stats::default());
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sample-app: accept failed: {e}");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.write_all(&Reply::text(503, "Service Unavailable", "too many connections").to_bytes(false));
            continue;
        }
        let (placement, active, stats) = (placement.clone(), active.clone(), stats.clone());
        let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || {
            if let Err(e) = serve(stream, &placement, &stats) {
                eprintln!("sample-app: connection failed: {e}");
            }
            active.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            eprintln!("sample-app: cannot start a connection thread: {e}");
        }
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(line: &str, p: &Placement) -> Reply {
        handle_request(line, p, StatsView::default()).reply
    }

    fn here() -> Placement {
        Placement {
            site: "site-a".into(),
            instance: "crm-web.web.3".into(),
            app: "web".into(),
            group: "crm-web".into(),
            node: "n\"1".into(),
        }
    }

    #[test]
    fn replication_lag_comes_from_the_lag_file_or_is_unknown() {
        assert_eq!(lag_reply(None).status, 404);
        let ok = lag_reply(Some(Ok("1500\n".into())));
        assert_eq!((ok.status, ok.body.as_str()), (200, "1500\n"));
        assert_eq!(lag_reply(Some(Ok("soon".into()))).status, 503);
        assert_eq!(lag_reply(Some(Err("gone".into()))).status, 503);
    }

    #[test]
    fn health_answers_ok() {
        let r = answer("GET /health HTTP/1.1", &here());
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
        assert_eq!(answer("GET /health?probe=1 HTTP/1.0", &here()).status, 200);
    }

    #[test]
    fn other_paths_describe_the_instance_as_json() {
        let r = answer("GET /anything HTTP/1.1", &here());
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "application/json");
        assert_eq!(
            r.body,
            "{\"site\":\"site-a\",\"instance\":\"crm-web.web.3\",\"app\":\"web\",\"group\":\"crm-web\",\"node\":\"n\\\"1\"}\n"
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(answer("", &here()).status, 400);
        assert_eq!(answer("GET /", &here()).status, 400);
        assert_eq!(answer("POST / HTTP/1.1", &here()).status, 405);
        assert_eq!(answer("GET / SPDY/3", &here()).status, 505);
    }

    #[test]
    fn replies_carry_length_and_close() {
        let bytes = answer("GET /health HTTP/1.1", &here()).to_bytes(false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nok\n"));
        let head = answer("HEAD /health HTTP/1.1", &here()).to_bytes(true);
        assert!(String::from_utf8(head).unwrap().ends_with("\r\n\r\n"));
    }

    #[test]
    fn serves_a_real_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            serve(s, &here(), &Stats::default()).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        server.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK") && out.ends_with("ok\n"), "{out}");
    }

    #[test]
    fn metrics_expose_concurrency_in_prometheus_text() {
        let view = StatsView { in_flight: 3, served: 41, served_ms: 900 };
        let h = handle_request("GET /metrics HTTP/1.1", &here(), view);
        assert!(!h.counted, "scrapes are not application traffic");
        let body = String::from_utf8(h.reply.to_bytes(false)).unwrap();
        assert!(body.contains("# TYPE switchyard_sample_in_flight_requests gauge"), "{body}");
        assert!(
            body.contains(
                r#"switchyard_sample_in_flight_requests{app="web",group="crm-web",instance="crm-web.web.3"} 3"#
            ),
            "{body}"
        );
        assert!(body.contains("switchyard_sample_requests_total{") && body.contains("} 41\n"), "{body}");
        assert!(body.contains("switchyard_sample_request_ms_total{") && body.trim_end().ends_with(" 900"), "{body}");
    }

    #[test]
    fn work_simulates_slow_requests_within_bounds() {
        let h = handle_request("GET /work?ms=250 HTTP/1.1", &here(), StatsView::default());
        assert_eq!((h.reply.status, h.work, h.counted), (200, Duration::from_millis(250), true));
        let h = handle_request("GET /work?x=1&ms=0 HTTP/1.1", &here(), StatsView::default());
        assert_eq!((h.reply.status, h.work), (200, Duration::ZERO));
        for bad in ["GET /work HTTP/1.1", "GET /work?ms=abc HTTP/1.1", "GET /work?ms=30001 HTTP/1.1"] {
            let h = handle_request(bad, &here(), StatsView::default());
            assert_eq!((h.reply.status, h.work), (400, Duration::ZERO), "{bad}");
        }
        assert!(!handle_request("GET /health HTTP/1.1", &here(), StatsView::default()).counted);
        assert!(handle_request("GET / HTTP/1.1", &here(), StatsView::default()).counted);
    }

    #[test]
    fn in_flight_counts_requests_being_worked_on() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let server_stats = stats.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(3) {
                let stats = server_stats.clone();
                std::thread::spawn(move || serve(conn.unwrap(), &here(), &stats));
            }
        });
        let get = move |path: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let slow = std::thread::spawn(move || get("/work?ms=400"));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stats.in_flight.load(Ordering::Acquire) == 0 {
            assert!(std::time::Instant::now() < deadline, "the slow request never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let metrics = get("/metrics");
        assert!(metrics.contains("switchyard_sample_in_flight_requests{") && metrics.contains("} 1\n"), "{metrics}");
        assert!(slow.join().unwrap().starts_with("HTTP/1.1 200"));
        assert_eq!(stats.in_flight.load(Ordering::Acquire), 0);
        assert_eq!(stats.served.load(Ordering::Acquire), 1);
    }
}
