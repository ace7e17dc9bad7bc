//! The validator's own rules: names, labels, queues, priorities, paths, cycles.

use super::*;

#[test]
fn names() {
    for good in ["a", "train-digits", "v1.2_x", "0", &"a".repeat(63)] {
        assert!(is_name(good), "{good}");
    }
    for bad in [
        "",
        "-a",
        ".a",
        "_a",
        "a b",
        "a/b",
        "a:b",
        "ü",
        &"a".repeat(64),
    ] {
        assert!(!is_name(bad), "{bad}");
    }
    for good in ["SEED", "_x", "a1"] {
        assert!(is_env_name(good), "{good}");
    }
    for bad in ["", "1A", "A-B", "A.B", "A B"] {
        assert!(!is_env_name(bad), "{bad}");
    }
}

#[test]
fn queue_names() {
    for good in [
        "a",
        "0",
        "train",
        "team-a",
        "a-b-c",
        "gpu2",
        &"q".repeat(63),
    ] {
        assert!(is_queue_name(good), "{good}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        "-",
        "Bad",
        "team_a",
        "a.b",
        "a b",
        "a/b",
        "ü",
        &"q".repeat(64),
    ] {
        assert!(!is_queue_name(bad), "{bad}");
    }
}

#[test]
fn priorities() {
    for (text, p) in [
        ("0", 0),
        ("10", 10),
        (" 7 ", 7),
        ("+3", 3),
        ("1000000", 1_000_000),
    ] {
        assert_eq!(parse_priority(text), Ok(p), "{text}");
    }
    for text in [
        "-1",
        "1000001",
        "99999999999999999999",
        "-0000000000000000000001",
    ] {
        assert_eq!(
            parse_priority(text),
            Err(format!("`{text}` must be between 0 and 1000000"))
        );
    }
    for text in ["", "-", "1.5", "high", "1e3", "0x10", "1_000"] {
        assert_eq!(
            parse_priority(text),
            Err(format!(
                "invalid priority `{text}` (use a whole number from 0 to 1000000)"
            ))
        );
    }
}

#[test]
fn label_keys_and_values() {
    for good in [
        "zone",
        "gpu",
        "0",
        "drover.io/gpu-model",
        "a_b",
        &"k".repeat(63),
    ] {
        assert!(is_label_key(good), "{good}");
    }
    for bad in [
        "",
        "/zone",
        "-a",
        ".a",
        "_a",
        "a b",
        "a:b",
        "a=b",
        "ü",
        &"k".repeat(64),
    ] {
        assert!(!is_label_key(bad), "{bad}");
    }
    for good in ["", "eu", "a100", "-x_", "v1.2", &"v".repeat(63)] {
        assert!(is_label_value(good), "{good}");
    }
    for bad in [
        "eu west",
        "a/b",
        "a,b",
        "a=b",
        "{{params.x}}",
        "é",
        &"v".repeat(64),
    ] {
        assert!(!is_label_value(bad), "{bad}");
    }
}

#[test]
fn output_paths() {
    assert_eq!(
        normalise_output_path("model.pt"),
        Some("model.pt".to_owned())
    );
    assert_eq!(
        normalise_output_path("./out//model.pt"),
        Some("out/model.pt".to_owned())
    );
    assert_eq!(
        normalise_output_path("a..b/c.."),
        Some("a..b/c..".to_owned())
    );
    for bad in ["", ".", "./", "/abs", "../x", "a/../b", "a/..", "a\0b"] {
        assert_eq!(normalise_output_path(bad), None, "{bad:?}");
    }
}

#[test]
fn cycles_start_at_the_earliest_task() {
    assert_eq!(find_cycle(&[vec![1], vec![2], vec![]]), None);
    // 0 → 1 → 2 → 1: the cycle is 1 → 2 → 1, reached through 0.
    assert_eq!(
        find_cycle(&[vec![1], vec![2], vec![1]]),
        Some(vec![1, 2, 1])
    );
    // Entered at 3, reported from 0.
    assert_eq!(
        find_cycle(&[vec![1], vec![2], vec![0], vec![2]]),
        Some(vec![0, 1, 2, 0])
    );
    // A diamond is not a cycle.
    assert_eq!(find_cycle(&[vec![1, 2], vec![3], vec![3], vec![]]), None);
}

#[test]
fn long_chains_do_not_overflow_the_stack() {
    let n = 100_000;
    let mut deps: Vec<Vec<usize>> = (0..n)
        .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
        .collect();
    assert_eq!(find_cycle(&deps), None);
    assert!(reachable(0, &deps)[n - 1]);
    deps[n - 1].push(0);
    assert_eq!(find_cycle(&deps).map(|c| c.len()), Some(n + 1));
}
