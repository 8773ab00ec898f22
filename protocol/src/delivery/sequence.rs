//! Per-sender sequence numbers in one conversation: ours for sending, everyone's for receiving.
//!
//! Sending stamps `Content::seq` with [`SequenceTracker::next_own_seq`] (1, 2, 3, … with no gaps).
//! Receiving calls [`SequenceTracker::observe`] with the verified sender and its seq: each sender's
//! `have_through` (highest seq held with no gap below it) plus the seqs held above it. From these
//! come [`SequenceTracker::cursors`] for a gap-fill request and [`SequenceTracker::gaps`] for what
//! is known to be missing.
//!
//! Senders are keyed by their identity key ([`VerifyingKey`]), as on the wire; the map is ordered by
//! its 32 bytes, so cursors come out in a fixed order.
//!
//! Bounded: at most [`MAX_SENDERS`] senders, and at most [`MAX_AHEAD_PER_SENDER`] held seqs above a
//! sender's `have_through` ([`MAX_AHEAD_TOTAL`] across senders). When a new seq would exceed a
//! bound, the tracker gives up that sender's oldest gap — `have_through` jumps to its lowest held
//! seq — rather than refuse new messages: a message its sender gave up on would otherwise block the
//! conversation forever. A late copy of a seq in a given-up gap then observes as `Duplicate`; the
//! store's id check, not this tracker, is the authority on whether a message is held.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::wire::SenderCursor;

/// Senders one conversation tracks.
pub const MAX_SENDERS: usize = 1024;
/// Seqs held above one sender's `have_through`.
pub const MAX_AHEAD_PER_SENDER: usize = 256;
/// Seqs held above `have_through`, across all senders of one conversation.
pub const MAX_AHEAD_TOTAL: usize = 16 * 1024;
/// Our seq for the next message in a conversation, after `last` (the last we sent there, as
/// stored; `None` before the first): 1, 2, 3, … with no gaps. A driver that keeps only the last
/// seq durable (not a whole [`SequenceTracker`]) numbers its messages with this.
pub fn next_own_seq_after(last: Option<u64>) -> u64 {
    last.unwrap_or(0).saturating_add(1)
}

/// Ranges [`SequenceTracker::gaps`] returns at most (the lowest ones).
pub const MAX_GAP_RANGES: usize = 64;

/// What [`SequenceTracker::observe`] made of a seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Not seen before from this sender: store and show it.
    New,
    /// Seen already (or in a gap the tracker gave up on; see the module docs).
    Duplicate,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SequenceError {
    #[error("sequence number 0 is invalid; they start at 1")]
    Zero,
    #[error("the conversation already tracks {MAX_SENDERS} senders")]
    TooManySenders,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SenderState {
    key: VerifyingKey,
    have_through: u64,
    /// Seqs held above `have_through + 1`.
    ahead: BTreeSet<u64>,
}

impl SenderState {
    /// Moves `have_through` over the held seqs that now follow it.
    fn absorb(&mut self) {
        while let Some(next) = self.have_through.checked_add(1) {
            if !self.ahead.remove(&next) {
                break;
            }
            self.have_through = next;
        }
    }

    fn give_up_oldest_gap(&mut self) {
        if let Some(lowest) = self.ahead.pop_first() {
            self.have_through = lowest;
            self.absorb();
        }
    }
}

/// Sequence numbers of one conversation, senders keyed by identity key.
///
/// Bounded by [`MAX_SENDERS`], [`MAX_AHEAD_PER_SENDER`] and [`MAX_AHEAD_TOTAL`]. At a bound the
/// tracker gives up a sender's oldest gap (its `have_through` jumps to the lowest seq held above
/// it) rather than refuse new messages, so a late copy of a seq in that gap observes as
/// [`Observation::Duplicate`]: the store's id check is the authority on what is held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceTracker {
    own_seq: u64,
    senders: BTreeMap<[u8; 32], SenderState>,
}

impl SequenceTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The seq for the next message we send: 1, 2, 3, …
    pub fn next_own_seq(&mut self) -> u64 {
        self.own_seq = next_own_seq_after(Some(self.own_seq));
        self.own_seq
    }

    /// Records a received message's seq (from a verified envelope's sender).
    pub fn observe(
        &mut self,
        sender: &VerifyingKey,
        seq: u64,
    ) -> Result<Observation, SequenceError> {
        if seq == 0 {
            return Err(SequenceError::Zero);
        }
        let state = self.sender_mut(sender)?;
        if seq <= state.have_through || state.ahead.contains(&seq) {
            return Ok(Observation::Duplicate);
        }
        if Some(seq) == state.have_through.checked_add(1) {
            state.have_through = seq;
            state.absorb();
            return Ok(Observation::New);
        }
        state.ahead.insert(seq);
        if state.ahead.len() > MAX_AHEAD_PER_SENDER {
            state.give_up_oldest_gap();
        }
        if self.senders.values().map(|s| s.ahead.len()).sum::<usize>() > MAX_AHEAD_TOTAL {
            // Take from whoever holds most, so one busy sender cannot starve the others.
            let busiest = self
                .senders
                .values_mut()
                .max_by_key(|state| state.ahead.len());
            if let Some(state) = busiest {
                state.give_up_oldest_gap();
            }
        }
        Ok(Observation::New)
    }

    /// Treats everything from `sender` up to `seq` as held: for a room joined after those messages
    /// were sent, or history beyond what peers keep, so gap fill does not ask for them.
    pub fn skip_through(&mut self, sender: &VerifyingKey, seq: u64) -> Result<(), SequenceError> {
        let state = self.sender_mut(sender)?;
        if seq > state.have_through {
            state.have_through = seq;
            state.ahead = state.ahead.split_off(&seq.saturating_add(1));
            state.absorb();
        }
        Ok(())
    }

    /// The highest seq held from `sender` with no gap below it (0 if none).
    pub fn have_through(&self, sender: &VerifyingKey) -> u64 {
        self.senders
            .get(sender.as_bytes())
            .map_or(0, |state| state.have_through)
    }

    /// The missing seqs below the highest held from `sender`, lowest first, at most
    /// [`MAX_GAP_RANGES`] ranges. Seqs above the highest held are unknown, not listed.
    pub fn gaps(&self, sender: &VerifyingKey) -> Vec<RangeInclusive<u64>> {
        let Some(state) = self.senders.get(sender.as_bytes()) else {
            return Vec::new();
        };
        let mut gaps = Vec::new();
        let mut next_missing = state.have_through.saturating_add(1);
        for &held in &state.ahead {
            if gaps.len() == MAX_GAP_RANGES {
                break;
            }
            if held > next_missing {
                gaps.push(next_missing..=held - 1);
            }
            next_missing = held.saturating_add(1);
        }
        gaps
    }

    /// How many of `sender`'s seqs just below `seq` are missing (to show where a conversation
    /// has a hole); 0 for a sender not tracked, or below `have_through`.
    pub fn missing_before(&self, sender: &VerifyingKey, seq: u64) -> u64 {
        let Some(state) = self.senders.get(sender.as_bytes()) else {
            return 0;
        };
        if seq <= state.have_through.saturating_add(1) {
            return 0;
        }
        let previous = state.ahead.range(..seq).next_back().copied();
        let previous = previous.unwrap_or(state.have_through);
        seq.saturating_sub(previous.saturating_add(1))
    }

    /// Every tracked sender's `have_through`, for a [`GapFillRequest`](crate::wire::GapFillRequest).
    pub fn cursors(&self) -> Vec<SenderCursor> {
        self.senders
            .values()
            .map(|state| SenderCursor {
                sender: state.key,
                have_through: state.have_through,
            })
            .collect()
    }

    fn sender_mut(&mut self, sender: &VerifyingKey) -> Result<&mut SenderState, SequenceError> {
        let full = self.senders.len() >= MAX_SENDERS;
        match self.senders.entry(sender.to_bytes()) {
            std::collections::btree_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
            std::collections::btree_map::Entry::Vacant(_) if full => {
                Err(SequenceError::TooManySenders)
            }
            std::collections::btree_map::Entry::Vacant(entry) => Ok(entry.insert(SenderState {
                key: *sender,
                have_through: 0,
                ahead: BTreeSet::new(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use proptest::prelude::*;

    fn key(n: u16) -> VerifyingKey {
        let mut secret = [0u8; 32];
        secret[..2].copy_from_slice(&n.to_be_bytes());
        ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key()
    }

    #[test]
    fn own_seqs_start_at_one_without_gaps() {
        let mut tracker = SequenceTracker::new();
        let seqs: Vec<u64> = (0..5).map(|_| tracker.next_own_seq()).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn each_seq_is_new_once_then_duplicate() {
        let mut tracker = SequenceTracker::new();
        let alice = key(1);
        assert_eq!(tracker.observe(&alice, 1), Ok(Observation::New));
        assert_eq!(tracker.observe(&alice, 1), Ok(Observation::Duplicate));
        assert_eq!(tracker.observe(&alice, 3), Ok(Observation::New));
        assert_eq!(tracker.observe(&alice, 3), Ok(Observation::Duplicate));
        assert_eq!(tracker.have_through(&alice), 1);
        assert_eq!(tracker.observe(&alice, 2), Ok(Observation::New));
        assert_eq!(tracker.have_through(&alice), 3);
        // Senders are independent.
        assert_eq!(tracker.observe(&key(2), 1), Ok(Observation::New));
    }

    #[test]
    fn seq_zero_is_refused() {
        assert_eq!(
            SequenceTracker::new().observe(&key(1), 0),
            Err(SequenceError::Zero)
        );
    }

    #[test]
    fn gaps_list_missing_ranges_below_the_highest_held() {
        let mut tracker = SequenceTracker::new();
        let alice = key(1);
        assert!(tracker.gaps(&alice).is_empty());
        for seq in [1, 2, 5, 6, 9] {
            tracker.observe(&alice, seq).unwrap();
        }
        assert_eq!(tracker.gaps(&alice), vec![3..=4, 7..=8]);
        tracker.observe(&alice, 3).unwrap();
        tracker.observe(&alice, 4).unwrap();
        assert_eq!(tracker.gaps(&alice), vec![7..=8]);
        assert_eq!(tracker.have_through(&alice), 6);
    }

    #[test]
    fn a_jump_in_a_senders_sequence_is_counted_as_missing_messages() {
        let mut tracker = SequenceTracker::new();
        let (alice, bob, carol) = (key(1), key(2), key(3));
        for seq in [1, 2, 5, 6, 9] {
            tracker.observe(&alice, seq).unwrap();
        }
        let missing: Vec<u64> = [1, 2, 5, 6, 9]
            .iter()
            .map(|seq| tracker.missing_before(&alice, *seq))
            .collect();
        assert_eq!(missing, [0, 0, 2, 0, 2]);
        // A first message that is not seq 1: the ones before it are missing too.
        tracker.observe(&bob, 4).unwrap();
        assert_eq!(tracker.missing_before(&bob, 4), 3);
        assert_eq!(
            tracker.missing_before(&carol, 7),
            0,
            "unknown senders: nothing to say"
        );
    }

    #[test]
    fn gaps_are_bounded() {
        let mut tracker = SequenceTracker::new();
        let alice = key(1);
        for seq in (2..=400).step_by(2) {
            tracker.observe(&alice, seq).unwrap();
        }
        let gaps = tracker.gaps(&alice);
        assert_eq!(gaps.len(), MAX_GAP_RANGES);
        assert_eq!(gaps[0], 1..=1);
        assert_eq!(gaps[MAX_GAP_RANGES - 1], 127..=127);
    }

    #[test]
    fn overflow_gives_up_the_oldest_gap_and_keeps_accepting() {
        let mut tracker = SequenceTracker::new();
        let alice = key(1);
        // Seq 1 never arrives (its sender gave up); 2..=257 arrive.
        for seq in 2..=(MAX_AHEAD_PER_SENDER as u64 + 1) {
            assert_eq!(tracker.observe(&alice, seq), Ok(Observation::New));
        }
        assert_eq!(tracker.have_through(&alice), 0);
        assert_eq!(
            tracker.observe(&alice, MAX_AHEAD_PER_SENDER as u64 + 2),
            Ok(Observation::New)
        );
        assert_eq!(
            tracker.have_through(&alice),
            MAX_AHEAD_PER_SENDER as u64 + 2
        );
        assert!(tracker.gaps(&alice).is_empty());
        // A late copy of the given-up seq is reported as a duplicate: the store decides.
        assert_eq!(tracker.observe(&alice, 1), Ok(Observation::Duplicate));
    }

    #[test]
    fn out_of_order_seqs_are_bounded_across_senders() {
        let mut tracker = SequenceTracker::new();
        let senders = MAX_AHEAD_TOTAL / MAX_AHEAD_PER_SENDER + 1;
        for n in 0..senders {
            let sender = key(n as u16);
            for seq in 2..=(MAX_AHEAD_PER_SENDER as u64 + 1) {
                tracker.observe(&sender, seq).unwrap();
            }
        }
        let held: usize = tracker.senders.values().map(|s| s.ahead.len()).sum();
        assert!(held <= MAX_AHEAD_TOTAL, "{held}");
        // The sender whose gap was given up now has everything.
        assert!(
            tracker
                .cursors()
                .iter()
                .any(|cursor| cursor.have_through == MAX_AHEAD_PER_SENDER as u64 + 1)
        );
    }

    #[test]
    fn sender_count_is_bounded() {
        let mut tracker = SequenceTracker::new();
        for n in 0..MAX_SENDERS {
            tracker.observe(&key(n as u16), 1).unwrap();
        }
        assert_eq!(
            tracker.observe(&key(MAX_SENDERS as u16), 1),
            Err(SequenceError::TooManySenders)
        );
        // Known senders still work.
        assert_eq!(tracker.observe(&key(0), 2), Ok(Observation::New));
    }

    #[test]
    fn skip_through_moves_the_cursor_and_drops_held_seqs_below_it() {
        let mut tracker = SequenceTracker::new();
        let alice = key(1);
        for seq in [3, 8, 11] {
            tracker.observe(&alice, seq).unwrap();
        }
        tracker.skip_through(&alice, 9).unwrap();
        assert_eq!(tracker.have_through(&alice), 9);
        assert_eq!(tracker.gaps(&alice), vec![10..=10]);
        assert_eq!(tracker.observe(&alice, 10), Ok(Observation::New));
        assert_eq!(tracker.have_through(&alice), 11);
        // Never moves back.
        tracker.skip_through(&alice, 2).unwrap();
        assert_eq!(tracker.have_through(&alice), 11);
    }

    #[test]
    fn cursors_report_each_senders_have_through_in_key_order() {
        let mut tracker = SequenceTracker::new();
        for (n, through) in [(1u16, 3u64), (2, 1), (3, 2)] {
            for seq in 1..=through {
                tracker.observe(&key(n), seq).unwrap();
            }
        }
        tracker.observe(&key(2), 5).unwrap();
        let cursors = tracker.cursors();
        let mut expected: Vec<_> = [(1u16, 3u64), (2, 1), (3, 2)]
            .iter()
            .map(|&(n, through)| (key(n).to_bytes(), through))
            .collect();
        expected.sort();
        let got: Vec<_> = cursors
            .iter()
            .map(|c| (c.sender.to_bytes(), c.have_through))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn worst_case_tracker_fits_in_a_frame() {
        let mut tracker = SequenceTracker::new();
        tracker.own_seq = u64::MAX;
        let per_sender = MAX_AHEAD_TOTAL / MAX_SENDERS;
        for n in 0..MAX_SENDERS {
            let sender = key(n as u16);
            tracker.skip_through(&sender, u64::MAX / 2).unwrap();
            for i in 0..per_sender as u64 {
                tracker.observe(&sender, u64::MAX - 2 * i).unwrap();
            }
        }
        let frame = codec::encode(&tracker).unwrap();
        assert!(frame.len() < codec::MAX_FRAME_LEN / 2, "{}", frame.len());
        assert_eq!(codec::decode::<SequenceTracker>(&frame).unwrap(), tracker);
    }

    proptest! {
        /// Any arrival order, with duplicates: each seq is `New` exactly once, the gaps are the
        /// complement of what arrived below the highest seq, and once all arrived nothing is missing.
        #[test]
        fn every_seq_is_new_exactly_once_in_any_order(
            n in 1u64..120,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..300),
        ) {
            let alice = key(7);
            let mut tracker = SequenceTracker::new();
            let mut seen = BTreeSet::new();
            let arrivals = order.iter().map(|i| i.index(n as usize) as u64 + 1).chain(1..=n);
            for seq in arrivals {
                let expected = if seen.insert(seq) { Observation::New } else { Observation::Duplicate };
                prop_assert_eq!(tracker.observe(&alice, seq), Ok(expected));
                let highest = seen.last().copied().unwrap_or(0);
                let missing: Vec<u64> = (1..=highest).filter(|s| !seen.contains(s)).collect();
                let from_gaps: Vec<u64> = tracker.gaps(&alice).into_iter().flatten().collect();
                if tracker.gaps(&alice).len() < MAX_GAP_RANGES {
                    prop_assert_eq!(from_gaps, missing.clone());
                }
                let through = missing.first().map_or(highest, |first| first - 1);
                prop_assert_eq!(tracker.have_through(&alice), through);
            }
            prop_assert_eq!(tracker.have_through(&alice), n);
            prop_assert!(tracker.gaps(&alice).is_empty());
        }

        #[test]
        fn tracker_round_trips_through_the_codec(
            seqs in proptest::collection::vec((0u16..4, 1u64..50), 0..80),
        ) {
            let mut tracker = SequenceTracker::new();
            tracker.next_own_seq();
            for (sender, seq) in seqs {
                tracker.observe(&key(sender), seq).unwrap();
            }
            let decoded: SequenceTracker = codec::decode(&codec::encode(&tracker).unwrap()).unwrap();
            prop_assert_eq!(&decoded, &tracker);
        }
    }
}
