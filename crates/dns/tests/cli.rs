//! The `fed-dns` binary itself: bad flags are all reported with exit status 2, and a valid
//! invocation serves DNS until SIGTERM, then exits cleanly.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use hickory_proto::rr::RecordType;

const BIN: &str = env!("CARGO_BIN_EXE_fed-dns");

#[tokio::test]
async fn bad_flags_are_all_reported_with_status_2() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = tokio::process::Command::new(BIN)
        .args(["--zone", "bad..zone", "--listen", "localhost:53", "--federator", "http://127.0.0.1:1"])
        .args([
            "--tls-ca",
            "/nonexistent/ca.pem",
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "/nonexistent/k.pem",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--ns-address", "not-an-ip"])
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for flag in ["--zone", "--listen", "--federator", "--tls-ca", "--tls-cert", "--tls-key", "--ns-address"] {
        assert!(stderr.contains(flag), "{flag} missing from:\n{stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn serves_until_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path(), "switchyard test ca")?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut argv = dns_args(&pki, "127.0.0.1:9".parse()?, &state_dir(dir.path()), false);
    let listen = argv.iter().position(|a| a == "--listen").expect("--listen present") + 1;
    argv[listen] = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(BIN)
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let addr = format!("127.0.0.1:{port}").parse()?;
    let soa = eventually("the apex SOA", || query_udp(addr, "fed.local.", RecordType::SOA), is_noerror_aa).await?;
    assert_eq!(soa_serial(&soa), Some(0));

    let pid = child.id().expect("child is running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status()?;
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert!(exit.success(), "fed-dns exited with {exit}");
    Ok(())
}
