//! etcd access: key layout, loading runs, and compare-and-swap commits.
//!
//! Keys under the configured prefix:
//! - `<prefix>/runs/<run-id>` → `RunRecord` (small; never the spec; with
//!   the item count of each expanded `for_each` task, which is all a
//!   restart needs to append its instances again)
//! - `<prefix>/specs/<run-id>/<000000>` → the resolved spec, an encoded
//!   `PipelineSpec` in chunks of at most [`SPEC_CHUNK_BYTES`], written once
//!   before the run record (the commit point) and never changed
//! - `<prefix>/tasks/<run-id>/<task>` → `TaskRecord`, only once the task has an attempt
//! - `<prefix>/agents/<agent-id>` → `AgentRecord` (drain state, loss, last instance)
//! - `<prefix>/queues/<name>` → `QueueRecord`
//! - `<prefix>/tokens/<name>` → `TokenRecord` (API tokens, see `crate::auth`)
//! - `<prefix>/nats/agents/<agent-id>` → `EnrolledAgent` (the public key of
//!   the agent's NATS identity; written by `EnrollAgent` only)
//! - `<prefix>/triggers/<name>`, `<prefix>/trigger-objects/<name>/<key>`,
//!   `<prefix>/trigger-alerts/<name>/<group>`: triggers (see
//!   `crate::triggers::records`)
//!
//! Specs are kept apart so that a run of 100,000 tasks is neither one etcd
//! value (etcd refuses requests over 1.5 MiB) nor rewritten with every
//! state change. Chunks without a run record (a submit that failed between
//! the two, or a scheduler killed there) are deleted by the submit that
//! wrote them, or at the next start ([`Store::delete_orphan_specs`]).
//!
//! Every write compares the key's `mod_revision` with the one this scheduler
//! last saw (or `create_revision == 0` for a new key), so a second writer
//! cannot silently overwrite it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use prost::Message;

use drover_api::pb;
use drover_scheduler_core::ids::{AgentId, RunId, TaskIndex};

use crate::error::{Result, SchedulerError};
use crate::leader::{Fence, Leadership};
use crate::metrics::OpErrors;

/// Writes per transaction: etcd's default `--max-txn-ops` (128, which
/// counts compares too) less the leadership fence's compare.
pub const MAX_TXN_OPS: usize = 127;

/// Largest spec chunk: under etcd's default 1.5 MiB request limit with room
/// for the key and the transaction around it.
pub const SPEC_CHUNK_BYTES: usize = 1024 * 1024;

/// One key to write (or delete), and the revision it must still have.
#[derive(Debug, Clone)]
pub struct Write {
    pub key: String,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
    /// `0`: the key must not exist yet.
    pub expect_rev: i64,
}

impl Write {
    pub fn put(key: String, value: Vec<u8>, expect_rev: i64) -> Self {
        Self {
            key,
            value: Some(value),
            expect_rev,
        }
    }

    pub fn delete(key: String, expect_rev: i64) -> Self {
        Self {
            key,
            value: None,
            expect_rev,
        }
    }
}

/// A record the engine writes, named by what it is; [`Store::key`] turns it
/// into its etcd key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Run(RunId),
    Task {
        run: RunId,
        task: TaskIndex,
        /// The key holds the task's name, not its index.
        name: String,
    },
    Agent(AgentId),
    Queue(String),
    /// A step-cache entry, by its key.
    Cache(String),
}

/// One record to write, or to delete (`value` None), and the revision etcd
/// must still hold it at (None: it must not exist yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: RecordKey,
    pub value: Option<Vec<u8>>,
    pub expect: Option<i64>,
}

/// The revision each committed change was written at, in the order of the
/// changes.
pub type Revisions = Vec<(RecordKey, i64)>;

/// What start-up and recovery load: the active runs in full, and how many
/// finished runs etcd holds by state (for the runs-by-state gauge).
pub struct LoadedRuns {
    pub active: Vec<StoredRun>,
    pub finished: BTreeMap<pb::RunState, u64>,
}

/// A run as stored: the run record, its spec, and task records by task name.
#[derive(Clone, Debug)]
pub struct StoredRun {
    pub record: pb::RunRecord,
    pub spec: Arc<pb::PipelineSpec>,
    pub rev: i64,
    pub tasks: Vec<(String, pb::TaskRecord, i64)>,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
    /// Specs never change once written: readers (GetRun, WatchRun) keep
    /// the last few instead of fetching them from etcd every time.
    specs: Arc<Mutex<HashMap<String, Arc<pb::PipelineSpec>>>>,
    errors: OpErrors,
    conflicts: prometheus_client::metrics::counter::Counter,
    /// When set, every transaction is fenced on this process's leadership
    /// (see [`crate::leader`]); unset in tests of the store alone.
    leadership: Option<Leadership>,
}

/// Specs kept by [`Store::load_spec`]; the cache starts over past this.
const CACHED_SPECS: usize = 64;

/// How long connecting to one etcd member may take before another is tried.
const ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Store {
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        Self::connect_with(endpoints, prefix, None).await
    }

    /// [`Store::connect`] with TLS and a user ([`crate::options::EtcdSecurityOptions`]).
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        options: Option<etcd_client::ConnectOptions>,
    ) -> Result<Self> {
        let options = options
            .unwrap_or_default()
            .with_connect_timeout(ETCD_CONNECT_TIMEOUT)
            // A member that vanished without closing its connections (a dead
            // machine) is found by HTTP/2 pings: etcd refuses pings more
            // often than every 5 s (`--grpc-keepalive-min-time`).
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            // A watch on a member cut off from the leader is cancelled
            // (and re-made on another) instead of silently going quiet.
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(options)).await?;
        if endpoints.len() > 1 {
            tokio::spawn(crate::etcd_members::watch(
                client.clone(),
                endpoints.to_vec(),
            ));
        }
        Ok(Self {
            client,
            prefix: prefix.to_string(),
            specs: Arc::default(),
            errors: OpErrors::default(),
            conflicts: Default::default(),
            leadership: None,
        })
    }

    /// Fences every transaction on `leadership`: none commits unless this
    /// process still holds the election key it won.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// The compare that fences a transaction, if this store is fenced;
    /// Err(NotLeader) when it is fenced and this process does not lead.
    fn fence(&self) -> Result<Option<Fence>> {
        match &self.leadership {
            None => Ok(None),
            Some(l) => l.fence().map(Some).ok_or(SchedulerError::NotLeader),
        }
    }

    /// A failed fenced transaction: NotLeader if the fence no longer holds
    /// (read from the transaction's failure branch), else a conflict.
    fn failed_txn(&self, fence: &Option<Fence>, resp: &etcd_client::TxnResponse) -> SchedulerError {
        let Some(fence) = fence else {
            return SchedulerError::Conflict;
        };
        let held = resp.op_responses().into_iter().any(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().iter().any(|kv| {
                kv.key() == fence.key.as_slice() && kv.create_revision() == fence.revision
            }),
            _ => false,
        });
        if held {
            SchedulerError::Conflict
        } else {
            SchedulerError::NotLeader
        }
    }

    /// Counts failed calls in `errors` (by operation) and lost
    /// compare-and-swaps in `conflicts`.
    pub fn with_metrics(
        mut self,
        errors: OpErrors,
        conflicts: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.errors = errors;
        self.conflicts = conflicts;
        self
    }

    fn failed(&self, op: &'static str) -> impl FnOnce(&etcd_client::Error) + '_ {
        move |_| self.errors.inc(op)
    }

    /// The etcd client, for what is kept outside the engine (API tokens, the election).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The key prefix every record of this scheduler hangs off.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The etcd key of a record the engine writes.
    pub fn key(&self, record: &RecordKey) -> String {
        match record {
            RecordKey::Run(run) => self.run_key(run.as_str()),
            RecordKey::Task { run, name, .. } => self.task_key(run.as_str(), name),
            RecordKey::Agent(agent) => self.agent_key(agent.as_str()),
            RecordKey::Queue(name) => self.queue_key(name),
            RecordKey::Cache(key) => format!("{}/cache/{key}", self.prefix),
        }
    }

    /// Commits `groups` of changes (see [`Store::commit_writes`]) and
    /// returns the revision each was written at, by record.
    pub async fn commit(&self, groups: Vec<Vec<Change>>) -> Result<Revisions> {
        let mut keys = Vec::with_capacity(groups.iter().map(Vec::len).sum());
        let writes = groups
            .into_iter()
            .map(|group| {
                group
                    .into_iter()
                    .map(|change| {
                        let write = Write {
                            key: self.key(&change.key),
                            value: change.value,
                            expect_rev: change.expect.unwrap_or(0),
                        };
                        keys.push(change.key);
                        write
                    })
                    .collect()
            })
            .collect();
        let revs = self.commit_writes(writes).await?;
        Ok(keys.into_iter().zip(revs).collect())
    }

    pub fn run_key(&self, run: &str) -> String {
        format!("{}/runs/{run}", self.prefix)
    }

    fn spec_prefix(&self, run: &str) -> String {
        format!("{}/specs/{run}/", self.prefix)
    }

    /// Writes `spec` for the not yet created run `run`, in chunks, each only
    /// if absent; returns how many. The run record must say that count.
    pub async fn put_spec(&self, run: &str, spec: &pb::PipelineSpec) -> Result<u32> {
        let bytes = spec.encode_to_vec();
        let prefix = self.spec_prefix(run);
        let puts = bytes
            .chunks(SPEC_CHUNK_BYTES)
            .enumerate()
            .map(|(i, chunk)| {
                let key = format!("{prefix}{i:06}");
                let mut kv = self.client.kv_client();
                async move {
                    let fence = self.fence()?;
                    let compares = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
                    let txn = fenced(compares, &fence, vec![TxnOp::put(key, chunk, None)]);
                    let resp = kv.txn(txn).await.inspect_err(self.failed("put_spec"))?;
                    if resp.succeeded() {
                        Ok(())
                    } else {
                        Err(self.failed_txn(&fence, &resp))
                    }
                }
            });
        let n = futures::future::try_join_all(puts).await?.len();
        Ok(n as u32)
    }

    /// Deletes `run`'s spec chunks (a submit that did not complete).
    pub async fn delete_spec(&self, run: &str) -> Result<()> {
        self.client
            .kv_client()
            .delete(
                self.spec_prefix(run),
                Some(DeleteOptions::new().with_prefix()),
            )
            .await
            .inspect_err(self.failed("delete_spec"))?;
        Ok(())
    }

    /// `record`'s spec as of etcd revision `at` (0: latest).
    pub async fn load_spec(
        &self,
        record: &pb::RunRecord,
        at: i64,
    ) -> Result<Arc<pb::PipelineSpec>> {
        if let Some(spec) = self.cached_spec(&record.id) {
            return Ok(spec);
        }
        let spec = Arc::new(self.read_spec(record, at).await?);
        if let Ok(mut specs) = self.specs.lock() {
            if specs.len() >= CACHED_SPECS {
                specs.clear();
            }
            specs.insert(record.id.clone(), Arc::clone(&spec));
        }
        Ok(spec)
    }

    fn cached_spec(&self, run: &str) -> Option<Arc<pb::PipelineSpec>> {
        self.specs.lock().ok()?.get(run).cloned()
    }

    async fn read_spec(&self, record: &pb::RunRecord, at: i64) -> Result<pb::PipelineSpec> {
        let prefix = self.spec_prefix(&record.id);
        let mut opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if at > 0 {
            opts = opts.with_revision(at);
        }
        let resp = self
            .client
            .kv_client()
            .get(prefix.as_bytes(), Some(opts))
            .await
            .inspect_err(self.failed("load_spec"))?;
        let corrupt = |reason: String| SchedulerError::Corrupt {
            key: prefix.clone(),
            reason,
        };
        if resp.kvs().len() != record.spec_chunks as usize {
            return Err(corrupt(format!(
                "{} spec chunks stored, the run record says {}",
                resp.kvs().len(),
                record.spec_chunks
            )));
        }
        let mut bytes = Vec::with_capacity(resp.kvs().iter().map(|kv| kv.value().len()).sum());
        for kv in resp.kvs() {
            bytes.extend_from_slice(kv.value());
        }
        pb::PipelineSpec::decode(bytes.as_slice()).map_err(|e| corrupt(e.to_string()))
    }

    /// Deletes spec chunks whose run record does not exist: left by a submit
    /// cut short. Fenced, only chunks written before this leader's election
    /// key (its campaign): a submit of this term may be between its spec and
    /// its run record (the API serves as soon as the term starts), while one
    /// of an earlier term can no longer complete (its leader's writes are
    /// fenced). Orphans written while this leader stood by wait for the next term.
    pub async fn delete_orphan_specs(&self) -> Result<usize> {
        let term_began = self.fence()?.map_or(i64::MAX, |f| f.revision);
        let runs: std::collections::HashSet<String> = self
            .list_runs()
            .await?
            .into_iter()
            .map(|(r, _)| r.id)
            .collect();
        let prefix = format!("{}/specs/", self.prefix);
        let resp = self
            .client
            .kv_client()
            .get(
                prefix.as_bytes(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .inspect_err(self.failed("list_specs"))?;
        let orphans: std::collections::BTreeSet<String> = resp
            .kvs()
            .iter()
            .filter(|kv| kv.create_revision() < term_began)
            .filter_map(|kv| {
                let rest = kv.key().get(prefix.len()..)?;
                let run = String::from_utf8_lossy(rest).split('/').next()?.to_string();
                (!runs.contains(&run)).then_some(run)
            })
            .collect();
        for run in &orphans {
            self.delete_spec(run).await?;
        }
        Ok(orphans.len())
    }

    pub fn task_key(&self, run: &str, task: &str) -> String {
        format!("{}/tasks/{run}/{task}", self.prefix)
    }

    pub fn queue_key(&self, queue: &str) -> String {
        format!("{}/queues/{queue}", self.prefix)
    }

    /// Every queue, with its revision.
    pub async fn list_queues(&self) -> Result<Vec<(pb::Queue, i64)>> {
        let records: Vec<(pb::QueueRecord, i64)> = self.list("queues", "list_queues").await?;
        Ok(records
            .into_iter()
            .map(|(r, rev)| (r.queue.unwrap_or_default(), rev))
            .collect())
    }

    /// Every record under `<prefix>/<kind>/`, with its revision.
    pub(crate) async fn list<M: Message + Default>(
        &self,
        kind: &str,
        op: &'static str,
    ) -> Result<Vec<(M, i64)>> {
        let prefix = format!("{}/{kind}/", self.prefix);
        let resp = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .inspect_err(self.failed(op))?;
        resp.kvs()
            .iter()
            .map(|kv| Ok((Self::decode(kv.key(), kv.value())?, kv.mod_revision())))
            .collect()
    }

    /// Every step-cache entry, with its revision.
    pub async fn list_cache(&self) -> Result<Vec<(pb::CacheEntry, i64)>> {
        self.list("cache", "list_cache").await
    }

    pub fn agent_key(&self, agent: &str) -> String {
        format!("{}/agents/{agent}", self.prefix)
    }

    /// Every agent record, with its revision.
    pub async fn list_agents(&self) -> Result<Vec<(pb::AgentRecord, i64)>> {
        self.list("agents", "list_agents").await
    }

    /// Stores an enrolled agent's identity; Ok(false) when the agent is
    /// enrolled already and `replace` is false (nothing written).
    pub async fn put_enrolled_agent(
        &self,
        agent: &pb::EnrolledAgent,
        replace: bool,
    ) -> Result<bool> {
        let key = format!("{}/nats/agents/{}", self.prefix, agent.agent_id);
        let put = TxnOp::put(key.clone(), agent.encode_to_vec(), None);
        let txn = match replace {
            true => Txn::new().and_then(vec![put]),
            false => Txn::new()
                .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then(vec![put]),
        };
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .inspect_err(self.failed("put_enrolled_agent"))?;
        Ok(resp.succeeded())
    }

    /// Every enrolled agent, by id.
    pub async fn list_enrolled_agents(&self) -> Result<Vec<pb::EnrolledAgent>> {
        let agents: Vec<(pb::EnrolledAgent, i64)> =
            self.list("nats/agents", "list_enrolled_agents").await?;
        Ok(agents.into_iter().map(|(a, _)| a).collect())
    }

    pub(crate) fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M> {
        M::decode(value).map_err(|e| SchedulerError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
    }

    /// Every run record (for start-up recovery and listing).
    pub async fn list_runs(&self) -> Result<Vec<(pb::RunRecord, i64)>> {
        Ok(self.list_runs_at().await?.0)
    }

    /// Every run record, and the etcd revision they were read at.
    async fn list_runs_at(&self) -> Result<(Vec<(pb::RunRecord, i64)>, i64)> {
        let prefix = format!("{}/runs/", self.prefix);
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let resp = self
            .client
            .kv_client()
            .get(prefix, Some(opts))
            .await
            .inspect_err(self.failed("list_runs"))?;
        let at = resp.header().map_or(0, |h| h.revision());
        let runs = resp
            .kvs()
            .iter()
            .map(|kv| Ok((Self::decode(kv.key(), kv.value())?, kv.mod_revision())))
            .collect::<Result<_>>()?;
        Ok((runs, at))
    }

    /// One run with its task records, or None if no such run.
    pub async fn load_run(&self, run: &str) -> Result<Option<StoredRun>> {
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(self.run_key(run), None)
            .await
            .inspect_err(self.failed("load_run"))?;
        let Some(head) = resp.kvs().first() else {
            return Ok(None);
        };
        let record: pb::RunRecord = Self::decode(head.key(), head.value())?;
        let rev = head.mod_revision();
        let at = resp.header().map_or(0, |h| h.revision());
        let spec = self.load_spec(&record, at).await?;
        let tasks = self.load_tasks(run, at).await?;
        Ok(Some(StoredRun {
            record,
            spec,
            rev,
            tasks,
        }))
    }

    /// Task records of `run` as of etcd revision `at`: reading them at the
    /// run record's revision gives one consistent snapshot, never a task
    /// that finished with a run record from before.
    async fn load_tasks(&self, run: &str, at: i64) -> Result<Vec<(String, pb::TaskRecord, i64)>> {
        let prefix = format!("{}/tasks/{run}/", self.prefix);
        let resp = self
            .client
            .kv_client()
            .get(
                prefix.as_bytes(),
                Some(GetOptions::new().with_prefix().with_revision(at)),
            )
            .await
            .inspect_err(self.failed("load_tasks"))?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                Ok((name, Self::decode(kv.key(), kv.value())?, kv.mod_revision()))
            })
            .collect()
    }

    /// The task records of `run` as they are now, by task name.
    pub async fn task_records(&self, run: &str) -> Result<Vec<(String, pb::TaskRecord, i64)>> {
        // Revision 0: the latest.
        self.load_tasks(run, 0).await
    }

    /// Loads every run that is not finished yet, and counts the rest.
    pub async fn load_active_runs(&self) -> Result<LoadedRuns> {
        let mut active = Vec::new();
        let mut finished = BTreeMap::new();
        let (runs, at) = self.list_runs_at().await?;
        for (record, rev) in runs {
            if is_active(record.state()) {
                let spec = self.load_spec(&record, at).await?;
                let tasks = self.load_tasks(&record.id, at).await?;
                active.push(StoredRun {
                    record,
                    spec,
                    rev,
                    tasks,
                });
            } else {
                *finished.entry(record.state()).or_default() += 1;
            }
        }
        Ok(LoadedRuns { active, finished })
    }

    /// Commits `groups` (each group's writes belong together, e.g. one run's
    /// change, its run record last) in as few transactions as etcd's op
    /// limit allows, never splitting a group that fits in one. Returns each
    /// write's new revision in order, or `Conflict` if any comparison
    /// failed; other transactions may stay committed, so the caller reloads
    /// state then.
    ///
    /// Transactions are sent together, not one after another: the writes of
    /// one commit name distinct keys, so they are independent, and etcd
    /// batches concurrent proposals into one raft entry and fsync. The one
    /// exception is a group split over several transactions: the part with
    /// its end (the run record) is sent only once the others are committed,
    /// so etcd never holds a run record ahead of its task records. Every
    /// transaction sent is awaited, even after a failure, so the reload that
    /// follows reads a settled store.
    pub async fn commit_writes(&self, groups: Vec<Vec<Write>>) -> Result<Vec<i64>> {
        // (writes, holds the end of a split group)
        let mut batches: Vec<(Vec<Write>, bool)> = Vec::new();
        let mut batch: Vec<Write> = Vec::new();
        let mut ends_split = false;
        for group in groups {
            let split = group.len() > MAX_TXN_OPS;
            // A group to split starts a transaction of its own, so the one
            // with its end holds no other group's beginning.
            if !batch.is_empty() && (split || batch.len() + group.len() > MAX_TXN_OPS) {
                batches.push((std::mem::take(&mut batch), std::mem::take(&mut ends_split)));
            }
            // A group larger than one transaction is split: the core's state is
            // derivable per task, so a restart between the parts loses nothing.
            for w in group {
                if batch.len() == MAX_TXN_OPS {
                    batches.push((std::mem::take(&mut batch), std::mem::take(&mut ends_split)));
                }
                batch.push(w);
            }
            ends_split |= split;
        }
        if !batch.is_empty() {
            batches.push((batch, ends_split));
        }
        let mut revs: Vec<Vec<i64>> = vec![Vec::new(); batches.len()];
        let (last, first): (Vec<_>, Vec<_>) = batches
            .into_iter()
            .enumerate()
            .partition(|(_, (_, ends))| *ends);
        for phase in [first, last] {
            let sent = phase
                .into_iter()
                .map(|(i, (writes, _))| async move { (i, self.commit_txn(writes).await) });
            let mut failed = None;
            for (i, result) in futures::future::join_all(sent).await {
                match result {
                    Ok(r) => revs[i] = r,
                    Err(e) => failed = failed.or(Some(e)),
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(revs.into_iter().flatten().collect())
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
            puts.push(match w.value {
                Some(v) => TxnOp::put(w.key, v, None),
                None => TxnOp::delete(w.key, None),
            });
        }
        let fence = self.fence()?;
        let resp = self
            .client
            .kv_client()
            .txn(fenced(compares, &fence, puts))
            .await
            .inspect_err(self.failed("commit"))?;
        if !resp.succeeded() {
            let e = self.failed_txn(&fence, &resp);
            if matches!(e, SchedulerError::Conflict) {
                self.conflicts.inc();
            }
            return Err(e);
        }
        let rev = resp.header().map_or(0, |h| h.revision());
        Ok(vec![rev; n])
    }
}

/// A transaction doing `ops` if `compares` hold, plus the fence's compare
/// when there is one (and a read of the election key on failure, to tell a
/// lost fence from a conflict).
fn fenced(mut compares: Vec<Compare>, fence: &Option<Fence>, ops: Vec<TxnOp>) -> Txn {
    let Some(fence) = fence else {
        return Txn::new().when(compares).and_then(ops);
    };
    compares.push(Compare::create_revision(
        fence.key.clone(),
        CompareOp::Equal,
        fence.revision,
    ));
    Txn::new()
        .when(compares)
        .and_then(ops)
        .or_else([TxnOp::get(fence.key.clone(), None)])
}

pub fn is_active(state: pb::RunState) -> bool {
    matches!(state, pb::RunState::Running | pb::RunState::Cancelling)
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    fn put(key: String, value: Vec<u8>, expect_rev: i64) -> Vec<Write> {
        vec![Write::put(key, value, expect_rev)]
    }

    #[tokio::test]
    async fn cas_rejects_stale_writes_and_reads_are_snapshots() -> TestResult {
        let etcd = drover_devcluster::Server::etcd(None).await?;
        let store = Store::connect(std::slice::from_ref(&etcd.url), "/t").await?;
        let run = pb::RunRecord {
            id: "r1".into(),
            state: pb::RunState::Running as i32,
            ..Default::default()
        };
        let revs = store
            .commit_writes(vec![put(store.run_key("r1"), run.encode_to_vec(), 0)])
            .await?;
        // Creating it again (expecting no key) loses the compare.
        let again = store
            .commit_writes(vec![put(store.run_key("r1"), run.encode_to_vec(), 0)])
            .await;
        assert!(matches!(again, Err(SchedulerError::Conflict)));
        let stale = store
            .commit_writes(vec![put(
                store.run_key("r1"),
                run.encode_to_vec(),
                revs[0] - 1,
            )])
            .await;
        assert!(matches!(stale, Err(SchedulerError::Conflict)));

        let before = store.load_run("r1").await?.ok_or("run r1 not stored")?;
        assert!(before.tasks.is_empty());
        let task = pb::TaskRecord {
            state: pb::TaskState::Failed as i32,
            ..Default::default()
        };
        store
            .commit_writes(vec![put(
                store.task_key("r1", "a"),
                task.encode_to_vec(),
                0,
            )])
            .await?;
        // Read at the earlier revision, the later task write is invisible.
        assert!(store.load_tasks("r1", before.rev).await?.is_empty());
        let now = store.load_run("r1").await?.ok_or("run r1 not stored")?;
        assert_eq!(now.tasks.len(), 1);
        assert_eq!(now.tasks[0].0, "a");
        assert!(store.load_run("nope").await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn big_changes_are_split_into_transactions_under_the_op_limit() -> TestResult {
        let etcd = drover_devcluster::Server::etcd(None).await?;
        let store = Store::connect(std::slice::from_ref(&etcd.url), "/t").await?;
        let writes: Vec<Write> = (0..300)
            .map(|i| Write::put(store.task_key("big", &format!("t{i}")), vec![], 0))
            .collect();
        let small = put(store.run_key("small"), vec![], 0);
        let revs = store.commit_writes(vec![writes, small]).await?;
        assert_eq!(revs.len(), 301);
        let distinct: std::collections::BTreeSet<_> = revs.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "300 + 1 writes need 3 transactions of <= MAX_TXN_OPS"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_split_group_commits_its_end_after_the_rest() -> TestResult {
        let etcd = drover_devcluster::Server::etcd(None).await?;
        let store = Store::connect(std::slice::from_ref(&etcd.url), "/t").await?;
        let others: Vec<Vec<Write>> = (0..3)
            .map(|r| put(store.run_key(&format!("other{r}")), vec![], 0))
            .collect();
        let mut big: Vec<Write> = (0..300)
            .map(|i| Write::put(store.task_key("big", &format!("t{i}")), vec![], 0))
            .collect();
        big.push(Write::put(store.run_key("big"), vec![], 0));
        let mut groups = others;
        groups.push(big);
        let revs = store.commit_writes(groups).await?;
        assert_eq!(revs.len(), 304);
        let run_rev = revs[303];
        // Its record shares the last part (the tasks after two full
        // transactions) and is committed after the other parts, whatever
        // order the concurrent ones took.
        let last = 3 + 2 * MAX_TXN_OPS;
        assert!(revs[3..last].iter().all(|&r| r < run_rev), "{revs:?}");
        assert!(revs[last..303].iter().all(|&r| r == run_rev), "{revs:?}");
        let distinct: std::collections::BTreeSet<_> = revs.iter().collect();
        assert_eq!(distinct.len(), 4, "3 small + 2 full + the rest: {revs:?}");
        Ok(())
    }
}
