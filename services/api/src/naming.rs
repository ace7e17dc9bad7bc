//! Names shared by the scheduler and the agents: NATS subjects, the JetStream
//! stream, and object-store keys. One place, so the two sides cannot drift.
//!
//! Every NATS name starts with a configurable prefix (default `drover`), which
//! lets tests and several installations share one NATS server.

/// UUIDs of GPUs advertised by `--simulate-gpus` start with this, so every
/// component can tell them from real devices (no device request to Docker,
/// marked as simulated wherever GPUs are shown).
pub const SIMULATED_GPU_UUID_PREFIX: &str = "GPU-SIMULATED-";

/// Whether a GPU UUID belongs to a simulated GPU.
pub fn is_simulated_gpu(uuid: &str) -> bool {
    uuid.starts_with(SIMULATED_GPU_UUID_PREFIX)
}

/// The variable a `finally` task finds how the run's other tasks ended in:
/// `succeeded`, `failed` or `cancelled`. Set by the scheduler in the
/// assignment's env (specs may not set `DROVER_*` variables).
pub const RUN_STATE_ENV: &str = "DROVER_RUN_STATE";

/// Default NATS subject prefix.
pub const DEFAULT_NATS_PREFIX: &str = "drover";

/// Scheduler → agent request/reply: `Assignment` → `AssignReply`.
pub fn assign_subject(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}.agent.{agent_id}.assign")
}

/// Scheduler → agent request/reply: `AssignBatch` → `AssignBatchReply`,
/// every assignment of one scheduler turn to the agent.
pub fn assign_batch_subject(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}.agent.{agent_id}.assigns")
}

/// Scheduler → agent request/reply: `CancelAttempt` → `CancelReply`.
pub fn cancel_subject(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}.agent.{agent_id}.cancel")
}

/// Agent → scheduler, core NATS: `Heartbeat`.
pub fn heartbeat_subject(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}.heartbeat.{agent_id}")
}

/// Every agent's heartbeats.
pub fn heartbeat_wildcard(prefix: &str) -> String {
    format!("{prefix}.heartbeat.*")
}

/// Scheduler → every agent, core NATS, empty body: "heartbeat now". A
/// starting scheduler sends it so it learns the fleet at once rather than
/// after a heartbeat interval.
pub fn heartbeat_now_subject(prefix: &str) -> String {
    format!("{prefix}.agents.heartbeat-now")
}

/// Scheduler → agent request/reply: `LiveLogRequest` → `LiveLogReply`,
/// the log of a running attempt so far.
pub fn live_log_subject(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}.agent.{agent_id}.log")
}

/// Agent → whoever follows, core NATS: `LiveLogChunk`s of a running
/// attempt of `task`, published by `agent_id` (its id in the subject, so
/// NATS permissions can keep an agent to its own log subjects). Run and
/// task names may hold `.` (and matrix instances `[`, `=`, `,`), so each is
/// made one subject token; two names may then share a subject, and readers
/// go by the chunk's own attempt.
pub fn logs_subject(prefix: &str, agent_id: &str, run_id: &str, task: &str) -> String {
    format!(
        "{prefix}.logs.{agent_id}.{}.{}",
        subject_token(run_id),
        subject_token(task)
    )
}

/// What a follower subscribes to: the chunks of `task` of the run, or of
/// every task of the run, from whichever agent runs them.
pub fn logs_follow_subject(prefix: &str, run_id: &str, task: Option<&str>) -> String {
    format!(
        "{prefix}.logs.*.{}.{}",
        subject_token(run_id),
        task.map_or_else(|| "*".to_owned(), subject_token)
    )
}

/// Every live log subject one agent may publish on.
pub fn logs_agent_wildcard(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}.logs.{agent_id}.>")
}

/// Every live log subject.
pub fn logs_wildcard(prefix: &str) -> String {
    format!("{prefix}.logs.>")
}

/// `name` as one NATS subject token: `.`, the wildcards and whitespace
/// become `_` (an empty name `_` too).
fn subject_token(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

/// Agent → scheduler, JetStream: `AttemptEvent`.
pub fn events_subject(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}.events.{agent_id}")
}

/// Agent → scheduler, JetStream: `AttemptEventBatch`, several events in
/// one message. Agent ids are one subject token, so `<agent>.batch` cannot
/// be another agent's single-event subject.
pub fn events_batch_subject(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}.events.{agent_id}.batch")
}

/// Whether a message on the events stream is an `AttemptEventBatch`
/// (else it is one `AttemptEvent`): a token after the agent's.
pub fn is_events_batch(prefix: &str, subject: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .and_then(|s| s.strip_prefix(".events."))
        .is_some_and(|agent_and_more| agent_and_more.contains('.'))
}

/// The agent whose subject carried a message of the events stream
/// (`<prefix>.events.<agent>[.batch]`); None for any other subject.
pub fn events_agent<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".events.")?;
    let agent = rest.split('.').next()?;
    (!agent.is_empty()).then_some(agent)
}

/// The agent whose heartbeat subject (`<prefix>.heartbeat.<agent>`) carried a message.
pub fn heartbeat_agent<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    let agent = subject.strip_prefix(prefix)?.strip_prefix(".heartbeat.")?;
    (!agent.is_empty() && !agent.contains('.')).then_some(agent)
}

/// `Nats-Msg-Id` of a batch of events, from its events' own ids (in order):
/// a re-published batch is the same batch, stored once, and two different
/// batches differ in id. The first event's id keeps it readable; the rest
/// are folded into a 64-bit hash (within the stream's duplicate window, a
/// collision between two batches is out of reach).
pub fn event_batch_msg_id<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    use std::hash::{Hash, Hasher};
    let mut ids = ids.into_iter();
    let first = ids.next().unwrap_or_default();
    let mut hasher = std::hash::DefaultHasher::new();
    let mut n = 1usize;
    for id in ids {
        id.hash(&mut hasher);
        n += 1;
    }
    format!("batch/{n}/{first}/{:016x}", hasher.finish())
}

/// The subjects the events stream captures.
pub fn events_wildcard(prefix: &str) -> String {
    format!("{prefix}.events.>")
}

/// How long JetStream remembers a `Nats-Msg-Id`, so a re-published event is stored once.
pub const EVENTS_DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// How long an attempt event stays in the stream. The scheduler acks each
/// event once committed, but a stream with the default limits keeps every
/// event ever published (about 0.4 KB per task), so it grew without bound;
/// a week outlasts any scheduler outage worth waiting for (the scheduler
/// reconciles from heartbeats when it comes back anyway).
pub const EVENTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The events stream's configuration. Agents and the scheduler create the
/// same one, whichever comes first; the scheduler also brings an existing
/// stream up to it at start.
pub fn events_stream_config(prefix: &str) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: events_stream(prefix),
        subjects: vec![events_wildcard(prefix)],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: EVENTS_DUPLICATE_WINDOW,
        max_age: EVENTS_MAX_AGE,
        ..Default::default()
    }
}

/// JetStream stream holding attempt events (stream names allow no dots).
pub fn events_stream(prefix: &str) -> String {
    format!(
        "{}_EVENTS",
        prefix.replace(['.', '*', '>'], "_").to_uppercase()
    )
}

/// `Nats-Msg-Id` of an attempt event, so a re-published event is stored once.
pub fn event_msg_id(run_id: &str, task: &str, attempt: u32, kind: &str) -> String {
    format!("{run_id}/{task}/{attempt}/{kind}")
}

/// Object-store prefix of one attempt: `runs/<run>/<task>.<attempt>`.
///
/// Flat on purpose: with a `file://` store every path segment is a
/// directory, and an attempt that writes only its log then creates no
/// directory at all (the log is `<prefix>.log`, next to the prefix, not in
/// it). Creating two directories per attempt was a measurable share of a
/// short task's cost (benches/README.md). Unambiguous: the attempt is the
/// number after the last dot, and task names cannot start with `_` or `.`.
pub fn attempt_prefix(run_id: &str, task: &str, attempt: u32) -> String {
    format!("runs/{run_id}/{task}.{attempt}")
}

/// Object-store key of a declared output of an attempt.
pub fn output_key(attempt_prefix: &str, output: &str) -> String {
    format!("{attempt_prefix}/outputs/{output}")
}

/// Object-store key of an attempt's captured stdout/stderr: beside the
/// attempt's prefix, so storing it needs no directory of its own.
pub fn log_key(attempt_prefix: &str) -> String {
    format!("{attempt_prefix}.log")
}

/// Object-store key of a code snapshot: one object per content, shared by
/// every run that packs the same files.
pub fn code_key(sha256: &str) -> String {
    format!("code/{sha256}.tar")
}

/// Whether `value` is a sha256 as Drover writes it: 64 lowercase hex digits
/// (it becomes part of an object key and a directory name on agents).
pub fn is_sha256(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_keys_take_only_lowercase_sha256() {
        let sha = "0123456789abcdef".repeat(4);
        assert!(is_sha256(&sha));
        assert_eq!(code_key(&sha), format!("code/{sha}.tar"));
        assert!(!is_sha256(&sha.to_uppercase()));
        assert!(!is_sha256(&sha[1..]));
        assert!(!is_sha256(&format!("../{}", &sha[3..])));
    }

    #[test]
    fn stream_name_has_no_dots() {
        assert_eq!(events_stream("drover"), "DROVER_EVENTS");
        assert_eq!(events_stream("t.1"), "T_1_EVENTS");
    }

    #[test]
    fn keys_sit_under_and_beside_the_attempt_prefix() {
        let p = attempt_prefix("r1", "train", 2);
        assert_eq!(output_key(&p, "model"), "runs/r1/train.2/outputs/model");
        assert_eq!(log_key(&p), "runs/r1/train.2.log");
    }

    #[test]
    fn a_batch_is_named_by_all_its_events() {
        let id = event_batch_msg_id(["r/a/1/succeeded", "r/b/1/succeeded"]);
        assert!(id.starts_with("batch/2/r/a/1/succeeded/"), "{id}");
        // The same batch re-published keeps its id; another batch does not
        // share it even when it starts with the same event.
        assert_eq!(
            id,
            event_batch_msg_id(["r/a/1/succeeded", "r/b/1/succeeded"])
        );
        assert_ne!(
            id,
            event_batch_msg_id(["r/a/1/succeeded", "r/c/1/succeeded"])
        );
        assert_ne!(
            id,
            event_batch_msg_id(["r/a/1/succeeded", "r/b/1/succeeded", "r/c/1/failed"])
        );
    }

    #[test]
    fn log_subjects_have_one_token_per_agent_run_and_task() {
        let s = logs_subject("drover.x", "a1", "digits.v2-1a2b3c4d", "train[lr=0.03]");
        assert_eq!(s, "drover.x.logs.a1.digits_v2-1a2b3c4d.train[lr=0_03]");
        assert_eq!(logs_subject("p", "a", "r", ""), "p.logs.a.r._");
        assert_eq!(logs_subject("p", "a", "r", "a *>b"), "p.logs.a.r.a___b");
        // A follower's subject covers every agent's chunks of its run (and
        // task), and only those.
        let run = logs_follow_subject("drover.x", "digits.v2-1a2b3c4d", None);
        assert_eq!(run, "drover.x.logs.*.digits_v2-1a2b3c4d.*");
        let task = logs_follow_subject("drover.x", "digits.v2-1a2b3c4d", Some("train[lr=0.03]"));
        assert_eq!(task, "drover.x.logs.*.digits_v2-1a2b3c4d.train[lr=0_03]");
        assert_eq!(
            s.replacen(".a1.", ".*.", 1)
                .rsplit_once('.')
                .map(|(head, _)| head),
            run.strip_suffix(".*")
        );
        assert!(s.starts_with(logs_agent_wildcard("drover.x", "a1").trim_end_matches('>')));
        assert!(s.starts_with(logs_wildcard("drover.x").trim_end_matches('>')));
    }

    #[test]
    fn subjects_name_the_agent_that_sent_them() {
        let p = "drover.x";
        assert_eq!(events_agent(p, &events_subject(p, "a1")), Some("a1"));
        assert_eq!(events_agent(p, &events_batch_subject(p, "a1")), Some("a1"));
        assert_eq!(events_agent(p, "drover.y.events.a1"), None);
        assert_eq!(events_agent(p, "drover.x.events."), None);
        assert_eq!(
            heartbeat_agent(p, &heartbeat_subject(p, "gpu-2")),
            Some("gpu-2")
        );
        assert_eq!(heartbeat_agent(p, "drover.x.heartbeat.a.b"), None);
        assert_eq!(heartbeat_agent(p, &events_subject(p, "a1")), None);
    }

    #[test]
    fn batch_subjects_are_told_from_single_event_subjects() {
        let batch = events_batch_subject("drover.x", "gpu-1");
        assert!(is_events_batch("drover.x", &batch));
        assert!(!is_events_batch(
            "drover.x",
            &events_subject("drover.x", "gpu-1")
        ));
        // An agent may be called `batch`.
        assert!(!is_events_batch(
            "drover.x",
            &events_subject("drover.x", "batch")
        ));
        let batch = events_batch_subject("drover", "gpu-1");
        // Both are captured by the events stream.
        assert!(batch.starts_with(events_wildcard("drover").trim_end_matches('>')));
    }
}
