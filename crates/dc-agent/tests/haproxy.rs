//! The load-balancer seam against a real HAProxy (installed by scripts/test): the same
//! conformance battery the fake passes, and real traffic following the endpoints the cell
//! publishes (added, drained, removed) through HAProxy's frontend.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_dc_agent::lb::{Endpoint, HaproxyRuntime, LoadBalancer, conformance, sync_backend};

struct Haproxy {
    child: Child,
    socket: std::path::PathBuf,
    frontend: SocketAddr,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_haproxy(dir: &Path) -> Haproxy {
    let socket = dir.join("admin.sock");
    let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket {} mode 600 level admin\n    stats timeout 10s\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
             frontend fe\n    bind {frontend}\n    default_backend be_web\n\
             backend be_web\n    balance roundrobin\n\
             backend be_conformance\n    balance roundrobin\n",
            socket.display()
        ),
    )
    .unwrap();
    let haproxy = which("haproxy").expect("haproxy must be installed (scripts/test installs it)");
    let child = Command::new(haproxy)
        .args(["-f", cfg.to_str().unwrap(), "-db"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
        .spawn()
        .expect("haproxy starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "haproxy admin socket did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
    Haproxy { child, socket, frontend }
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(bin)).find(|p| p.is_file())
}

/// A tiny HTTP server answering its `name` to every request, until the test ends.
fn backend_server(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
            });
        }
    });
    port
}

fn get(frontend: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&frontend, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200").then(|| text.rsplit("\r\n\r\n").next().unwrap_or("").to_string())
}

fn answers(frontend: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        *seen.entry(get(frontend).unwrap_or_else(|| "FAILED".into())).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn real_haproxy_passes_the_load_balancer_battery() {
    let dir = tempfile::tempdir().unwrap();
    let h = start_haproxy(dir.path());
    let lb = HaproxyRuntime::new(&h.socket);
    conformance::run(&lb, "be_conformance", "127.0.0.1".parse().unwrap(), 20_000).await;
}

#[tokio::test]
async fn traffic_follows_published_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let h = start_haproxy(dir.path());
    let lb = HaproxyRuntime::new(&h.socket);
    let (pa, pb) = (backend_server("A"), backend_server("B"));
    let localhost = "127.0.0.1".parse().unwrap();
    let ep = |name: &str, port, ready| Endpoint { name: name.into(), addr: localhost, port, weight: 10, ready };

    // Both instances published and ready: traffic reaches both, nothing fails.
    let r = sync_backend(&lb, "be_web", &[ep("web.1", pa, true), ep("web.2", pb, true)]).await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    let seen = answers(h.frontend, 20);
    assert_eq!(seen.get("A"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("B"), Some(&10), "{seen:?}");

    // Draining A (before its task is stopped) moves new requests to B only.
    let r = sync_backend(&lb, "be_web", &[ep("web.1", pa, false), ep("web.2", pb, true)]).await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(answers(h.frontend, 10), [("B".to_string(), 10)].into());

    // A removed, a new instance C published: traffic follows with no failed request.
    let pc = backend_server("C");
    let r = sync_backend(&lb, "be_web", &[ep("web.2", pb, true), ep("web.3", pc, true)]).await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    let seen = answers(h.frontend, 20);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["B", "C"], "{seen:?}");
    let names: Vec<String> = lb.servers("be_web").await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["web.2", "web.3"]);
}
