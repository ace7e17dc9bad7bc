//! Data triggers: which objects under a prefix are new, and when a batch of
//! them fires. An object is new when its key was never seen, or was seen
//! with another ETag (it was written again).

use std::collections::BTreeMap;

use crate::Millis;

/// Most objects one run gets: one etcd transaction records them all with
/// the firing and the run (etcd allows 128 operations per transaction).
pub const MAX_PER_RUN: u32 = 100;

/// An object as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// Relative to the trigger's prefix.
    pub key: String,
    /// The store's ETag (S3: the MD5 of a single-part upload).
    pub etag: String,
    pub size: u64,
    /// The content's sha256 (lowercase hex), once the shell read it.
    pub sha256: Option<String>,
}

/// What the trigger does after a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Batch {
    /// Nothing new.
    Idle,
    /// New objects wait for the batch window to close at this time.
    Wait { until: Millis },
    /// Fire one run for these (at most `max_per_run`, by key).
    Fire { objects: Vec<Object> },
}

/// The objects of `listing` not in `seen` (key → ETag), by key.
pub fn new_objects(listing: Vec<Object>, seen: &BTreeMap<String, String>) -> Vec<Object> {
    let mut new: Vec<Object> = listing
        .into_iter()
        .filter(|o| seen.get(&o.key) != Some(&o.etag))
        .collect();
    new.sort_by(|a, b| a.key.cmp(&b.key));
    new.dedup_by(|a, b| a.key == b.key);
    new
}

/// Whether `new` (from [`new_objects`]) fires now. `noticed_at`: when new
/// objects were first seen waiting (the window counts from then); a full
/// batch fires without waiting.
pub fn batch(
    mut new: Vec<Object>,
    noticed_at: Millis,
    now: Millis,
    window_ms: Millis,
    max_per_run: u32,
) -> Batch {
    if new.is_empty() {
        return Batch::Idle;
    }
    let max = max_per_run.clamp(1, MAX_PER_RUN) as usize;
    let until = noticed_at.saturating_add(window_ms);
    if new.len() < max && now < until {
        return Batch::Wait { until };
    }
    new.truncate(max);
    Batch::Fire { objects: new }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, etag: &str) -> Object {
        Object {
            key: key.into(),
            etag: etag.into(),
            size: 1,
            sha256: None,
        }
    }

    #[test]
    fn seen_keys_are_not_new_unless_written_again() {
        let seen: BTreeMap<String, String> =
            [("a".to_string(), "1".to_string())].into_iter().collect();
        let new = new_objects(vec![obj("c", "1"), obj("a", "1"), obj("b", "1")], &seen);
        assert_eq!(new, vec![obj("b", "1"), obj("c", "1")]);
        let again = new_objects(vec![obj("a", "2")], &seen);
        assert_eq!(again, vec![obj("a", "2")]);
    }

    #[test]
    fn a_batch_waits_for_its_window_then_fires_at_most_max() {
        let three = vec![obj("a", "1"), obj("b", "1"), obj("c", "1")];
        assert_eq!(batch(vec![], 0, 10, 5, 10), Batch::Idle);
        assert_eq!(
            batch(three.clone(), 100, 104, 5, 10),
            Batch::Wait { until: 105 }
        );
        assert_eq!(
            batch(three.clone(), 100, 105, 5, 10),
            Batch::Fire {
                objects: three.clone()
            }
        );
        // A full batch does not wait.
        assert_eq!(
            batch(three.clone(), 100, 100, 5_000, 2),
            Batch::Fire {
                objects: three[..2].to_vec()
            }
        );
        // No window: at once.
        assert_eq!(
            batch(three.clone(), 100, 100, 0, 10),
            Batch::Fire { objects: three }
        );
    }

    #[test]
    fn max_per_run_is_kept_within_one_transaction() {
        let many: Vec<Object> = (0..150).map(|i| obj(&format!("{i:03}"), "x")).collect();
        let Batch::Fire { objects } = batch(many, 0, 0, 0, 1_000) else {
            panic!("a full batch fires");
        };
        assert_eq!(objects.len(), MAX_PER_RUN as usize);
    }
}
