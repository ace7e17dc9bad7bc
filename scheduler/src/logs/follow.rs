//! Following one task's log, as pure decisions: which attempt to follow,
//! where its bytes come from (the agent while it runs, the object store
//! once it ended), and how a live chunk joins what was already sent. No
//! I/O: the shell (`super`) reads and sends.

use std::ops::Range;

use drover_api::pb;

/// What to do with a live chunk of bytes `[offset, offset + len)`, given
/// that the follower has sent the attempt's first `sent` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Every byte of it was sent already.
    Seen,
    /// Send the chunk's data from this index on.
    Send { from: usize },
    /// Bytes between what was sent and the chunk are missing (a chunk
    /// published before the follower subscribed, or dropped): fetch them
    /// first.
    Gap { missing: Range<u64> },
}

pub fn take(sent: u64, offset: u64, len: usize) -> Take {
    let end = offset.saturating_add(len as u64);
    if offset > sent {
        Take::Gap {
            missing: sent..offset,
        }
    } else if end <= sent {
        Take::Seen
    } else {
        // offset <= sent < end, so the index fits the chunk.
        Take::Send {
            from: usize::try_from(sent - offset).unwrap_or(len),
        }
    }
}

/// What the shell does next for a followed task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Announce this attempt and follow it from its first byte
    /// ([`TaskFollow::start`]).
    Follow { attempt: u32 },
    /// The attempt ended with this stored log: send it from `sent` on,
    /// then [`TaskFollow::drained`].
    Stored { key: String },
    /// The attempt ended without a stored log (it printed nothing, or was
    /// lost with its agent): [`TaskFollow::drained`].
    NoStoredLog,
    /// The attempt runs (or is about to) on `agent`: once `started`, read
    /// what it wrote so far there; take live chunks.
    Live { agent: String, started: bool },
    /// Wait for the task's next attempt, or for its end.
    Wait,
    /// Nothing more comes for this task.
    Done,
}

/// Where a follower is in one task's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFollow {
    pub task: String,
    /// The attempt followed (0: none yet).
    pub attempt: u32,
    /// How many of its bytes were sent.
    pub sent: u64,
    /// Its agent, once it runs (set by the shell from [`Next::Live`]).
    pub agent: String,
    /// Its stored log was sent, or it has none: nothing more of it comes.
    pub drained: bool,
    /// Its agent answered with the log so far: live chunks carry on from there.
    pub caught_up: bool,
    /// A gap could not be filled from the agent: live chunks are left
    /// alone and the stored log brings the rest when the attempt ends.
    pub live_broken: bool,
}

/// A task that will get no new attempt (unless the run is retried).
fn task_finished(state: pb::TaskState) -> bool {
    matches!(
        state,
        pb::TaskState::Succeeded
            | pb::TaskState::Failed
            | pb::TaskState::Cancelled
            | pb::TaskState::Skipped
    )
}

/// An attempt whose log will not grow any more.
fn attempt_ended(state: pb::AttemptState) -> bool {
    !matches!(
        state,
        pb::AttemptState::Assigned | pb::AttemptState::Running | pb::AttemptState::Unspecified
    )
}

impl TaskFollow {
    pub fn new(task: impl Into<String>) -> Self {
        Self {
            task: task.into(),
            attempt: 0,
            sent: 0,
            agent: String::new(),
            drained: false,
            caught_up: false,
            live_broken: false,
        }
    }

    /// Follows `attempt` from its first byte.
    pub fn start(&mut self, attempt: u32) {
        *self = Self {
            attempt,
            ..Self::new(std::mem::take(&mut self.task))
        };
    }

    pub fn drained(&mut self) {
        self.drained = true;
    }

    /// Whether a live chunk of `attempt` concerns this follower now.
    pub fn takes_live(&self, attempt: u32) -> bool {
        attempt == self.attempt && self.attempt != 0 && !self.drained && !self.live_broken
    }

    /// The next step, from the task as last read and whether its run is
    /// still active. Called again after each step until `Live`, `Wait` or
    /// `Done`.
    pub fn next(&self, task: &pb::Task, run_active: bool) -> Next {
        let current = task.attempts.iter().find(|a| a.number == self.attempt);
        let latest = task.attempts.iter().map(|a| a.number).max().unwrap_or(0);
        if self.attempt != 0 && !self.drained {
            return match current {
                Some(a) if !attempt_ended(a.state()) => Next::Live {
                    agent: a.agent_id.clone(),
                    started: a.state() == pb::AttemptState::Running,
                },
                Some(a) if !a.log_key.is_empty() && !a.log_empty => Next::Stored {
                    key: a.log_key.clone(),
                },
                // Ended without a log, or gone from the record (cannot be).
                _ => Next::NoStoredLog,
            };
        }
        if latest > self.attempt {
            return Next::Follow { attempt: latest };
        }
        if task_finished(task.state()) || !run_active {
            Next::Done
        } else {
            Next::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_chunks_join_what_was_sent_without_overlap_or_hole() {
        assert_eq!(take(0, 0, 5), Take::Send { from: 0 });
        assert_eq!(take(10, 4, 10), Take::Send { from: 6 });
        assert_eq!(take(10, 4, 6), Take::Seen);
        assert_eq!(take(10, 0, 3), Take::Seen);
        assert_eq!(take(10, 10, 0), Take::Seen);
        assert_eq!(take(10, 10, 1), Take::Send { from: 0 });
        assert_eq!(take(3, 8, 2), Take::Gap { missing: 3..8 });
    }

    fn attempt(number: u32, state: pb::AttemptState, log_key: &str) -> pb::Attempt {
        let mut a = pb::Attempt {
            number,
            agent_id: format!("agent-{number}"),
            log_key: log_key.into(),
            ..Default::default()
        };
        a.set_state(state);
        a
    }

    fn task(state: pb::TaskState, attempts: Vec<pb::Attempt>) -> pb::Task {
        let mut t = pb::Task {
            name: "train".into(),
            attempts,
            ..Default::default()
        };
        t.set_state(state);
        t
    }

    /// Applies steps the way the shell does until it has to wait.
    fn steps(f: &mut TaskFollow, t: &pb::Task, active: bool) -> Vec<Next> {
        let mut seen = Vec::new();
        loop {
            let next = f.next(t, active);
            seen.push(next.clone());
            match next {
                Next::Follow { attempt } => f.start(attempt),
                Next::Stored { .. } | Next::NoStoredLog => f.drained(),
                Next::Live { .. } | Next::Wait | Next::Done => return seen,
            }
        }
    }

    #[test]
    fn a_task_is_followed_from_waiting_through_running_to_its_stored_log() {
        use pb::{AttemptState as A, TaskState as T};
        let mut f = TaskFollow::new("train");
        assert_eq!(steps(&mut f, &task(T::Pending, vec![]), true), [Next::Wait]);
        let running = task(T::Running, vec![attempt(1, A::Running, "")]);
        assert_eq!(
            steps(&mut f, &running, true),
            [
                Next::Follow { attempt: 1 },
                Next::Live {
                    agent: "agent-1".into(),
                    started: true
                }
            ]
        );
        assert!(f.takes_live(1) && !f.takes_live(2));
        f.sent = 42;
        let done = task(T::Succeeded, vec![attempt(1, A::Succeeded, "k1")]);
        assert_eq!(
            steps(&mut f, &done, true),
            [Next::Stored { key: "k1".into() }, Next::Done]
        );
        // The seam: the stored log is read from where live left off.
        assert_eq!((f.attempt, f.sent), (1, 42));
        assert!(!f.takes_live(1));
    }

    #[test]
    fn a_retried_task_drains_its_attempt_then_follows_the_next() {
        use pb::{AttemptState as A, TaskState as T};
        let mut f = TaskFollow::new("train");
        steps(
            &mut f,
            &task(T::Running, vec![attempt(1, A::Running, "")]),
            true,
        );
        f.sent = 7;
        let retrying = task(
            T::Running,
            vec![attempt(1, A::Failed, "k1"), attempt(2, A::Assigned, "")],
        );
        assert_eq!(
            steps(&mut f, &retrying, true),
            [
                Next::Stored { key: "k1".into() },
                Next::Follow { attempt: 2 },
                Next::Live {
                    agent: "agent-2".into(),
                    started: false
                }
            ]
        );
        assert_eq!((f.attempt, f.sent), (2, 0));
        // Waiting out a backoff after a failed attempt is not the end.
        let mut f = TaskFollow::new("train");
        let backoff = task(T::RetryWait, vec![attempt(1, A::Failed, "k1")]);
        assert_eq!(
            steps(&mut f, &backoff, true),
            [
                Next::Follow { attempt: 1 },
                Next::Stored { key: "k1".into() },
                Next::Wait
            ]
        );
    }

    #[test]
    fn ended_attempts_without_a_stored_log_and_tasks_that_never_ran_end_quietly() {
        use pb::{AttemptState as A, TaskState as T};
        let mut f = TaskFollow::new("train");
        let mut empty = attempt(1, A::Succeeded, "k1");
        empty.log_empty = true;
        assert_eq!(
            steps(&mut f, &task(T::Succeeded, vec![empty]), true),
            [Next::Follow { attempt: 1 }, Next::NoStoredLog, Next::Done]
        );
        let mut f = TaskFollow::new("train");
        let lost = task(T::Failed, vec![attempt(1, A::Lost, "")]);
        assert_eq!(
            steps(&mut f, &lost, false),
            [Next::Follow { attempt: 1 }, Next::NoStoredLog, Next::Done]
        );
        // A run that ended leaves its never-started tasks with nothing to wait for.
        let mut f = TaskFollow::new("evaluate");
        assert_eq!(
            steps(&mut f, &task(T::Pending, vec![]), false),
            [Next::Done]
        );
        assert_eq!(steps(&mut f, &task(T::Skipped, vec![]), true), [Next::Done]);
    }
}
