//! The attempts this agent knows: those running now, and a bounded memory of
//! those it finished, so a re-sent assignment (the scheduler re-sends after a
//! restart) is recognised instead of run twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use drover_api::pb::AttemptRef;

/// How many finished attempts are remembered for duplicate detection.
pub const DEFAULT_FINISHED_MEMORY: usize = 4096;

/// One attempt of one task of one run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    pub run_id: String,
    pub task: String,
    pub attempt: u32,
}

impl AttemptKey {
    pub fn to_ref(&self) -> AttemptRef {
        AttemptRef {
            run_id: self.run_id.clone(),
            task: self.task.clone(),
            attempt: self.attempt,
        }
    }
}

impl From<&AttemptRef> for AttemptKey {
    fn from(r: &AttemptRef) -> Self {
        AttemptKey {
            run_id: r.run_id.clone(),
            task: r.task.clone(),
            attempt: r.attempt,
        }
    }
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.run_id, self.task, self.attempt)
    }
}

/// Running attempts (each with a handle `H` the shell uses to stop it) and
/// recently finished ones.
#[derive(Debug)]
pub struct AttemptTable<H> {
    running: HashMap<AttemptKey, H>,
    finished: HashSet<AttemptKey>,
    finished_order: VecDeque<AttemptKey>,
    finished_capacity: usize,
}

impl<H> Default for AttemptTable<H> {
    fn default() -> Self {
        Self::new(DEFAULT_FINISHED_MEMORY)
    }
}

impl<H> AttemptTable<H> {
    pub fn new(finished_capacity: usize) -> Self {
        Self {
            running: HashMap::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            finished_capacity,
        }
    }

    /// Running now, or finished recently.
    pub fn is_known(&self, key: &AttemptKey) -> bool {
        self.running.contains_key(key) || self.finished.contains(key)
    }

    /// Records a new running attempt; false (and nothing changes) when it is already known.
    pub fn start(&mut self, key: AttemptKey, handle: H) -> bool {
        if self.is_known(&key) {
            return false;
        }
        self.running.insert(key, handle);
        true
    }

    /// The handle of a running attempt.
    pub fn running(&self, key: &AttemptKey) -> Option<&H> {
        self.running.get(key)
    }

    pub fn running_mut(&mut self, key: &AttemptKey) -> Option<&mut H> {
        self.running.get_mut(key)
    }

    /// Moves an attempt from running to finished, returning its handle.
    pub fn finish(&mut self, key: &AttemptKey) -> Option<H> {
        let handle = self.running.remove(key)?;
        if self.finished_capacity > 0 && self.finished.insert(key.clone()) {
            self.finished_order.push_back(key.clone());
            while self.finished_order.len() > self.finished_capacity {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        }
        Some(handle)
    }

    /// Running attempts, sorted (stable heartbeats are easier to read).
    pub fn running_keys(&self) -> Vec<AttemptKey> {
        let mut keys: Vec<_> = self.running.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Every running attempt's handle.
    pub fn running_handles(&self) -> impl Iterator<Item = (&AttemptKey, &H)> {
        self.running.iter()
    }

    pub fn running_count(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(attempt: u32) -> AttemptKey {
        AttemptKey {
            run_id: "r1".into(),
            task: "train".into(),
            attempt,
        }
    }

    #[test]
    fn a_started_attempt_is_known_until_forgotten() {
        let mut t = AttemptTable::new(2);
        assert!(t.start(key(1), "h1"));
        assert!(!t.start(key(1), "again"), "duplicate start");
        assert_eq!(t.running(&key(1)), Some(&"h1"));
        assert_eq!(t.running_keys(), vec![key(1)]);

        assert_eq!(t.finish(&key(1)), Some("h1"));
        assert_eq!(t.finish(&key(1)), None);
        assert!(t.running(&key(1)).is_none());
        assert!(t.is_known(&key(1)), "finished attempts stay known");
        assert!(!t.start(key(1), "after finish"));

        // Capacity 2: finishing two more forgets the oldest.
        for a in [2, 3] {
            assert!(t.start(key(a), "h"));
            t.finish(&key(a));
        }
        assert!(!t.is_known(&key(1)));
        assert!(t.is_known(&key(2)) && t.is_known(&key(3)));
        assert_eq!(t.running_count(), 0);
    }

    #[test]
    fn running_keys_are_sorted() {
        let mut t = AttemptTable::default();
        for a in [3, 1, 2] {
            t.start(key(a), ());
        }
        assert_eq!(t.running_keys(), vec![key(1), key(2), key(3)]);
    }
}
