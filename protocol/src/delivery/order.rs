//! Conversation order: a Lamport clock per conversation, and the history key built from it.
//!
//! Sending stamps `Content::lamport` with [`LamportClock::tick`]; receiving calls
//! [`LamportClock::observe`] with the sender's stamp, so our next message sorts after everything we
//! have seen. History is displayed in [`HistoryOrder`] — `(lamport, sender, seq)` — and stored under
//! its fixed-width big-endian [`HistoryOrder::to_key_bytes`], so a sled range read is display order.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// A Lamport clock. Saturates at `u64::MAX` rather than wrapping: a peer announcing an absurd time
/// can at worst pin the clock there, after which order falls back to `(sender, seq)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LamportClock {
    time: u64,
}

impl LamportClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Advances the clock for a message we send and returns its stamp (the first is 1).
    pub fn tick(&mut self) -> u64 {
        self.time = self.time.saturating_add(1);
        self.time
    }

    /// Takes in a received message's stamp: the clock becomes `max(ours, remote) + 1`.
    pub fn observe(&mut self, remote: u64) {
        self.time = self.time.max(remote).saturating_add(1);
    }

    /// The latest time issued or observed.
    pub fn current(&self) -> u64 {
        self.time
    }
}

/// Length of [`HistoryOrder::to_key_bytes`].
pub const HISTORY_KEY_LEN: usize = 8 + 32 + 8;

/// A message's place in its conversation's history: by Lamport time, ties broken by the sender's
/// identity key bytes, then by the sender's sequence number. `Ord` is this tuple order, and so is
/// the byte order of [`Self::to_key_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HistoryOrder {
    pub lamport: u64,
    pub sender: [u8; 32],
    pub seq: u64,
}

impl HistoryOrder {
    pub fn new(lamport: u64, sender: &VerifyingKey, seq: u64) -> Self {
        Self {
            lamport,
            sender: sender.to_bytes(),
            seq,
        }
    }

    /// `lamport` (8 bytes, big-endian) ‖ `sender` (32) ‖ `seq` (8, big-endian).
    pub fn to_key_bytes(&self) -> [u8; HISTORY_KEY_LEN] {
        let mut key = [0u8; HISTORY_KEY_LEN];
        key[..8].copy_from_slice(&self.lamport.to_be_bytes());
        key[8..40].copy_from_slice(&self.sender);
        key[40..].copy_from_slice(&self.seq.to_be_bytes());
        key
    }

    /// The inverse of [`Self::to_key_bytes`]; `None` unless `key` is exactly
    /// [`HISTORY_KEY_LEN`] bytes.
    pub fn from_key_bytes(key: &[u8]) -> Option<Self> {
        if key.len() != HISTORY_KEY_LEN {
            return None;
        }
        Some(Self {
            lamport: u64::from_be_bytes(key[..8].try_into().ok()?),
            sender: key[8..40].try_into().ok()?,
            seq: u64::from_be_bytes(key[40..].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ticks_start_at_one_and_increase() {
        let mut clock = LamportClock::new();
        assert_eq!((clock.tick(), clock.tick(), clock.tick()), (1, 2, 3));
    }

    #[test]
    fn observing_a_later_stamp_moves_the_next_tick_past_it() {
        let mut clock = LamportClock::new();
        clock.tick();
        clock.observe(41);
        assert_eq!(clock.current(), 42);
        assert_eq!(clock.tick(), 43);
        // An older stamp still counts as an event.
        clock.observe(5);
        assert_eq!(clock.tick(), 45);
    }

    #[test]
    fn clock_saturates_instead_of_wrapping() {
        let mut clock = LamportClock::new();
        clock.observe(u64::MAX);
        assert_eq!(clock.tick(), u64::MAX);
        assert_eq!(clock.current(), u64::MAX);
    }

    #[test]
    fn key_layout_is_big_endian_lamport_sender_seq() {
        let order = HistoryOrder {
            lamport: 0x0102,
            sender: [0xaa; 32],
            seq: 7,
        };
        let key = order.to_key_bytes();
        assert_eq!(&key[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&key[8..40], &[0xaa; 32]);
        assert_eq!(&key[40..], &[0, 0, 0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused() {
        let key = HistoryOrder::default_for_test().to_key_bytes();
        assert_eq!(HistoryOrder::from_key_bytes(&key[..47]), None);
        assert_eq!(
            HistoryOrder::from_key_bytes(&[key.as_slice(), &[0]].concat()),
            None
        );
        assert_eq!(HistoryOrder::from_key_bytes(&[]), None);
    }

    impl HistoryOrder {
        fn default_for_test() -> Self {
            Self {
                lamport: 1,
                sender: [2; 32],
                seq: 3,
            }
        }
    }

    /// Small ranges make ties in the leading fields common, so later fields decide.
    fn any_order() -> impl Strategy<Value = HistoryOrder> {
        (
            prop_oneof![0u64..4, any::<u64>()],
            prop_oneof![
                (0u8..3).prop_map(|b| [b; 32]),
                any::<[u8; 32]>(),
                (any::<u8>(), any::<u8>()).prop_map(|(a, b)| {
                    let mut sender = [0u8; 32];
                    sender[0] = a;
                    sender[31] = b;
                    sender
                })
            ],
            prop_oneof![0u64..4, any::<u64>()],
        )
            .prop_map(|(lamport, sender, seq)| HistoryOrder {
                lamport,
                sender,
                seq,
            })
    }

    proptest! {
        #[test]
        fn key_byte_order_equals_tuple_order(a in any_order(), b in any_order()) {
            prop_assert_eq!(a.to_key_bytes().cmp(&b.to_key_bytes()), a.cmp(&b));
            prop_assert_eq!(
                a.cmp(&b),
                (a.lamport, a.sender, a.seq).cmp(&(b.lamport, b.sender, b.seq))
            );
        }

        #[test]
        fn keys_round_trip(order in any_order()) {
            prop_assert_eq!(HistoryOrder::from_key_bytes(&order.to_key_bytes()), Some(order));
        }

        #[test]
        fn sorting_keys_sorts_history(mut orders in proptest::collection::vec(any_order(), 0..40)) {
            let mut keys: Vec<_> = orders.iter().map(HistoryOrder::to_key_bytes).collect();
            keys.sort();
            orders.sort();
            let decoded: Vec<_> =
                keys.iter().filter_map(|key| HistoryOrder::from_key_bytes(key)).collect();
            prop_assert_eq!(decoded, orders);
        }

        #[test]
        fn observe_then_tick_exceeds_both_clocks(ours in 0u64..1 << 40, remote in 0u64..1 << 40) {
            let mut clock = LamportClock { time: ours };
            clock.observe(remote);
            let next = clock.tick();
            prop_assert!(next > ours && next > remote);
        }
    }
}
