//! NATS identities: what the scheduler and each agent may publish and
//! subscribe to, and the nats-server `authorization` block that says so.
//!
//! Every component connects with its own NKey. The permissions follow the
//! subjects of [`crate::naming`] exactly:
//!
//! * agent `<id>` publishes its heartbeat (`<p>.heartbeat.<id>`), its events
//!   (`<p>.events.<id>`, `<p>.events.<id>.batch`, acked by JetStream on its
//!   inbox), its live log chunks (`<p>.logs.<id>.>`), reads the events
//!   stream's info (`$JS.API.STREAM.INFO.<stream>`) and echoes to its own
//!   inbox (how it checks the server took its subscriptions); it subscribes to its own
//!   assign/assigns/cancel/log request subjects, to the scheduler's
//!   "heartbeat now", and to its own inboxes (`_INBOX.<p>.agent.<id>.>`);
//!   it answers requests through `allow_responses` (a reply subject it was
//!   handed, once), never by publishing to inboxes at large;
//! * the scheduler sends requests to every agent's request subjects, asks for
//!   heartbeats and answers them (`_INBOX.<p>.agent.*.heartbeat-ack`, its
//!   agent timeout, for self-fencing), manages the events stream and its own durable consumer
//!   (create, info, update, pull, ack — nothing else on the JetStream API),
//!   may echo to its own inbox, and subscribes to heartbeats, live logs and its own inboxes.
//!
//! Each identity has its own inbox prefix, so agent `a1` cannot subscribe to
//! the replies meant for `a2` or the scheduler. Nothing here does I/O.

use std::fmt::Write as _;

use crate::naming;

/// What one identity may do; `allow_responses`: it may answer requests it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub allow_responses: bool,
}

/// The scheduler's durable consumer of the events stream (see the scheduler's bus).
pub const SCHEDULER_CONSUMER: &str = "scheduler-turns";
/// The consumer of older versions, which the scheduler deletes at start.
pub const SCHEDULER_OLD_CONSUMER: &str = "scheduler";

/// Inbox prefix of agent `agent_id`: its request replies and JetStream acks arrive below it.
pub fn agent_inbox_prefix(prefix: &str, agent_id: &str) -> String {
    format!("_INBOX.{prefix}.agent.{agent_id}")
}

/// Scheduler → agent: the reply subject of agent `agent_id`'s heartbeats,
/// on which the scheduler answers with a `HeartbeatAck` (its agent timeout).
pub fn heartbeat_ack_subject(prefix: &str, agent_id: &str) -> String {
    format!("{}.heartbeat-ack", agent_inbox_prefix(prefix, agent_id))
}

/// Agent `agent_id` → itself: the echo that proves the server answers
/// (self-fencing counts its silence from the last echo that came back).
pub fn contact_subject(prefix: &str, agent_id: &str) -> String {
    format!("{}.contact", agent_inbox_prefix(prefix, agent_id))
}

/// Inbox prefix of the scheduler.
pub fn scheduler_inbox_prefix(prefix: &str) -> String {
    format!("_INBOX.{prefix}.scheduler")
}

/// Checks that `id` can be an enrolled agent's id: one subject token of
/// letters, digits, `-` and `_` (it is also written into nats-server's config).
pub fn check_agent_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("agent id `{id}` must be 1 to 128 characters long"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "agent id `{id}` may hold only letters, digits, `-` and `_`"
        ));
    }
    Ok(())
}

/// Agent `agent_id`'s permissions.
pub fn agent_permissions(prefix: &str, agent_id: &str) -> Permissions {
    let stream = naming::events_stream(prefix);
    Permissions {
        publish: vec![
            naming::heartbeat_subject(prefix, agent_id),
            naming::events_subject(prefix, agent_id),
            naming::events_batch_subject(prefix, agent_id),
            naming::logs_agent_wildcard(prefix, agent_id),
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!("{}.>", agent_inbox_prefix(prefix, agent_id)),
        ],
        subscribe: vec![
            naming::assign_subject(prefix, agent_id),
            naming::assign_batch_subject(prefix, agent_id),
            naming::cancel_subject(prefix, agent_id),
            naming::live_log_subject(prefix, agent_id),
            naming::heartbeat_now_subject(prefix),
            format!("{}.>", agent_inbox_prefix(prefix, agent_id)),
        ],
        allow_responses: true,
    }
}

/// The scheduler's permissions.
pub fn scheduler_permissions(prefix: &str) -> Permissions {
    let stream = naming::events_stream(prefix);
    let consumer = SCHEDULER_CONSUMER;
    let old = SCHEDULER_OLD_CONSUMER;
    let js = |api: &str| format!("$JS.API.{api}");
    Permissions {
        publish: vec![
            naming::assign_subject(prefix, "*"),
            naming::assign_batch_subject(prefix, "*"),
            naming::cancel_subject(prefix, "*"),
            naming::live_log_subject(prefix, "*"),
            naming::heartbeat_now_subject(prefix),
            heartbeat_ack_subject(prefix, "*"),
            js(&format!("STREAM.INFO.{stream}")),
            js(&format!("STREAM.CREATE.{stream}")),
            js(&format!("STREAM.UPDATE.{stream}")),
            js(&format!("CONSUMER.NAMES.{stream}")),
            js(&format!("CONSUMER.INFO.{stream}.{consumer}")),
            js(&format!("CONSUMER.INFO.{stream}.{old}")),
            js(&format!("CONSUMER.CREATE.{stream}.{consumer}")),
            js(&format!("CONSUMER.CREATE.{stream}.{consumer}.>")),
            js(&format!("CONSUMER.DURABLE.CREATE.{stream}.{consumer}")),
            js(&format!("CONSUMER.DELETE.{stream}.{old}")),
            js(&format!("CONSUMER.MSG.NEXT.{stream}.{consumer}")),
            format!("$JS.ACK.{stream}.{consumer}.>"),
            format!("{}.>", scheduler_inbox_prefix(prefix)),
        ],
        subscribe: vec![
            naming::heartbeat_wildcard(prefix),
            naming::logs_wildcard(prefix),
            format!("{}.>", scheduler_inbox_prefix(prefix)),
        ],
        allow_responses: false,
    }
}

/// One entry of `authorization.users`: the NKey and its permissions, with
/// a comment naming whose it is.
pub fn user_entry(who: &str, public_key: &str, permissions: &Permissions) -> String {
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    let _ = writeln!(out, "    # {who}");
    let _ = writeln!(out, "    {{");
    let _ = writeln!(out, "      nkey: \"{public_key}\"");
    let _ = writeln!(out, "      permissions: {{");
    let _ = writeln!(
        out,
        "        publish: {{ allow: [{}] }}",
        list(&permissions.publish)
    );
    let _ = writeln!(
        out,
        "        subscribe: {{ allow: [{}] }}",
        list(&permissions.subscribe)
    );
    if permissions.allow_responses {
        let _ = writeln!(out, "        allow_responses: true");
    }
    let _ = writeln!(out, "      }}");
    let _ = writeln!(out, "    }}");
    out
}

/// Agent `agent_id`'s entry of `authorization.users`.
pub fn agent_user_entry(prefix: &str, agent_id: &str, public_key: &str) -> String {
    user_entry(
        &format!("drover agent {agent_id}"),
        public_key,
        &agent_permissions(prefix, agent_id),
    )
}

/// nats-server's `authorization` block: the scheduler, then every agent
/// (`(id, public key)`), in the order given.
pub fn authorization_block<'a>(
    prefix: &str,
    scheduler_public_key: &str,
    agents: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Drover (NATS subject prefix `{prefix}`): one NKey per component."
    );
    out.push_str("authorization {\n  users = [\n");
    out.push_str(&user_entry(
        "drover scheduler",
        scheduler_public_key,
        &scheduler_permissions(prefix),
    ));
    for (id, key) in agents {
        out.push_str(&agent_user_entry(prefix, id, key));
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether NATS subject `subject` matches pattern `pattern` (`*`, `>`).
    fn matches(pattern: &str, subject: &str) -> bool {
        let mut p = pattern.split('.');
        let mut s = subject.split('.');
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn allowed(list: &[String], subject: &str) -> bool {
        list.iter().any(|p| matches(p, subject))
    }

    #[test]
    fn an_agent_may_use_its_own_subjects_only() {
        let a1 = agent_permissions("drover", "a1");
        for own in [
            naming::heartbeat_subject("drover", "a1"),
            naming::events_subject("drover", "a1"),
            naming::events_batch_subject("drover", "a1"),
            naming::logs_subject("drover", "a1", "run.1", "train"),
            "$JS.API.STREAM.INFO.DROVER_EVENTS".to_owned(),
            contact_subject("drover", "a1"),
        ] {
            assert!(allowed(&a1.publish, &own), "{own}");
        }
        for other in [
            naming::heartbeat_subject("drover", "a2"),
            naming::events_subject("drover", "a2"),
            naming::events_batch_subject("drover", "a2"),
            naming::logs_subject("drover", "a2", "r", "t"),
            naming::assign_subject("drover", "a2"),
            naming::heartbeat_now_subject("drover"),
            "$JS.API.STREAM.CREATE.DROVER_EVENTS".to_owned(),
            "$JS.API.STREAM.DELETE.DROVER_EVENTS".to_owned(),
            "_INBOX.drover.scheduler.x".to_owned(),
            heartbeat_ack_subject("drover", "a2"),
            contact_subject("drover", "a2"),
        ] {
            assert!(!allowed(&a1.publish, &other), "{other}");
        }
        for own in [
            naming::assign_subject("drover", "a1"),
            naming::assign_batch_subject("drover", "a1"),
            naming::cancel_subject("drover", "a1"),
            naming::live_log_subject("drover", "a1"),
            naming::heartbeat_now_subject("drover"),
            format!("{}.abc.1", agent_inbox_prefix("drover", "a1")),
            heartbeat_ack_subject("drover", "a1"),
            contact_subject("drover", "a1"),
        ] {
            assert!(allowed(&a1.subscribe, &own), "{own}");
        }
        for other in [
            naming::assign_subject("drover", "a2"),
            naming::assign_batch_subject("drover", "a2"),
            naming::cancel_subject("drover", "a2"),
            naming::heartbeat_subject("drover", "a2"),
            naming::events_subject("drover", "a2"),
            format!("{}.abc", agent_inbox_prefix("drover", "a2")),
            heartbeat_ack_subject("drover", "a2"),
            format!("{}.abc", scheduler_inbox_prefix("drover")),
            "_INBOX.>".to_owned(),
            naming::logs_follow_subject("drover", "r", None),
        ] {
            assert!(!allowed(&a1.subscribe, &other), "{other}");
        }
        assert!(a1.allow_responses);
    }

    #[test]
    fn the_scheduler_may_not_speak_for_agents() {
        let s = scheduler_permissions("drover");
        assert!(allowed(
            &s.publish,
            &naming::assign_batch_subject("drover", "a9")
        ));
        assert!(allowed(&s.publish, &naming::cancel_subject("drover", "a9")));
        assert!(allowed(&s.publish, &heartbeat_ack_subject("drover", "a9")));
        assert!(allowed(
            &s.publish,
            "$JS.ACK.DROVER_EVENTS.scheduler-turns.1.2.3.4.5.6"
        ));
        assert!(allowed(
            &s.publish,
            "$JS.API.CONSUMER.MSG.NEXT.DROVER_EVENTS.scheduler-turns"
        ));
        for not in [
            naming::heartbeat_subject("drover", "a1"),
            naming::events_subject("drover", "a1"),
            naming::logs_subject("drover", "a1", "r", "t"),
            "$JS.API.STREAM.DELETE.DROVER_EVENTS".to_owned(),
            "$JS.API.STREAM.PURGE.DROVER_EVENTS".to_owned(),
            "$JS.API.CONSUMER.DELETE.DROVER_EVENTS.scheduler-turns".to_owned(),
            contact_subject("drover", "a1"),
            format!("{}.x", agent_inbox_prefix("drover", "a1")),
        ] {
            assert!(!allowed(&s.publish, &not), "{not}");
        }
        assert!(allowed(
            &s.subscribe,
            &naming::heartbeat_subject("drover", "a1")
        ));
        assert!(allowed(
            &s.subscribe,
            &naming::logs_subject("drover", "a1", "r", "t")
        ));
        assert!(!allowed(
            &s.subscribe,
            &naming::assign_subject("drover", "a1")
        ));
        assert!(!allowed(
            &s.subscribe,
            &format!("{}.x", agent_inbox_prefix("drover", "a1"))
        ));
        assert!(!s.allow_responses);
    }

    #[test]
    fn the_block_lists_the_scheduler_then_each_agent() {
        let block = authorization_block("t.1", "USCHED", [("a1", "UA1"), ("a2", "UA2")]);
        assert!(block.starts_with("# Drover"), "{block}");
        let at = |key: &str| {
            block
                .find(&format!("nkey: \"{key}\""))
                .unwrap_or(usize::MAX)
        };
        let (sched, a1, a2) = (at("USCHED"), at("UA1"), at("UA2"));
        assert!(sched < a1 && a1 < a2 && a2 < usize::MAX, "{block}");
        assert!(block.contains("\"t.1.heartbeat.a2\""), "{block}");
        assert!(
            block.contains("\"$JS.API.STREAM.INFO.T_1_EVENTS\""),
            "{block}"
        );
        assert_eq!(block.matches("allow_responses: true").count(), 2);
        // Braces balance: nats-server reads it as one block.
        assert_eq!(block.matches('{').count(), block.matches('}').count());
    }

    #[test]
    fn enrollable_ids_are_plain_tokens() {
        assert!(check_agent_id("gpu-node_1").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", "a\"b", "a}"] {
            let err = check_agent_id(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }
}
