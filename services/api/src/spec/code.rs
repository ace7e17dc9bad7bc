//! `code:` and `workdir:`: the pipeline's code directory is kept as written
//! (only the CLI, which has the directory, resolves and packs it), and a
//! task's `workdir` is a normalised path inside the snapshot.

use super::validate::normalise_output_path;
use super::{SpecError, TaskError};
use crate::pb;

/// `code:` as written; empty when absent.
pub(super) fn resolve_code(raw: Option<String>) -> Result<String, SpecError> {
    match raw {
        Some(code) if code.trim().is_empty() => Err(SpecError::InvalidCode(
            "is empty (name a directory relative to the spec file, e.g. `.`)".to_owned(),
        )),
        code => Ok(code.unwrap_or_default()),
    }
}

/// `workdir:` normalised (`./a//b/` is `a/b`); empty when absent.
pub(super) fn resolve_workdir(raw: Option<&str>) -> Result<String, TaskError> {
    let Some(written) = raw else {
        return Ok(String::new());
    };
    normalise_output_path(written).ok_or_else(|| TaskError::InvalidValue {
        field: "workdir".to_owned(),
        message: format!(
            "`{written}` must be a relative path inside the code snapshot, without `..`"
        ),
    })
}

/// A `workdir` is a directory in the snapshot, so it needs one: the first
/// task (in spec order, `names` as written) that has one without `code` is refused.
pub(super) fn check_workdirs(
    code: &str,
    tasks: &[&pb::TaskSpec],
    names: &[String],
) -> Result<(), SpecError> {
    if !code.is_empty() {
        return Ok(());
    }
    match tasks.iter().zip(names).find(|(t, _)| !t.workdir.is_empty()) {
        None => Ok(()),
        Some((_, task)) => Err(SpecError::Task {
            task: task.clone(),
            error: TaskError::Needs {
                field: "workdir",
                needs: "the pipeline's `code`",
            },
        }),
    }
}
