//! Which event the scheduler may ack. The consumer acks every event up to
//! the one acked (`AckPolicy::All`), so an ack is safe only while every
//! earlier event was applied. A server that dies with deliveries to the
//! scheduler still on the wire leaves a gap: the consumer carries on after
//! them and would only deliver them again after its ack wait — and acking
//! a later event first would drop them for good (a run waiting forever on
//! a success it never hears of). The gap is fetched from the stream
//! instead, and nothing is acked past it meanwhile.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

/// Most sequences fetched in one go when a gap opens.
pub(crate) const MAX_FETCH: u64 = 512;

#[derive(Debug)]
pub(crate) struct AckFrontier<M> {
    /// Every event up to this stream sequence was applied, or is gone from
    /// the stream.
    through: u64,
    /// Applied above `through`, waiting for the gap below them; None: no
    /// delivered message to ack with (fetched from the stream).
    held: BTreeMap<u64, Option<M>>,
    /// The newest delivered message at or below `through`, not yet acked.
    ackable: Option<M>,
}

impl<M> AckFrontier<M> {
    /// Every event up to `through` was dealt with before (acked, or gone).
    pub(crate) fn after(through: u64) -> Self {
        Self {
            through,
            held: BTreeMap::new(),
            ackable: None,
        }
    }

    /// Event `seq` was applied (and committed); `message`, when it was
    /// delivered, can ack it. A redelivery of one already past acks itself
    /// when nothing later is to be acked (an idle consumer would otherwise
    /// send it again after every ack wait).
    pub(crate) fn applied(&mut self, seq: u64, message: Option<M>) {
        if seq <= self.through {
            if self.ackable.is_none() {
                self.ackable = message;
            }
            return;
        }
        match self.held.get_mut(&seq) {
            Some(held) => {
                if held.is_none() {
                    *held = message;
                }
            }
            None => {
                self.held.insert(seq, message);
            }
        }
        self.advance();
    }

    /// Sequence `seq` is not in the stream (expired or never stored): passed over.
    pub(crate) fn gone(&mut self, seq: u64) {
        self.applied(seq, None);
    }

    fn advance(&mut self) {
        while let Some(message) = self.held.remove(&(self.through + 1)) {
            self.through += 1;
            if message.is_some() {
                self.ackable = message;
            }
        }
    }

    /// The message to ack now, covering everything through its sequence.
    pub(crate) fn take_ack(&mut self) -> Option<M> {
        self.ackable.take()
    }

    /// The sequences missing below the lowest one held (at most
    /// [`MAX_FETCH`]), if events above a gap wait.
    pub(crate) fn missing(&self) -> Option<RangeInclusive<u64>> {
        let (&lowest, _) = self.held.first_key_value()?;
        let first = self.through + 1;
        Some(first..=(lowest - 1).min(first + MAX_FETCH - 1))
    }

    /// How many applied events wait above the gap.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_events_ack_the_newest() {
        let mut f = AckFrontier::after(10);
        f.applied(11, Some("m11"));
        f.applied(12, Some("m12"));
        assert_eq!(f.take_ack(), Some("m12"));
        assert_eq!(f.take_ack(), None);
        assert_eq!(f.missing(), None);
    }

    #[test]
    fn nothing_is_acked_past_a_gap_until_it_fills() {
        let mut f = AckFrontier::after(10);
        f.applied(11, Some("m11"));
        // 12 and 13 were lost on the wire; 14 and 15 came.
        f.applied(14, Some("m14"));
        f.applied(15, Some("m15"));
        assert_eq!(f.take_ack(), Some("m11"));
        assert_eq!(f.missing(), Some(12..=13));
        assert_eq!(f.held(), 2);
        // Fetched from the stream: nothing to ack with, but the gap closes.
        f.applied(12, None);
        assert_eq!(f.take_ack(), None);
        assert_eq!(f.missing(), Some(13..=13));
        f.gone(13);
        assert_eq!(f.take_ack(), Some("m15"));
        assert_eq!(f.missing(), None);
        assert_eq!(f.held(), 0);
    }

    #[test]
    fn a_redelivery_acks_itself_only_when_idle_and_a_delivered_copy_beats_a_fetched_one() {
        let mut f = AckFrontier::after(0);
        f.applied(1, Some("m1"));
        assert_eq!(f.take_ack(), Some("m1"));
        f.applied(1, Some("m1 again"));
        assert_eq!(f.take_ack(), Some("m1 again"));
        f.applied(2, Some("m2"));
        f.applied(1, Some("m1 a third time"));
        assert_eq!(f.take_ack(), Some("m2"), "the later ack covers it");
        f.applied(4, None);
        f.applied(4, Some("m4"));
        f.applied(3, None);
        // The delivered copy of 4 is kept to ack with.
        assert_eq!(f.take_ack(), Some("m4"));
    }

    #[test]
    fn a_long_gap_is_fetched_in_bounded_pieces() {
        let mut f: AckFrontier<()> = AckFrontier::after(0);
        f.applied(10_000, Some(()));
        assert_eq!(f.missing(), Some(1..=MAX_FETCH));
        for seq in 1..=MAX_FETCH {
            f.gone(seq);
        }
        assert_eq!(f.missing(), Some(MAX_FETCH + 1..=2 * MAX_FETCH));
    }
}
