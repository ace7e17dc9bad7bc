//! Pipeline specs the scenarios submit, as YAML (the only way in through
//! the API). Every task is the no-op `true`.

use std::fmt::Write as _;

const NO_OP: &str = r#"command: ["true"]"#;

/// `n` tasks, each depending on the one before: `c00000 → c00001 → …`.
pub fn chain(n: usize) -> String {
    let mut y = String::from("name: bench-chain\ntasks:\n");
    for i in 0..n {
        let _ = write!(y, "  - {{name: c{i:05}, {NO_OP}");
        if i > 0 {
            let _ = write!(y, ", depends_on: [c{:05}]", i - 1);
        }
        y.push_str("}\n");
    }
    y
}

/// A producer writing a list (the simulated agents store it) and one no-op
/// `for_each` task over it: its instances are the run's other tasks.
pub fn map() -> String {
    format!(
        "name: bench-map\ntasks:\n  - {{name: list, {NO_OP}, outputs: [{{name: items, path: items.json}}]}}\n  - {{name: work, {NO_OP}, depends_on: [list], for_each: {{from: list/items}}}}\n"
    )
}

/// `n` tasks with no dependencies, each cached (`cache: true`) under a key
/// of its own (the command names the task).
pub fn independent_cached(n: usize) -> String {
    let mut y = String::from("name: bench-cached\ntasks:\n");
    for i in 0..n {
        let _ = writeln!(
            y,
            "  - {{name: t{i:06}, command: [\"true\", \"{i:06}\"], cache: true}}"
        );
    }
    y
}

/// `n` tasks with no dependencies.
pub fn independent(n: usize) -> String {
    let mut y = String::from("name: bench-flat\ntasks:\n");
    for i in 0..n {
        let _ = writeln!(y, "  - {{name: t{i:06}, {NO_OP}}}");
    }
    y
}

/// `n` independent tasks each sleeping `seconds` (work that keeps flowing).
pub fn sleepers(n: usize, seconds: &str) -> String {
    let mut y = String::from("name: bench-sleepers\ntasks:\n");
    for i in 0..n {
        let _ = writeln!(
            y,
            "  - {{name: t{i:06}, command: [sleep, \"{seconds}\"], resources: {{cpu: 250m}}}}"
        );
    }
    y
}

/// Layers of fan-out and fan-in, `about` tasks in all: blocks of one source
/// task (after the previous block's join), `width` tasks fanned out from it,
/// and one join task depending on all of them. Returns the YAML and the
/// exact task count.
pub fn fan_dag(about: usize, width: usize) -> (String, usize) {
    let width = width.max(1);
    let blocks = (about / (width + 2)).max(1);
    let mut y = String::from("name: bench-dag\ntasks:\n");
    let mut count = 0;
    for b in 0..blocks {
        // The last block takes what is left over, so the total is `about`.
        let w = if b + 1 == blocks {
            about
                .saturating_sub(blocks * (width + 2) - width)
                .max(width)
        } else {
            width
        };
        let _ = write!(y, "  - {{name: s{b:04}, {NO_OP}");
        if b > 0 {
            let _ = write!(y, ", depends_on: [j{:04}]", b - 1);
        }
        y.push_str("}\n");
        for i in 0..w {
            let _ = writeln!(
                y,
                "  - {{name: f{b:04}-{i:05}, {NO_OP}, depends_on: [s{b:04}]}}"
            );
        }
        let _ = write!(y, "  - {{name: j{b:04}, {NO_OP}, depends_on: [");
        for i in 0..w {
            if i > 0 {
                y.push(',');
            }
            let _ = write!(y, "f{b:04}-{i:05}");
        }
        y.push_str("]}\n");
        count += w + 2;
    }
    (y, count)
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    fn parse(y: &str) -> drover_api::pb::PipelineSpec {
        drover_api::spec::parse_spec(y, &Default::default()).expect("valid spec")
    }

    #[test]
    fn specs_are_valid_and_sized() -> TestResult {
        let c = parse(&chain(3));
        assert_eq!(c.tasks.len(), 3);
        assert_eq!(c.tasks[2].depends_on, vec!["c00001"]);
        assert_eq!(parse(&independent(5)).tasks.len(), 5);
        let (y, n) = fan_dag(1000, 100);
        assert_eq!(n, 1000);
        let d = parse(&y);
        assert_eq!(d.tasks.len(), 1000);
        let join = d
            .tasks
            .iter()
            .find(|t| t.name == "j0000")
            .ok_or("no join task")?;
        assert_eq!(join.depends_on.len(), 100);
        let (_, small) = fan_dag(10, 100);
        assert_eq!(small, 102, "at least one whole block");
        let m = parse(&map());
        let from = m.tasks[1].for_each.as_ref().ok_or("no for_each")?;
        assert_eq!(
            (from.from_task.as_str(), from.from_output.as_str()),
            ("list", "items")
        );
        Ok(())
    }
}
