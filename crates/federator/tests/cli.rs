//! The federator binary validates its configuration as a whole before binding anything.

use std::process::Command;

const VALID: &str = r#"
node_id = 1
listen = "127.0.0.1:0"
data_dir = "/nonexistent/never-created"
zone = "fed.local."
[tls]
ca = "ca.pem"
cert = "f.pem"
key = "f-key.pem"
[[sites]]
name = "site-1"
ingress = ["127.0.1.1"]
"#;

fn check(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("federator.toml");
    std::fs::write(&path, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_federator")).arg("--config").arg(&path).arg("--check").output().unwrap()
}

#[test]
fn check_accepts_a_valid_configuration_without_starting() {
    let out = check(VALID);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
    assert!(!std::path::Path::new("/nonexistent/never-created").exists(), "--check must not create anything");
}

#[test]
fn check_reports_every_problem_with_exit_status_2() {
    let bad = VALID
        .replace("node_id = 1", "node_id = 0")
        .replace("\"fed.local.\"", "\"fed.local\"")
        .replace("name = \"site-1\"", "name = \"Site One\"");
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in ["3 problem(s)", "node_id must be non-zero", "zone \"fed.local\"", "site name \"Site One\""] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let out = check(&VALID.replace("zone =", "zoen = 1\nzone ="));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("zoen"), "unknown fields are named");
}
