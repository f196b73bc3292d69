//! A real HAProxy for tests, with its admin socket and one HTTP frontend.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Haproxy {
    child: Child,
    pub socket: std::path::PathBuf,
    pub frontend: SocketAddr,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts HAProxy whose frontend sends everything to `default_backend`, with `backends`
/// declared empty (servers arrive through the runtime API).
pub fn start_haproxy(dir: &Path, default_backend: &str, backends: &[&str]) -> Haproxy {
    let socket = dir.join("admin.sock");
    let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket {} mode 600 level admin\n    stats timeout 10s\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
             frontend fe\n    bind {frontend}\n    default_backend {default_backend}\n{}",
            socket.display(),
            backends.iter().map(|b| format!("backend {b}\n    balance roundrobin\n")).collect::<String>()
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

pub fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(bin)).find(|p| p.is_file())
}

/// `GET /` through `frontend`; the body of a 200 answer.
pub fn get(frontend: SocketAddr) -> Option<String> {
    get_path(frontend, "/")
}

/// `GET path` through `frontend`; the body of a 200 answer.
pub fn get_path(frontend: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&frontend, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?;
    (text.starts_with("HTTP/1.") && status == "200").then(|| text.rsplit("\r\n\r\n").next().unwrap_or("").to_string())
}
