//! What changes to the set of queues are allowed: pure rules, applied by the
//! engine to its queues and active runs.

/// A change a caller asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum QueueEdit {
    Create,
    /// Replace the settings (pause state excepted: it has its own calls).
    Update,
    SetPaused,
    Delete,
}

/// Why a change is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueRefusal {
    NotFound,
    AlreadyExists,
    /// The default queue takes every run that names none.
    DefaultUndeletable,
    /// Runs still use it.
    InUse {
        active_runs: usize,
    },
}

/// The queue as the rules see it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct QueueFacts {
    pub exists: bool,
    pub is_default: bool,
    /// Active runs submitted to it.
    pub active_runs: usize,
}

pub fn check(edit: QueueEdit, queue: QueueFacts) -> Result<(), QueueRefusal> {
    match (edit, queue.exists) {
        (QueueEdit::Create, true) => Err(QueueRefusal::AlreadyExists),
        (QueueEdit::Create, false) => Ok(()),
        (_, false) => Err(QueueRefusal::NotFound),
        (QueueEdit::Delete, true) if queue.is_default => Err(QueueRefusal::DefaultUndeletable),
        (QueueEdit::Delete, true) if queue.active_runs > 0 => Err(QueueRefusal::InUse {
            active_runs: queue.active_runs,
        }),
        (QueueEdit::Update | QueueEdit::SetPaused | QueueEdit::Delete, true) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(exists: bool, is_default: bool, active_runs: usize) -> QueueFacts {
        QueueFacts {
            exists,
            is_default,
            active_runs,
        }
    }

    #[test]
    fn queue_changes_follow_the_rules() {
        use QueueEdit::*;
        assert_eq!(check(Create, facts(false, false, 0)), Ok(()));
        assert_eq!(
            check(Create, facts(true, false, 0)),
            Err(QueueRefusal::AlreadyExists)
        );
        for edit in [Update, SetPaused, Delete] {
            assert_eq!(
                check(edit, facts(false, false, 0)),
                Err(QueueRefusal::NotFound)
            );
        }
        assert_eq!(check(Update, facts(true, true, 3)), Ok(()));
        assert_eq!(check(SetPaused, facts(true, false, 3)), Ok(()));
        assert_eq!(
            check(Delete, facts(true, true, 0)),
            Err(QueueRefusal::DefaultUndeletable)
        );
        assert_eq!(
            check(Delete, facts(true, false, 2)),
            Err(QueueRefusal::InUse { active_runs: 2 })
        );
        assert_eq!(check(Delete, facts(true, false, 0)), Ok(()));
    }
}
