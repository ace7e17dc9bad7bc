//! The step cache: a Ready task whose key (`drover_scheduler_core::cache`)
//! has an entry takes that entry's result instead of running, in the same
//! turn; one whose key another task is about to run or running waits for
//! it rather than running twice, and runs itself if that one fails.
//!
//! Entries (key → source attempt, outputs, time) live in etcd under
//! `<prefix>/cache/` and wholly in memory, so a lookup costs no I/O. A
//! successful attempt that ran writes its entry in the same commit as its
//! result; entries older than `--cache-ttl` are deleted. A task that
//! becomes Ready goes through here first (`fresh`) when it is cacheable,
//! and on to placement if nothing serves it.

use std::collections::{BTreeSet, HashMap};

use tracing::{debug, info};

use drover_api::pb;
use drover_scheduler_core::cache::{InputDigest, KeyInput, Mode, OutputDecl, Policy};
use drover_scheduler_core::dag::{AttemptStatus, Event, TaskStatus};
use drover_scheduler_core::ids::{RunId, TaskIndex};
use drover_scheduler_core::Millis;

use crate::convert;
use crate::store::{Change, RecordKey};

use super::records::{PendingWrite, Versioned};
use super::spans;
use super::state::{ActiveRun, EngineState, Turn};

/// How often expired entries are looked for.
const SWEEP_EVERY_MS: Millis = 60_000;

/// A task of an active run.
type TaskRef = (RunId, TaskIndex);

#[derive(Default)]
pub(super) struct StepCache {
    entries: HashMap<String, Versioned<pb::CacheEntry>>,
    /// Entries with a write or delete to commit.
    dirty: BTreeSet<String>,
    /// Cacheable tasks that became Ready and are not looked up yet.
    fresh: Vec<TaskRef>,
    /// By key: the task that runs it (Ready, placed or running).
    claims: HashMap<String, TaskRef>,
    /// By key: tasks waiting for the claimant's result.
    waiters: HashMap<String, Vec<TaskRef>>,
    /// Entries older than this are deleted.
    ttl: Millis,
    swept_at: Millis,
}

impl StepCache {
    pub fn new(ttl: Millis) -> Self {
        Self {
            ttl,
            ..Self::default()
        }
    }

    /// Replaces the entries with what etcd holds; claims and waiters are
    /// rebuilt from the runs as they are restored.
    pub fn load(&mut self, entries: Vec<(pb::CacheEntry, i64)>) {
        self.entries = entries
            .into_iter()
            .map(|(e, rev)| (e.key.clone(), Versioned::stored(e, rev)))
            .collect();
        self.dirty.clear();
        self.fresh.clear();
        self.claims.clear();
        self.waiters.clear();
    }

    fn entry(&self, key: &str) -> Option<&pb::CacheEntry> {
        self.entries
            .get(key)
            .filter(|e| !e.is_deleted())
            .map(Versioned::get)
    }

    /// Whether a turn is due with no other input: tasks to look up.
    pub fn due(&self) -> bool {
        !self.fresh.is_empty()
    }

    fn forget(&mut self, key: &str) -> bool {
        match self.entries.get_mut(key).filter(|e| !e.is_deleted()) {
            Some(e) => {
                e.delete();
                self.dirty.insert(key.to_owned());
                true
            }
            None => false,
        }
    }

    /// The turn's writes: entries put or deleted.
    pub fn changes(&mut self) -> Vec<Change> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|key| {
                let entry = self.entries.get(&key)?;
                let encode = |e: &pb::CacheEntry| prost::Message::encode_to_vec(e);
                entry.change(RecordKey::Cache(key), encode)
            })
            .collect()
    }

    pub fn committed(&mut self, key: &str, rev: i64) {
        let deleted = self
            .entries
            .get(key)
            .is_some_and(|e| e.pending() == Some(PendingWrite::Delete));
        if deleted {
            self.entries.remove(key);
        } else if let Some(e) = self.entries.get_mut(key) {
            e.committed(rev);
        }
    }

    /// Entries, newest first; only those `task` made when it is not empty
    /// (its name as written matches an instance's too).
    pub fn list(&self, task: &str) -> Vec<pb::CacheEntry> {
        let mut list: Vec<pb::CacheEntry> = self
            .entries
            .values()
            .filter(|e| !e.is_deleted())
            .map(Versioned::get)
            .filter(|e| {
                let made_by = e.source.as_ref().map_or("", |s| s.task.as_str());
                task.is_empty()
                    || made_by == task
                    || made_by
                        .strip_prefix(task)
                        .is_some_and(|s| s.starts_with('['))
            })
            .cloned()
            .collect();
        list.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then(a.key.cmp(&b.key))
        });
        list
    }

    /// Deletes the entry `key`, or every entry `run`'s attempts made;
    /// returns how many.
    pub fn forget_matching(&mut self, key: &str, run: &str) -> u32 {
        let keys: Vec<String> = if !key.is_empty() {
            vec![key.to_owned()]
        } else {
            self.entries
                .values()
                .map(Versioned::get)
                .filter(|e| e.source.as_ref().is_some_and(|s| s.run_id == run))
                .map(|e| e.key.clone())
                .collect()
        };
        keys.iter().filter(|k| self.forget(k)).count() as u32
    }

    /// Why each task waiting for an identical attempt waits.
    pub fn waits(&self) -> Vec<(RunId, usize, String)> {
        let mut waits = Vec::new();
        for (key, tasks) in &self.waiters {
            let Some((owner_run, owner_task)) = self.claims.get(key) else {
                continue;
            };
            for (r, t) in tasks {
                let whom = if r == owner_run {
                    format!("task #{}", owner_task.0)
                } else {
                    format!("run {owner_run}")
                };
                waits.push((
                    r.clone(),
                    t.0,
                    format!("waiting for an identical attempt ({whom}, same cache key {key:.12}) to finish"),
                ));
            }
        }
        waits
    }
}

/// The policy of task `task` of `run`, if it takes part in the cache.
fn policy(run: &ActiveRun, task: usize) -> Option<Policy> {
    let written = match run.spec.tasks.get(task) {
        Some(t) => t,
        None => run.spec.tasks.get(run.dag.instance_of(task)?.0)?,
    };
    let cache = written.cache.clone().unwrap_or_default();
    let policy = Policy {
        mode: match cache.mode() {
            pb::CacheMode::Default => Mode::Default,
            pb::CacheMode::On => Mode::On,
            pb::CacheMode::Off => Mode::Off,
        },
        max_age: (cache.max_age_ms > 0).then_some(cache.max_age_ms),
    };
    policy
        .enabled(!written.outputs.is_empty(), written.finally)
        .then_some(policy)
}

/// Task `task`'s key, None when it has none (an input's digest unknown,
/// or its spec not in memory).
fn key(run: &ActiveRun, task: usize) -> Option<String> {
    let spec = run.task_spec(task)?;
    let inputs = run.inputs(&spec);
    let digests = inputs
        .iter()
        .map(|i| {
            if let Some(content) = &i.content {
                InputDigest::Content {
                    name: &i.name,
                    content,
                }
            } else if i.parts.is_empty() && !i.key.is_empty() {
                InputDigest::One {
                    name: &i.name,
                    sha256: &i.sha256,
                }
            } else {
                InputDigest::Parts {
                    name: &i.name,
                    parts: i
                        .parts
                        .iter()
                        .map(|p| (p.file.as_str(), p.sha256.as_str()))
                        .collect(),
                    listing: &i.listing,
                }
            }
        })
        .collect();
    let version = spec.cache.as_ref().map_or("", |c| c.version.as_str());
    let input = KeyInput {
        command: &spec.command,
        env: &spec.env,
        image: &spec.image,
        workdir: &spec.workdir,
        inputs: digests,
        code_sha256: &run.spec.code_sha256,
        outputs: spec
            .outputs
            .iter()
            .map(|o| OutputDecl {
                name: &o.name,
                path: &o.path,
                result: o.result,
            })
            .collect(),
        version,
    };
    match input.key() {
        Ok(key) => Some(key),
        Err(why) => {
            debug!(task = %run.task_name(TaskIndex(task)), ?why, "no cache key");
            None
        }
    }
}

/// Whether `task` of `run` still stands for `key`: Ready with that key,
/// or its current attempt placed or running with it.
fn stands_for(run: &ActiveRun, task: usize, key: &str) -> bool {
    let t = run.dag.task(task);
    match t.status {
        TaskStatus::Ready => run.cache_keys.get(&task).is_some_and(|k| k == key),
        TaskStatus::Assigned | TaskStatus::Running => t
            .current()
            .and_then(|a| a.cache_key.as_deref())
            .is_some_and(|k| k == key),
        _ => false,
    }
}

impl EngineState {
    /// `task` became Ready: looked up in the cache first when it takes
    /// part, otherwise straight to placement.
    pub(super) fn became_ready(&mut self, run_id: &RunId, task: usize, now: Millis) {
        let cacheable = self
            .runs
            .get(run_id)
            .is_some_and(|r| policy(r, task).is_some());
        if cacheable {
            self.cache.fresh.push((run_id.clone(), TaskIndex(task)));
        } else {
            self.queue_for_placement(run_id, TaskIndex(task), now);
        }
    }

    fn queue_for_placement(&mut self, run_id: &RunId, task: TaskIndex, now: Millis) {
        let tasks = match self.ready.get_mut(run_id) {
            Some(tasks) => tasks,
            None => self.ready.entry(run_id.clone()).or_default(),
        };
        tasks.entry(task).or_insert(now);
    }

    /// Looks up every task that became Ready, until none is left (a hit
    /// readies its downstream, which is looked up in the same turn); and
    /// hands waiters whose claimant ended back to the lookup.
    pub(super) fn serve_from_cache(&mut self, now: Millis, turn: &mut Turn) {
        self.release_waiters();
        loop {
            let fresh = std::mem::take(&mut self.cache.fresh);
            if fresh.is_empty() {
                break;
            }
            for (run_id, task) in fresh {
                self.look_up(&run_id, task, now, turn);
            }
            self.release_waiters();
        }
        self.sweep(now);
    }

    fn look_up(&mut self, run_id: &RunId, task: TaskIndex, now: Millis, turn: &mut Turn) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        if run.dag.task(task.0).status != TaskStatus::Ready {
            return;
        }
        let (Some(policy), Some(key)) = (policy(run, task.0), key(run, task.0)) else {
            self.queue_for_placement(run_id, task, now);
            return;
        };
        let reuse = !run.record.get().no_cache;
        if let Some(entry) = self.cache.entry(&key).filter(|_| reuse) {
            if policy.fresh(entry.created_at_ms, now) {
                let source = entry.source.clone().unwrap_or_default();
                let ev = Event::Cached {
                    task: task.0,
                    key,
                    from: drover_scheduler_core::dag::AttemptSource {
                        run: source.run_id,
                        task: source.task,
                        attempt: source.attempt,
                    },
                    outputs: entry.outputs.iter().map(convert::artifact).collect(),
                    image_digest: entry.image_digest.clone(),
                };
                info!(run = %run_id, task = %run.task_name(task), "served from the cache");
                self.apply_to(run_id, ev, now, turn);
                self.cached_span(run_id, task, turn);
                return;
            }
        }
        let claimant = self.cache.claims.get(&key).cloned();
        let live = claimant.as_ref().is_some_and(|(r, t)| {
            (r, t) != (run_id, &task)
                && self
                    .runs
                    .get(r)
                    .is_some_and(|run| stands_for(run, t.0, &key))
        });
        if let Some(run) = self.runs.get_mut(run_id) {
            run.cache_keys.insert(task.0, key.clone());
        }
        if live && reuse {
            self.cache
                .waiters
                .entry(key)
                .or_default()
                .push((run_id.clone(), task));
            return;
        }
        self.cache.claims.insert(key, (run_id.clone(), task));
        self.queue_for_placement(run_id, task, now);
    }

    /// Waiters whose key now has an entry, or whose claimant no longer
    /// stands for it (it failed, was cancelled or preempted), are looked up again.
    fn release_waiters(&mut self) {
        let runs = &self.runs;
        let cache = &mut self.cache;
        let ended: Vec<String> = cache
            .waiters
            .keys()
            .filter(|key| {
                cache.entry(key).is_some()
                    || !cache.claims.get(*key).is_some_and(|(r, t)| {
                        runs.get(r).is_some_and(|run| stands_for(run, t.0, key))
                    })
            })
            .cloned()
            .collect();
        for key in ended {
            if let Some(tasks) = cache.waiters.remove(&key) {
                cache.fresh.extend(tasks);
            }
        }
    }

    /// Deletes entries older than the TTL, once a minute.
    fn sweep(&mut self, now: Millis) {
        if now.saturating_sub(self.cache.swept_at) < SWEEP_EVERY_MS {
            return;
        }
        self.cache.swept_at = now;
        let ttl = self.cache.ttl;
        let expired: Vec<String> = self
            .cache
            .entries
            .values()
            .map(Versioned::get)
            .filter(|e| now.saturating_sub(e.created_at_ms) > ttl)
            .map(|e| e.key.clone())
            .collect();
        if !expired.is_empty() {
            info!(entries = expired.len(), "cache entries expired");
        }
        for key in expired {
            self.cache.forget(&key);
        }
    }

    /// An attempt of `task` ended: its claim goes, and a success that ran
    /// (not itself served from the cache) becomes an entry.
    pub(super) fn remember_result(&mut self, run_id: &RunId, task: usize, now: Millis) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        run.cache_keys.remove(&task);
        let t = run.dag.task(task);
        let Some(a) = t.current() else {
            return;
        };
        // The attempt no longer stands for its key: its claim goes (waiters
        // find the entry, or look the key up again).
        if let Some(key) = &a.cache_key {
            let ours = (run_id.clone(), TaskIndex(task));
            if self.cache.claims.get(key) == Some(&ours) {
                self.cache.claims.remove(key);
            }
        }
        let (AttemptStatus::Succeeded, None, Some(key)) =
            (a.status, &a.cached_from, a.cache_key.as_ref())
        else {
            return;
        };
        let entry = pb::CacheEntry {
            key: key.clone(),
            source: Some(pb::AttemptSource {
                run_id: run_id.to_string(),
                task: run.task_name(TaskIndex(task)).to_owned(),
                attempt: a.number,
            }),
            outputs: a.outputs.iter().map(convert::pb_artifact).collect(),
            created_at_ms: now,
            image_digest: a.image_digest.clone(),
        };
        let key = key.clone();
        match self.cache.entries.get_mut(&key) {
            Some(existing) => *existing.modify() = entry,
            None => {
                self.cache
                    .entries
                    .insert(key.clone(), Versioned::created(entry));
            }
        }
        self.cache.dirty.insert(key);
    }

    /// A restored attempt placed or running with a key claims it again.
    pub(super) fn reclaim(&mut self, run_id: &RunId, task: TaskIndex, key: &str) {
        self.cache
            .claims
            .entry(key.to_owned())
            .or_insert_with(|| (run_id.clone(), task));
    }

    fn cached_span(&self, run_id: &RunId, task: TaskIndex, turn: &mut Turn) {
        if !drover_telemetry::exporting() {
            return;
        }
        if let Some(span) = self
            .runs
            .get(run_id)
            .and_then(|r| spans::attempt_span(r, task))
        {
            turn.spans.push(span);
        }
    }
}
