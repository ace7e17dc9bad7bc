//! The `drover.v1.Triggers` service: create (validated, with the pipeline
//! stored), update, list, show, pause, resume, delete, fire.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};
use tracing::info;

use drover_api::pb;
use drover_api::pb::trigger_settings::Source;
use drover_api::pb::triggers_server;
use drover_scheduler_core::triggers::objects::MAX_PER_RUN;

use crate::auth::{Refusals, Who};
use crate::engine::now_ms;
use crate::error::{Result, SchedulerError};
use crate::store::Write;

use super::fire::Cause;
use super::{next_due, records, schedule_of, watch, Triggers};

/// `--poll-interval` when not given.
pub const DEFAULT_POLL_MS: u64 = 30_000;
/// The shortest `--poll-interval`: each poll lists the whole prefix.
const MIN_POLL_MS: u64 = 100;
/// Largest pipeline a trigger keeps (in its one etcd record).
const MAX_TRIGGER_SPEC_BYTES: usize = 512 * 1024;

#[derive(Clone)]
pub struct TriggersApi {
    pub triggers: Triggers,
    pub refusals: Refusals,
}

fn invalid(field: &'static str, message: String) -> SchedulerError {
    SchedulerError::InvalidArgument { field, message }
}

fn not_found(name: &str) -> SchedulerError {
    SchedulerError::NotFound(format!("trigger `{name}` not found"))
}

fn detail(record: pb::TriggerRecord) -> pb::TriggerDetail {
    pb::TriggerDetail {
        next_due_ms: next_due(&record, now_ms()).unwrap_or(0),
        trigger: Some(record),
    }
}

impl TriggersApi {
    /// Checks the pipeline as a firing would resolve it; returns the queue
    /// its runs go to.
    async fn check_pipeline(
        &self,
        settings: &pb::TriggerSettings,
        who: &Who,
        path: &str,
    ) -> Result<String> {
        if settings.spec_yaml.len() > MAX_TRIGGER_SPEC_BYTES {
            return Err(invalid(
                "spec_yaml",
                format!(
                    "the pipeline is {} bytes; a trigger keeps at most {MAX_TRIGGER_SPEC_BYTES}",
                    settings.spec_yaml.len()
                ),
            ));
        }
        let queue = self
            .triggers
            .new_run(settings, &settings.params)
            .await?
            .record
            .queue;
        self.refusals
            .check_queue(who, path, "start runs in", &queue)
            .map_err(|s| SchedulerError::FailedPrecondition(s.message().to_string()))?;
        Ok(queue)
    }

    /// Checks the source and fills its defaults; for a data trigger,
    /// lists the prefix once (it must be readable) and returns what is there.
    async fn check_source(
        &self,
        settings: &mut pb::TriggerSettings,
    ) -> Result<Vec<(String, String)>> {
        match settings.source.as_mut() {
            None => Err(invalid(
                "source",
                "give exactly one of --cron, --on-new-objects and --on-alert".into(),
            )),
            Some(Source::Cron(cron)) => {
                schedule_of(cron).map_err(|e| match e {
                    drover_scheduler_core::triggers::schedule::ScheduleError::Timezone(_) => {
                        invalid("timezone", e.to_string())
                    }
                    other => invalid("cron", other.to_string()),
                })?;
                Ok(Vec::new())
            }
            Some(Source::Alert(_)) => Ok(Vec::new()),
            Some(Source::Objects(o)) => {
                if o.max_per_run == 0 {
                    o.max_per_run = MAX_PER_RUN;
                }
                if o.max_per_run > MAX_PER_RUN {
                    return Err(invalid(
                        "max_per_run",
                        format!("`{}` is over {MAX_PER_RUN}", o.max_per_run),
                    ));
                }
                if o.poll_interval_ms == 0 {
                    o.poll_interval_ms = DEFAULT_POLL_MS;
                }
                if o.poll_interval_ms < MIN_POLL_MS {
                    return Err(invalid(
                        "poll_interval",
                        format!("`{}ms` is under {MIN_POLL_MS}ms", o.poll_interval_ms),
                    ));
                }
                if !o.url.ends_with('/') {
                    o.url.push('/');
                }
                watch::glob_matcher(&o.glob)?;
                if !(o.url.starts_with("file:///") || o.url.starts_with("s3://")) {
                    return Err(invalid(
                        "on_new_objects",
                        format!("`{}` is not a file:/// or s3:// prefix", o.url),
                    ));
                }
                let listed = async {
                    let store = watch::open_prefix(o).await?;
                    watch::list_objects(&store, o).await
                }
                .await
                .map_err(|e| invalid("on_new_objects", format!("cannot list `{}`: {e}", o.url)))?;
                Ok(listed.into_iter().map(|o| (o.key, o.etag)).collect())
            }
        }
    }

    /// Reads, changes and writes back the trigger `name` (compare-and-swap).
    async fn modify(
        &self,
        name: &str,
        change: impl Fn(&mut pb::TriggerRecord),
    ) -> Result<pb::TriggerRecord> {
        let store = &self.triggers.store;
        loop {
            let (mut record, rev) = records::get(store, name)
                .await?
                .ok_or_else(|| not_found(name))?;
            change(&mut record);
            record.updated_at_ms = now_ms();
            match store
                .commit_writes(vec![vec![records::put(store, &record, rev)]])
                .await
            {
                Ok(_) => {
                    self.triggers.changed.notify_one();
                    return Ok(record);
                }
                Err(SchedulerError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || !drover_api::spec::is_queue_name(name) {
        return Err(invalid(
            "name",
            format!(
                "invalid trigger name `{name}` (use lowercase letters, digits and `-`, at most 63)"
            ),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl triggers_server::Triggers for TriggersApi {
    async fn create_trigger(
        &self,
        req: Request<pb::TriggerSettings>,
    ) -> Result<Response<pb::TriggerDetail>, Status> {
        let who = Who::of(&req);
        let mut settings = req.into_inner();
        check_name(&settings.name)?;
        let store = &self.triggers.store;
        if records::get(store, &settings.name).await?.is_some() {
            return Err(SchedulerError::AlreadyExists(format!(
                "trigger `{}` already exists",
                settings.name
            ))
            .into());
        }
        let existing = self.check_source(&mut settings).await?;
        self.check_pipeline(&settings, &who, "/drover.v1.Triggers/CreateTrigger")
            .await?;
        // Objects already under the prefix do not fire: recorded as seen
        // before the trigger exists (left over if the create fails, and
        // cleared by the next create of the name).
        records::delete_rest(store, &settings.name).await?;
        let seen = existing.len() as u64;
        for chunk in existing.chunks(MAX_PER_RUN as usize) {
            let writes = chunk
                .iter()
                .map(|(key, etag)| {
                    Write::put(
                        records::object_key(store, &settings.name, key),
                        etag.clone().into_bytes(),
                        0,
                    )
                })
                .collect();
            store.commit_writes(vec![writes]).await?;
        }
        let now = now_ms();
        let name = settings.name.clone();
        let record = pb::TriggerRecord {
            settings: Some(settings),
            created_at_ms: now,
            updated_at_ms: now,
            last_due_ms: now,
            next_number: 1,
            objects_seen: seen,
            ..Default::default()
        };
        match store
            .commit_writes(vec![vec![records::put(store, &record, 0)]])
            .await
        {
            Ok(_) => {}
            Err(SchedulerError::Conflict) => {
                return Err(SchedulerError::AlreadyExists(format!(
                    "trigger `{name}` already exists"
                ))
                .into())
            }
            Err(e) => return Err(e.into()),
        }
        info!(trigger = %name, objects_seen = seen, "trigger created");
        self.triggers.changed.notify_one();
        Ok(Response::new(detail(record)))
    }

    async fn update_trigger(
        &self,
        req: Request<pb::UpdateTriggerRequest>,
    ) -> Result<Response<pb::TriggerDetail>, Status> {
        let who = Who::of(&req);
        let req = req.into_inner();
        let store = &self.triggers.store;
        let (record, _) = records::get(store, &req.name)
            .await?
            .ok_or_else(|| not_found(&req.name))?;
        let mut settings = record.settings.unwrap_or_default();
        if req.spec_yaml.is_empty() {
            return Err(invalid("spec_yaml", "the new pipeline is empty".into()).into());
        }
        settings.spec_yaml = req.spec_yaml;
        settings.code_sha256 = req.code_sha256;
        if req.replace_params {
            settings.params = req.params;
        }
        if !req.queue.is_empty() {
            settings.queue = req.queue;
        }
        if req.priority.is_some() {
            settings.priority = req.priority;
        }
        self.check_pipeline(&settings, &who, "/drover.v1.Triggers/UpdateTrigger")
            .await?;
        let updated = self
            .modify(&req.name, |r| {
                if let Some(s) = r.settings.as_mut() {
                    s.spec_yaml.clone_from(&settings.spec_yaml);
                    s.code_sha256.clone_from(&settings.code_sha256);
                    s.params.clone_from(&settings.params);
                    s.queue.clone_from(&settings.queue);
                    s.priority = settings.priority;
                }
            })
            .await?;
        info!(trigger = %req.name, "trigger's pipeline replaced");
        Ok(Response::new(detail(updated)))
    }

    async fn list_triggers(
        &self,
        _req: Request<pb::ListTriggersRequest>,
    ) -> Result<Response<pb::ListTriggersResponse>, Status> {
        let triggers = records::list(&self.triggers.store)
            .await?
            .into_iter()
            .map(|(r, _)| detail(r))
            .collect();
        Ok(Response::new(pb::ListTriggersResponse { triggers }))
    }

    async fn get_trigger(
        &self,
        req: Request<pb::TriggerRef>,
    ) -> Result<Response<pb::TriggerDetail>, Status> {
        let name = req.into_inner().name;
        let (record, _) = records::get(&self.triggers.store, &name)
            .await?
            .ok_or_else(|| not_found(&name))?;
        Ok(Response::new(detail(record)))
    }

    async fn pause_trigger(
        &self,
        req: Request<pb::TriggerRef>,
    ) -> Result<Response<pb::TriggerDetail>, Status> {
        let name = req.into_inner().name;
        let record = self.modify(&name, |r| r.paused = true).await?;
        info!(trigger = %name, "trigger paused");
        Ok(Response::new(detail(record)))
    }

    async fn resume_trigger(
        &self,
        req: Request<pb::TriggerRef>,
    ) -> Result<Response<pb::TriggerDetail>, Status> {
        let name = req.into_inner().name;
        let now = now_ms();
        // Times that passed while paused are not caught up.
        let record = self
            .modify(&name, |r| {
                if r.paused {
                    r.paused = false;
                    r.last_due_ms = r.last_due_ms.max(now);
                }
            })
            .await?;
        info!(trigger = %name, "trigger resumed");
        Ok(Response::new(detail(record)))
    }

    async fn delete_trigger(
        &self,
        req: Request<pb::TriggerRef>,
    ) -> Result<Response<pb::DeleteTriggerResponse>, Status> {
        let name = req.into_inner().name;
        let store = &self.triggers.store;
        let (_, rev) = records::get(store, &name)
            .await?
            .ok_or_else(|| not_found(&name))?;
        store
            .commit_writes(vec![vec![Write::delete(
                records::trigger_key(store, &name),
                rev,
            )]])
            .await?;
        records::delete_rest(store, &name).await?;
        info!(trigger = %name, "trigger deleted");
        self.triggers.changed.notify_one();
        Ok(Response::new(pb::DeleteTriggerResponse {}))
    }

    async fn fire_trigger(
        &self,
        req: Request<pb::FireTriggerRequest>,
    ) -> Result<Response<pb::FireTriggerResponse>, Status> {
        let who = Who::of(&req);
        let req = req.into_inner();
        let (record, _) = records::get(&self.triggers.store, &req.name)
            .await?
            .ok_or_else(|| not_found(&req.name))?;
        let settings = record.settings.unwrap_or_default();
        self.check_pipeline(&settings, &who, "/drover.v1.Triggers/FireTrigger")
            .await?;
        let params: BTreeMap<String, String> = req.params;
        let firing = self
            .triggers
            .fire(&req.name, Cause::Manual { params })
            .await?
            .ok_or_else(|| {
                SchedulerError::Unavailable("the firing was not recorded; try again".into())
            })?;
        Ok(Response::new(pb::FireTriggerResponse {
            firing: Some(firing),
        }))
    }
}
