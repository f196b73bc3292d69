//! The federator cluster changes shape while it serves: a new replica joins from a snapshot
//! (the log it would need is already compacted away), a voter is removed, reads on a follower
//! are linearizable, and a backup restores a whole new cluster. Every change is audited.

mod common;

use std::time::{Duration, Instant};

use common::{addr, agreed_leader, churn, client, config, free_port, freezes, issue_replica, pki, status, user};
use switchyard_proto::operator::v1 as pb;
use switchyard_tls::Role;

/// Snapshots every 20 entries, keeping 5 behind: a replica added after 60 writes cannot
/// catch up from the log.
const COMPACTING: &str = "snapshot_logs_since_last = 20\nlogs_to_keep = 5";

fn change(kind: pb::MembershipChange, node_id: u64, address: &str, reason: &str) -> pb::ChangeMembershipRequest {
    pb::ChangeMembershipRequest { change: kind as i32, node_id, address: address.into(), reason: reason.into() }
}

fn ids(members: &[pb::Member]) -> Vec<u64> {
    members.iter().map(|m| m.node_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_joins_from_a_snapshot_and_a_voter_is_replaced_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path(), 1..=4);
    let admin = user(&ca, Role::Admin, "ada");
    let dr = user(&ca, Role::DrAdmin, "dana");
    let ports: Vec<(u64, u16)> = (1..=4).map(|id| (id, free_port())).collect();
    let first_three = &ports[..3];
    let mut running = Vec::new();
    for &(id, port) in first_three {
        running.push((
            id,
            switchyard_federator::start(config(dir.path(), id, port, first_three, COMPACTING)).await.unwrap(),
        ));
    }
    let mut apis = Vec::new();
    for &(id, port) in first_three {
        apis.push((id, client(addr(port), &admin).await));
    }
    let leader = agreed_leader(&mut apis).await;
    let li = apis.iter().position(|(id, _)| *id == leader).unwrap();
    churn(&mut apis[li].1, 60).await;
    let purged = running.iter().map(|(_, r)| r.federator.raft.metrics().borrow().purged.map_or(0, |l| l.index)).min();
    assert!(purged.unwrap() > 10, "the log was compacted on every replica (purged up to {purged:?})");

    // Linearizable reads on a follower: a write acknowledged by the leader is visible in the
    // very next read on a follower, with no waiting.
    let fi = apis.iter().position(|(id, _)| *id != leader).unwrap();
    apis[li]
        .1
        .set_freeze(pb::SetFreezeRequest { scope: "global".into(), reason: "read-your-writes".into(), duration_s: 0 })
        .await
        .unwrap();
    assert!(
        freezes(&mut apis[fi].1).await.contains(&"global".to_string()),
        "follower read missed an acknowledged write"
    );

    // Bad membership requests are refused, naming what was wrong, and change nothing.
    let before = apis[fi].1.get_membership(pb::GetMembershipRequest {}).await.unwrap().into_inner();
    assert_eq!(ids(&before.voters), vec![1, 2, 3]);
    let refusals = [
        (change(pb::MembershipChange::Remove, 9, "", "typo"), "not a member"),
        (change(pb::MembershipChange::AddVoter, 4, "nohost", "add"), "host:port"),
        (change(pb::MembershipChange::AddVoter, 4, &format!("127.0.0.1:{}", ports[3].1), " "), "needs a reason"),
        (
            change(pb::MembershipChange::AddVoter, 5, &format!("127.0.0.1:{}", ports[0].1), "dup"),
            "already belongs to node 1",
        ),
        (change(pb::MembershipChange::AddVoter, 2, &format!("127.0.0.1:{}", ports[1].1), "again"), "already a voter"),
    ];
    for (req, why) in refusals {
        let err = apis[fi].1.change_membership(req).await.unwrap_err();
        assert!(err.message().contains(why), "expected {why:?} in {:?}", err.message());
    }
    let mut dr_api = client(addr(ports[0].1), &dr).await;
    let err =
        dr_api.change_membership(change(pb::MembershipChange::Remove, 3, "", "not mine to do")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let after = apis[fi].1.get_membership(pb::GetMembershipRequest {}).await.unwrap().into_inner();
    assert_eq!((ids(&after.voters), after.log_index), (ids(&before.voters), before.log_index));

    // A fourth replica starts empty and is added as a voter through a follower: it catches up
    // by installing a snapshot, then votes.
    let (id4, port4) = ports[3];
    let fourth = switchyard_federator::start(config(dir.path(), id4, port4, &ports, COMPACTING)).await.unwrap();
    let added = apis[fi]
        .1
        .change_membership(change(
            pb::MembershipChange::AddVoter,
            4,
            &format!("127.0.0.1:{port4}"),
            "capacity for DC-3",
        ))
        .await
        .expect("node 4 is added")
        .into_inner();
    assert_eq!(ids(&added.voters), vec![1, 2, 3, 4]);
    // (Raft metrics are published a moment after the fact.)
    let mut metrics = fourth.federator.raft.metrics();
    let installed = tokio::time::timeout(
        Duration::from_secs(5),
        metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index > 10) && m.purged.is_some()),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let snap = fourth.federator.raft.metrics().borrow().snapshot;
    assert!(installed, "node 4 caught up from a snapshot, not the log: {snap:?}");
    running.push((id4, fourth));
    apis.push((id4, client(addr(port4), &admin).await));

    // Remove the current leader itself, through node 4: it records the change, then steps down.
    let leader_now = agreed_leader(&mut apis).await;
    let removed = apis[3]
        .1
        .change_membership(change(pb::MembershipChange::Remove, leader_now, "", "host retired"))
        .await
        .expect("the leader is removed")
        .into_inner();
    let remaining: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != leader_now).collect();
    assert_eq!(ids(&removed.voters), remaining);
    let gone = running.iter().position(|(id, _)| *id == leader_now).unwrap();
    let (_, old) = running.remove(gone);
    old.shutdown().await;
    apis.retain(|(id, _)| *id != leader_now);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = apis[2]
            .1
            .clear_freeze(pb::ClearFreezeRequest { scope: "global".into(), reason: "after the change".into() })
            .await;
        if r.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no write accepted after removing the leader: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let heads: Vec<String> = {
        let mut v = Vec::new();
        for (_, api) in apis.iter_mut() {
            api.list_freezes(pb::ListFreezesRequest {}).await.unwrap();
            v.push(status(api).await.audit_head_hash);
        }
        v
    };
    assert!(heads.iter().all(|h| *h == heads[0]), "the remaining replicas agree on the audit chain: {heads:?}");

    // Both changes are in the audit history, by the admin, with the reasons given.
    let audit =
        apis[2].1.list_audit(pb::ListAuditRequest { limit: 0, ..Default::default() }).await.unwrap().into_inner();
    let cluster: Vec<(String, String, String, String)> = audit
        .records
        .into_iter()
        .filter(|r| r.action.starts_with("cluster."))
        .map(|r| (r.action, r.subject, r.actor, r.reason))
        .collect();
    assert_eq!(
        cluster,
        vec![
            ("cluster.add-voter".into(), "fed-4".into(), "admin:ada".into(), "capacity for DC-3".into()),
            ("cluster.remove".into(), format!("fed-{leader_now}"), "admin:ada".into(), "host retired".into()),
        ]
    );
    for (_, r) in running {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_a_new_cluster_that_new_replicas_join() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path(), [1]);
    let admin = user(&ca, Role::Admin, "ada");
    let port = free_port();
    let one = switchyard_federator::start(config(dir.path(), 1, port, &[], COMPACTING)).await.unwrap();
    let mut api = client(addr(port), &admin).await;
    agreed_leader(&mut [(1, api.clone())]).await;
    churn(&mut api, 25).await;
    let (data, backup) = common::backup(&mut api, "nightly").await;
    let before = status(&mut api).await;
    assert_eq!(backup.last_log_index, before.last_applied_index, "the backup holds every acknowledged write");
    one.shutdown().await;

    // Everything is lost; a new replica (node 7, new directory) is seeded from the backup.
    let restored_dir = dir.path().join("restored");
    std::fs::create_dir_all(&restored_dir).unwrap();
    issue_replica(&ca, dir.path(), 7);
    let port7 = free_port();
    let cfg7 = config(dir.path(), 7, port7, &[], COMPACTING);
    let r = switchyard_federator::raft::restore(&cfg7.data_dir, &data, 7, &cfg7.advertise_addr()).unwrap();
    assert_eq!(r.last_log_index, backup.last_log_index);
    // Restoring over a replica's existing state is refused.
    let again = switchyard_federator::raft::restore(&cfg7.data_dir, &data, 7, &cfg7.advertise_addr());
    assert!(again.unwrap_err().to_string().contains("already holds Raft state"));
    let garbage = switchyard_federator::raft::restore(&restored_dir, b"{\"not\": 1}", 7, "127.0.0.1:1");
    assert!(garbage.unwrap_err().to_string().contains("not a federator snapshot"));

    let seven = switchyard_federator::start(cfg7).await.unwrap();
    let mut api7 = client(addr(port7), &admin).await;
    agreed_leader(&mut [(7, api7.clone())]).await;
    let after = status(&mut api7).await;
    // The audit chain is the backup's, ending with the backup's own record.
    let audit = api7.list_audit(pb::ListAuditRequest { limit: 0, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((after.audit_records, &after.audit_head_hash), (before.audit_records, &before.audit_head_hash));
    let last = audit.records.last().unwrap();
    assert_eq!((last.action.as_str(), last.reason.as_str()), ("cluster.snapshot", "nightly"));
    api7.set_freeze(pb::SetFreezeRequest { scope: "global".into(), reason: "after restore".into(), duration_s: 0 })
        .await
        .expect("the restored cluster takes writes");

    // A new empty replica joins the restored cluster as a learner and catches up.
    issue_replica(&ca, dir.path(), 8);
    let port8 = free_port();
    let eight = switchyard_federator::start(config(dir.path(), 8, port8, &[(7, port7)], COMPACTING)).await.unwrap();
    let m = api7
        .change_membership(change(pb::MembershipChange::AddLearner, 8, &format!("127.0.0.1:{port8}"), "rebuild"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ids(&m.voters), ids(&m.learners)), (vec![7], vec![8]));
    let mut api8 = client(addr(port8), &admin).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (status(&mut api7).await, status(&mut api8).await);
        if a.audit_head_hash == b.audit_head_hash && a.last_applied_index == b.last_applied_index {
            break;
        }
        assert!(Instant::now() < deadline, "the learner did not catch up: {a:?} vs {b:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eight.shutdown().await;
    seven.shutdown().await;
}
