//! Recorded input sequences: replayed on a fresh state, and carried on by a
//! state loaded from what the first committed.

use super::*;

/// Two runs on two agents through submit, a start, successes, an agent
/// lost and a late event, as inputs with their times: what the shell would
/// have recorded.
fn recorded_inputs(h: &mut Harness) -> Vec<(Millis, Vec<Input>)> {
    let submit = h.submit(
        "r1",
        &[
            ("prep", &[]),
            ("a", &["prep"]),
            ("b", &["prep"]),
            ("join", &["a", "b"]),
        ],
    );
    let other = h.submit("r2", &[("solo", &[])]);
    let started = |task: &str, attempt| {
        event(
            "a2",
            "r1",
            task,
            attempt,
            0,
            pb::attempt_event::Kind::Started(pb::AttemptStarted {}),
        )
    };
    vec![
        (
            1_000,
            vec![heartbeat("a1", 2, &[]), heartbeat("a2", 1, &[])],
        ),
        (1_010, vec![submit, other]),
        (1_020, vec![started("prep", 1)]),
        (1_100, vec![succeeded("a2", "r1", "prep", 1, 1_090)]),
        (1_200, vec![heartbeat("a2", 1, &[("r2", "solo", 1)])]),
        (9_000, vec![heartbeat("a1", 2, &[])]),
        (12_000, vec![Input::Tick]),
        (
            12_100,
            vec![
                succeeded("a1", "r1", "a", 1, 12_050),
                failed("a2", "r1", "b", 1, 12_060),
            ],
        ),
    ]
}

fn replay(h: &mut Harness, inputs: Vec<(Millis, Vec<Input>)>) -> Vec<TurnLog> {
    inputs
        .into_iter()
        .map(|(now, inputs)| {
            h.now = now;
            h.turn(inputs)
        })
        .collect()
}

#[test]
fn replaying_recorded_inputs_gives_the_same_outputs() {
    let mut first = Harness::new();
    let inputs = recorded_inputs(&mut first);
    let outputs = replay(&mut first, inputs.clone());
    let mut second = Harness::new();
    second.specs = first.specs.clone();
    second.next_reply = first.next_reply;
    let again = replay(&mut second, inputs);
    assert_eq!(outputs, again);
    assert_eq!(first.store.records, second.store.records);
    // The sequence did what it says. Bin-packing put prep on the smaller
    // agent, then a and b on one agent each.
    assert_eq!(
        outputs[1].assigned(),
        [("prep", 1, "a2"), ("solo", 1, "a1")]
    );
    assert_eq!(outputs[3].assigned(), [("a", 1, "a1"), ("b", 1, "a2")]);
    // a2, silent since 1,200, is lost at 12,000: b waits, a1 being full.
    let b_key = RecordKey::Task {
        run: RunId::new("r1"),
        task: drover_scheduler_core::ids::TaskIndex(2),
        name: "b".into(),
    };
    let a2_key = RecordKey::Agent(AgentId::new("a2"));
    assert_eq!(outputs[6].changes, [(b_key, true), (a2_key, true)]);
    assert!(outputs[6].assigned().is_empty());
    // a's success frees room for b's second attempt; b's late failure of
    // its lost attempt changes nothing.
    assert_eq!(outputs[7].assigned(), [("b", 2, "a1")]);
    let b = first.task("r1", "b");
    let states: Vec<_> = b
        .iter()
        .flat_map(|b| &b.attempts)
        .map(|a| a.state())
        .collect();
    assert_eq!(states, [pb::AttemptState::Lost, pb::AttemptState::Assigned]);
    assert_eq!(b.map(|b| b.retries_used), Some(0));
}

#[test]
fn a_state_loaded_from_what_it_committed_carries_on_the_same() {
    let mut original = Harness::new();
    let inputs = recorded_inputs(&mut original);
    let (before, after) = inputs.split_at(5);
    replay(&mut original, before.to_vec());

    // A second scheduler (or this one after a failed commit) loads from etcd.
    let mut loaded = Harness::new();
    loaded.specs = original.specs.clone();
    loaded.store.records = original.store.records.clone();
    loaded.store.revision = original.store.revision;
    loaded.next_reply = original.next_reply;
    loaded.now = original.now;
    let resumed = loaded.load();
    // It resends what may not have reached agents: assignments not yet started.
    assert!(!resumed.assigned().is_empty());
    assert!(resumed.changes.is_empty(), "{:?}", resumed.changes);
    // Heartbeats bring back the agents' live state; from there on the two agree.
    let hbs = vec![
        heartbeat("a1", 2, &[]),
        heartbeat("a2", 1, &[("r2", "solo", 1)]),
    ];
    replay(&mut original, vec![(1_300, hbs.clone())]);
    replay(&mut loaded, vec![(1_300, hbs)]);
    let a = replay(&mut original, after.to_vec());
    let b = replay(&mut loaded, after.to_vec());
    assert_eq!(a, b);
    assert_eq!(original.store.records, loaded.store.records);
}

#[test]
fn a_commit_conflict_surfaces_as_a_wrong_expected_revision() {
    // The memory store holds the state to etcd's contract: a record written
    // behind the state's back makes its next change fail.
    let mut h = Harness::new();
    h.turn(vec![heartbeat("a1", 4, &[])]);
    let key = RecordKey::Agent(AgentId::new("a1"));
    let sneaky = Change {
        key: key.clone(),
        value: Some(vec![]),
        expect: h.store.records.get(&key).map(|(_, rev)| *rev),
    };
    assert!(h.store.commit(vec![vec![sneaky]]).is_ok());
    let drain = h.request(Request::Drain {
        agent: AgentId::new("a1"),
        drained: true,
    });
    let mut turn = Turn::default();
    h.state.apply(drain, h.now, &mut turn);
    h.state.end_inputs(h.now, &mut turn);
    let groups = h.state.changes(&turn);
    assert!(h.store.commit(groups).is_err());
}
