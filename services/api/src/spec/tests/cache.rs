//! `cache:` on a task.

use super::*;

fn policy(cache: &str) -> Result<Option<pb::CachePolicy>, SpecError> {
    let yaml = with_tasks(&format!(
        "  - {{name: train, command: [x], outputs: [{{name: m, path: m}}], cache: {cache}}}\n"
    ));
    let spec = parse(&yaml)?;
    Ok(spec.tasks.last().and_then(|t| t.cache.clone()))
}

#[test]
fn switches_and_settings_resolve() -> TestResult {
    assert_eq!(policy("false")?.map(|p| p.mode()), Some(pb::CacheMode::Off));
    assert_eq!(policy("true")?.map(|p| p.mode()), Some(pb::CacheMode::On));
    // Settings turn it on.
    assert_eq!(
        policy("{version: \"2\", max_age: 7d}")?,
        Some(pb::CachePolicy {
            mode: pb::CacheMode::On.into(),
            version: "2".into(),
            max_age_ms: 7 * 24 * 3_600_000,
        })
    );
    assert_eq!(
        policy("{}")?,
        Some(pb::CachePolicy {
            mode: pb::CacheMode::On.into(),
            ..Default::default()
        })
    );
    // Left out: the default, decided by the scheduler (on with outputs).
    let spec = parse(&with_tasks("  - {name: train, command: [x]}\n"))?;
    assert_eq!(spec.tasks.last().and_then(|t| t.cache.clone()), None);
    Ok(())
}

#[test]
fn rejections_name_the_field_and_value() {
    assert_eq!(
        task_rejection("{name: train, command: [x], cache: {max_age: soon}}"),
        "task `train`: cache.max_age: invalid duration `soon` (use e.g. 500ms, 5s, 1m, 1h30m, 7d)"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], cache: {max_age: 0s}}"),
        "task `train`: cache.max_age: must be greater than 0, got `0s`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], cache: {ttl: 7d}}"),
        "task `train`: cache: unknown field `ttl`"
    );
    assert_eq!(
        task_rejection("{name: train, command: [x], cache: later}"),
        "task `train`: cache: invalid type: string \"later\", expected cache (true, false, or a mapping with `version` and `max_age`) at line 4 column 40"
    );
}
