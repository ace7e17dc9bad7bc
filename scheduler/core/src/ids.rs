//! Identifiers that mean different things have different types, so a task
//! index cannot be passed where an attempt number is wanted, and an attempt
//! is named by its fields rather than by a tuple's positions.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// A run's id. Cheap to clone: the engine keys several maps by it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(Arc<str>);

/// An agent's id. Cheap to clone, and an agent's entry shares its id with
/// every allocation on it, so a walk over allocations can compare pointers.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(Arc<str>);

macro_rules! string_id {
    ($name:ident) => {
        impl $name {
            pub fn new(id: &str) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self::new(id)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id.into())
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }
    };
}

string_id!(RunId);
string_id!(AgentId);

impl AgentId {
    /// The same agent, decided by pointer when both come from its entry and
    /// by bytes otherwise.
    pub fn same(&self, other: &AgentId) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

/// A task's position in its run's spec (and so in the run's DAG).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskIndex(pub usize);

/// A task's attempt number: 1 for its first attempt, then counting up.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptNumber(pub u32);

impl fmt::Display for TaskIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for AttemptNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One attempt of one task of one run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptId {
    pub run: RunId,
    pub task: TaskIndex,
    pub attempt: AttemptNumber,
}

impl AttemptId {
    pub fn new(run: RunId, task: usize, attempt: u32) -> Self {
        Self {
            run,
            task: TaskIndex(task),
            attempt: AttemptNumber(attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_borrow_as_str_and_compare_agents_by_pointer_or_bytes() {
        let mut runs = std::collections::BTreeMap::new();
        runs.insert(RunId::new("r1"), 1);
        assert_eq!(runs.get("r1"), Some(&1));
        let a = AgentId::new("a");
        let shared = a.clone();
        assert!(a.same(&shared));
        assert!(a.same(&AgentId::new("a")));
        assert!(!a.same(&AgentId::new("b")));
        assert_eq!(format!("{a} {a:?}"), "a \"a\"");
    }
}
