//! fed-dns pushing routing tables to real enterprise systems started by the test: BIND
//! (`named`) and Knot (`knotd`) through RFC 2136 updates signed with TSIG hmac-sha256, and
//! HAProxy through its runtime API. `scripts/test` installs all three.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use common::*;
use switchyard_dns::{Args, Config};
use switchyard_proto::routing::v1::RoutingTable;

const SECRET: &str = "c3dpdGNoeWFyZC10ZXN0LWtleS0wMTIzNDU2Nzg5YWJjZGVm";
const WRONG: &str = "d3JvbmctdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZmdoaWprbA==";
const WAIT: Duration = Duration::from_secs(20);

/// A child process killed when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ZONE_FILE: &str = "$TTL 30\n@ SOA ns1 hostmaster 1 60 30 86400 30\n@ NS ns1\nns1 A 127.0.0.1\n";

fn start_named(dir: &Path, port: u16) -> Daemon {
    let d = dir.join("named");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("fed.local.zone"), ZONE_FILE).unwrap();
    let conf = format!(
        "options {{ directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
         pid-file \"{d}/named.pid\"; recursion no; dnssec-validation no; }};\n\
         controls {{ }};\n\
         key \"switchyard\" {{ algorithm hmac-sha256; secret \"{SECRET}\"; }};\n\
         zone \"fed.local.\" {{ type primary; file \"{d}/fed.local.zone\";\n\
           update-policy {{ deny switchyard name forbidden.fed.local.; grant switchyard zonesub ANY; }}; }};\n",
        d = d.display()
    );
    std::fs::write(d.join("named.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/named")
        .args(["-g", "-c"])
        .arg(d.join("named.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("named.log")).unwrap())
        .spawn()
        .expect("start named (apt-get install -y bind9)");
    Daemon(child)
}

fn start_knot(dir: &Path, port: u16) -> Daemon {
    let d = dir.join("knot");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("fed.local.zone"), ZONE_FILE).unwrap();
    let conf = format!(
        "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n\
         key:\n  - id: switchyard\n    algorithm: hmac-sha256\n    secret: {SECRET}\n\
         acl:\n  - id: update\n    key: switchyard\n    action: update\n\
         database:\n    storage: \"{d}\"\n\
         zone:\n  - domain: fed.local.\n    file: \"{d}/fed.local.zone\"\n    storage: \"{d}\"\n    acl: update\n\
         log:\n  - target: stderr\n    any: info\n",
        d = d.display()
    );
    std::fs::write(d.join("knot.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/knotd")
        .arg("-c")
        .arg(d.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("knot.log")).unwrap())
        .spawn()
        .expect("start knotd (apt-get install -y knot)");
    Daemon(child)
}

/// HAProxy with its admin socket on `runtime` and the backends of `generated`.
fn start_haproxy(dir: &Path, runtime: u16, generated: &Path) -> Daemon {
    let main = dir.join("haproxy.cfg");
    std::fs::write(
        &main,
        format!(
            "global\n    stats socket ipv4@127.0.0.1:{runtime} level admin\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&main)
        .arg("-f")
        .arg(generated)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
        .spawn()
        .expect("start haproxy (apt-get install -y haproxy)");
    Daemon(child)
}

fn dig_short(server: SocketAddr, name: &str, qtype: &str) -> Vec<String> {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+short", "+time=1", "+tries=1", name, qtype])
        .output()
        .expect("dig");
    // Without dig's comment lines (a timed-out try is reported on stdout).
    let mut lines: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with(';')).map(str::to_string).collect();
    lines.sort();
    lines
}

fn haproxy_cmd(runtime: u16, line: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", runtime)) else { return String::new() };
    let _ = s.write_all(format!("{line}\n").as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.trim().to_string()
}

async fn wait_until(what: &str, check: impl FnMut() -> bool) {
    wait_up_to(WAIT, what, check).await;
}

async fn wait_up_to(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn routing(version: u64, site_b: u32) -> RoutingTable {
    let entry = routed;
    let site = |name: &str, address: &str, weight: u32| site(name, &[address], weight);
    let mut web = entry("crm-web", vec![site("site-a", "127.0.1.1", 75), site("site-b", "127.0.2.1", site_b)]);
    web.txt = vec![format!("site=site-b weight={site_b}")];
    let mut www = entry("www", vec![]);
    www.cname = "crm-web".into();
    let billing = entry("billing", vec![site("site-a", "127.0.1.1", 100)]);
    // BIND's policy refuses this name: it must not hold the others back.
    let forbidden = entry("forbidden", vec![site("site-a", "127.0.1.9", 100)]);
    RoutingTable { version, epoch: version, zone: "fed.local.".into(), entries: vec![web, www, billing, forbidden] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_reach_bind_knot_and_haproxy_and_failures_stay_isolated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let (bind_port, knot_port, lb_port) = (free_port(), free_port(), free_port());
    let _named = start_named(root, bind_port);
    let _knot = start_knot(root, knot_port);
    let bind: SocketAddr = format!("127.0.0.1:{bind_port}").parse()?;
    let knot: SocketAddr = format!("127.0.0.1:{knot_port}").parse()?;
    wait_until("named and knotd to serve", || {
        !dig_short(bind, "ns1.fed.local.", "A").is_empty() && !dig_short(knot, "ns1.fed.local.", "A").is_empty()
    })
    .await;

    // The operator's HAProxy starts from the generated file (here: the first version of it).
    let generated = root.join("switchyard-backends.cfg");
    std::fs::write(
        &generated,
        "backend crm-web\n    server site-a 127.0.1.1:8080 weight 1\n    server site-b 127.0.2.1:8080 weight 1\n\
         backend billing\n    server site-a 127.0.1.1:8080 weight 1\n\
         backend forbidden\n    server site-a 127.0.1.9:8080 weight 1\n",
    )?;
    let _haproxy = start_haproxy(root, lb_port, &generated);
    wait_until("haproxy's runtime API", || haproxy_cmd(lb_port, "get weight crm-web/site-a").starts_with('1')).await;

    let push = root.join("push.toml");
    let dead_lb = free_port();
    std::fs::write(
        &push,
        format!(
            "[[rfc2136]]\nname = \"bind\"\nserver = \"{bind}\"\nkey_name = \"switchyard\"\nkey_secret = \"{SECRET}\"\nbatch = 10\n\
             [[rfc2136]]\nname = \"knot\"\nserver = \"{knot}\"\nkey_name = \"switchyard\"\nkey_secret = \"{SECRET}\"\n\
             [[rfc2136]]\nname = \"bind-wrong-key\"\nserver = \"{bind}\"\nkey_name = \"switchyard\"\nkey_secret = \"{WRONG}\"\n\
             [[rfc2136]]\nname = \"knot-wrong-key\"\nserver = \"{knot}\"\nkey_name = \"switchyard\"\nkey_secret = \"{WRONG}\"\n\
             [[haproxy]]\nname = \"lb-1\"\nruntime = \"127.0.0.1:{lb_port}\"\nconfig_file = \"{cfg}\"\nserver_port = 8080\n\
             [[haproxy]]\nname = \"lb-2\"\nruntime = \"127.0.0.1:{dead_lb}\"\nconfig_file = \"{cfg2}\"\nserver_port = 8080\n",
            cfg = generated.display(),
            cfg2 = root.join("lb-2.cfg").display(),
        ),
    )?;

    let pki = Pki::generate(root, "switchyard test ca")?;
    let federator = FakeFederator::start(&pki.federator, routing(1, 25)).await?;
    let mut argv = dns_args(&pki, federator.addr, &state_dir(root), false);
    argv.extend(["--push-config".to_string(), push.display().to_string()]);
    let dns = switchyard_dns::spawn(Config::from_args(&Args::try_parse_from(&argv)?)?).await?;

    // Version 1 everywhere that works.
    for server in [bind, knot] {
        wait_until("crm-web on both sites", || {
            dig_short(server, "crm-web.fed.local.", "A") == ["127.0.1.1", "127.0.2.1"]
        })
        .await;
        assert_eq!(dig_short(server, "www.fed.local.", "CNAME"), ["crm-web.fed.local."]);
        assert_eq!(dig_short(server, "crm-web.fed.local.", "TXT"), ["\"site=site-b weight=25\""]);
        assert_eq!(dig_short(server, "billing.fed.local.", "A"), ["127.0.1.1"]);
    }
    wait_until("lb-1 weights", || haproxy_cmd(lb_port, "get weight crm-web/site-b").starts_with("25 ")).await;
    assert!(haproxy_cmd(lb_port, "get weight crm-web/site-a").starts_with("75 "));

    // The refused name is isolated and reported; Knot has no such policy and took it.
    let bind_status = dns.push_status("bind").expect("bind status");
    assert_eq!(bind_status.failed.keys().collect::<Vec<_>>(), ["forbidden.fed.local."], "{bind_status:?}");
    assert!(bind_status.failed["forbidden.fed.local."].contains("REFUSED"), "{bind_status:?}");
    assert!(dig_short(bind, "forbidden.fed.local.", "A").is_empty());
    wait_until("knot status", || dns.push_status("knot").is_some_and(|s| s.applied_version == 1)).await;
    assert_eq!(dig_short(knot, "forbidden.fed.local.", "A"), ["127.0.1.9"]);

    // A wrong key changes nothing on either server and says why; an unreachable LB is reported,
    // not fatal.
    for target in ["bind-wrong-key", "knot-wrong-key"] {
        wait_until("wrong-key status", || {
            dns.push_status(target).is_some_and(|s| s.last_error.is_some() || !s.failed.is_empty())
        })
        .await;
        let wrong = dns.push_status(target).unwrap();
        assert_eq!(wrong.applied_version, 0, "{target}: {wrong:?}");
        let reported = format!("{wrong:?}");
        assert!(reported.contains("NOTAUTH") || reported.contains("signature"), "{target}: {reported}");
    }
    wait_until("lb-2 status", || dns.push_status("lb-2").is_some_and(|s| s.last_error.is_some())).await;
    let lb2 = dns.push_status("lb-2").unwrap();
    assert!(lb2.pending > 0 && lb2.applied_version == 0, "{lb2:?}");

    // lb-2 comes up (from the file the pusher keeps for it): the retries reach it and it
    // converges on the same weights, without anyone restarting the pusher.
    let lb2_file = root.join("lb-2.cfg");
    wait_until("lb-2's generated file", || lb2_file.exists()).await;
    let lb2_dir = root.join("lb-2");
    std::fs::create_dir_all(&lb2_dir)?;
    let _haproxy_2 = start_haproxy(&lb2_dir, dead_lb, &lb2_file);
    // The pusher's retry delay doubles up to 30 s: allow one full delay and then some.
    wait_up_to(Duration::from_secs(45), "lb-2 applied", || {
        dns.push_status("lb-2").is_some_and(|s| s.applied_version == 1 && s.pending == 0)
    })
    .await;
    assert!(haproxy_cmd(dead_lb, "get weight crm-web/site-b").starts_with("25 "));
    let status_path = state_dir(root).join("push-status.json");
    wait_until("lb-1 in push-status.json", || {
        std::fs::read(&status_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["lb-1"]["applied_version"] == 1 && v["bind"]["wanted_version"] == 1)
    })
    .await;

    // Version 2 drains site-b: the addresses, the TXT and the weights follow.
    federator.publish(routing(2, 0));
    for server in [bind, knot] {
        wait_until("site-b drained", || dig_short(server, "crm-web.fed.local.", "A") == ["127.0.1.1"]).await;
        assert_eq!(dig_short(server, "crm-web.fed.local.", "TXT"), ["\"site=site-b weight=0\""]);
    }
    wait_until("lb-1 drained", || haproxy_cmd(lb_port, "get weight crm-web/site-b").starts_with("0 ")).await;
    wait_until("lb-2 drained", || haproxy_cmd(dead_lb, "get weight crm-web/site-b").starts_with("0 ")).await;
    let file = std::fs::read_to_string(&generated)?;
    assert!(
        file.contains("server site-b 127.0.2.1:8080 weight 0"),
        "the file keeps the weights for a restart:\n{file}"
    );
    assert!(file.contains("routing version 2"));

    // The wrong key never changed anything the right key had not: BIND still serves version 2.
    assert_eq!(dig_short(bind, "crm-web.fed.local.", "A"), ["127.0.1.1"]);

    // A site new to a group is a server the running HAProxy does not have: reported with the
    // way out (reload, which loads the file that already lists it), the rest still applied.
    let mut v3 = routing(3, 0);
    v3.entries[2].targets.push(site("site-c", &["127.0.3.1"], 50));
    federator.publish(v3);
    wait_until("lb-1 reports site-c", || {
        dns.push_status("lb-1").is_some_and(|s| s.failed.get("billing/site-c").is_some_and(|e| e.contains("reload")))
    })
    .await;
    assert!(std::fs::read_to_string(&generated)?.contains("server site-c 127.0.3.1:8080 weight 50"));
    wait_until("site-c in DNS", || dig_short(knot, "billing.fed.local.", "A") == ["127.0.1.1", "127.0.3.1"]).await;
    dns.shutdown().await?;
    federator.stop().await?;
    Ok(())
}
