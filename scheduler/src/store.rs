//! etcd access: key layout, loading runs, and compare-and-swap commits.
//!
//! Keys under the configured prefix:
//! - `<prefix>/runs/<run-id>` → `RunRecord`
//! - `<prefix>/tasks/<run-id>/<task>` → `TaskRecord`, only once the task has an attempt
//!
//! Every write compares the key's `mod_revision` with the one this scheduler
//! last saw (or `create_revision == 0` for a new key), so a second writer
//! cannot silently overwrite it.

use etcd_client::{Client, Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use prost::Message;

use drover_api::pb;

use crate::error::{Result, SchedulerError};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// One key to write, and the revision it must still have.
#[derive(Debug, Clone)]
pub struct Write {
    pub key: String,
    pub value: Vec<u8>,
    /// `0`: the key must not exist yet.
    pub expect_rev: i64,
}

/// A run as stored: the run record, and task records by task name.
pub struct StoredRun {
    pub record: pb::RunRecord,
    pub rev: i64,
    pub tasks: Vec<(String, pb::TaskRecord, i64)>,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

impl Store {
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        let client = Client::connect(endpoints, None).await?;
        Ok(Self {
            client,
            prefix: prefix.to_string(),
        })
    }

    pub fn run_key(&self, run: &str) -> String {
        format!("{}/runs/{run}", self.prefix)
    }

    pub fn task_key(&self, run: &str, task: &str) -> String {
        format!("{}/tasks/{run}/{task}", self.prefix)
    }

    fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M> {
        M::decode(value).map_err(|e| SchedulerError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
    }

    /// Every run record (for start-up recovery and listing).
    pub async fn list_runs(&self) -> Result<Vec<(pb::RunRecord, i64)>> {
        let prefix = format!("{}/runs/", self.prefix);
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let resp = self.client.kv_client().get(prefix, Some(opts)).await?;
        resp.kvs()
            .iter()
            .map(|kv| Ok((Self::decode(kv.key(), kv.value())?, kv.mod_revision())))
            .collect()
    }

    /// One run with its task records, or None if no such run.
    pub async fn load_run(&self, run: &str) -> Result<Option<StoredRun>> {
        let mut kv = self.client.kv_client();
        let resp = kv.get(self.run_key(run), None).await?;
        let Some(head) = resp.kvs().first() else {
            return Ok(None);
        };
        let record: pb::RunRecord = Self::decode(head.key(), head.value())?;
        let rev = head.mod_revision();
        let tasks = self.load_tasks(run).await?;
        Ok(Some(StoredRun { record, rev, tasks }))
    }

    async fn load_tasks(&self, run: &str) -> Result<Vec<(String, pb::TaskRecord, i64)>> {
        let prefix = format!("{}/tasks/{run}/", self.prefix);
        let resp = self
            .client
            .kv_client()
            .get(prefix.as_bytes(), Some(GetOptions::new().with_prefix()))
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                Ok((name, Self::decode(kv.key(), kv.value())?, kv.mod_revision()))
            })
            .collect()
    }

    /// Loads every run that is not finished yet.
    pub async fn load_active_runs(&self) -> Result<Vec<StoredRun>> {
        let mut out = Vec::new();
        for (record, rev) in self.list_runs().await? {
            if is_active(record.state()) {
                let tasks = self.load_tasks(&record.id).await?;
                out.push(StoredRun { record, rev, tasks });
            }
        }
        Ok(out)
    }

    /// Commits `groups` (each group's writes belong together, e.g. one run's
    /// change) in as few transactions as etcd's op limit allows, never
    /// splitting a group that fits in one. Returns each write's new revision
    /// in order, or `Conflict` if any comparison failed; transactions before
    /// the failed one stay committed, so the caller reloads state then.
    pub async fn commit(&self, groups: Vec<Vec<Write>>) -> Result<Vec<i64>> {
        let mut revs = Vec::new();
        let mut batch: Vec<Write> = Vec::new();
        for group in groups {
            if !batch.is_empty() && batch.len() + group.len() > MAX_TXN_OPS {
                revs.extend(self.commit_txn(std::mem::take(&mut batch)).await?);
            }
            // A group larger than one transaction is split: the core's state is
            // derivable per task, so a restart between the parts loses nothing.
            for w in group {
                if batch.len() == MAX_TXN_OPS {
                    revs.extend(self.commit_txn(std::mem::take(&mut batch)).await?);
                }
                batch.push(w);
            }
        }
        if !batch.is_empty() {
            revs.extend(self.commit_txn(batch).await?);
        }
        Ok(revs)
    }

    async fn commit_txn(&self, writes: Vec<Write>) -> Result<Vec<i64>> {
        let n = writes.len();
        let mut compares = Vec::with_capacity(n);
        let mut puts = Vec::with_capacity(n);
        for w in writes {
            compares.push(if w.expect_rev == 0 {
                Compare::create_revision(w.key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(w.key.clone(), CompareOp::Equal, w.expect_rev)
            });
            puts.push(TxnOp::put(w.key, w.value, None));
        }
        let resp = self
            .client
            .kv_client()
            .txn(Txn::new().when(compares).and_then(puts))
            .await?;
        if !resp.succeeded() {
            return Err(SchedulerError::Conflict);
        }
        let rev = resp.header().map_or(0, |h| h.revision());
        Ok(vec![rev; n])
    }
}

pub fn is_active(state: pb::RunState) -> bool {
    matches!(state, pb::RunState::Running | pb::RunState::Cancelling)
}
