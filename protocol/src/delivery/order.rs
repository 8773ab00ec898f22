//! Conversation order: a hybrid logical clock, and the history key built from its stamps.
//!
//! Sending stamps `Content::stamp` with [`HybridClock::tick`] (wall-clock time, or one past the
//! last stamp when the wall clock has not moved on); receiving calls [`HybridClock::observe`],
//! which files the message under its sender's stamp (clamped to at most [`MAX_DRIFT_MS`] ahead of
//! our own clock) and moves our clock past it, so a reply always sorts after what it answers.
//! Concurrent messages sort by time, so a newcomer's first message follows everything written
//! before it. History is displayed in [`HistoryOrder`] — `(stamp, sender, seq)` — and stored under
//! its fixed-width big-endian [`HistoryOrder::to_key_bytes`], so a sled range read is display order.
//!
//! `now` is always passed in (Unix milliseconds): nothing here reads a clock.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// How far ahead of our clock a peer's stamp may be taken as it is. A stamp further ahead is
/// filed at this bound: a peer whose clock runs fast (or lies) cannot push messages to the end of
/// every history for good, nor drag our clock — and so our own messages — into the future.
pub const MAX_DRIFT_MS: u64 = 60_000;

/// Bits of a [`Stamp`] below the milliseconds: a counter for events within one millisecond.
const LOGICAL_BITS: u32 = 16;

/// Stamps whose time is before this (2020-01-01) were written by the Lamport clock that preceded
/// the hybrid one: a bare counter, which says nothing about time.
const LEGACY_BEFORE_MS: u64 = 1_577_836_800_000;

/// A hybrid logical clock stamp: Unix milliseconds in the high 48 bits, a counter in the low 16
/// (events within one millisecond, or after the wall clock stepped back). Ordered as a number,
/// and encoded as one (`u64`), so the wire and key layouts are those of the Lamport time it
/// replaces.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Stamp(pub u64);

impl Stamp {
    pub const MAX: Stamp = Stamp(u64::MAX);

    /// The earliest stamp of the hybrid clock: anything below is a bare Lamport counter.
    pub const HYBRID_EPOCH: Stamp = Stamp::from_ms(LEGACY_BEFORE_MS);

    /// The first stamp of millisecond `ms` (times past the 48-bit range, year 10889, saturate).
    pub const fn from_ms(ms: u64) -> Self {
        if ms >= 1 << (64 - LOGICAL_BITS) {
            return Stamp::MAX;
        }
        Stamp(ms << LOGICAL_BITS)
    }

    /// The wall-clock time, in Unix milliseconds.
    pub fn ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The next stamp; saturates rather than wrapping.
    pub fn next(self) -> Self {
        Stamp(self.0.saturating_add(1))
    }

    /// Written by the old Lamport clock (see [`LEGACY_BEFORE_MS`])?
    pub fn is_legacy(self) -> bool {
        self.ms() < LEGACY_BEFORE_MS
    }

    /// Where a message stamped `self` and sent at `sent_at_ms` (the sender's wall clock) belongs
    /// in time: itself, unless it is a bare Lamport counter; then the send time (no earlier than
    /// [`Self::HYBRID_EPOCH`], so the result is never taken for a counter again), with the
    /// counter in the logical bits so messages of one millisecond keep their causal order.
    pub fn or_sent_at(self, sent_at_ms: u64) -> Self {
        if !self.is_legacy() {
            return self;
        }
        let counter = self.0 & ((1 << LOGICAL_BITS) - 1);
        let sent = Stamp::from_ms(sent_at_ms).max(Self::HYBRID_EPOCH);
        Stamp(sent.0.saturating_add(counter))
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.ms(), self.0 & ((1 << LOGICAL_BITS) - 1))
    }
}

/// A hybrid logical clock (Kulkarni et al.): stamps follow the wall clock, never go backwards,
/// and every stamp issued after observing another is greater than it. Persist [`Self::current`]
/// and restore with [`Self::resume`]. Saturates at [`Stamp::MAX`] rather than wrapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HybridClock {
    last: Stamp,
}

impl HybridClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that goes on from `last` (as persisted; an old Lamport time works too, since any
    /// stamp of the wall clock is greater).
    pub fn resume(last: Stamp) -> Self {
        Self { last }
    }

    /// The stamp for a message we send at `now_ms`: `max(now, last + 1)`.
    pub fn tick(&mut self, now_ms: u64) -> Stamp {
        self.last = Stamp::from_ms(now_ms).max(self.last.next());
        self.last
    }

    /// Takes in a received message's stamp at `now_ms` and returns the stamp to file it under:
    /// the sender's, brought down to at most [`MAX_DRIFT_MS`] ahead of `now`. Our
    /// clock moves up to it, so the next [`Self::tick`] sorts after the message.
    pub fn observe(&mut self, remote: Stamp, now_ms: u64) -> Stamp {
        // Bounded by the wall clock alone: bounding by our clock would let each far-future stamp
        // move the bound (and the clock) on by another MAX_DRIFT_MS.
        let bound = Stamp::from_ms(now_ms.saturating_add(MAX_DRIFT_MS));
        let filed = remote.min(bound);
        self.last = self.last.max(filed);
        filed
    }

    /// The latest stamp issued or observed.
    pub fn current(&self) -> Stamp {
        self.last
    }
}

/// Length of [`HistoryOrder::to_key_bytes`].
pub const HISTORY_KEY_LEN: usize = 8 + 32 + 8;

/// A message's place in its conversation's history: by stamp, ties broken by the sender's
/// identity key bytes, then by the sender's sequence number. `Ord` is this tuple order, and so is
/// the byte order of [`Self::to_key_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HistoryOrder {
    pub stamp: Stamp,
    pub sender: [u8; 32],
    pub seq: u64,
}

impl HistoryOrder {
    pub fn new(stamp: Stamp, sender: &VerifyingKey, seq: u64) -> Self {
        Self {
            stamp,
            sender: sender.to_bytes(),
            seq,
        }
    }

    /// `stamp` (8 bytes, big-endian) ‖ `sender` (32) ‖ `seq` (8, big-endian).
    pub fn to_key_bytes(&self) -> [u8; HISTORY_KEY_LEN] {
        let mut key = [0u8; HISTORY_KEY_LEN];
        key[..8].copy_from_slice(&self.stamp.0.to_be_bytes());
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
            stamp: Stamp(u64::from_be_bytes(key[..8].try_into().ok()?)),
            sender: key[8..40].try_into().ok()?,
            seq: u64::from_be_bytes(key[40..].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-12-01T12:00:00Z.
    const NOON: u64 = 1_796_126_400_000;

    #[test]
    fn ticks_follow_the_wall_clock_and_never_repeat() {
        let mut clock = HybridClock::new();
        assert_eq!(clock.tick(NOON), Stamp::from_ms(NOON));
        // The same millisecond, or a wall clock stepped back: one past the last stamp.
        assert_eq!(clock.tick(NOON), Stamp::from_ms(NOON).next());
        assert_eq!(clock.tick(NOON - 5_000), Stamp::from_ms(NOON).next().next());
        assert_eq!(clock.tick(NOON + 1), Stamp::from_ms(NOON + 1));
        assert_eq!(clock.current().ms(), NOON + 1);
    }

    #[test]
    fn a_newcomers_first_message_sorts_after_older_messages() {
        // An old-timer who has written 80 messages (a Lamport clock would be at 80), then a
        // newcomer whose clock starts from nothing, a minute later.
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let mut old_timer = HybridClock::new();
        let earlier: Vec<HistoryOrder> = (1..=80)
            .map(|seq| HistoryOrder {
                stamp: old_timer.tick(NOON + seq),
                sender: old,
                seq,
            })
            .collect();
        let mut newcomer = HybridClock::new();
        let first = HistoryOrder {
            stamp: newcomer.tick(NOON + 60_000),
            sender: new,
            seq: 1,
        };
        assert!(earlier.iter().all(|e| *e < first));
    }

    #[test]
    fn a_reply_sorts_after_what_it_answers_even_from_a_slow_clock() {
        let mut fast = HybridClock::new();
        let mut slow = HybridClock::new();
        let question = fast.tick(NOON + 30_000);
        // The replier's wall clock is 30 s behind.
        assert_eq!(slow.observe(question, NOON), question);
        let answer = slow.tick(NOON + 1);
        assert!(answer > question, "{answer} after {question}");
    }

    #[test]
    fn a_stamp_far_in_the_future_is_filed_at_the_drift_bound() {
        let mut clock = HybridClock::new();
        let bound = Stamp::from_ms(NOON + MAX_DRIFT_MS);
        assert_eq!(
            clock.observe(Stamp::from_ms(NOON + 86_400_000), NOON),
            bound
        );
        assert_eq!(clock.observe(Stamp::MAX, NOON), bound);
        assert_eq!(clock.current(), bound);
        // Within the bound a stamp is taken as it is.
        let near = Stamp::from_ms(NOON + 5_000);
        assert_eq!(clock.observe(near, NOON), near);
        assert_eq!(clock.current(), bound, "the clock never moves back");
    }

    #[test]
    fn the_clock_saturates_instead_of_wrapping() {
        let mut clock = HybridClock::resume(Stamp(u64::MAX - 1));
        assert_eq!(clock.tick(NOON), Stamp::MAX);
        assert_eq!(clock.tick(NOON), Stamp::MAX);
        assert_eq!(Stamp::from_ms(u64::MAX), Stamp::MAX);
        assert_eq!(Stamp::from_ms(1 << 48), Stamp::MAX);
        assert_eq!(Stamp::from_ms((1 << 48) - 1).ms(), (1 << 48) - 1);
    }

    #[test]
    fn a_lamport_time_resumes_into_wall_clock_stamps_and_files_by_send_time() {
        // A store written by the Lamport clock holds a small counter.
        let mut clock = HybridClock::resume(Stamp(4_711));
        assert_eq!(clock.tick(NOON), Stamp::from_ms(NOON));
        let legacy = Stamp(37);
        assert!(legacy.is_legacy());
        assert_eq!(legacy.or_sent_at(NOON), Stamp(Stamp::from_ms(NOON).0 + 37));
        let current = Stamp::from_ms(NOON);
        assert!(!current.is_legacy());
        assert_eq!(current.or_sent_at(0), current);
        // A counter with a nonsense send time still comes out a hybrid stamp.
        assert_eq!(legacy.or_sent_at(3), Stamp(Stamp::HYBRID_EPOCH.0 + 37));
        assert!(!legacy.or_sent_at(3).is_legacy());
    }

    #[test]
    fn key_layout_is_big_endian_stamp_sender_seq() {
        let order = HistoryOrder {
            stamp: Stamp(0x0102),
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
        let key = HistoryOrder {
            stamp: Stamp(1),
            sender: [2; 32],
            seq: 3,
        }
        .to_key_bytes();
        assert_eq!(HistoryOrder::from_key_bytes(&key[..47]), None);
        assert_eq!(
            HistoryOrder::from_key_bytes(&[key.as_slice(), &[0]].concat()),
            None
        );
        assert_eq!(HistoryOrder::from_key_bytes(&[]), None);
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
            .prop_map(|(stamp, sender, seq)| HistoryOrder {
                stamp: Stamp(stamp),
                sender,
                seq,
            })
    }

    /// What happens to a clock: a send, or a receipt of some stamp, at some wall-clock time.
    #[derive(Debug, Clone)]
    enum Event {
        Tick(u64),
        Observe(Stamp, u64),
    }

    /// Wall-clock times around NOON that step back as well as forward; remote stamps from
    /// anywhere, the far future and the extremes included.
    fn any_events() -> impl Strategy<Value = Vec<Event>> {
        let now = (0u64..600_000).prop_map(|offset| NOON - 300_000 + offset);
        let remote = prop_oneof![
            (0u64..1_200_000).prop_map(|offset| Stamp::from_ms(NOON - 600_000 + offset)),
            any::<u64>().prop_map(Stamp),
            Just(Stamp::MAX),
            Just(Stamp(0)),
        ];
        proptest::collection::vec(
            prop_oneof![
                now.clone().prop_map(Event::Tick),
                (remote, now).prop_map(|(remote, now)| Event::Observe(remote, now)),
            ],
            0..200,
        )
    }

    proptest! {
        #[test]
        fn key_byte_order_equals_tuple_order(a in any_order(), b in any_order()) {
            prop_assert_eq!(a.to_key_bytes().cmp(&b.to_key_bytes()), a.cmp(&b));
            prop_assert_eq!(
                a.cmp(&b),
                (a.stamp, a.sender, a.seq).cmp(&(b.stamp, b.sender, b.seq))
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

        /// Monotonic: every stamp we issue is greater than the one before, and the clock never
        /// goes back, whatever the wall clock and the peers do.
        #[test]
        fn stamps_strictly_increase(events in any_events()) {
            let mut clock = HybridClock::new();
            let mut last_tick = None;
            for event in events {
                let before = clock.current();
                match event {
                    Event::Tick(now) => {
                        let stamp = clock.tick(now);
                        prop_assert!(last_tick.is_none_or(|last| stamp > last));
                        prop_assert!(stamp >= Stamp::from_ms(now));
                        last_tick = Some(stamp);
                    }
                    Event::Observe(remote, now) => {
                        clock.observe(remote, now);
                    }
                }
                prop_assert!(clock.current() >= before);
            }
        }

        /// Causal: a message sent after receiving another sorts after it (after the stamp it was
        /// filed under, which is its own unless it was beyond the drift bound).
        #[test]
        fn a_send_after_a_receive_sorts_after_it(
            events in any_events(),
            remote in any::<u64>().prop_map(Stamp),
            now in (NOON - 300_000)..(NOON + 300_000),
            later in 0u64..120_000,
        ) {
            let mut clock = HybridClock::new();
            for event in events {
                match event {
                    Event::Tick(now) => drop(clock.tick(now)),
                    Event::Observe(remote, now) => drop(clock.observe(remote, now)),
                }
            }
            let filed = clock.observe(remote, now);
            if remote.ms() <= now + MAX_DRIFT_MS {
                prop_assert_eq!(filed, remote);
            }
            prop_assert!(clock.tick(now + later) > filed);
        }

        /// Bounded drift: however far ahead peers claim to be, the clock stays within
        /// MAX_DRIFT_MS of the latest wall-clock time it was given (fewer than 2^16 events: the
        /// logical counter has not carried into the milliseconds).
        #[test]
        fn peers_cannot_push_the_clock_past_the_drift_bound(events in any_events()) {
            let mut clock = HybridClock::new();
            let mut latest_now = 0;
            for event in events {
                match event {
                    Event::Tick(now) => {
                        latest_now = latest_now.max(now);
                        clock.tick(now);
                    }
                    Event::Observe(remote, now) => {
                        latest_now = latest_now.max(now);
                        let filed = clock.observe(remote, now);
                        prop_assert!(filed.ms() <= now + MAX_DRIFT_MS);
                    }
                }
                prop_assert!(clock.current().ms() <= latest_now + MAX_DRIFT_MS);
            }
        }
    }
}
