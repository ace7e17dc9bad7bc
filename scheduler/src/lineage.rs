//! `GetLineage`: the tree behind an artifact.
//!
//! A node is one attempt as it ran (command as the agent got it, image and
//! the digest the agent reported, code snapshot, params, matrix values or
//! `for_each` item, agent, GPUs, times, outputs); its inputs name the
//! producer attempts they came from, each a node of its own, so a producer
//! shared by several consumers (a diamond) is one node referred to by index.
//!
//! [`assemble`] builds the tree, purely, from runs already read
//! ([`LineageRun`]); the shell ([`Api::lineage`]) reads the artifact's run,
//! and then any run a cached result came from that the tree names
//! ([`Assembled::missing`]), and assembles again until nothing is missing.
//! The tree is walked breadth first, so a node shared at several depths is
//! expanded at the shallowest, and the depth limit cuts it evenly.
//!
//! Which attempt of a producer an input came from is not stored with the
//! consumer: it is the producer's latest successful attempt that had ended
//! when the consumer's attempt was assigned (both times on the scheduler's
//! clock). `drover retry` cannot blur this: re-running a producer re-runs
//! what depends on it.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use drover_api::pb;
use drover_scheduler_core::dag::{Attempt, AttemptStatus, RunDag, TaskRun};

use crate::convert;
use crate::error::{Result, SchedulerError};
use crate::grpc::Api;

/// Levels of inputs followed when the request does not say.
pub const DEFAULT_DEPTH: u32 = 32;
/// Most levels a request may ask for.
pub const MAX_DEPTH: u32 = 256;
/// Most nodes in one answer; past it inputs are listed without producers.
pub const MAX_NODES: usize = 10_000;
/// Most runs read for one answer (the artifact's and those cached results
/// came from).
const MAX_RUNS: usize = 64;

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// The outputs (one, or all) of a task of a run.
    Artifact {
        run: String,
        task: String,
        output: Option<String>,
    },
    /// The output with this content digest (lowercase hex).
    Sha256(String),
}

fn invalid(field: &'static str, message: String) -> SchedulerError {
    SchedulerError::InvalidArgument { field, message }
}

/// The request checked: what to look for, and how many levels deep.
pub fn parse_request(req: &pb::GetLineageRequest) -> Result<(Query, u32)> {
    let depth = match req.max_depth {
        0 => DEFAULT_DEPTH,
        d if d > MAX_DEPTH => {
            return Err(invalid(
                "max_depth",
                format!("{d} is over the limit of {MAX_DEPTH}"),
            ))
        }
        d => d,
    };
    if !req.sha256.is_empty() {
        let others = [
            ("run_id", &req.run_id),
            ("task", &req.task),
            ("output", &req.output),
        ];
        if let Some((field, value)) = others.into_iter().find(|(_, v)| !v.is_empty()) {
            return Err(invalid(
                "sha256",
                format!(
                    "`{}` cannot be combined with {field} `{value}`: give either sha256 alone or run_id and task",
                    req.sha256
                ),
            ));
        }
        return Ok((Query::Sha256(normalize_sha256(&req.sha256)?), depth));
    }
    if req.run_id.is_empty() {
        return Err(invalid("run_id", "is required (or sha256)".into()));
    }
    if req.task.is_empty() {
        return Err(invalid(
            "task",
            format!("is required with run_id `{}`", req.run_id),
        ));
    }
    let query = Query::Artifact {
        run: req.run_id.clone(),
        task: req.task.clone(),
        output: (!req.output.is_empty()).then(|| req.output.clone()),
    };
    Ok((query, depth))
}

/// `raw` as lowercase hex: 64 hex digits, optionally prefixed `sha256:`.
pub fn normalize_sha256(raw: &str) -> Result<String> {
    let hex = raw
        .strip_prefix("sha256:")
        .unwrap_or(raw)
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "sha256",
            format!("`{raw}` is not a sha256 (64 hex digits, `sha256:` prefix allowed)"),
        ));
    }
    Ok(hex)
}

/// A run as lineage reads it: its record, spec and state, and the items of
/// its expanded `for_each` tasks (to show their instances' commands).
pub struct LineageRun {
    record: pb::RunRecord,
    spec: Arc<pb::PipelineSpec>,
    dag: RunDag,
    /// The instances of each task with a matrix, by the task as written.
    matrices: HashMap<String, Vec<usize>>,
    items: HashMap<usize, Vec<serde_json::Value>>,
}

impl LineageRun {
    pub fn new(
        record: pb::RunRecord,
        spec: Arc<pb::PipelineSpec>,
        dag: RunDag,
        items: HashMap<usize, Vec<serde_json::Value>>,
    ) -> Self {
        let mut matrices: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, t) in spec.tasks.iter().enumerate() {
            if !t.matrix_task.is_empty() {
                matrices.entry(t.matrix_task.clone()).or_default().push(i);
            }
        }
        Self {
            record,
            spec,
            dag,
            matrices,
            items,
        }
    }

    fn name(&self, task: usize) -> &str {
        self.dag.defs().get(task).map_or("?", |d| d.name.as_str())
    }

    /// The task's spec as its agent got it, or (a `for_each` instance whose
    /// items could not be read) its task's as written, with a note.
    fn task_spec(&self, task: usize) -> Option<(Cow<'_, pb::TaskSpec>, Option<String>)> {
        if let Some(t) = self.spec.tasks.get(task) {
            return Some((Cow::Borrowed(t), None));
        }
        let (group, k) = self.dag.instance_of(task)?;
        let written = self.spec.tasks.get(group)?;
        let rendered = self
            .items
            .get(&group)
            .and_then(|items| items.get(k))
            .and_then(|item| crate::engine::render(written, self.name(task), item).ok());
        Some(match rendered {
            Some(t) => (Cow::Owned(t), None),
            None => (
                Cow::Borrowed(written),
                Some("the for_each list could not be read: command shown as written".to_owned()),
            ),
        })
    }

    /// The tasks an input `from` reads: every instance of a task with a
    /// matrix or an expanded `for_each` (fan-in), else the task itself.
    fn producers(&self, from: &str) -> Vec<usize> {
        if let Some(instances) = self.matrices.get(from) {
            return instances.clone();
        }
        match self.dag.index_of(from) {
            Some(p) => match self.dag.instances(p) {
                Some(range) => range.collect(),
                None => vec![p],
            },
            None => Vec::new(),
        }
    }
}

/// Runs by id, as read: None for a run that does not exist.
pub type Runs = HashMap<String, Option<LineageRun>>;

/// An attempt a tree starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub run: String,
    pub task: usize,
    pub attempt: u32,
}

fn latest_success(t: &TaskRun) -> Option<&Attempt> {
    t.attempts
        .iter()
        .rev()
        .find(|a| a.status == AttemptStatus::Succeeded)
}

/// The attempts behind `output` (None: every output) of `task` of `run`:
/// each one's latest successful attempt; a task with a matrix or
/// `for_each` as written stands for all its instances.
pub fn roots_of(runs: &Runs, run: &str, task: &str, output: Option<&str>) -> Result<Vec<Root>> {
    let r = runs
        .get(run)
        .and_then(Option::as_ref)
        .ok_or_else(|| SchedulerError::RunNotFound(run.to_owned()))?;
    let tasks: Vec<usize> = match (r.dag.index_of(task), r.matrices.get(task)) {
        (Some(i), _) => r.dag.instances(i).map_or(vec![i], Iterator::collect),
        (None, Some(instances)) => instances.clone(),
        (None, None) => {
            return Err(SchedulerError::TaskNotFound {
                run: run.to_owned(),
                task: task.to_owned(),
            })
        }
    };
    if tasks.is_empty() {
        return Err(SchedulerError::FailedPrecondition(format!(
            "task `{task}` of run `{run}` expanded into no instances: nothing was produced"
        )));
    }
    let mut roots = Vec::with_capacity(tasks.len());
    for i in tasks {
        let name = r.name(i);
        if let (Some(output), Some((spec, _))) = (output, r.task_spec(i)) {
            if !spec.outputs.iter().any(|o| o.name == output) {
                let declared: Vec<&str> = spec.outputs.iter().map(|o| o.name.as_str()).collect();
                return Err(SchedulerError::NotFound(format!(
                    "task `{name}` of run `{run}` has no output `{output}` (it declares: {})",
                    if declared.is_empty() {
                        "none".to_owned()
                    } else {
                        declared.join(", ")
                    }
                )));
            }
        }
        let t = r
            .dag
            .tasks()
            .get(i)
            .ok_or_else(|| SchedulerError::TaskNotFound {
                run: run.to_owned(),
                task: name.to_owned(),
            })?;
        let attempt = latest_success(t).ok_or_else(|| {
            SchedulerError::FailedPrecondition(format!(
                "task `{name}` of run `{run}` has no successful attempt ({:?}): it produced nothing yet",
                t.status
            ))
        })?;
        roots.push(Root {
            run: run.to_owned(),
            task: i,
            attempt: attempt.number,
        });
    }
    Ok(roots)
}

/// Where an output with a given digest was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub run: String,
    pub task: String,
    pub attempt: u32,
    pub output: String,
}

/// The successful attempt among `tasks` (one run's records) with an output
/// of digest `sha256`; the latest attempt of the first task that has one.
pub fn find_output(
    run: &str,
    tasks: &[(String, pb::TaskRecord, i64)],
    sha256: &str,
) -> Option<Found> {
    tasks.iter().find_map(|(task, record, _)| {
        record
            .attempts
            .iter()
            .rev()
            .filter(|a| a.state() == pb::AttemptState::Succeeded)
            .find_map(|a| {
                let o = a.outputs.iter().find(|o| o.sha256 == sha256)?;
                Some(Found {
                    run: run.to_owned(),
                    task: task.clone(),
                    attempt: a.number,
                    output: o.name.clone(),
                })
            })
    })
}

/// The root where `found` points, in runs already read.
pub fn root_at(runs: &Runs, found: &Found) -> Result<Root> {
    let r = runs
        .get(&found.run)
        .and_then(Option::as_ref)
        .ok_or_else(|| SchedulerError::RunNotFound(found.run.clone()))?;
    let task = r
        .dag
        .index_of(&found.task)
        .ok_or_else(|| SchedulerError::TaskNotFound {
            run: found.run.clone(),
            task: found.task.clone(),
        })?;
    Ok(Root {
        run: found.run.clone(),
        task,
        attempt: found.attempt,
    })
}

/// A tree, or what must be read to complete it.
pub struct Assembled {
    pub response: pb::GetLineageResponse,
    /// Runs the tree reaches that are not in the runs given: read them and
    /// assemble again.
    pub missing: BTreeSet<String>,
}

/// (run, task index, attempt number).
type NodeKey = (String, usize, u32);

struct Builder<'a> {
    runs: &'a Runs,
    max_depth: u32,
    nodes: Vec<pb::LineageNode>,
    seen: HashMap<NodeKey, u32>,
    /// Nodes whose inputs and source are still to be filled in, with their depth.
    queue: VecDeque<(u32, NodeKey, u32)>,
    missing: BTreeSet<String>,
}

/// The tree behind `roots`: their attempts and, breadth first up to
/// `max_depth` levels, the producers of their inputs and the attempts their
/// cached results came from. `output` is echoed in the response.
pub fn assemble(runs: &Runs, roots: &[Root], output: &str, max_depth: u32) -> Assembled {
    let mut b = Builder {
        runs,
        max_depth,
        nodes: Vec::new(),
        seen: HashMap::new(),
        queue: VecDeque::new(),
        missing: BTreeSet::new(),
    };
    let roots = roots
        .iter()
        .filter_map(|r| b.node(&r.run, r.task, r.attempt, 0))
        .collect();
    while let Some((i, key, depth)) = b.queue.pop_front() {
        b.expand(i, &key, depth);
    }
    Assembled {
        response: pb::GetLineageResponse {
            roots,
            nodes: b.nodes,
            output: output.to_owned(),
        },
        missing: b.missing,
    }
}

/// Attempt number `attempt` of `task`.
fn attempt_of(run: &LineageRun, task: usize, attempt: u32) -> Option<&Attempt> {
    run.dag
        .tasks()
        .get(task)?
        .attempts
        .iter()
        .find(|a| a.number == attempt)
}

/// The producer's attempt a consumer assigned at `assigned_at` got.
fn producer_attempt(t: &TaskRun, assigned_at: u64) -> Option<&Attempt> {
    let succeeded = || {
        t.attempts
            .iter()
            .filter(|a| a.status == AttemptStatus::Succeeded)
    };
    succeeded()
        .rfind(|a| a.finished_at.is_some_and(|f| f <= assigned_at))
        .or_else(|| succeeded().next_back())
}

/// The node of one attempt, without inputs and source (see [`Builder::expand`]).
fn describe(run: &LineageRun, task: usize, a: &Attempt) -> pb::LineageNode {
    let (spec, note) = match run.task_spec(task) {
        Some((spec, note)) => (spec.into_owned(), note),
        None => (
            pb::TaskSpec::default(),
            Some("the task's spec is missing".into()),
        ),
    };
    pb::LineageNode {
        run_id: run.record.id.clone(),
        task: run.name(task).to_owned(),
        attempt: a.number,
        command: spec.command,
        image: spec.image,
        image_digest: a.image_digest.clone(),
        code_sha256: run.spec.code_sha256.clone(),
        params: run.record.params.clone(),
        matrix: spec.matrix,
        agent_id: a.agent.clone(),
        gpus: a.gpus.iter().map(convert::gpu_ref).collect(),
        started_at_ms: a.started_at.unwrap_or(0),
        finished_at_ms: a.finished_at.unwrap_or(0),
        outputs: a
            .outputs
            .iter()
            .map(|o| pb::Artifact {
                result: None,
                ..convert::pb_artifact(o)
            })
            .collect(),
        cached_from: a.cached_from.as_ref().map(convert::attempt_source),
        source: None,
        inputs: Vec::new(),
        workdir: spec.workdir,
        note: note.unwrap_or_default(),
    }
}

impl Builder<'_> {
    /// The node of `attempt` of `task` of `run`, made (and queued for
    /// expansion at `depth`) the first time; None if it cannot be read or
    /// the answer is full.
    fn node(&mut self, run: &str, task: usize, attempt: u32, depth: u32) -> Option<u32> {
        let key = (run.to_owned(), task, attempt);
        if let Some(&i) = self.seen.get(&key) {
            return Some(i);
        }
        if self.nodes.len() >= MAX_NODES {
            return None;
        }
        let r = self.runs.get(run)?.as_ref()?;
        let a = attempt_of(r, task, attempt)?;
        let i = self.nodes.len() as u32;
        self.nodes.push(describe(r, task, a));
        self.seen.insert(key.clone(), i);
        self.queue.push_back((i, key, depth));
        Some(i)
    }

    fn note(&mut self, i: u32, note: String) {
        let n = &mut self.nodes[i as usize].note;
        if !n.is_empty() {
            n.push_str("; ");
        }
        n.push_str(&note);
    }

    /// Fills in node `i`'s source (a cached result's attempt) and inputs.
    fn expand(&mut self, i: u32, (run_id, task, attempt): &NodeKey, depth: u32) {
        let runs = self.runs;
        let Some(run) = runs.get(run_id).and_then(Option::as_ref) else {
            return;
        };
        let Some(a) = attempt_of(run, *task, *attempt) else {
            return;
        };
        if let Some(src) = &a.cached_from {
            match runs.get(&src.run) {
                None => {
                    self.missing.insert(src.run.clone());
                    self.note(
                        i,
                        format!("run `{}` of the cached result was not read", src.run),
                    );
                }
                Some(None) => {
                    self.note(i, format!("run `{}` of the cached result is gone", src.run));
                }
                Some(Some(source_run)) => {
                    let source = source_run
                        .dag
                        .index_of(&src.task)
                        .and_then(|t| self.node(&src.run, t, src.attempt, depth + 1));
                    match source {
                        Some(s) => self.nodes[i as usize].source = Some(s),
                        None => self.note(
                            i,
                            format!(
                                "attempt {} of task `{}` of run `{}` (the cached result) is not there",
                                src.attempt, src.task, src.run
                            ),
                        ),
                    }
                }
            }
        }
        let Some((spec, _)) = run.task_spec(*task) else {
            return;
        };
        let follow = depth < self.max_depth;
        let mut cut = false;
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        for input in &spec.inputs {
            let mut parts = Vec::new();
            let producers = match input.from_param.as_str() {
                "" => run.producers(&input.from_task),
                _ => Vec::new(),
            };
            for p in producers {
                let Some(pa) = run
                    .dag
                    .tasks()
                    .get(p)
                    .and_then(|t| producer_attempt(t, a.assigned_at))
                else {
                    continue;
                };
                let out = pa.outputs.iter().find(|o| o.name == input.from_output);
                let node = if follow {
                    self.node(run_id, p, pa.number, depth + 1)
                } else {
                    None
                };
                cut |= node.is_none();
                parts.push(pb::LineageInputPart {
                    task: run.name(p).to_owned(),
                    attempt: pa.number,
                    sha256: out.map(|o| o.sha256.clone()).unwrap_or_default(),
                    size: out.map_or(0, |o| o.size),
                    node,
                });
            }
            inputs.push(pb::LineageInput {
                name: input.name.clone(),
                from_task: input.from_task.clone(),
                from_output: input.from_output.clone(),
                parts,
                from_param: input.from_param.clone(),
            });
        }
        self.nodes[i as usize].inputs = inputs;
        if cut {
            let why = if follow {
                format!("the answer holds at most {MAX_NODES} attempts")
            } else {
                format!("the depth limit ({}) is reached", self.max_depth)
            };
            self.note(i, format!("inputs' producers not shown: {why}"));
        }
    }
}

impl Api {
    /// `GetLineage` (see the module docs).
    pub(crate) async fn lineage(
        &self,
        req: &pb::GetLineageRequest,
    ) -> Result<pb::GetLineageResponse> {
        let (query, depth) = parse_request(req)?;
        let mut runs = Runs::new();
        let (roots, output) = match query {
            Query::Artifact { run, task, output } => {
                self.read_for_lineage(&mut runs, &run).await?;
                let roots = roots_of(&runs, &run, &task, output.as_deref())?;
                (roots, output.unwrap_or_default())
            }
            Query::Sha256(digest) => {
                let found = self.find_sha256(&digest).await?;
                self.read_for_lineage(&mut runs, &found.run).await?;
                (vec![root_at(&runs, &found)?], found.output)
            }
        };
        loop {
            let assembled = assemble(&runs, &roots, &output, depth);
            if assembled.missing.is_empty() || runs.len() >= MAX_RUNS {
                return Ok(assembled.response);
            }
            for id in assembled.missing {
                self.read_for_lineage(&mut runs, &id).await?;
            }
        }
    }

    /// Reads run `id` into `runs` (None when it does not exist).
    async fn read_for_lineage(&self, runs: &mut Runs, id: &str) -> Result<()> {
        let read = match self.store.load_run(id).await? {
            Some(stored) => {
                let (dag, _) = convert::restore(&stored);
                let items = self.for_each_items(&stored.spec, &dag).await;
                Some(LineageRun::new(stored.record, stored.spec, dag, items))
            }
            None => None,
        };
        runs.insert(id.to_owned(), read);
        Ok(())
    }

    /// The newest run's attempt with an output of digest `sha256`: one read
    /// of every run record, then one of each run's task records, newest
    /// run first, until found.
    async fn find_sha256(&self, sha256: &str) -> Result<Found> {
        let mut records = self.store.list_runs().await?;
        records.sort_by(|(a, _), (b, _)| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        for (record, _) in records {
            let tasks = self.store.task_records(&record.id).await?;
            if let Some(found) = find_output(&record.id, &tasks, sha256) {
                return Ok(found);
            }
        }
        Err(SchedulerError::NotFound(format!(
            "no stored output has sha256 `{sha256}`"
        )))
    }
}

#[cfg(test)]
mod tests;
