//! What agents tell the engine: attempt events (from JetStream),
//! heartbeats (capacity, what they run), and what their silence or a failed
//! request means.

use tracing::{debug, info, warn};

use drover_api::pb;
use drover_scheduler_core::dag::{AttemptStatus, Event};
use drover_scheduler_core::ids::{AgentId, AttemptId, RunId, TaskIndex};
use drover_scheduler_core::Millis;

use crate::convert;

use super::state::{EngineState, Send, Turn};

impl EngineState {
    /// One attempt event, carried by agent `via`'s subject. `trace_id`:
    /// the agent's attempt span's trace, for the log line.
    ///
    /// Checked, not trusted: an event counts only when it names the agent
    /// whose subject carried it and that agent holds the attempt (NATS
    /// permissions keep each agent to its own subject, so neither can be
    /// forged by another agent).
    pub(super) fn on_agent_event(
        &mut self,
        ev: pb::AttemptEvent,
        trace_id: &str,
        via: &str,
        now: Millis,
        turn: &mut Turn,
    ) {
        let Some(aref) = ev.attempt else { return };
        if ev.agent_id != via {
            warn!(run = %aref.run_id, task = %aref.task, attempt = aref.attempt, agent = %ev.agent_id, subject_agent = via, "event dropped: it names another agent than the subject it came on");
            self.metrics.reject("agent_mismatch");
            return;
        }
        let Some((run_id, task)) = self
            .runs
            .get_key_value(aref.run_id.as_str())
            .and_then(|(id, r)| Some((id.clone(), r.dag.index_of(&aref.task)?)))
        else {
            debug!(run = %aref.run_id, task = %aref.task, "event for an inactive run");
            return;
        };
        let attempt = aref.attempt;
        // An event for an older attempt is stale and fenced off below
        // whoever sent it; one for the current attempt must come from its agent.
        let holder = self
            .runs
            .get(&run_id)
            .and_then(|r| r.dag.task(task).current())
            .filter(|a| a.number == attempt)
            .map(|a| a.agent.as_str());
        if holder.is_some_and(|holder| holder != via) {
            warn!(run = %aref.run_id, task = %aref.task, attempt, agent = via, assigned_to = holder.unwrap_or_default(), "event dropped: the attempt is not assigned to the agent that sent it");
            self.metrics.reject("not_assigned");
            return;
        }
        // Stamped by the agent's clock, but never later than the scheduler
        // took it in: what happens next (the freed room given to another
        // task) is stamped by the scheduler's clock and must come after.
        let stamped = if ev.at_ms > 0 { ev.at_ms } else { now };
        let at = stamped.min(now);
        // A final event for an attempt with no started event yet carries
        // its start: agents publish none for an attempt that ends quickly.
        let started_at = (ev.started_at_ms > 0).then_some(ev.started_at_ms.min(at));
        let core = match ev.kind {
            Some(pb::attempt_event::Kind::Started(_)) => Event::Started { task, attempt },
            Some(pb::attempt_event::Kind::Succeeded(s)) => Event::Succeeded {
                image_digest: s.image_digest,
                task,
                attempt,
                started_at,
                outputs: s.outputs.iter().map(convert::artifact).collect(),
                log_key: s.log_key,
                log_empty: s.log_empty,
            },
            // Stopped by its agent's self-fencing: lost, run again elsewhere
            // (a late report of an attempt already given away is stale).
            Some(pb::attempt_event::Kind::Failed(f)) if f.agent_lost => Event::Lost {
                task,
                attempt,
                reason: f.reason,
            },
            Some(pb::attempt_event::Kind::Failed(f)) => Event::Failed {
                task,
                attempt,
                started_at,
                exit_code: f.exit_code,
                reason: f.reason,
                log_key: f.log_key,
                cancelled: f.cancelled,
            },
            None => return,
        };
        // The agent's attempt span joins the log line to the run's trace.
        debug!(run = %aref.run_id, task = %aref.task, attempt, agent = %ev.agent_id, trace_id, "agent event");
        // Measured on the scheduler's clock only (assigned_at is its own),
        // and only for the first start of the current attempt: a
        // redelivered event is not a second start.
        let assigned_at = self
            .runs
            .get(&run_id)
            .and_then(|r| r.dag.task(task).current())
            .filter(|a| a.number == attempt && a.status == AttemptStatus::Assigned)
            .map(|a| a.assigned_at);
        // How long it had run when the event was stamped (agent clock to
        // agent clock), so the assignment-to-start delay is the delay to
        // now less that.
        let ran = match (&core, ev.started_at_ms) {
            (Event::Started { .. }, _) => Some(0),
            (_, started) if started > 0 => Some(stamped.saturating_sub(started)),
            _ => None,
        };
        self.apply_to(&run_id, core, at, turn);
        if let (Some(assigned_at), Some(ran), Some(run)) =
            (assigned_at, ran, self.runs.get(&run_id))
        {
            let started = run
                .dag
                .task(task)
                .current()
                .is_some_and(|a| a.number == attempt && a.status != AttemptStatus::Assigned);
            if started {
                let delay = now.saturating_sub(assigned_at).saturating_sub(ran);
                self.metrics.observe_assign_to_start(run.queue(), delay);
            }
        }
    }

    pub(super) fn on_heartbeat(&mut self, hb: pb::Heartbeat, now: Millis, turn: &mut Turn) {
        let agent = self.fleet.agent_id(&hb.agent_id);
        let runs = &self.runs;
        let reconcile = self.fleet.heartbeat(hb, now, |r| {
            let run = runs.get(r.run_id.as_str())?;
            run.dag.index_of(&r.task).map(TaskIndex)
        });
        for lost in reconcile.lost {
            let reason = format!("agent `{agent}` restarted without it");
            self.lose(lost, reason, now, turn);
        }
        for stray in reconcile.cancel {
            info!(agent = %agent, run = %stray.run_id, task = %stray.task, attempt = stray.attempt, "cancelling an attempt the scheduler does not expect");
            let request = self.cancel_request(stray);
            turn.sends.push(Send::Cancel {
                agent: agent.clone(),
                request,
                follow_up: None,
            });
        }
    }

    /// The agent refused the assignment or never answered: the task goes
    /// back to Ready (not a retry), and the agent takes no new work until
    /// it heartbeats again.
    pub(super) fn on_assign_failed(
        &mut self,
        attempt: AttemptId,
        agent: &AgentId,
        reason: String,
        now: Millis,
        turn: &mut Turn,
    ) {
        warn!(run = %attempt.run, task = attempt.task.0, attempt = attempt.attempt.0, agent = %agent, reason = %reason, "assignment failed");
        self.fleet.suspend(agent.as_str());
        let ev = Event::AssignFailed {
            task: attempt.task.0,
            attempt: attempt.attempt.0,
            reason,
        };
        self.apply_to(&attempt.run, ev, now, turn);
    }

    /// A cancel found nothing to stop: the attempt ends as cancelled.
    pub(super) fn on_cancel_gone(
        &mut self,
        attempt: AttemptId,
        reason: String,
        now: Millis,
        turn: &mut Turn,
    ) {
        let ev = Event::Failed {
            task: attempt.task.0,
            attempt: attempt.attempt.0,
            started_at: None,
            exit_code: None,
            reason,
            log_key: String::new(),
            cancelled: true,
        };
        self.apply_to(&attempt.run, ev, now, turn);
    }

    /// Agents silent past the timeout are lost; their attempts run again elsewhere.
    pub(super) fn expire_agents(&mut self, now: Millis, turn: &mut Turn) {
        for (lost, reason) in self.fleet.expire(self.opts.agent_timeout, now) {
            self.lose(lost, reason, now, turn);
        }
    }

    /// An attempt went with its agent: run it again elsewhere, not as a retry.
    fn lose(&mut self, lost: AttemptId, reason: String, now: Millis, turn: &mut Turn) {
        let ev = Event::Lost {
            task: lost.task.0,
            attempt: lost.attempt.0,
            reason,
        };
        let run: RunId = lost.run;
        self.apply_to(&run, ev, now, turn);
    }
}
