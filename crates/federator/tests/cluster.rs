//! Three federator replicas in one process on loopback, each on its own port and data
//! directory: the lowest id initialises the cluster, any replica accepts writes (followers
//! forward them to the leader), a replica speaks only for its own node id, and when the leader
//! goes away the others elect a new one and keep accepting writes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_federator::{FederatorConfig, Running};
use switchyard_proto::operator::v1 as pb;
use switchyard_proto::operator::v1::operator_client::OperatorClient;
use switchyard_tls::{Bundle, CertAuthority, Identity, Role};
use tonic::transport::{Channel, Endpoint};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(dir: &Path, id: u64, ports: &[u16; 3]) -> FederatorConfig {
    let certs = dir.join("certs");
    let peers: String = (1..=3u64)
        .filter(|p| *p != id)
        .map(|p| format!("[[peers]]\nnode_id = {p}\naddress = \"127.0.0.1:{}\"\n", ports[(p - 1) as usize]))
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
        port = ports[(id - 1) as usize],
        data = dir.join(format!("data-{id}")).display(),
        certs = certs.display()
    );
    FederatorConfig::parse(&text, Path::new("test.toml")).expect("valid config")
}

async fn client(addr: SocketAddr, bundle: &Bundle) -> OperatorClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ep = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(bundle.client_tls("127.0.0.1"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15));
        if let Ok(ch) = ep.connect().await {
            return OperatorClient::new(ch);
        }
        assert!(Instant::now() < deadline, "no federator on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every given replica names the same leader among them and the configuration is
/// registered; returns the leader's id.
async fn agreed_leader(apis: &mut [(u64, OperatorClient<Channel>)]) -> u64 {
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

async fn freezes(api: &mut OperatorClient<Channel>) -> Vec<String> {
    api.list_freezes(pb::ListFreezesRequest {})
        .await
        .map(|r| r.into_inner().freezes.into_iter().map(|f| f.scope).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_forward_writes_and_survive_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertAuthority::generate("test CA").unwrap();
    let certs = dir.path().join("certs");
    ca.save(&certs).unwrap();
    for id in 1..=3 {
        let name = format!("fed-{id}");
        ca.issue_to_dir(&certs, &name, &Identity::new(Role::Federator, &name).unwrap(), &["127.0.0.1".into()]).unwrap();
    }
    let admin = ca.issue(&Identity::new(Role::DrAdmin, "dana").unwrap(), &[]).unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut running: Vec<Option<Running>> = Vec::new();
    for id in 1..=3 {
        running.push(Some(switchyard_federator::start(config(dir.path(), id, &ports)).await.expect("replica starts")));
    }
    let addr = |id: u64| -> SocketAddr { format!("127.0.0.1:{}", ports[(id - 1) as usize]).parse().unwrap() };
    let mut apis = Vec::new();
    for id in 1..=3 {
        apis.push((id, client(addr(id), &admin).await));
    }
    let leader = agreed_leader(&mut apis).await;

    // A write sent to a follower is forwarded and committed; every replica applies it.
    let follower = apis.iter().position(|(id, _)| *id != leader).unwrap();
    let f = apis[follower].1.set_freeze(pb::SetFreezeRequest {
        scope: "group:crm-web".into(),
        reason: "via a follower".into(),
        duration_s: 0,
    });
    let frozen = f.await.expect("a follower accepts the write").into_inner();
    assert_eq!(frozen.actor, "dr-admin:dana", "the leader records the caller, not the forwarding replica");
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, api) in apis.iter_mut() {
        while freezes(api).await != ["group:crm-web"] {
            assert!(Instant::now() < deadline, "replica {id} never applied the freeze");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The leader goes away: the two others elect a new leader and accept writes again.
    let killed_at = Instant::now();
    running[(leader - 1) as usize].take().unwrap().shutdown().await;
    apis.retain(|(id, _)| *id != leader);
    let accepted = loop {
        let r = apis[0]
            .1
            .clear_freeze(pb::ClearFreezeRequest { scope: "group:crm-web".into(), reason: "after failover".into() });
        if let Ok(r) = r.await {
            assert!(r.into_inner().cleared);
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "no write accepted within 30 s of losing the leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("first write accepted {} ms after the leader stopped", accepted.as_millis());
    let new_leader = agreed_leader(&mut apis).await;
    assert_ne!(new_leader, leader);
    for r in running.into_iter().flatten() {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_may_not_speak_for_another_node_id() {
    use openraft::Vote;
    use switchyard_proto::raft::v1::raft_peer_client::RaftPeerClient;
    use switchyard_proto::raft::v1::{PayloadFormat, RaftPayload};

    let dir = tempfile::tempdir().unwrap();
    let ca = CertAuthority::generate("test CA").unwrap();
    let certs = dir.path().join("certs");
    ca.save(&certs).unwrap();
    ca.issue_to_dir(&certs, "fed-1", &Identity::new(Role::Federator, "fed-1").unwrap(), &["127.0.0.1".into()]).unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let one = switchyard_federator::start(config(dir.path(), 1, &ports)).await.expect("replica starts");
    let impostor = ca.issue(&Identity::new(Role::Federator, "fed-9").unwrap(), &[]).unwrap();
    let ch = Endpoint::from_shared(format!("https://127.0.0.1:{}", ports[0]))
        .unwrap()
        .tls_config(impostor.client_tls("127.0.0.1"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // fed-9 asks for node 2's vote... as node 2.
    let vote = openraft::raft::VoteRequest::new(Vote::new(99, 2), None);
    let payload = RaftPayload { format: PayloadFormat::Json as i32, data: serde_json::to_vec(&vote).unwrap() };
    let err = RaftPeerClient::new(ch).vote(payload).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("node 2"), "{}", err.message());
    one.shutdown().await;
}
