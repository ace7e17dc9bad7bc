//! `drover trace`: a run's task attempts on one timeline, from the
//! timestamps the scheduler records (no tracing backend needed).
//!
//! Each attempt is a row: queue wait (ready → assigned) as `░`, handing over
//! to the agent (assigned → started) as `▒`, running (started → finished) as
//! `█`. The critical path — the chain of tasks that decided when the run
//! ended — is marked `*`. Everything here is pure: a `pb::Run` and a clock in,
//! text or JSON out.

use std::fmt::Write as _;

use drover_api::pb;
use serde_json::{json, Value};

use crate::output::{attempt_state, duration, task_state};

/// One attempt on the timeline (all times Unix ms; `end` is `now` while it runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    pub task: String,
    pub attempt: u32,
    pub agent: String,
    pub state: String,
    pub ready: u64,
    pub assigned: u64,
    /// 0: never started.
    pub started: u64,
    pub end: u64,
    pub critical: bool,
    /// Served from the cache: the attempt whose result it took.
    pub cached_from: Option<String>,
}

impl Bar {
    pub fn queue_wait(&self) -> u64 {
        self.assigned.saturating_sub(self.ready)
    }

    pub fn run_time(&self) -> u64 {
        if self.started == 0 {
            0
        } else {
            self.end.saturating_sub(self.started)
        }
    }
}

/// A run laid out on one timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waterfall {
    pub run: String,
    pub trace_id: String,
    pub start: u64,
    pub end: u64,
    pub bars: Vec<Bar>,
    /// Tasks that never had an attempt: (name, state).
    pub idle: Vec<(String, String)>,
    /// Task names on the critical path, first to last.
    pub critical_path: Vec<String>,
}

/// When attempt `i` of a task became ready: as recorded, else (older records)
/// the run's creation for a first attempt and the previous attempt's end for
/// a later one.
fn ready_at(run: &pb::Run, attempts: &[pb::Attempt], i: usize) -> u64 {
    let a = &attempts[i];
    match (a.ready_at_ms, i) {
        (0, 0) => run.created_at_ms,
        (0, _) => attempts[i - 1].finished_at_ms.max(run.created_at_ms),
        (t, _) => t,
    }
}

/// When a task's last attempt ended (`now` while it runs), or None if it never ran.
fn task_end(t: &pb::Task, now_ms: u64) -> Option<u64> {
    let a = t.attempts.last()?;
    Some(if a.finished_at_ms > 0 {
        a.finished_at_ms
    } else {
        now_ms
    })
}

/// The chain of tasks that decided the run's end: from the task that ended
/// last, back through whichever upstream task ended last (the one it waited
/// for), to a task with no upstream. Indices into `run.tasks`, first to last.
pub fn critical_path(run: &pb::Run, now_ms: u64) -> Vec<usize> {
    let index = |name: &str| run.tasks.iter().position(|t| t.name == name);
    let latest = |candidates: &mut dyn Iterator<Item = usize>| {
        candidates
            .filter_map(|i| Some((task_end(&run.tasks[i], now_ms)?, i)))
            // Ties go to the earlier task in the spec, for stable output.
            .max_by(|(ta, ia), (tb, ib)| ta.cmp(tb).then(ib.cmp(ia)))
            .map(|(_, i)| i)
    };
    let mut path = Vec::new();
    let mut at = latest(&mut (0..run.tasks.len()));
    while let Some(i) = at {
        // A cycle cannot pass validation; stop rather than loop if one did.
        if path.contains(&i) {
            break;
        }
        path.push(i);
        at = latest(&mut run.tasks[i].depends_on.iter().filter_map(|d| index(d)));
    }
    path.reverse();
    path
}

/// Lays the run out; `now_ms` ends whatever still runs.
pub fn build(run: &pb::Run, now_ms: u64) -> Waterfall {
    let critical = critical_path(run, now_ms);
    let mut bars = Vec::new();
    let mut idle = Vec::new();
    for (ti, t) in run.tasks.iter().enumerate() {
        if t.attempts.is_empty() {
            idle.push((t.name.clone(), task_state(t.state())));
        }
        for (i, a) in t.attempts.iter().enumerate() {
            let end = if a.finished_at_ms > 0 {
                a.finished_at_ms
            } else {
                now_ms
            };
            let cached_from = a.cached_from.as_ref().map(crate::output::source_name);
            bars.push(Bar {
                task: t.name.clone(),
                attempt: a.number,
                agent: a.agent_id.clone(),
                state: if cached_from.is_some() {
                    "cached".to_owned()
                } else {
                    attempt_state(a.state())
                },
                // Served at once: no wait, no run time.
                ready: if cached_from.is_some() {
                    a.assigned_at_ms
                } else {
                    ready_at(run, &t.attempts, i)
                },
                assigned: a.assigned_at_ms,
                started: a.started_at_ms,
                end: end.max(a.assigned_at_ms),
                critical: critical.contains(&ti),
                cached_from,
            });
        }
    }
    // On the timeline in the order things became ready.
    bars.sort_by_key(|b| (b.ready, b.assigned));
    let start = bars
        .iter()
        .map(|b| b.ready)
        .chain(std::iter::once(run.created_at_ms))
        .min()
        .unwrap_or(0);
    let run_end = if run.finished_at_ms > 0 {
        run.finished_at_ms
    } else {
        now_ms
    };
    let end = bars
        .iter()
        .map(|b| b.end)
        .chain(std::iter::once(run_end))
        .max()
        .unwrap_or(start)
        .max(start);
    Waterfall {
        run: run.id.clone(),
        trace_id: run.trace_id.clone(),
        start,
        end,
        bars,
        idle,
        critical_path: critical
            .iter()
            .map(|&i| run.tasks[i].name.clone())
            .collect(),
    }
}

/// Column of time `t` on a bar `width` columns wide.
fn column(w: &Waterfall, t: u64, width: usize) -> usize {
    let span = w.end.saturating_sub(w.start).max(1);
    let offset = t.clamp(w.start, w.end) - w.start;
    ((offset as u128 * width as u128) / span as u128).min(width as u128) as usize
}

/// The bar of one attempt: blanks, then `░` waiting, `▒` handed over, `█` running.
fn bar_cells(w: &Waterfall, b: &Bar, width: usize) -> String {
    let mut cells = vec![' '; width];
    let mut paint = |from: u64, to: u64, c: char| {
        if to <= from {
            return;
        }
        let a = column(w, from, width);
        // Anything that took time shows as at least one cell.
        let z = column(w, to, width).max(a + 1).min(width);
        for cell in cells
            .iter_mut()
            .take(z)
            .skip(a.min(width.saturating_sub(1)))
        {
            *cell = c;
        }
    };
    paint(b.ready, b.assigned, '░');
    let handed_over_until = if b.started > 0 { b.started } else { b.end };
    paint(b.assigned, handed_over_until, '▒');
    if b.started > 0 {
        paint(b.started, b.end, '█');
    }
    cells.into_iter().collect()
}

/// The waterfall as text, bars `width` columns wide.
pub fn render(w: &Waterfall, width: usize) -> String {
    let width = width.max(10);
    let mut out = String::new();
    let _ = writeln!(out, "Run:    {}", w.run);
    if !w.trace_id.is_empty() {
        let _ = writeln!(out, "Trace:  {}", w.trace_id);
    }
    let _ = writeln!(out, "Took:   {}", duration(w.end - w.start));
    if !w.critical_path.is_empty() {
        let _ = writeln!(out, "Critical path (*): {}", w.critical_path.join(" → "));
    }
    let labels: Vec<String> = w
        .bars
        .iter()
        .map(|b| format!("{} #{}", b.task, b.attempt))
        .collect();
    let lw = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let sw = w
        .bars
        .iter()
        .map(|b| b.state.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let total = duration(w.end - w.start);
    let _ = writeln!(
        out,
        "\n  {:<lw$}  {:<sw$}  |0s{:>pad$}|  WAIT / RUN  AGENT",
        "TASK",
        "STATE",
        total,
        pad = width.saturating_sub(2)
    );
    for (b, label) in w.bars.iter().zip(&labels) {
        let mark = if b.critical { '*' } else { ' ' };
        let run = if b.started > 0 {
            duration(b.run_time())
        } else {
            "-".into()
        };
        let agent = match &b.cached_from {
            Some(from) => format!("from {from}"),
            None => b.agent.clone(),
        };
        let _ = writeln!(
            out,
            "{mark} {label:<lw$}  {:<sw$}  |{}|  {} / {}  {}",
            b.state,
            bar_cells(w, b, width),
            duration(b.queue_wait()),
            run,
            agent
        );
    }
    for (name, state) in &w.idle {
        let _ = writeln!(out, "  {name:<lw$}  {state:<sw$}  |{}|", " ".repeat(width));
    }
    let _ = writeln!(
        out,
        "\n░ waiting in queue (ready → assigned)  ▒ handed to agent  █ running  * critical path"
    );
    out
}

pub fn to_json(w: &Waterfall) -> Value {
    json!({
        "run": w.run,
        "trace_id": w.trace_id,
        "start_ms": w.start,
        "end_ms": w.end,
        "critical_path": w.critical_path,
        "attempts": w.bars.iter().map(|b| json!({
            "task": b.task,
            "attempt": b.attempt,
            "agent": b.agent,
            "state": b.state,
            "ready_at_ms": b.ready,
            "assigned_at_ms": b.assigned,
            "started_at_ms": b.started,
            "end_ms": b.end,
            "queue_wait_ms": b.queue_wait(),
            "run_ms": b.run_time(),
            "critical": b.critical,
            "cached_from": b.cached_from,
        })).collect::<Vec<_>>(),
        "not_run": w.idle.iter().map(|(n, s)| json!({"task": n, "state": s})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    fn attempt(number: u32, ready: u64, assigned: u64, started: u64, finished: u64) -> pb::Attempt {
        pb::Attempt {
            number,
            agent_id: "gpu-1".into(),
            state: if finished > 0 {
                pb::AttemptState::Succeeded as i32
            } else {
                pb::AttemptState::Running as i32
            },
            ready_at_ms: ready,
            assigned_at_ms: assigned,
            started_at_ms: started,
            finished_at_ms: finished,
            ..Default::default()
        }
    }

    fn task(name: &str, deps: &[&str], attempts: Vec<pb::Attempt>) -> pb::Task {
        pb::Task {
            name: name.into(),
            state: pb::TaskState::Succeeded as i32,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            attempts,
            ..Default::default()
        }
    }

    /// prep → {fast, slow} → eval: slow decides when eval can start.
    fn diamond() -> pb::Run {
        pb::Run {
            id: "r1".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            created_at_ms: 1_000,
            finished_at_ms: 11_000,
            tasks: vec![
                task("prep", &[], vec![attempt(1, 0, 1_000, 1_000, 2_000)]),
                task(
                    "fast",
                    &["prep"],
                    vec![attempt(1, 2_000, 2_000, 2_000, 3_000)],
                ),
                task(
                    "slow",
                    &["prep"],
                    vec![
                        attempt(1, 2_000, 4_000, 4_000, 5_000),
                        attempt(2, 6_000, 6_000, 6_000, 9_000),
                    ],
                ),
                task(
                    "eval",
                    &["fast", "slow"],
                    vec![attempt(1, 9_000, 9_000, 9_500, 11_000)],
                ),
            ],
            ..Default::default()
        }
    }

    fn names(run: &pb::Run, path: &[usize]) -> Vec<String> {
        path.iter().map(|&i| run.tasks[i].name.clone()).collect()
    }

    #[test]
    fn critical_path_follows_the_upstream_task_that_ended_last() {
        let run = diamond();
        assert_eq!(
            names(&run, &critical_path(&run, 20_000)),
            vec!["prep", "slow", "eval"]
        );
    }

    #[test]
    fn critical_path_of_a_running_run_ends_at_what_runs_now() {
        let mut run = diamond();
        run.finished_at_ms = 0;
        run.tasks[3].attempts.clear();
        // slow's second attempt still runs: it is the latest "end" (now).
        run.tasks[2].attempts[1] = attempt(2, 6_000, 6_000, 6_000, 0);
        assert_eq!(
            names(&run, &critical_path(&run, 8_000)),
            vec!["prep", "slow"]
        );
    }

    #[test]
    fn critical_path_is_empty_before_anything_ran_and_ties_are_stable() {
        let mut run = diamond();
        for t in &mut run.tasks {
            t.attempts.clear();
        }
        assert!(critical_path(&run, 5_000).is_empty());

        let mut run = diamond();
        run.tasks[1].attempts[0].finished_at_ms = 9_000; // fast ties with slow
        assert_eq!(
            names(&run, &critical_path(&run, 20_000)),
            vec!["prep", "fast", "eval"]
        );
    }

    #[test]
    fn bars_split_queue_wait_from_run_time() -> TestResult {
        let w = build(&diamond(), 20_000);
        assert_eq!((w.start, w.end), (1_000, 11_000));
        assert_eq!(w.critical_path, vec!["prep", "slow", "eval"]);
        let slow1 = w
            .bars
            .iter()
            .find(|b| b.task == "slow" && b.attempt == 1)
            .ok_or("no slow #1 bar")?;
        assert_eq!((slow1.queue_wait(), slow1.run_time()), (2_000, 1_000));
        assert!(slow1.critical);
        let fast = w
            .bars
            .iter()
            .find(|b| b.task == "fast")
            .ok_or("no fast bar")?;
        assert!(!fast.critical);
        // A first attempt with no recorded ready time waited from the run's creation.
        let prep = w
            .bars
            .iter()
            .find(|b| b.task == "prep")
            .ok_or("no prep bar")?;
        assert_eq!(prep.ready, 1_000);
        // Ordered by when they became ready.
        let order: Vec<(&str, u32)> = w
            .bars
            .iter()
            .map(|b| (b.task.as_str(), b.attempt))
            .collect();
        assert_eq!(
            order,
            vec![
                ("prep", 1),
                ("fast", 1),
                ("slow", 1),
                ("slow", 2),
                ("eval", 1)
            ]
        );
        Ok(())
    }

    #[test]
    fn renders_one_row_per_attempt_on_a_shared_scale() -> TestResult {
        let text = render(&build(&diamond(), 20_000), 20);
        // 10 s over 20 columns: 0.5 s a column.
        let row = |label: &str| {
            text.lines()
                .find(|l| l.contains(label))
                .unwrap_or_else(|| panic!("no row {label} in\n{text}"))
                .to_string()
        };
        let bar = |label: &str| {
            let r = row(label);
            // Each row has the bar between two `|`.
            let mut parts = r.split('|');
            parts
                .nth(1)
                .filter(|_| parts.next().is_some())
                .unwrap_or_else(|| panic!("no bar in row {r}"))
                .to_string()
        };
        assert_eq!(bar("prep #1"), "██                  ");
        // slow #1: waits 2 s (4 cells), runs 1 s (2 cells) from 1 s after the start.
        assert_eq!(bar("slow #1"), "  ░░░░██            ");
        assert_eq!(bar("eval #1"), "                ▒███");
        assert!(row("slow #2").starts_with('*'));
        assert!(row("fast #1").starts_with(' '));
        assert!(row("slow #1").contains("2s / 1s"), "{}", row("slow #1"));
        assert!(text.contains("Critical path (*): prep → slow → eval"));
        assert!(text.contains("Trace:  4bf92f3577b34da6a3ce929d0e0e4736"));
        Ok(())
    }

    #[test]
    fn tasks_that_never_ran_are_listed_without_a_bar() {
        let mut run = diamond();
        run.tasks[3].attempts.clear();
        run.tasks[3].state = pb::TaskState::Skipped as i32;
        let w = build(&run, 20_000);
        assert_eq!(
            w.idle,
            vec![("eval".to_string(), task_state(pb::TaskState::Skipped))]
        );
        assert!(render(&w, 20)
            .lines()
            .any(|l| l.trim_start().starts_with("eval")));
        let j = to_json(&w);
        assert_eq!(j["not_run"][0]["task"], "eval");
        assert_eq!(j["attempts"].as_array().map(Vec::len), Some(4));
    }

    #[test]
    fn json_carries_waits_runs_and_the_critical_path() {
        let j = to_json(&build(&diamond(), 20_000));
        assert_eq!(j["critical_path"], json!(["prep", "slow", "eval"]));
        let eval = &j["attempts"][4];
        assert_eq!(eval["task"], "eval");
        assert_eq!(eval["queue_wait_ms"], 0);
        assert_eq!(eval["run_ms"], 1_500);
        assert_eq!(eval["critical"], true);
    }
}
