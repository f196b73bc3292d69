//! The HTTP probe failure-detection observers (federator replicas, fed-dns) send through a
//! site's ingress for one group's name: the answer's status code, or why there is none. How a
//! failure counts (refused: the site's answer; timeout: the observer's own trouble) is decided
//! by the caller.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The connection failed: its kind and description.
    Connect(std::io::ErrorKind, String),
    /// No (complete) answer in time, or an I/O error after connecting.
    NoAnswer(String),
}

/// `GET /` for `host` at `addr` (HTTP/1.0, closed after the status line is read).
pub async fn http_status(addr: &str, host: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| ProbeError::Connect(e.kind(), format!("{addr}: {e}")))?;
        let request = format!("GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: switchyard-observer\r\n\r\n");
        s.write_all(request.as_bytes()).await.map_err(|e| ProbeError::NoAnswer(format!("{addr}: {e}")))?;
        let mut head = vec![0u8; 64];
        let n = s.read(&mut head).await.map_err(|e| ProbeError::NoAnswer(format!("{addr}: {e}")))?;
        let line = String::from_utf8_lossy(&head[..n]).to_string();
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| ProbeError::NoAnswer(format!("{addr}: not an HTTP answer: {line:?}")))
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::NoAnswer(format!("{addr}: no answer within {} ms", timeout.as_millis()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_status_a_refusal_and_silence_are_told_apart() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).contains("Host: orders.fed.local"));
            s.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\n").await.unwrap();
            // Accepts the next connection and says nothing.
            let (_silent, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        assert_eq!(http_status(&addr, "orders.fed.local", Duration::from_secs(1)).await, Ok(503));
        let silent = http_status(&addr, "orders.fed.local", Duration::from_millis(200)).await;
        assert!(matches!(silent, Err(ProbeError::NoAnswer(_))), "{silent:?}");
        server.abort();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let refused = http_status(&closed, "orders.fed.local", Duration::from_secs(1)).await;
        assert!(matches!(refused, Err(ProbeError::Connect(std::io::ErrorKind::ConnectionRefused, _))), "{refused:?}");
    }
}
