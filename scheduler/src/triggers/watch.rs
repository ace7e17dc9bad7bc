//! The leader's trigger loop: fires the cron times that came due and polls
//! the prefixes of data triggers, then sleeps until the next time due, the
//! next poll, or a change to a trigger. Runs only while this scheduler
//! leads; every write is fenced anyway.

use std::collections::HashMap;
use std::time::Duration;

use globset::GlobMatcher;
use tokio::sync::watch;
use tracing::warn;

use drover_api::pb;
use drover_api::pb::trigger_settings::Source;
use drover_scheduler_core::triggers::objects::{self, Batch, Object};

use crate::engine::now_ms;
use crate::error::{Result, SchedulerError};

use super::fire::Cause;
use super::{catch_up_of, records, schedule_of, Triggers};

/// Longest sleep: triggers created elsewhere (another scheduler's term)
/// are seen within it.
const MAX_SLEEP_MS: u64 = 5_000;
/// After a listing or etcd error.
const RETRY_MS: u64 = 2_000;

/// Runs the loop during each term this scheduler leads, until `stop`.
pub async fn follow(
    triggers: Triggers,
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut term = Term {
            since: now_ms(),
            ..Term::default()
        };
        tokio::select! {
            () = term.run(&triggers) => {}
            _ = leading.wait_for(|l| !*l) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// What one term remembers: when each data trigger was last listed and
/// since when new objects wait for their batch window.
#[derive(Default)]
struct Term {
    /// When this term began: cron times before it came due while no
    /// scheduler ran.
    since: u64,
    polled: HashMap<String, u64>,
    noticed: HashMap<String, u64>,
}

impl Term {
    async fn run(&mut self, t: &Triggers) {
        loop {
            let notified = t.changed.notified();
            let wake = match self.pass(t).await {
                Ok(wake) => wake,
                Err(e) => {
                    warn!(error = %e, "trigger pass failed; retrying");
                    now_ms() + RETRY_MS
                }
            };
            let sleep = wake.saturating_sub(now_ms()).min(MAX_SLEEP_MS);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sleep)) => {}
                _ = notified => {}
            }
        }
    }

    /// Fires what is due; returns when to look again.
    async fn pass(&mut self, t: &Triggers) -> Result<u64> {
        let now = now_ms();
        let mut wake = now + MAX_SLEEP_MS;
        for (record, _) in records::list(&t.store).await? {
            let Some(settings) = record.settings.as_ref() else {
                continue;
            };
            let name = settings.name.clone();
            if record.paused {
                continue;
            }
            let next = match &settings.source {
                Some(Source::Cron(cron)) => self.cron(t, &name, &record, cron).await,
                Some(Source::Objects(o)) => self.objects(t, &name, o).await,
                Some(Source::Alert(_)) | None => continue,
            };
            match next {
                Ok(Some(at)) => wake = wake.min(at),
                Ok(None) => {}
                Err(e @ SchedulerError::NotLeader) => return Err(e),
                Err(e) => {
                    warn!(trigger = %name, error = %e, "trigger could not fire; retrying");
                    wake = wake.min(now + RETRY_MS);
                }
            }
        }
        Ok(wake)
    }

    async fn cron(
        &mut self,
        t: &Triggers,
        name: &str,
        record: &pb::TriggerRecord,
        cron: &pb::CronSource,
    ) -> Result<Option<u64>> {
        let schedule = schedule_of(cron).map_err(|e| SchedulerError::Config(e.to_string()))?;
        let now = now_ms();
        let after = record.last_due_ms.max(record.created_at_ms);
        let plan = schedule.plan(after, now, self.since, catch_up_of(cron));
        if let (Some(last), Some(until)) = (plan.last_missed, plan.handled_until) {
            t.record_missed(name, plan.missed, last, until).await?;
        }
        for due_ms in plan.fire {
            t.fire(name, Cause::Schedule { due_ms }).await?;
        }
        Ok(schedule.next_after(plan.handled_until.unwrap_or(after).max(now)))
    }

    async fn objects(
        &mut self,
        t: &Triggers,
        name: &str,
        source: &pb::ObjectsSource,
    ) -> Result<Option<u64>> {
        let now = now_ms();
        let poll = source.poll_interval_ms.max(1);
        let due = self.polled.get(name).map_or(now, |p| p + poll);
        let noticed = self.noticed.get(name).copied();
        // Between polls only a closing batch window needs a look.
        let window_closes = noticed.map(|n| n + source.batch_window_ms);
        if now < due && window_closes.is_none_or(|w| now < w) {
            return Ok(Some(window_closes.map_or(due, |w| w.min(due))));
        }
        self.polled.insert(name.to_string(), now);
        let store = open_prefix(source).await?;
        let listed = list_objects(&store, source).await?;
        let seen = records::seen(&t.store, name).await?;
        let etags = seen
            .iter()
            .map(|(k, s)| (k.clone(), s.etag.clone()))
            .collect();
        let new = objects::new_objects(listed, &etags);
        if new.is_empty() {
            self.noticed.remove(name);
            return Ok(Some(now + poll));
        }
        let noticed = *self.noticed.entry(name.to_string()).or_insert(now);
        match objects::batch(
            new,
            noticed,
            now,
            source.batch_window_ms,
            source.max_per_run,
        ) {
            Batch::Idle => Ok(Some(now + poll)),
            Batch::Wait { until } => Ok(Some(until.min(now + poll))),
            Batch::Fire { objects } => {
                let objects = with_digests(&store, source, objects)
                    .await?
                    .into_iter()
                    .map(|o| {
                        let rev = seen.get(&o.key).map_or(0, |s| s.rev);
                        (o, rev)
                    })
                    .collect();
                let fired = t.fire(name, Cause::Objects { objects }).await?;
                if fired.is_some() {
                    // More may wait: list again at once.
                    self.noticed.remove(name);
                    self.polled.remove(name);
                    return Ok(Some(now));
                }
                Ok(Some(now + poll))
            }
        }
    }
}

/// The objects under a data trigger's prefix that its glob matches, keys
/// relative to the prefix.
pub async fn list_objects(
    store: &drover_artifacts::Store,
    source: &pb::ObjectsSource,
) -> Result<Vec<Object>> {
    let glob = glob_matcher(&source.glob)?;
    let listed = store
        .list()
        .await
        .map_err(|e| SchedulerError::Artifacts(format!("listing {}: {e}", source.url)))?;
    Ok(listed
        .into_iter()
        .filter(|o| glob.as_ref().is_none_or(|g| g.is_match(&o.key)))
        .map(|o| Object {
            key: o.key,
            etag: o.etag,
            size: o.size,
            sha256: None,
        })
        .collect())
}

/// Objects over this are passed without a sha256: the scheduler reads each
/// new object once to hash it, and a batch of huge files would hold up its
/// firing (and the bandwidth) for minutes.
pub const MAX_HASHED_BYTES: u64 = 1 << 30;

/// `objects` with the sha256 of each one up to [`MAX_HASHED_BYTES`].
async fn with_digests(
    store: &drover_artifacts::Store,
    source: &pb::ObjectsSource,
    mut objects: Vec<Object>,
) -> Result<Vec<Object>> {
    for o in objects.iter_mut().filter(|o| o.size <= MAX_HASHED_BYTES) {
        let digest = store.sha256_of(&o.key).await.map_err(|e| {
            SchedulerError::Artifacts(format!("reading {}{}: {e}", source.url, o.key))
        })?;
        o.sha256 = Some(digest);
    }
    Ok(objects)
}

/// The store a data trigger's prefix names.
pub async fn open_prefix(source: &pb::ObjectsSource) -> Result<drover_artifacts::Store> {
    drover_artifacts::open(&source.url)
        .await
        .map_err(|e| SchedulerError::Artifacts(e.to_string()))
}

/// `--glob` (None: every key).
pub fn glob_matcher(glob: &str) -> Result<Option<GlobMatcher>> {
    if glob.is_empty() {
        return Ok(None);
    }
    globset::Glob::new(glob)
        .map(|g| Some(g.compile_matcher()))
        .map_err(|e| SchedulerError::InvalidArgument {
            field: "glob",
            message: format!("invalid glob `{glob}`: {e}"),
        })
}
