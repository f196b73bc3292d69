//! A federator started in-process on loopback, driven through its mTLS gRPC API the way
//! `fedctl` drives it: certificate checks, roles, refusals that change nothing, and state that
//! survives a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_federator::FederatorConfig;
use switchyard_proto::operator::v1 as pb;
use switchyard_proto::operator::v1::operator_client::OperatorClient;
use switchyard_tls::{Bundle, CertAuthority, Identity, Role};
use tonic::transport::{Channel, Endpoint};

fn config(dir: &Path) -> FederatorConfig {
    FederatorConfig::parse(&config_text(dir, "127.0.0.1:0"), Path::new("test.toml")).expect("valid config")
}

fn config_text(dir: &Path, listen: &str) -> String {
    let certs = dir.join("certs");
    format!(
        r#"
node_id = 1
listen = "{listen}"
data_dir = "{data}"
zone = "fed.local."
[tls]
ca = "{certs}/ca.pem"
cert = "{certs}/federator.pem"
key = "{certs}/federator-key.pem"
[raft]
heartbeat_interval_ms = 100
election_timeout_min_ms = 300
election_timeout_max_ms = 600
[[sites]]
name = "site-1"
ingress = ["127.0.1.1"]
[[sites]]
name = "site-2"
ingress = ["127.0.2.1"]
[[groups]]
name = "crm-web"
dns_name = "crm-web"
ttl_s = 5
home_site = "site-1"
[[groups.apps]]
name = "web"
command = "sample-app"
instances = 2
resources = {{ cpu_millis = 100, mem_mib = 64 }}
"#,
        data = dir.join("data").display(),
        certs = certs.display()
    )
}

/// The real `federator` binary, stopped with SIGTERM like an operator or init system would.
struct Process(std::process::Child);

impl Process {
    fn start(config: &Path, log: &Path) -> Self {
        let log = std::fs::File::options().create(true).append(true).open(log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_federator"))
            .arg("--config")
            .arg(config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("federator binary starts");
        Process(child)
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "federator ignored SIGTERM for 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pki {
    ca: CertAuthority,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca = CertAuthority::generate("test CA").unwrap();
        let certs = dir.join("certs");
        ca.save(&certs).unwrap();
        let id = Identity::new(Role::Federator, "fed-1").unwrap();
        ca.issue_to_dir(&certs, "federator", &id, &["127.0.0.1".into()]).unwrap();
        Pki { ca }
    }

    fn client(&self, role: Role, name: &str) -> Bundle {
        self.ca.issue(&Identity::new(role, name).unwrap(), &[]).unwrap()
    }
}

async fn channel(
    addr: std::net::SocketAddr,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}")).unwrap().connect_timeout(Duration::from_secs(3));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).unwrap();
    }
    ep.connect().await.map_err(|e| format!("{e:?}"))
}

async fn client(addr: std::net::SocketAddr, bundle: &Bundle) -> OperatorClient<Channel> {
    OperatorClient::new(channel(addr, Some(bundle.client_tls("127.0.0.1"))).await.expect("connects"))
}

async fn connect_retry(addr: std::net::SocketAddr, bundle: &Bundle) -> OperatorClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = channel(addr, Some(bundle.client_tls("127.0.0.1"))).await {
            return OperatorClient::new(ch);
        }
        assert!(Instant::now() < deadline, "federator did not listen on {addr} within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until the single node leads and has registered the configuration.
async fn wait_ready(api: &mut OperatorClient<Channel>) -> pb::FederationStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = api.get_status(pb::GetStatusRequest {}).await {
            let s = s.into_inner();
            if s.leader_id == 1 && s.groups == 1 && s.sites == 2 {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "federator not ready in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requires_valid_client_certificates_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let running = switchyard_federator::start(config(dir.path())).await.unwrap();
    let addr = running.grpc_addr;
    let operator = pki.client(Role::Operator, "alice");
    let mut api = client(addr, &operator).await;
    let status = wait_ready(&mut api).await;
    assert_eq!(status.caller, "operator:alice");

    // Plaintext is refused.
    match channel(addr, None).await {
        Err(_) => {}
        Ok(ch) => {
            let err = OperatorClient::new(ch).get_status(pb::GetStatusRequest {}).await.unwrap_err();
            assert_ne!(err.code(), tonic::Code::Ok);
        }
    }
    // TLS without a client certificate is refused during the handshake.
    let ca_only = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&operator.ca_pem))
        .domain_name("127.0.0.1");
    let refused = match channel(addr, Some(ca_only)).await {
        Err(_) => true,
        Ok(ch) => OperatorClient::new(ch).get_status(pb::GetStatusRequest {}).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    // A certificate from another CA is refused.
    let rogue_ca = CertAuthority::generate("rogue").unwrap();
    let mut rogue = rogue_ca.issue(&Identity::new(Role::Admin, "mallory").unwrap(), &[]).unwrap();
    rogue.ca_pem = operator.ca_pem.clone(); // trusts the real server, presents a foreign cert
    let refused = match channel(addr, Some(rogue.client_tls("127.0.0.1"))).await {
        Err(_) => true,
        Ok(ch) => OperatorClient::new(ch).get_status(pb::GetStatusRequest {}).await.is_err(),
    };
    assert!(refused, "a certificate from a foreign CA was accepted");

    // A viewer may look but not act; a cell certificate may not even look.
    let mut viewer = client(addr, &pki.client(Role::Viewer, "val")).await;
    viewer.list_groups(pb::ListGroupsRequest {}).await.expect("viewer can list");
    let err = viewer
        .start_switchover(pb::StartSwitchoverRequest {
            group: "crm-web".into(),
            to_site: "site-2".into(),
            reason: String::new(),
            plan_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("viewer:val"), "{}", err.message());
    let mut cell = client(addr, &pki.client(Role::Cell, "site-1")).await;
    let err = cell.get_status(pb::GetStatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_change_nothing_and_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let operator = pki.client(Role::Operator, "alice");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = dir.path().join("federator.toml");
    std::fs::write(&cfg, config_text(dir.path(), &addr.to_string())).unwrap();
    let log = dir.path().join("federator.log");
    let process = Process::start(&cfg, &log);
    let mut api = connect_retry(addr, &operator).await;
    let before = wait_ready(&mut api).await;

    let cases = [
        ("crm-web", "site-9", tonic::Code::NotFound, "unknown site \"site-9\""),
        ("nope", "site-2", tonic::Code::NotFound, "unknown group \"nope\""),
        ("crm-web", "site-1", tonic::Code::FailedPrecondition, "already active on \"site-1\""),
        // No cell has ever reported from site-2, so its capacity is unknown: refused.
        ("crm-web", "site-2", tonic::Code::FailedPrecondition, "no fresh capacity report"),
    ];
    for (group, to, code, text) in cases {
        let err = api
            .start_switchover(pb::StartSwitchoverRequest {
                group: group.into(),
                to_site: to.into(),
                reason: "t".into(),
                plan_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{group}->{to}: {err:?}");
        assert!(err.message().contains(text), "{group}->{to}: {}", err.message());
    }

    // Planning says the same, as a no-go line, and changes nothing either.
    let plan = api
        .plan_moves(pb::PlanMovesRequest {
            groups: vec!["crm-web".into()],
            from_site: String::new(),
            to_site: "site-2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!plan.go);
    let detail: serde_json::Value = serde_json::from_str(&plan.plan_json).unwrap();
    assert_eq!(detail["id"], plan.id.as_str());
    assert!(detail["reasons"][0].as_str().unwrap().contains("no fresh capacity report"), "{detail}");
    let evacuation = api
        .plan_moves(pb::PlanMovesRequest {
            from_site: "site-1".into(),
            to_site: "site-2".into(),
            concurrency: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let detail: serde_json::Value = serde_json::from_str(&evacuation.plan_json).unwrap();
    assert_eq!(detail["groups"][0]["group"], "crm-web", "the site's groups are planned");
    assert_eq!(detail["concurrency"], 1, "the prediction assumes the concurrency asked for");
    let err = api
        .plan_moves(pb::PlanMovesRequest {
            groups: vec!["crm-web".into()],
            from_site: "site-1".into(),
            to_site: "site-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // A start bound to a plan id that is not the current plan is refused with the new id.
    let err = api
        .start_switchover(pb::StartSwitchoverRequest {
            group: "crm-web".into(),
            to_site: "site-2".into(),
            reason: "t".into(),
            plan_id: "0000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&format!("gives plan {}", plan.id)), "{}", err.message());
    let after = api.get_status(pb::GetStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(after.audit_records, before.audit_records, "a refusal was recorded as a change");
    assert_eq!(after.audit_head_hash, before.audit_head_hash);
    assert_eq!(after.routing_version, before.routing_version);
    assert_eq!(after.operations_in_flight, 0);
    let audit = api.list_audit(pb::ListAuditRequest { from_sequence: 1, limit: 0 }).await.unwrap().into_inner();
    let actions: Vec<_> = audit.records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["site.register", "site.register", "group.register"]);

    // Restart on the same data directory: everything committed is still there, and the node
    // leads again without re-registering anything.
    drop(api);
    process.stop();
    let process = Process::start(&cfg, &log);
    let mut api = connect_retry(addr, &operator).await;
    let restarted = wait_ready(&mut api).await;
    assert_eq!(restarted.audit_records, before.audit_records);
    assert_eq!(restarted.audit_head_hash, before.audit_head_hash);
    assert_eq!(restarted.routing_version, before.routing_version);
    assert_eq!(restarted.leader_id, 1, "the restarted node leads again");
    assert!(restarted.last_applied_index >= before.last_applied_index, "nothing applied was lost");
    process.stop();
}
