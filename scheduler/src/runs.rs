//! What makes a new run, whoever starts it (a submit, a trigger's firing):
//! its spec resolved with its params, its id, its record. Nothing is
//! written here.

use std::collections::BTreeMap;

use drover_api::pb;

use crate::engine::now_ms;
use crate::error::{Result, SchedulerError};

/// What a new run is made from.
pub struct RunRequest<'a> {
    pub spec_yaml: &'a str,
    pub params: &'a BTreeMap<String, String>,
    /// Empty: the spec's queue, else the default one.
    pub queue: &'a str,
    pub priority: Option<i64>,
    /// The code snapshot (must be stored when the spec has `code:`).
    pub code_sha256: &'a str,
    pub no_cache: bool,
    /// The caller's trace and span, when it sent one.
    pub trace_parent: Option<(String, String)>,
}

/// A run ready to be stored: spec first, then its record.
pub struct NewRun {
    pub record: pb::RunRecord,
    pub spec: pb::PipelineSpec,
}

/// Parses and checks `req` (spec, code snapshot, queue name, priority,
/// size): InvalidArgument names the field and value.
pub async fn prepare(
    artifacts: &drover_artifacts::Store,
    max_spec_bytes: usize,
    req: RunRequest<'_>,
) -> Result<NewRun> {
    let mut spec = drover_api::spec::parse_spec(req.spec_yaml, req.params)?;
    spec.code_sha256 = crate::code::for_submit(artifacts, &spec.code, req.code_sha256).await?;
    let queue = [req.queue, spec.queue.as_str()]
        .into_iter()
        .find(|q| !q.is_empty())
        .unwrap_or(crate::queues::DEFAULT_QUEUE)
        .to_string();
    if !drover_api::spec::is_queue_name(&queue) {
        return Err(SchedulerError::InvalidArgument {
            field: "queue",
            message: format!(
                "invalid queue name `{queue}` (use lowercase letters, digits and `-`)"
            ),
        });
    }
    let priority = crate::queues::check_priority(req.priority.unwrap_or(spec.priority))?;
    let size = prost::Message::encoded_len(&spec);
    if size > max_spec_bytes {
        return Err(SchedulerError::InvalidArgument {
            field: "spec_yaml",
            message: format!(
                "the resolved spec is {size} bytes; at most {max_spec_bytes} are accepted (--max-spec-bytes)"
            ),
        });
    }
    // The run's trace: the caller's when it sent a traceparent (its span
    // becomes the root's parent), else a new one.
    let (trace_id, trace_parent_span_id) = req
        .trace_parent
        .unwrap_or_else(|| (drover_telemetry::record::new_trace_id(), String::new()));
    let record = pb::RunRecord {
        id: new_run_id(&spec.name),
        queue,
        priority,
        params: spec.params.clone(),
        name: spec.name.clone(),
        tasks_total: spec.tasks.len() as u32,
        state: pb::RunState::Running as i32,
        created_at_ms: now_ms(),
        trace_id,
        root_span_id: drover_telemetry::record::new_span_id(),
        trace_parent_span_id,
        no_cache: req.no_cache,
        ..Default::default()
    };
    Ok(NewRun { record, spec })
}

fn new_run_id(pipeline: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{pipeline}-{}", &u[..8])
}
