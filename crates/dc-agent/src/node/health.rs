//! A minimal HTTP/1.1 client for task health checks: one GET, `Connection: close`, the status
//! line decides. Nothing else of the response is read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest status line accepted; a peer that sends more is not an HTTP server we understand.
const MAX_STATUS_LINE_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("not an HTTP response: {0:?}")]
    Malformed(String),
    #[error("HTTP status {0}")]
    Status(u16),
}

/// Tasks bound to the unspecified address are reached on loopback.
fn target(address: IpAddr, port: u16) -> SocketAddr {
    let ip = match address {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    };
    SocketAddr::new(ip, port)
}

/// Parses `HTTP/1.x NNN reason` and returns NNN.
pub fn parse_status_line(line: &str) -> Result<u16, CheckError> {
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(CheckError::Malformed(line.chars().take(80).collect()));
    }
    parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| CheckError::Malformed(line.chars().take(80).collect()))
}

/// GETs `http://address:port{path}`; `Ok` for a 2xx answer within `timeout`.
pub async fn http_check(address: IpAddr, port: u16, path: &str, timeout: Duration) -> Result<(), CheckError> {
    let timeout_ms = timeout.as_millis() as u64;
    tokio::time::timeout(timeout, check(target(address, port), path))
        .await
        .unwrap_or(Err(CheckError::Timeout(timeout_ms)))
}

async fn check(addr: SocketAddr, path: &str) -> Result<(), CheckError> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| CheckError::Connect(e.to_string()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: switchyard-node\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| CheckError::Io(e.to_string()))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            break i;
        }
        if buf.len() > MAX_STATUS_LINE_BYTES {
            return Err(CheckError::Malformed("status line too long".into()));
        }
        let n = stream.read(&mut chunk).await.map_err(|e| CheckError::Io(e.to_string()))?;
        if n == 0 {
            return Err(CheckError::Malformed(String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let line = String::from_utf8_lossy(&buf[..line_end]);
    match parse_status_line(line.trim_end())? {
        200..=299 => Ok(()),
        code => Err(CheckError::Status(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 204 No Content"), Ok(204));
        assert_eq!(parse_status_line("HTTP/1.0 503 Busy"), Ok(503));
        assert!(parse_status_line("SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line("HTTP/1.1 abc").is_err());
    }

    async fn serve_once(answer: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).await.unwrap();
            assert!(req[..n].starts_with(b"GET /health HTTP/1.1\r\n"));
            s.write_all(answer).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn two_hundreds_are_healthy_and_others_are_not() {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let t = Duration::from_secs(2);
        let port = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        assert_eq!(http_check(local, port, "/health", t).await, Ok(()));
        let port = serve_once(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        assert_eq!(http_check(local, port, "/health", t).await, Err(CheckError::Status(500)));
    }

    #[tokio::test]
    async fn silent_server_times_out_and_closed_port_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let local = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let r = http_check(local, port, "/health", Duration::from_millis(200)).await;
        assert_eq!(r, Err(CheckError::Timeout(200)));
        drop(listener);
        assert!(matches!(
            http_check(local, port, "/health", Duration::from_secs(1)).await,
            Err(CheckError::Connect(_))
        ));
    }
}

/// Connects to `address:port`; `Ok` once the connection is accepted within `timeout`.
pub async fn tcp_check(address: IpAddr, port: u16, timeout: Duration) -> Result<(), CheckError> {
    let timeout_ms = timeout.as_millis() as u64;
    match tokio::time::timeout(timeout, TcpStream::connect(target(address, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(CheckError::Connect(e.to_string())),
        Err(_) => Err(CheckError::Timeout(timeout_ms)),
    }
}

/// Runs `program args` in `dir` with `env`; `Ok` when it exits with status 0 within `timeout`
/// (it is killed otherwise). The error carries the exit status and the end of its stderr.
pub async fn command_check(
    program: &std::path::Path,
    args: &[String],
    env: &std::collections::HashMap<String, String>,
    dir: &std::path::Path,
    timeout: Duration,
) -> Result<(), String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .envs(env)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("no result within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(format!("{} failed: {e}", program.display())),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr.trim().chars().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect();
            Err(format!(
                "{} {}{}",
                program.display(),
                out.status,
                if tail.is_empty() { String::new() } else { format!(": {tail}") }
            ))
        }
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[tokio::test]
    async fn tcp_checks_pass_on_a_listening_port_and_fail_on_a_closed_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(tcp_check(lo, open, Duration::from_secs(1)).await, Ok(()));
        assert!(matches!(tcp_check(lo, closed, Duration::from_secs(1)).await, Err(CheckError::Connect(_))));
    }

    #[tokio::test]
    async fn command_checks_pass_on_status_zero_and_explain_failures() {
        let dir = tempfile::tempdir().unwrap();
        let sh = std::path::Path::new("/bin/sh");
        let env = std::collections::HashMap::from([("PORT".to_string(), "31000".to_string())]);
        let run = |script: &str, ms| {
            let args = vec!["-c".to_string(), script.to_string()];
            let (env, dir) = (env.clone(), dir.path().to_path_buf());
            async move { command_check(sh, &args, &env, &dir, Duration::from_millis(ms)).await }
        };
        assert_eq!(run("test \"$PORT\" = 31000", 2000).await, Ok(()));
        let err = run("echo not ready >&2; exit 3", 2000).await.unwrap_err();
        assert!(err.contains("exit status: 3") && err.contains("not ready"), "{err}");
        assert!(run("sleep 5", 100).await.unwrap_err().contains("no result within 100 ms"));
    }
}
