//! `drover queue`, `drover run priority` and `drover submit --queue/--priority`
//! refuse bad values before connecting: exit 2 and a message naming the flag
//! and the value. No cluster needed (the server address is unreachable).

use std::process::{Command, Output};

const DROVER: &str = env!("CARGO_BIN_EXE_drover");

fn drover(args: &[&str]) -> Output {
    Command::new(DROVER)
        .args(args)
        .env("DROVER_SERVER", "http://127.0.0.1:1")
        .output()
        .unwrap()
}

fn first_error_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn bad_values_exit_2_naming_flag_and_value() {
    for (args, expected) in [
        (
            &["queue", "create", "q", "--quota-cpu", "-1"][..],
            "error: invalid value '-1' for '--quota-cpu <CORES>': invalid quantity `-1` (use e.g. 500m, 0.5, 2)",
        ),
        (
            &["queue", "update", "q", "--quota-memory", "lots"],
            "error: invalid value 'lots' for '--quota-memory <QUANTITY>': invalid quantity `lots` (use e.g. 512Mi, 4Gi, 1G)",
        ),
        (
            &["queue", "create", "q", "--quota-gpus", "-2"],
            "error: invalid value '-2' for '--quota-gpus <N>': invalid count `-2` (use a whole number, e.g. 0, 1, 2, or none)",
        ),
        (
            &["queue", "create", "q", "--priority", "-1"],
            "error: invalid value '-1' for '--priority <N>': `-1` must be between 0 and 1000000",
        ),
        (
            &["queue", "update", "q", "--max-running", "0"],
            "error: invalid value '0' for '--max-running <N>': `0` would admit nothing (pause the queue instead)",
        ),
        (
            &["queue", "create", "Bad_Q"],
            "error: invalid value 'Bad_Q' for '<NAME>': invalid queue name `Bad_Q` (use lowercase letters, digits and `-`)",
        ),
        (
            &["run", "priority", "some-run", "-5"],
            "error: invalid value '-5' for '<PRIORITY>': `-5` must be between 0 and 1000000",
        ),
        (
            &["submit", "p.yaml", "--priority", "2000000"],
            "error: invalid value '2000000' for '--priority <N>': `2000000` must be between 0 and 1000000",
        ),
        (
            &["submit", "p.yaml", "--queue", "Team_A"],
            "error: invalid value 'Team_A' for '--queue <QUEUE>': invalid queue name `Team_A` (use lowercase letters, digits and `-`)",
        ),
    ] {
        let o = drover(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert_eq!(first_error_line(&o), expected, "{args:?}");
    }
}

#[test]
fn update_with_nothing_to_change_is_refused_before_connecting() {
    let o = drover(&["queue", "update", "train"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        first_error_line(&o),
        "error: queue update `train`: nothing to change (give at least one setting; see --help)"
    );
}

#[test]
fn good_values_get_as_far_as_connecting() {
    for args in [
        &[
            "queue",
            "create",
            "train",
            "--quota-cpu",
            "500m",
            "--quota-memory",
            "64Gi",
        ][..],
        &[
            "queue",
            "update",
            "train",
            "--quota-gpus",
            "none",
            "--no-borrow",
        ],
        &["queue", "list", "-o", "json"],
        &["run", "priority", "some-run", "1000000"],
    ] {
        let o = drover(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            first_error_line(&o)
                .starts_with("error: cannot reach the scheduler at http://127.0.0.1:1"),
            "{args:?}: {}",
            first_error_line(&o)
        );
    }
}

#[test]
fn help_lists_the_queue_commands() {
    let o = drover(&["queue", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for cmd in [
        "create", "update", "delete", "pause", "resume", "list", "show",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
    let o = drover(&["submit", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("--queue") && help.contains("--priority"),
        "{help}"
    );
}
