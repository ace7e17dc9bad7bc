//! What the engine keeps in etcd, and the one way it tracks what is still to
//! be written: a [`Versioned`] record (value, the revision etcd holds it at,
//! and the pending put or delete). A turn collects the pending writes as
//! [`Change`]s, commits them in one `Store::commit`, and hands the revisions
//! back by record ([`Revisions`]); only then are the writes settled.
//!
//! A task's state lives in its run's DAG, which reports the tasks it changed
//! (`RunDag::take_dirty`): those mark the task's record, whose value is
//! `()` here and encoded from the DAG when the change is collected.

use crate::store::{Change, RecordKey};

pub use crate::store::Revisions;

/// A write a record owes etcd.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PendingWrite {
    Put,
    Delete,
}

/// A record the engine writes to etcd.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    value: T,
    /// The revision etcd last held it at; None: not in etcd.
    rev: Option<i64>,
    pending: Option<PendingWrite>,
}

impl<T> Versioned<T> {
    /// A record that etcd does not hold yet: it will be created.
    pub fn created(value: T) -> Self {
        Self {
            value,
            rev: None,
            pending: Some(PendingWrite::Put),
        }
    }

    /// A record as read from etcd at `rev`; 0 means it is not there.
    pub fn stored(value: T, rev: i64) -> Self {
        Self {
            value,
            rev: (rev > 0).then_some(rev),
            pending: None,
        }
    }

    /// Whether etcd holds it.
    pub fn exists(&self) -> bool {
        self.rev.is_some()
    }

    pub fn get(&self) -> &T {
        &self.value
    }

    /// The value, to change: the record will be written.
    pub fn modify(&mut self) -> &mut T {
        self.mark();
        &mut self.value
    }

    /// The value changed elsewhere (a task's state in its DAG): write it.
    pub fn mark(&mut self) {
        if self.pending != Some(PendingWrite::Delete) {
            self.pending = Some(PendingWrite::Put);
        }
    }

    /// The record will be deleted; it reads as gone from now on.
    pub fn delete(&mut self) {
        self.pending = Some(PendingWrite::Delete);
    }

    pub fn is_deleted(&self) -> bool {
        self.pending == Some(PendingWrite::Delete)
    }

    pub fn pending(&self) -> Option<PendingWrite> {
        self.pending
    }

    /// The change this record owes, if any, its value encoded by `encode`.
    pub fn change(&self, key: RecordKey, encode: impl FnOnce(&T) -> Vec<u8>) -> Option<Change> {
        let value = match self.pending? {
            PendingWrite::Put => Some(encode(&self.value)),
            PendingWrite::Delete => None,
        };
        Some(Change {
            key,
            value,
            expect: self.rev,
        })
    }

    /// Its pending write was committed at `rev`. A deleted record is gone:
    /// the caller drops it.
    pub fn committed(&mut self, rev: i64) {
        self.rev = Some(rev);
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RecordKey {
        RecordKey::Queue("q".into())
    }

    #[test]
    fn a_record_owes_a_create_then_updates_then_a_delete() {
        let mut q = Versioned::created(1u8);
        let c = q.change(key(), |v| vec![*v]);
        assert_eq!(
            c,
            Some(Change {
                key: key(),
                value: Some(vec![1]),
                expect: None
            })
        );
        q.committed(7);
        assert_eq!(q.change(key(), |v| vec![*v]), None, "settled");
        *q.modify() = 2;
        let c = q.change(key(), |v| vec![*v]);
        assert_eq!(
            c.map(|c| (c.value, c.expect)),
            Some((Some(vec![2]), Some(7)))
        );
        q.delete();
        q.mark();
        assert!(q.is_deleted(), "a change after the delete does not undo it");
        let c = q.change(key(), |v| vec![*v]);
        assert_eq!(c.map(|c| (c.value, c.expect)), Some((None, Some(7))));
    }

    #[test]
    fn a_loaded_record_owes_nothing_and_revision_0_is_absent() {
        let r = Versioned::stored((), 5);
        assert_eq!(r.pending(), None);
        let mut absent = Versioned::stored((), 0);
        absent.mark();
        let c = absent.change(key(), |_| vec![]);
        assert_eq!(c.and_then(|c| c.expect), None);
    }
}
