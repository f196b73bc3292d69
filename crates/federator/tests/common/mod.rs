//! Helpers for tests that run federator replicas in one process on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_federator::FederatorConfig;
use switchyard_proto::operator::v1 as pb;
use switchyard_proto::operator::v1::operator_client::OperatorClient;
use switchyard_tls::{Bundle, CertAuthority, Identity, Role};
use tonic::transport::{Channel, Endpoint};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA in `dir/certs` with a federator certificate for each of `ids`.
pub fn pki(dir: &Path, ids: impl IntoIterator<Item = u64>) -> CertAuthority {
    let ca = CertAuthority::generate("test CA").unwrap();
    let certs = dir.join("certs");
    ca.save(&certs).unwrap();
    for id in ids {
        issue_replica(&ca, dir, id);
    }
    ca
}

pub fn issue_replica(ca: &CertAuthority, dir: &Path, id: u64) {
    let name = format!("fed-{id}");
    ca.issue_to_dir(&dir.join("certs"), &name, &Identity::new(Role::Federator, &name).unwrap(), &["127.0.0.1".into()])
        .unwrap();
}

pub fn user(ca: &CertAuthority, role: Role, name: &str) -> Bundle {
    ca.issue(&Identity::new(role, name).unwrap(), &[]).unwrap()
}

/// Replica `id` listening on `port`, knowing `peers` (id, port), with extra `[raft]` lines.
pub fn config(dir: &Path, id: u64, port: u16, peers: &[(u64, u16)], raft: &str) -> FederatorConfig {
    let certs = dir.join("certs");
    let peers: String = peers
        .iter()
        .filter(|(p, _)| *p != id)
        .map(|(p, port)| format!("[[peers]]\nnode_id = {p}\naddress = \"127.0.0.1:{port}\"\n"))
        .collect();
    let text = format!(
        r#"
node_id = {id}
listen = "127.0.0.1:{port}"
data_dir = "{data}"
zone = "fed.local."
{peers}
[tls]
ca = "{certs}/ca.pem"
cert = "{certs}/fed-{id}.pem"
key = "{certs}/fed-{id}-key.pem"
[raft]
heartbeat_interval_ms = 100
election_timeout_min_ms = 400
election_timeout_max_ms = 800
{raft}
[[sites]]
name = "site-1"
ingress = ["127.0.1.1"]
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
        data = dir.join(format!("data-{id}")).display(),
        certs = certs.display()
    );
    FederatorConfig::parse(&text, Path::new("test.toml")).expect("valid config")
}

pub fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

pub async fn client(addr: SocketAddr, bundle: &Bundle) -> OperatorClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ep = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(bundle.client_tls("127.0.0.1"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(150));
        if let Ok(ch) = ep.connect().await {
            return OperatorClient::new(ch);
        }
        assert!(Instant::now() < deadline, "no federator on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every given replica names the same leader among them and the configuration is
/// registered; returns the leader's id.
pub async fn agreed_leader(apis: &mut [(u64, OperatorClient<Channel>)]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for (_, api) in apis.iter_mut() {
            match api.get_status(pb::GetStatusRequest {}).await {
                Ok(s) if s.get_ref().groups == 1 => leaders.push(s.into_inner().leader_id),
                _ => leaders.push(0),
            }
        }
        let ids: Vec<u64> = apis.iter().map(|(id, _)| *id).collect();
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) && ids.contains(&leaders[0]) {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no agreed leader in 30 s: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn freezes(api: &mut OperatorClient<Channel>) -> Vec<String> {
    api.list_freezes(pb::ListFreezesRequest {})
        .await
        .map(|r| r.into_inner().freezes.into_iter().map(|f| f.scope).collect())
        .unwrap_or_default()
}

pub async fn status(api: &mut OperatorClient<Channel>) -> pb::FederationStatus {
    api.get_status(pb::GetStatusRequest {}).await.expect("status").into_inner()
}

/// Commits `n` writes (a freeze set and cleared, alternately) through `api`.
pub async fn churn(api: &mut OperatorClient<Channel>, n: usize) {
    for i in 0..n {
        let scope = "group:crm-web".to_string();
        if i % 2 == 0 {
            api.set_freeze(pb::SetFreezeRequest { scope, reason: format!("churn {i}"), duration_s: 0 }).await.unwrap();
        } else {
            api.clear_freeze(pb::ClearFreezeRequest { scope, reason: format!("churn {i}") }).await.unwrap();
        }
    }
}

/// A backup through the operator API: (file bytes, its first chunk's metadata).
pub async fn backup(api: &mut OperatorClient<Channel>, reason: &str) -> (Vec<u8>, pb::SnapshotChunk) {
    let mut stream = api.take_snapshot(pb::TakeSnapshotRequest { reason: reason.into() }).await.unwrap().into_inner();
    let mut data = Vec::new();
    let mut first = None;
    while let Some(mut chunk) = stream.message().await.unwrap() {
        data.append(&mut chunk.data);
        first.get_or_insert(chunk);
    }
    let first = first.expect("at least one chunk");
    assert_eq!(data.len() as u64, first.total_bytes);
    (data, first)
}
