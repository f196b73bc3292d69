//! Three federator replicas in one process on loopback, each on its own port and data
//! directory: the lowest id initialises the cluster, any replica accepts writes (followers
//! forward them to the leader), a replica speaks only for its own node id, and when the leader
//! goes away the others elect a new one and keep accepting writes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{agreed_leader, client, free_port, freezes};
use switchyard_federator::{FederatorConfig, Running};
use switchyard_proto::operator::v1 as pb;
use switchyard_proto::operator::v1::operator_client::OperatorClient;
use switchyard_tls::{Bundle, CertAuthority, Identity, Role};
use tonic::transport::{Channel, Endpoint};

fn config(dir: &Path, id: u64, ports: &[u16; 3]) -> FederatorConfig {
    let peers: Vec<(u64, u16)> = (1..=3u64).map(|p| (p, ports[(p - 1) as usize])).collect();
    common::config(dir, id, ports[(id - 1) as usize], &peers, "")
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

/// Three replicas on loopback, a DR admin's client to each, and the leader they agree on.
struct Three {
    _dir: tempfile::TempDir,
    running: Vec<Running>,
    apis: Vec<(u64, OperatorClient<Channel>)>,
    leader: u64,
    ports: [u16; 3],
    admin: Bundle,
}

async fn three_replicas() -> Three {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::pki(dir.path(), 1..=3);
    let admin = common::user(&ca, Role::DrAdmin, "dana");
    let ports = [free_port(), free_port(), free_port()];
    let mut running = Vec::new();
    for id in 1..=3 {
        running.push(switchyard_federator::start(config(dir.path(), id, &ports)).await.expect("replica starts"));
    }
    let mut apis = Vec::new();
    for (id, port) in (1..=3).zip(ports) {
        apis.push((id, client(common::addr(port), &admin).await));
    }
    let leader = agreed_leader(&mut apis).await;
    Three { _dir: dir, running, apis, leader, ports, admin }
}

/// Concurrent scales of one app, each to a count nobody else asks for: every scale changes the
/// group, and each reply's epoch is the index its own audit record carries, not that of a
/// scale committed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scales_each_answer_the_epoch_of_their_own_commit() {
    const CLIENTS: u32 = 12;
    const WRITES: u32 = 6;
    let Three { _dir, running, mut apis, leader, ports, admin } = three_replicas().await;
    let addr = |id: u64| -> SocketAddr { format!("127.0.0.1:{}", ports[(id - 1) as usize]).parse().unwrap() };
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let id = if c % 3 == 0 { leader % 3 + 1 } else { leader };
        let mut api = client(addr(id), &admin).await;
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for n in 0..WRITES {
                let reason = format!("client {c} scale {n}");
                let r = pb::ScaleAppRequest {
                    group: "crm-web".into(),
                    app: "web".into(),
                    site: String::new(),
                    instances: 3 + c * WRITES + n,
                    reason: reason.clone(),
                };
                let reply = api.scale_app(r).await.unwrap_or_else(|e| panic!("{reason}: {e}")).into_inner();
                assert!(reply.changed, "{reason}: a count nobody else asked for must change the group");
                assert_eq!(reply.site, "site-1");
                answers.push((reason, reply.epoch));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    let lead_at = apis.iter().position(|(i, _)| *i == leader).unwrap();
    let api = &mut apis[lead_at].1;
    let records =
        api.list_audit(pb::ListAuditRequest { from_sequence: 0, limit: 0 }).await.unwrap().into_inner().records;
    let audited: std::collections::BTreeMap<_, _> = records
        .iter()
        .filter(|r| r.action == "app.scale" && r.reason.starts_with("client "))
        .map(|r| (r.reason.clone(), r.raft_index))
        .collect();
    assert_eq!(audited.len(), (CLIENTS * WRITES) as usize, "every scale audited once");
    for (reason, epoch) in &answers {
        assert_eq!(Some(epoch), audited.get(reason), "{reason}: the reply's epoch is its own commit's index");
    }
    for r in running {
        r.shutdown().await;
    }
}

/// Many operators writing at once: the leader commits writes that arrive together in shared
/// log entries, each is applied exactly once, and every caller gets the answer to its own write
/// (a clear answers `cleared` exactly when it removed a freeze, which its audit record shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_answer() {
    const CLIENTS: usize = 24;
    const WRITES: usize = 8;
    let Three { _dir, running, mut apis, leader, ports, admin } = three_replicas().await;
    let addr = |id: u64| -> SocketAddr { format!("127.0.0.1:{}", ports[(id - 1) as usize]).parse().unwrap() };
    let lead_at = apis.iter().position(|(i, _)| *i == leader).unwrap();
    let before = common::status(&mut apis[lead_at].1).await.last_applied_index;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        // Every third client goes through a follower, which forwards to the leader.
        let id = if c % 3 == 0 { leader % 3 + 1 } else { leader };
        let mut api = client(addr(id), &admin).await;
        tasks.push(tokio::spawn(async move {
            let scope = "group:crm-web".to_string();
            let mut cleared = Vec::new();
            for n in 0..WRITES {
                let reason = format!("client {c} write {n}");
                if n % 2 == 0 {
                    let r = pb::SetFreezeRequest { scope: scope.clone(), reason: reason.clone(), duration_s: 0 };
                    api.set_freeze(r).await.unwrap_or_else(|e| panic!("{reason}: {e}"));
                } else {
                    let r = pb::ClearFreezeRequest { scope: scope.clone(), reason: reason.clone() };
                    let reply = api.clear_freeze(r).await.unwrap_or_else(|e| panic!("{reason}: {e}")).into_inner();
                    if reply.cleared {
                        cleared.push(reason);
                    }
                }
            }
            cleared
        }));
    }
    let mut cleared = std::collections::BTreeSet::new();
    for t in tasks {
        cleared.extend(t.await.unwrap());
    }
    let api = &mut apis[lead_at].1;
    let after = common::status(api).await.last_applied_index;
    let records =
        api.list_audit(pb::ListAuditRequest { from_sequence: 0, limit: 0 }).await.unwrap().into_inner().records;
    let ours: Vec<_> = records.iter().filter(|r| r.reason.starts_with("client ")).collect();
    let sets: std::collections::BTreeSet<_> =
        ours.iter().filter(|r| r.action == "freeze.set").map(|r| r.reason.clone()).collect();
    let clears: std::collections::BTreeSet<_> =
        ours.iter().filter(|r| r.action == "freeze.clear").map(|r| r.reason.clone()).collect();
    assert_eq!(sets.len(), CLIENTS * WRITES / 2, "every set applied and audited once");
    assert_eq!(ours.len(), sets.len() + clears.len(), "no write audited twice");
    assert_eq!(clears, cleared, "each clear answered what it did, and only the clears that removed a freeze say so");
    let mut per_index = std::collections::BTreeMap::<u64, usize>::new();
    for r in &ours {
        *per_index.entry(r.raft_index).or_default() += 1;
    }
    let shared = per_index.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} audited writes in {} entries ({shared} shared); the log advanced {} entries for {} writes",
        ours.len(),
        per_index.len(),
        after - before,
        CLIENTS * WRITES
    );
    assert!(shared > 0, "no two concurrent writes shared an entry: {per_index:?}");
    assert!(after - before < (CLIENTS * WRITES) as u64, "the log grew by an entry per write");
    // Every replica applies the same entries to the same audit chain.
    let head = common::status(api).await.audit_head_hash;
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, api) in apis.iter_mut() {
        while common::status(api).await.audit_head_hash != head {
            assert!(Instant::now() < deadline, "replica {id} never reached the leader's audit head");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for r in running {
        r.shutdown().await;
    }
}
