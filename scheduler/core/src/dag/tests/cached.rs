use super::*;

fn source() -> AttemptSource {
    AttemptSource {
        run: "r0".into(),
        task: "a".into(),
        attempt: 1,
    }
}

fn model() -> Artifact {
    Artifact {
        name: "model".into(),
        key: "runs/r0/a/1/model".into(),
        sha256: "ab".into(),
        size: 3,
        result: None,
    }
}

fn cached(task: usize) -> Event {
    Event::Cached {
        task,
        key: "k".into(),
        from: source(),
        outputs: vec![model()],
        image_digest: "sha256:1".into(),
    }
}

#[test]
fn a_cached_task_succeeds_without_an_agent_and_readies_its_downstream() {
    let (mut dag, _) = diamond(false);
    let fx = dag.apply(cached(0), 100).expect("a is Ready");
    // No assignment and nothing to release: it never ran.
    assert!(!fx
        .iter()
        .any(|e| matches!(e, Effect::Assign { .. } | Effect::Released { .. })));
    assert!(fx.contains(&Effect::Ready { task: 1 }));
    assert!(fx.contains(&Effect::Ready { task: 2 }));
    let a = dag.task(0);
    assert_eq!(a.status, TaskStatus::Succeeded);
    let attempt = a.current().expect("one attempt");
    assert_eq!(attempt.status, AttemptStatus::Succeeded);
    assert_eq!(attempt.agent, "");
    assert_eq!(attempt.cached_from, Some(source()));
    assert_eq!(attempt.cache_key.as_deref(), Some("k"));
    assert_eq!(attempt.outputs, vec![model()]);
    assert_eq!(attempt.image_digest, "sha256:1");
    // Zero length: started and finished when it was served.
    assert_eq!(
        (attempt.assigned_at, attempt.started_at, attempt.finished_at),
        (100, Some(100), Some(100))
    );
}

#[test]
fn a_run_served_wholly_from_the_cache_finishes() {
    let (mut dag, _) = diamond(false);
    let mut finished = Vec::new();
    for task in 0..4 {
        let fx = dag.apply(cached(task), 100).expect("each is Ready in turn");
        finished.extend(fx.into_iter().filter(|e| matches!(e, Effect::Finished(_))));
    }
    assert_eq!(finished, vec![Effect::Finished(RunStatus::Succeeded)]);
}

#[test]
fn only_a_ready_task_takes_a_cached_result() {
    let (mut dag, _) = diamond(false);
    // Pending: its upstream has not run.
    assert!(dag.apply(cached(3), 100).is_err());
    // Assigned already: the attempt runs.
    assign(&mut dag, 0);
    assert!(dag.apply(cached(0), 100).is_err());
    assert_eq!(dag.task(0).status, TaskStatus::Assigned);
}
