//! Property tests of `parse_spec`: whatever the input — arbitrary text,
//! YAML-shaped trees of known and unknown fields, a valid spec with one
//! part changed — it returns a spec or an error that says where, and never
//! panics.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

/// Field names the spec format knows, so random trees reach past the
/// "unknown field" check into validation.
const FIELDS: &[&str] = &[
    "name",
    "tasks",
    "command",
    "depends_on",
    "inputs",
    "outputs",
    "from",
    "path",
    "env",
    "resources",
    "cpu",
    "memory",
    "gpu",
    "gpu_model",
    "gpu_memory",
    "retries",
    "limit",
    "backoff",
    "timeout",
    "image",
    "pull_policy",
    "node_selector",
    "params",
    "fail_fast",
    "finally",
    "when",
    "for_each",
    "matrix",
    "cache",
    "code",
    "queue",
    "priority",
    "result",
    "workdir",
    "zz",
];

/// Strings that mean something somewhere in a spec.
const WORDS: &[&str] = &[
    "",
    "x",
    "a",
    "prepare",
    "train",
    "prepare/dataset",
    "dataset",
    "d.csv",
    "../up",
    "/abs",
    "1Gi",
    "-1",
    "0",
    "500m",
    "5s",
    "1h",
    "bogus",
    "{{params.lr}}",
    "{{item}}",
    "{{params.",
    "IfNotPresent",
    "Never",
    "A100",
    "a b",
    "é",
    "SEED",
    "DROVER_TASK",
    "9lives",
    "1e400",
    "true",
    "null",
    "~",
    "${x}",
    "succeeded(prepare)",
    "!",
    "p",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop::sample::select(WORDS).prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
    ]
}

/// YAML-shaped trees (written as JSON, which is YAML) mostly of known fields.
fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid spec touching most fields, as a tree to change.
fn valid() -> Value {
    json!({
        "name": "p",
        "params": {"lr": "0.1"},
        "fail_fast": true,
        "tasks": [
            {"name": "prepare", "command": ["x"], "outputs": [{"name": "dataset", "path": "d.csv"}]},
            {
                "name": "train",
                "depends_on": ["prepare"],
                "command": ["python3", "train.py", "--lr", "{{params.lr}}"],
                "inputs": [{"name": "dataset", "from": "prepare/dataset"}],
                "env": {"SEED": "1"},
                "resources": {"cpu": 2, "memory": "4Gi", "gpu": 1, "gpu_model": "A100"},
                "retries": {"limit": 2, "backoff": "5s"},
                "timeout": "1h",
                "image": "python:3.12-slim",
                "pull_policy": "IfNotPresent",
                "node_selector": {"zone": "eu"}
            }
        ],
        "finally": [{"name": "report", "command": ["y"]}]
    })
}

/// One change to a tree, applied at the `at`-th node (in a walk of it).
#[derive(Debug, Clone)]
enum Change {
    Replace(Value),
    Remove,
    Insert(String, Value),
    Duplicate,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        tree().prop_map(Change::Replace),
        Just(Change::Remove),
        (key(), tree()).prop_map(|(k, v)| Change::Insert(k, v)),
        Just(Change::Duplicate),
    ]
}

/// Applies `change` to the `at`-th node under `value` (counting down);
/// returns whether it was applied.
fn apply(value: &mut Value, at: &mut usize, change: &Change) -> bool {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if *at == 0 {
                    match change {
                        Change::Replace(v) => {
                            map.insert(k, v.clone());
                        }
                        Change::Remove => {
                            map.remove(&k);
                        }
                        Change::Insert(nk, v) => {
                            map.insert(nk.clone(), v.clone());
                        }
                        Change::Duplicate => {}
                    }
                    return true;
                }
                *at -= 1;
                if let Some(child) = map.get_mut(&k) {
                    if apply(child, at, change) {
                        return true;
                    }
                }
            }
            false
        }
        Value::Array(items) => {
            for i in 0..items.len() {
                if *at == 0 {
                    match change {
                        Change::Replace(v) => items[i] = v.clone(),
                        Change::Remove => {
                            items.remove(i);
                        }
                        Change::Insert(_, v) => items.insert(i, v.clone()),
                        Change::Duplicate => {
                            let copy = items[i].clone();
                            items.push(copy);
                        }
                    }
                    return true;
                }
                *at -= 1;
                if apply(&mut items[i], at, change) {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// Whether a rejection says where the problem is: the YAML position, the
/// field's path, a named field or value (in backticks), or the part of the
/// spec it is about.
fn says_where(error: &SpecError) -> bool {
    let message = error.to_string();
    match error {
        SpecError::Yaml(_) => true,
        SpecError::Schema { at, message } => !at.is_empty() || message.contains('`'),
        SpecError::MissingName | SpecError::NoTasks | SpecError::Cycle(_) => true,
        SpecError::MissingTaskName(_) | SpecError::MissingFinallyTaskName(_) => true,
        SpecError::InvalidCode(_) | SpecError::InvalidPriority(_) => true,
        _ => message.contains('`'),
    }
}

fn check(yaml: &str) -> Result<(), TestCaseError> {
    if let Err(e) = parse(yaml) {
        prop_assert!(
            says_where(&e),
            "rejection without a place: {e:?} for {yaml}"
        );
        prop_assert!(!e.to_string().is_empty());
    }
    Ok(())
}

proptest! {
    // Bounded so the whole suite stays well under half a minute in a debug build.
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_spec_or_a_placed_rejection(text in "\\PC{0,200}") {
        check(&text)?;
    }

    #[test]
    fn any_yaml_shaped_tree_is_a_spec_or_a_placed_rejection(value in tree()) {
        check(&value.to_string())?;
    }

    #[test]
    fn a_changed_valid_spec_is_a_spec_or_a_placed_rejection(
        changes in prop::collection::vec((0usize..64, change()), 1..4)
    ) {
        let mut spec = valid();
        for (at, change) in &changes {
            let mut at = *at;
            apply(&mut spec, &mut at, change);
        }
        check(&spec.to_string())?;
        // The same tree in block style goes through the same checks.
        check(&block_yaml(&spec, 0))?;
    }
}

#[test]
fn the_base_of_the_changes_is_valid() -> TestResult {
    parse(&valid().to_string())?;
    parse(&block_yaml(&valid(), 0))?;
    Ok(())
}

/// `value` as block-style YAML (scalars as JSON, which YAML reads the same).
fn block_yaml(value: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| match v {
                Value::Object(m) if !m.is_empty() => {
                    format!("{pad}{}:\n{}", json!(k), block_yaml(v, indent + 2))
                }
                Value::Array(a) if !a.is_empty() => {
                    format!("{pad}{}:\n{}", json!(k), block_yaml(v, indent + 2))
                }
                _ => format!("{pad}{}: {}\n", json!(k), v),
            })
            .collect(),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| match v {
                Value::Object(m) if !m.is_empty() => {
                    format!("{pad}-\n{}", block_yaml(v, indent + 2))
                }
                Value::Array(a) if !a.is_empty() => {
                    format!("{pad}-\n{}", block_yaml(v, indent + 2))
                }
                _ => format!("{pad}- {v}\n"),
            })
            .collect(),
        other => format!("{pad}{other}\n"),
    }
}
