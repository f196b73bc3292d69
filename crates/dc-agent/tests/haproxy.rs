//! The load-balancer seam against a real HAProxy (installed by scripts/test): the same
//! conformance battery the fake passes, and real traffic following the endpoints the cell
//! publishes (added, drained, removed) through HAProxy's frontend.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use switchyard_dc_agent::lb::{Endpoint, HaproxyRuntime, LoadBalancer, conformance, sync_backend};

mod support;
use support::haproxy::{get, start_haproxy};

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
    let h = start_haproxy(dir.path(), "be_web", &["be_web", "be_conformance"]);
    let lb = HaproxyRuntime::new(&h.socket);
    conformance::run(&lb, "be_conformance", "127.0.0.1".parse().unwrap(), 20_000).await;
}

#[tokio::test]
async fn traffic_follows_published_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let h = start_haproxy(dir.path(), "be_web", &["be_web", "be_conformance"]);
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
