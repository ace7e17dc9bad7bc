use std::collections::BTreeMap;

use super::*;

/// `input`'s key; a test whose input has none fails here, naming why.
fn key(input: &KeyInput) -> String {
    match input.key() {
        Ok(key) => key,
        Err(why) => panic!("no key: {why:?}"),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

struct Owned {
    command: Vec<String>,
    env: BTreeMap<String, String>,
}

impl Owned {
    fn new() -> Self {
        Self {
            command: strings(&["python3", "train.py", "--lr", "0.1"]),
            env: [("SEED".to_owned(), "1".to_owned())].into(),
        }
    }

    fn input(&self) -> KeyInput<'_> {
        KeyInput {
            command: &self.command,
            env: &self.env,
            image: "",
            workdir: "",
            inputs: vec![InputDigest::One {
                name: "dataset",
                sha256: "aa",
            }],
            code_sha256: "cc",
            outputs: vec![OutputDecl {
                name: "model",
                path: "model.json",
                result: false,
            }],
            version: "",
        }
    }
}

#[test]
fn same_input_same_key_and_hex_sha256() {
    let o = Owned::new();
    let a = key(&o.input());
    assert_eq!(a, key(&o.input()));
    assert_eq!(a.len(), 64);
    assert!(a
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
}

#[test]
fn every_part_of_the_input_changes_the_key() {
    let o = Owned::new();
    let base = key(&o.input());
    let command = strings(&["python3", "train.py", "--lr", "0.2"]);
    let env: BTreeMap<String, String> = [("SEED".to_owned(), "2".to_owned())].into();
    let mut changed: Vec<(&str, KeyInput)> = Vec::new();
    changed.push((
        "command",
        KeyInput {
            command: &command,
            ..o.input()
        },
    ));
    changed.push((
        "env",
        KeyInput {
            env: &env,
            ..o.input()
        },
    ));
    changed.push((
        "image",
        KeyInput {
            image: "python:3.12",
            ..o.input()
        },
    ));
    changed.push((
        "workdir",
        KeyInput {
            workdir: "src",
            ..o.input()
        },
    ));
    changed.push((
        "input digest",
        KeyInput {
            inputs: vec![InputDigest::One {
                name: "dataset",
                sha256: "ab",
            }],
            ..o.input()
        },
    ));
    changed.push((
        "input name",
        KeyInput {
            inputs: vec![InputDigest::One {
                name: "data",
                sha256: "aa",
            }],
            ..o.input()
        },
    ));
    changed.push((
        "code",
        KeyInput {
            code_sha256: "cd",
            ..o.input()
        },
    ));
    changed.push((
        "output path",
        KeyInput {
            outputs: vec![OutputDecl {
                name: "model",
                path: "model.bin",
                result: false,
            }],
            ..o.input()
        },
    ));
    changed.push((
        "output result",
        KeyInput {
            outputs: vec![OutputDecl {
                name: "model",
                path: "model.json",
                result: true,
            }],
            ..o.input()
        },
    ));
    changed.push((
        "version",
        KeyInput {
            version: "2",
            ..o.input()
        },
    ));
    for (what, input) in changed {
        assert_ne!(key(&input), base, "{what} must change the key");
    }
}

#[test]
fn fields_cannot_run_into_each_other() {
    let o = Owned::new();
    let split = strings(&["ab", "c"]);
    let joined = strings(&["a", "bc"]);
    let a = KeyInput {
        command: &split,
        ..o.input()
    };
    let b = KeyInput {
        command: &joined,
        ..o.input()
    };
    assert_ne!(key(&a), key(&b));
}

#[test]
fn map_and_list_order_do_not_matter_where_the_task_cannot_see_it() {
    let o = Owned::new();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..50 {
        env.insert(format!("K{i}"), i.to_string());
    }
    let mut env2: BTreeMap<String, String> = BTreeMap::new();
    for i in (0..50).rev() {
        env2.insert(format!("K{i}"), i.to_string());
    }
    let two = vec![
        InputDigest::One {
            name: "a",
            sha256: "1",
        },
        InputDigest::One {
            name: "b",
            sha256: "2",
        },
    ];
    let mut reversed = two.clone();
    reversed.reverse();
    let a = KeyInput {
        env: &env,
        inputs: two,
        ..o.input()
    };
    let b = KeyInput {
        env: &env2,
        inputs: reversed,
        ..o.input()
    };
    assert_eq!(key(&a), key(&b));
}

#[test]
fn gathered_parts_count_each_digest_and_the_listing() {
    let o = Owned::new();
    let gathered = |parts: Vec<(&'static str, &'static str)>, listing: &'static [u8]| KeyInput {
        inputs: vec![InputDigest::Parts {
            name: "models",
            parts,
            listing,
        }],
        ..o.input()
    };
    let base = key(&gathered(vec![("0", "aa"), ("1", "bb")], b"[]"));
    assert_ne!(base, key(&gathered(vec![("0", "aa"), ("1", "bc")], b"[]")));
    assert_ne!(base, key(&gathered(vec![("0", "aa")], b"[]")));
    assert_ne!(base, key(&gathered(vec![("0", "aa"), ("1", "bb")], b"[1]")));
}

#[test]
fn a_param_input_counts_its_content_and_name() {
    let o = Owned::new();
    let with = |name: &'static str, content: &'static [u8]| KeyInput {
        inputs: vec![InputDigest::Content { name, content }],
        ..o.input()
    };
    let base = with("objects.json", b"[1]").key().ok();
    assert!(base.is_some());
    assert_ne!(base, with("objects.json", b"[2]").key().ok());
    assert_ne!(base, with("list.json", b"[1]").key().ok());
    assert_ne!(base, o.input().key().ok());
}

#[test]
fn an_input_without_a_digest_has_no_key() {
    let o = Owned::new();
    let input = KeyInput {
        inputs: vec![InputDigest::One {
            name: "dataset",
            sha256: "",
        }],
        ..o.input()
    };
    assert_eq!(
        input.key(),
        Err(NoKey::UnknownDigest {
            input: "dataset".into()
        })
    );
}

#[test]
fn policy_defaults_to_tasks_with_outputs_and_never_finally() {
    let default = Policy {
        mode: Mode::Default,
        max_age: None,
    };
    assert!(default.enabled(true, false));
    assert!(!default.enabled(false, false));
    assert!(!default.enabled(true, true));
    let on = Policy {
        mode: Mode::On,
        ..default
    };
    assert!(on.enabled(false, false));
    let off = Policy {
        mode: Mode::Off,
        ..default
    };
    assert!(!off.enabled(true, false));
}

#[test]
fn max_age_bounds_which_entries_serve() {
    let p = Policy {
        mode: Mode::Default,
        max_age: Some(1_000),
    };
    assert!(p.fresh(10_000, 11_000));
    assert!(!p.fresh(10_000, 11_001));
    let any = Policy { max_age: None, ..p };
    assert!(any.fresh(0, u64::MAX));
}
