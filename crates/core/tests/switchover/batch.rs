//! Several proposals committed in one log entry: applied in order at the entry's index, one
//! response each, ids that do not collide, and the single-proposal form of older logs.

use super::*;
use switchyard_core::{Command, FreezeScope};

fn switchover(group: &str, to: &str) -> Proposal {
    Proposal::new(
        1_000_000,
        OPERATOR,
        Action::StartSwitchover {
            group: group.into(),
            to: to.into(),
            reason: "CHG-7 batch".into(),
            plan: String::new(),
            rollback_of: String::new(),
        },
    )
}

fn two_groups() -> Fed {
    let mut f = Fed::new();
    f.ok("system:config", Action::RegisterGroup(group("erp-web", 2, 100)));
    f.report("site-1", 1000, &[("crm-web", 2, 0), ("erp-web", 2, 0)]);
    f
}

#[test]
fn a_batch_applies_each_proposal_in_order_at_one_index_with_distinct_ids() {
    let mut f = two_groups();
    let index = f.index + 1;
    let command = Command::of(vec![switchover("crm-web", "site-2"), switchover("erp-web", "site-3")]);
    let responses = f.state.apply_command(index, &command);
    f.index = index;
    let ids: Vec<String> = responses
        .iter()
        .map(|r| match r {
            Ok(Applied::OperationStarted { id }) => id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, vec![format!("op-{index}"), format!("op-{index}.2")]);
    assert_eq!(f.op(&ids[0]).group, "crm-web");
    assert_eq!(f.op(&ids[1]).group, "erp-web");
    assert_eq!(f.state.last_applied, index);
    // Both placements carry the entry's index as their epoch: one decision for receivers.
    assert_eq!(f.state.groups["crm-web"].placement.epoch, index);
    assert_eq!(f.state.groups["erp-web"].placement.epoch, index);
    let records: Vec<_> = f.state.audit.records().iter().filter(|r| r.raft_index == index).collect();
    assert_eq!(records.len(), 2, "one audit record per proposal: {records:?}");
    verify_chain(f.state.audit.records()).expect("the chain verifies");
}

#[test]
fn a_refused_proposal_in_a_batch_changes_nothing_and_does_not_stop_the_rest() {
    let mut f = two_groups();
    let index = f.index + 1;
    let freeze = Proposal::new(
        1_000_000,
        OPERATOR,
        Action::SetFreeze { scope: FreezeScope::Group("erp-web".into()), reason: "CHG-8".into(), until_ms: None },
    );
    let command = Command::of(vec![
        switchover("crm-web", "site-2"),
        // The same group again: it is busy with the switchover the first proposal started.
        switchover("crm-web", "site-3"),
        freeze,
    ]);
    // What the state would be with only the proposals that apply.
    let mut expected = f.state.clone();
    let only_ok = Command::of(vec![command.proposals()[0].clone(), command.proposals()[2].clone()]);
    let expected_responses = expected.apply_command(index, &only_ok);
    let responses = f.state.apply_command(index, &command);
    assert!(matches!(responses[0], Ok(Applied::OperationStarted { .. })), "{responses:?}");
    assert!(responses[1].is_err(), "the second move of a busy group is refused: {responses:?}");
    assert!(responses[2].is_ok(), "{responses:?}");
    assert_eq!(vec![responses[0].clone(), responses[2].clone()], expected_responses);
    assert_eq!(f.state, expected, "the refused proposal left no trace");
}

#[test]
fn a_batch_ends_in_the_state_its_proposals_reach_one_entry_each() {
    let mut batched = two_groups();
    let mut single = two_groups();
    let proposals = vec![switchover("crm-web", "site-2"), switchover("erp-web", "site-2")];
    let index = batched.index + 1;
    let responses = batched.state.apply_command(index, &Command::of(proposals.clone()));
    let one_by_one: Vec<_> = proposals.iter().zip(index..).map(|(p, i)| single.state.apply(i, p).map(|_| ())).collect();
    assert_eq!(responses.into_iter().map(|r| r.map(|_| ())).collect::<Vec<_>>(), one_by_one);
    for g in ["crm-web", "erp-web"] {
        let (a, b) = (&batched.state.groups[g].placement, &single.state.groups[g].placement);
        assert_eq!(a.sites, b.sites, "{g}");
    }
}

#[test]
fn entries_written_before_batches_still_read_and_one_proposal_keeps_their_format() {
    let p = switchover("crm-web", "site-2");
    let old_entry = serde_json::to_string(&p).unwrap();
    let read: Command = serde_json::from_str(&old_entry).expect("an older entry reads");
    assert_eq!(read, Command::One(p.clone()));
    assert_eq!(serde_json::to_string(&Command::of(vec![p.clone()])).unwrap(), old_entry);
    let batch = Command::of(vec![p.clone(), switchover("erp-web", "site-3")]);
    let round: Command = serde_json::from_str(&serde_json::to_string(&batch).unwrap()).unwrap();
    assert_eq!(round, batch);
    assert_eq!(round.proposals().len(), 2);
    assert!(serde_json::from_str::<Command>(r#"{"batch": 3}"#).is_err(), "a malformed entry is an error");
    // An unreadable entry says what is wrong with it.
    let unknown = old_entry.replace("StartSwitchover", "StartTeleport");
    let err = serde_json::from_str::<Command>(&unknown).unwrap_err().to_string();
    assert!(err.contains("StartTeleport"), "{err}");
    let err = serde_json::from_str::<Command>(&format!(r#"{{"batch": [{unknown}]}}"#)).unwrap_err().to_string();
    assert!(err.contains("batched log entry") && err.contains("StartTeleport"), "{err}");
}
