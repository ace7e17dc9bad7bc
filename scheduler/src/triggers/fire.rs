//! One firing: read the trigger, decide (already handled? concurrency?),
//! write the new run's spec, then one transaction that records the firing
//! on the trigger — compared with the revision read — and creates the run
//! (with the objects it took, or its alert group's new state). A second
//! scheduler, a retry or a restart between the steps finds the firing
//! recorded, or the transaction refused, so a firing makes at most one run;
//! a firing not recorded is due again, so none is lost.

use std::collections::BTreeMap;

use tracing::{info, warn};

use drover_api::pb;
use drover_scheduler_core::triggers::alerts::GroupState;
use drover_scheduler_core::triggers::objects::Object;
use drover_scheduler_core::triggers::{self as core, Action};

use crate::engine::now_ms;
use crate::error::{Result, SchedulerError};
use crate::runs::{self, RunRequest};
use crate::store::{StoredRun, Write};

use super::{concurrency_of, records, Triggers};

/// Newest firings kept on a trigger's record.
const KEPT_FIRINGS: usize = 20;

/// Tries of a firing whose transaction lost to another write.
const TRIES: usize = 5;

/// Why a trigger fires.
#[derive(Clone, Debug)]
pub enum Cause {
    /// A cron schedule's time.
    Schedule { due_ms: u64 },
    /// New objects, with the revision of each one's seen-record (0: none).
    Objects { objects: Vec<(Object, i64)> },
    /// An alert group started firing.
    Alert {
        group_key: String,
        group_rev: i64,
        params: BTreeMap<String, String>,
    },
    /// `drover trigger fire`: params over the trigger's.
    Manual { params: BTreeMap<String, String> },
}

impl Cause {
    fn name(&self) -> &'static str {
        match self {
            Cause::Schedule { .. } => "schedule",
            Cause::Objects { .. } => "objects",
            Cause::Alert { .. } => "alert",
            Cause::Manual { .. } => "manual",
        }
    }

    /// Params the firing adds; those the spec does not declare are left
    /// out, except a person's (an undeclared one is an error then).
    fn params(&self) -> BTreeMap<String, String> {
        match self {
            Cause::Schedule { due_ms } => {
                BTreeMap::from([("scheduled_time".to_string(), rfc3339(*due_ms))])
            }
            Cause::Objects { objects } => {
                let list: Vec<serde_json::Value> = objects
                    .iter()
                    .map(|(o, _)| {
                        let mut v =
                            serde_json::json!({"key": o.key, "etag": o.etag, "size": o.size});
                        if let Some(sha256) = &o.sha256 {
                            v["sha256"] = serde_json::Value::String(sha256.clone());
                        }
                        v
                    })
                    .collect();
                BTreeMap::from([(
                    "objects".to_string(),
                    serde_json::Value::Array(list).to_string(),
                )])
            }
            Cause::Alert { params, .. } | Cause::Manual { params } => params.clone(),
        }
    }
}

fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

impl Triggers {
    /// Fires trigger `name` for `cause`. None: nothing to do (the firing
    /// was recorded already, or it waits — a data batch or an alert while
    /// the previous run runs under `forbid`).
    pub async fn fire(&self, name: &str, cause: Cause) -> Result<Option<pb::Firing>> {
        for _ in 0..TRIES {
            match self.fire_once(name, &cause).await {
                Err(SchedulerError::Conflict) => continue,
                other => return other,
            }
        }
        Err(SchedulerError::Conflict)
    }

    async fn fire_once(&self, name: &str, cause: &Cause) -> Result<Option<pb::Firing>> {
        let (mut record, rev) = records::get(&self.store, name)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("trigger `{name}` not found")))?;
        let settings = record.settings.clone().unwrap_or_default();
        let now = now_ms();
        let due_ms = match cause {
            Cause::Schedule { due_ms } if *due_ms <= record.last_due_ms => return Ok(None),
            Cause::Schedule { due_ms } => *due_ms,
            _ => now,
        };
        let mut firing = pb::Firing {
            number: record.next_number.max(1),
            cause: cause.name().into(),
            due_ms,
            fired_at_ms: now,
            ..Default::default()
        };
        let previous = record.last_run_id.clone();
        let previous_active = !previous.is_empty()
            && records::run_state(&self.store, &previous)
                .await?
                .is_some_and(crate::store::is_active);
        let action = core::concurrency(concurrency_of(&settings), previous_active);
        let mut writes = vec![];
        let mut new_run = None;
        match action {
            Action::Skip if !matches!(cause, Cause::Schedule { .. } | Cause::Manual { .. }) => {
                // New data or an alert waits for the previous run.
                return Ok(None);
            }
            Action::Skip => {
                firing.outcome = pb::FiringOutcome::Skipped as i32;
                firing.message = format!("run `{previous}` still runs (concurrency: forbid)");
            }
            Action::Start | Action::Replace => match self.prepare(&settings, cause).await {
                Err(e) if matches!(cause, Cause::Manual { .. }) => return Err(e),
                Err(e) => {
                    firing.outcome = pb::FiringOutcome::Failed as i32;
                    firing.message = e.to_string();
                }
                Ok(mut new) => {
                    if action == Action::Replace {
                        info!(trigger = %name, run = %previous, "cancelling the previous run (concurrency: replace)");
                        self.engine.cancel(previous.clone()).await?;
                    }
                    let id = new.record.id.clone();
                    new.record.spec_chunks = self.store.put_spec(&id, &new.spec).await?;
                    writes.push(Write::put(
                        self.store.run_key(&id),
                        prost::Message::encode_to_vec(&new.record),
                        0,
                    ));
                    firing.outcome = pb::FiringOutcome::Started as i32;
                    firing.run_id = id.clone();
                    record.last_run_id = id;
                    new_run = Some(new);
                }
            },
        }
        match cause {
            Cause::Objects { objects } => {
                firing.objects = objects.len() as u32;
                record.objects_seen += objects.iter().filter(|(_, rev)| *rev == 0).count() as u64;
                writes.extend(objects.iter().map(|(o, rev)| {
                    let key = records::object_key(&self.store, name, &o.key);
                    Write::put(key, o.etag.clone().into_bytes(), *rev)
                }));
            }
            Cause::Alert {
                group_key,
                group_rev,
                ..
            } => {
                firing.message = format!("alert group {group_key}");
                writes.push(Write::put(
                    records::alert_key(&self.store, name, group_key),
                    records::alert_value(GroupState::Firing),
                    *group_rev,
                ));
            }
            Cause::Schedule { due_ms } => record.last_due_ms = *due_ms,
            Cause::Manual { .. } => {}
        }
        record.next_number = firing.number + 1;
        push_firing(&mut record, firing.clone());
        writes.insert(0, records::put(&self.store, &record, rev));
        let committed = self.store.commit_writes(vec![writes]).await;
        let revs = match committed {
            Ok(revs) => revs,
            Err(e) => {
                if let Some(new) = &new_run {
                    if let Err(del) = self.store.delete_spec(&new.record.id).await {
                        warn!(run = %new.record.id, error = %del, "cannot delete the spec of a firing that did not commit");
                    }
                }
                return Err(e);
            }
        };
        self.metrics.fired(name, &firing, now);
        info!(trigger = %name, number = firing.number, cause = %firing.cause, run = %firing.run_id, outcome = ?firing.outcome(), "trigger fired");
        if let Some(new) = new_run {
            let stored = StoredRun {
                rev: revs.get(1).copied().unwrap_or_default(),
                record: new.record,
                spec: std::sync::Arc::new(new.spec),
                tasks: Vec::new(),
            };
            // The run is in etcd: a new term would load it if this fails.
            if let Err(e) = self.engine.adopt(stored).await {
                warn!(trigger = %name, error = %e, "the engine did not take the new run; the next term loads it");
            }
        }
        Ok(Some(firing))
    }

    /// The run a firing starts: the trigger's pipeline resolved with its
    /// params and the firing's.
    async fn prepare(&self, settings: &pb::TriggerSettings, cause: &Cause) -> Result<runs::NewRun> {
        let mut params = settings.params.clone();
        let extra = cause.params();
        let declared = if matches!(cause, Cause::Manual { .. }) {
            None
        } else {
            let spec = drover_api::spec::parse_spec(&settings.spec_yaml, &settings.params)?;
            Some(spec.params)
        };
        for (k, v) in extra {
            if declared.as_ref().is_none_or(|d| d.contains_key(&k)) {
                params.insert(k, v);
            }
        }
        self.new_run(settings, &params).await
    }

    /// A run of `settings`' pipeline with `params`, checked as a firing
    /// would make it (spec, code snapshot, priority, its queue exists).
    pub async fn new_run(
        &self,
        settings: &pb::TriggerSettings,
        params: &BTreeMap<String, String>,
    ) -> Result<runs::NewRun> {
        let new = runs::prepare(
            &self.artifacts,
            self.max_spec_bytes,
            RunRequest {
                spec_yaml: &settings.spec_yaml,
                params,
                queue: &settings.queue,
                priority: settings.priority,
                code_sha256: &settings.code_sha256,
                no_cache: false,
                trace_parent: None,
            },
        )
        .await?;
        if !records::queue_exists(&self.store, &new.record.queue).await? {
            return Err(SchedulerError::QueueNotFound(new.record.queue.clone()));
        }
        Ok(new)
    }

    /// Records scheduled times that do not fire (`--catch-up`), up to
    /// `handled_until`.
    pub async fn record_missed(
        &self,
        name: &str,
        missed: u64,
        last_missed: u64,
        handled_until: u64,
    ) -> Result<()> {
        for _ in 0..TRIES {
            let Some((mut record, rev)) = records::get(&self.store, name).await? else {
                return Ok(());
            };
            if record.last_due_ms >= last_missed {
                return Ok(());
            }
            let firing = pb::Firing {
                number: record.next_number.max(1),
                outcome: pb::FiringOutcome::Missed as i32,
                cause: "schedule".into(),
                due_ms: last_missed,
                fired_at_ms: now_ms(),
                message: format!("{missed} scheduled time(s) passed while no scheduler ran"),
                ..Default::default()
            };
            record.next_number = firing.number + 1;
            record.last_due_ms = last_missed.min(handled_until);
            push_firing(&mut record, firing);
            match self
                .store
                .commit_writes(vec![vec![records::put(&self.store, &record, rev)]])
                .await
            {
                Ok(_) => {
                    warn!(trigger = %name, missed, "scheduled times missed");
                    self.metrics.missed(name, missed);
                    return Ok(());
                }
                Err(SchedulerError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(SchedulerError::Conflict)
    }
}

fn push_firing(record: &mut pb::TriggerRecord, firing: pb::Firing) {
    record.firings.push(firing);
    let extra = record.firings.len().saturating_sub(KEPT_FIRINGS);
    record.firings.drain(..extra);
}
