//! Triggers in etcd. Keys under the scheduler's prefix:
//! - `triggers/<name>` → `TriggerRecord` (settings with the pipeline, the
//!   last scheduled time handled, the newest firings);
//! - `trigger-objects/<name>/<key>` → the ETag an object had when a firing
//!   took it (or when the trigger was created: objects already there do
//!   not fire);
//! - `trigger-alerts/<name>/<sha256 of the group key>` → `firing` or
//!   `resolved`.
//!
//! Every write goes through [`Store::commit_writes`]: compared with the
//! revision read, and fenced on leadership.

use std::collections::BTreeMap;

use etcd_client::{DeleteOptions, GetOptions};
use prost::Message;

use drover_api::pb;
use drover_scheduler_core::triggers::alerts::GroupState;

use crate::error::Result;
use crate::store::{Store, Write};

/// An object key seen before: its ETag then, and the etcd revision of that record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub etag: String,
    pub rev: i64,
}

pub fn trigger_key(store: &Store, name: &str) -> String {
    format!("{}/triggers/{name}", store.prefix())
}

fn objects_prefix(store: &Store, name: &str) -> String {
    format!("{}/trigger-objects/{name}/", store.prefix())
}

pub fn object_key(store: &Store, name: &str, key: &str) -> String {
    format!("{}{key}", objects_prefix(store, name))
}

fn alerts_prefix(store: &Store, name: &str) -> String {
    format!("{}/trigger-alerts/{name}/", store.prefix())
}

pub fn alert_key(store: &Store, name: &str, group_key: &str) -> String {
    let digest = drover_artifacts::sha256_hex(group_key.as_bytes());
    format!("{}{digest}", alerts_prefix(store, name))
}

/// The trigger `name` and its revision.
pub async fn get(store: &Store, name: &str) -> Result<Option<(pb::TriggerRecord, i64)>> {
    let key = trigger_key(store, name);
    let resp = store.client().kv_client().get(key.as_str(), None).await?;
    resp.kvs()
        .first()
        .map(|kv| Ok((Store::decode(kv.key(), kv.value())?, kv.mod_revision())))
        .transpose()
}

/// Every trigger, by name.
pub async fn list(store: &Store) -> Result<Vec<(pb::TriggerRecord, i64)>> {
    store.list("triggers", "list_triggers").await
}

/// The objects trigger `name` has seen, by key.
pub async fn seen(store: &Store, name: &str) -> Result<BTreeMap<String, Seen>> {
    let prefix = objects_prefix(store, name);
    let resp = store
        .client()
        .kv_client()
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = kv.key_str().ok()?.strip_prefix(&prefix)?.to_string();
            let etag = String::from_utf8_lossy(kv.value()).into_owned();
            Some((
                key,
                Seen {
                    etag,
                    rev: kv.mod_revision(),
                },
            ))
        })
        .collect())
}

/// What the alert group `group_key` of trigger `name` last said, and the
/// record's revision (0: never seen).
pub async fn alert_group(
    store: &Store,
    name: &str,
    group_key: &str,
) -> Result<(Option<GroupState>, i64)> {
    let key = alert_key(store, name, group_key);
    let resp = store.client().kv_client().get(key.as_str(), None).await?;
    Ok(resp.kvs().first().map_or((None, 0), |kv| {
        let state = match kv.value() {
            b"firing" => GroupState::Firing,
            _ => GroupState::Resolved,
        };
        (Some(state), kv.mod_revision())
    }))
}

pub fn alert_value(state: GroupState) -> Vec<u8> {
    match state {
        GroupState::Firing => b"firing".to_vec(),
        GroupState::Resolved => b"resolved".to_vec(),
    }
}

/// The run record's state, when the run exists.
pub async fn run_state(store: &Store, run: &str) -> Result<Option<pb::RunState>> {
    let key = store.run_key(run);
    let resp = store.client().kv_client().get(key.as_str(), None).await?;
    resp.kvs()
        .first()
        .map(|kv| {
            let record: pb::RunRecord = Store::decode(kv.key(), kv.value())?;
            Ok(record.state())
        })
        .transpose()
}

/// Whether queue `name` exists (the default queue always does: each term
/// creates it when etcd does not hold it yet).
pub async fn queue_exists(store: &Store, name: &str) -> Result<bool> {
    if name == crate::queues::DEFAULT_QUEUE {
        return Ok(true);
    }
    let key = store.queue_key(name);
    let resp = store
        .client()
        .kv_client()
        .get(key.as_str(), Some(GetOptions::new().with_count_only()))
        .await?;
    Ok(resp.count() > 0)
}

/// The write of `record` over revision `rev` (0: a new trigger).
pub fn put(store: &Store, record: &pb::TriggerRecord, rev: i64) -> Write {
    let name = record.settings.as_ref().map_or("", |s| s.name.as_str());
    Write::put(trigger_key(store, name), record.encode_to_vec(), rev)
}

/// Removes what the trigger `name` kept besides its record (deleted first).
pub async fn delete_rest(store: &Store, name: &str) -> Result<()> {
    let mut kv = store.client().kv_client();
    for prefix in [objects_prefix(store, name), alerts_prefix(store, name)] {
        kv.delete(prefix, Some(DeleteOptions::new().with_prefix()))
            .await?;
    }
    Ok(())
}
