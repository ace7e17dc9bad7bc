//! `for_each: {from: <task>/<output>}` — a task run once per element of a
//! JSON array that an upstream task wrote, known only at run time. At
//! submit only the reference is checked (the producer exists, declares the
//! output and is upstream) and `{{item…}}` templates are kept as written;
//! the scheduler expands the task once the producer succeeded.

use super::template::has_item_template;
use super::validate::{reachable, Graph};
use super::{SpecError, TaskError};
use crate::pb;

fn for_each_error(field: &str, message: String) -> TaskError {
    TaskError::InvalidValue {
        field: field.to_owned(),
        message,
    }
}

/// The task's `for_each`, checked against the tasks as written.
pub(super) fn resolve(
    raw: &super::raw::RawForEach,
    has_matrix: bool,
    task: &str,
    graph: &Graph<'_>,
) -> Result<pb::ForEach, TaskError> {
    if has_matrix {
        return Err(for_each_error(
            "for_each",
            "cannot be combined with `matrix` (use one or the other)".to_owned(),
        ));
    }
    let Some(from) = raw.from.as_deref() else {
        return Err(TaskError::Missing {
            at: "for_each".to_owned(),
            field: "from",
        });
    };
    let Some((from_task, from_output)) = from
        .split_once('/')
        .filter(|(t, o)| !t.is_empty() && !o.is_empty() && !o.contains('/'))
    else {
        return Err(for_each_error(
            "for_each.from",
            format!("must be `task/output`, got `{from}`"),
        ));
    };
    if from_task == task {
        return Err(for_each_error(
            "for_each.from",
            format!("`{from}` comes from the task itself"),
        ));
    }
    let Some(outputs) = graph.outputs.get(from_task) else {
        return Err(for_each_error(
            "for_each.from",
            format!("unknown task `{from_task}`"),
        ));
    };
    if !outputs.contains(from_output) {
        return Err(for_each_error(
            "for_each.from",
            format!("`{from_task}` has no output `{from_output}`"),
        ));
    }
    Ok(pb::ForEach {
        from_task: from_task.to_owned(),
        from_output: from_output.to_owned(),
    })
}

/// `{{item}}` is substituted per instance in command and env values only:
/// the image and GPU model decide placement, which happens per instance
/// from the spec as submitted.
pub(super) fn check_templates(spec: &pb::TaskSpec) -> Result<(), TaskError> {
    let resources = spec.resources.as_ref();
    let fields = [
        ("image", spec.image.as_str()),
        (
            "resources.gpu_model",
            resources.map_or("", |r| r.gpu_model.as_str()),
        ),
    ];
    for (field, text) in fields {
        if has_item_template(text) {
            return Err(for_each_error(
                field,
                format!("`{text}`: `{{{{item}}}}` is only substituted in command and env values"),
            ));
        }
    }
    Ok(())
}

/// Every `for_each` producer must be upstream (through `depends_on`) and
/// a plain task: a matrix task or another `for_each` task has no single
/// output to read.
pub(super) fn check_producers(
    specs: &[&pb::TaskSpec],
    names: &[String],
    deps: &[Vec<usize>],
    main: usize,
) -> Result<(), SpecError> {
    for (i, spec) in specs.iter().enumerate() {
        let Some(from) = &spec.for_each else {
            continue;
        };
        let fail = |message: String| SpecError::Task {
            task: names[i].clone(),
            error: for_each_error("for_each.from", message),
        };
        let Some(p) = names.iter().position(|n| *n == from.from_task) else {
            return Err(fail(format!("unknown task `{}`", from.from_task)));
        };
        if !(reachable(i, deps)[p] || (i >= main && p < main)) {
            return Err(fail(format!(
                "`{}` is not upstream of `{}` (add it to depends_on)",
                from.from_task, names[i]
            )));
        }
        if !specs[p].matrix_task.is_empty() {
            return Err(fail(format!(
                "`{}` has a matrix; for_each reads one task's output",
                from.from_task
            )));
        }
        if specs[p].for_each.is_some() {
            return Err(fail(format!(
                "`{}` is itself a for_each task; for_each reads one task's output",
                from.from_task
            )));
        }
    }
    Ok(())
}
