//! Replication lag of stateful groups: every second the cell asks one ready instance of each
//! stateful group's data app here (HTTP GET on the group's lag path, a plain number of
//! milliseconds) and reports the answer, so the federator can hold a failover to a replica
//! beyond the group's RPO budget. No answer (refused, timeout, not a number) is reported as
//! unknown, never as zero.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Shared;
use crate::shutdown::Shutdown;

const EVERY: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(800);
const MAX_BYTES: u64 = 4096;

pub(crate) async fn run(shared: Arc<Shared>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = shutdown.wait() => return,
        }
        let probes = shared.state().replication_lag_probes();
        let answers = futures::future::join_all(probes.into_iter().map(|(group, addr, port, path)| async move {
            let lag = ask(addr, port, &path).await;
            (group, lag)
        }))
        .await;
        let mut state = shared.state();
        for (group, lag) in answers {
            if let Some(lag) = lag {
                metrics::gauge!("cell_replication_lag_ms", "group" => group.clone()).set(lag as f64);
            }
            state.set_replication_lag(&group, lag);
        }
    }
}

/// GET `path` on the instance; its body, a number of milliseconds.
async fn ask(addr: IpAddr, port: u16, path: &str) -> Option<u64> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect((addr, port)).await.ok()?;
        let host = if addr.is_ipv6() { format!("[{addr}]") } else { addr.to_string() };
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.ok()?;
        let mut body = Vec::new();
        (&mut s).take(MAX_BYTES).read_to_end(&mut body).await.ok()?;
        parse_answer(&String::from_utf8(body).ok()?)
    };
    tokio::time::timeout(TIMEOUT, fetch).await.ok().flatten()
}

/// A `200` response whose body is a number of milliseconds.
fn parse_answer(response: &str) -> Option<u64> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.split_whitespace().nth(1).filter(|code| *code == "200")?;
    body.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_number_in_a_200_is_a_lag() {
        assert_eq!(parse_answer("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n1500\n"), Some(1500));
        assert_eq!(parse_answer("HTTP/1.0 404 Not Found\r\n\r\n12"), None);
        assert_eq!(parse_answer("HTTP/1.0 200 OK\r\n\r\nlagging"), None);
        assert_eq!(parse_answer("HTTP/1.0 200 OK\r\n\r\n-3"), None);
        assert_eq!(parse_answer("garbage"), None);
    }

    #[tokio::test]
    async fn a_replica_is_asked_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /replication/lag HTTP/1.0"));
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\n2500").await.unwrap();
        });
        assert_eq!(ask("127.0.0.1".parse().unwrap(), port, "/replication/lag").await, Some(2500));
        server.await.unwrap();
        // Nothing listening: unknown.
        assert_eq!(ask("127.0.0.1".parse().unwrap(), port, "/replication/lag").await, None);
    }
}
