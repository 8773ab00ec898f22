//! Hot-path dedup: the ids seen most recently, so a duplicate arriving by gossip, a retry or the
//! mailbox is dropped before the store is touched. The store's id check stays the durable record.
//!
//! Check with [`Dedup::contains`] on arrival; [`Dedup::insert`] once the message is stored (or
//! definitively rejected), not before — a message that merely could not be processed yet (say, its
//! sender key has not arrived) must not be remembered, or its redelivery would be dropped.

use std::collections::{HashSet, VecDeque};

use crate::wire::MessageId;

/// Default for [`Dedup::new`]: the last 64 Ki ids (about 4 MiB).
pub const DEFAULT_DEDUP_CAPACITY: usize = 64 * 1024;

/// A bounded set of recently seen message ids; when full, the oldest is forgotten first.
#[derive(Debug, Clone)]
pub struct Dedup {
    capacity: usize,
    seen: HashSet<MessageId>,
    /// Insertion order, for eviction.
    order: VecDeque<MessageId>,
}

impl Default for Dedup {
    fn default() -> Self {
        Self::new(DEFAULT_DEDUP_CAPACITY)
    }
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `id` is among the recently seen.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.seen.contains(id)
    }

    /// Remembers `id`, forgetting the oldest if full. Returns whether it was not already
    /// remembered.
    pub fn insert(&mut self, id: MessageId) -> bool {
        if self.capacity == 0 || self.seen.contains(&id) {
            return self.capacity == 0;
        }
        while self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(id);
        self.order.push_back(id);
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u16) -> MessageId {
        let mut bytes = [0u8; 32];
        bytes[..2].copy_from_slice(&n.to_be_bytes());
        MessageId(bytes)
    }

    #[test]
    fn remembers_recent_ids() {
        let mut dedup = Dedup::new(4);
        assert!(!dedup.contains(&id(1)));
        assert!(dedup.insert(id(1)));
        assert!(dedup.contains(&id(1)));
        assert!(!dedup.insert(id(1)));
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn forgets_the_oldest_first_when_full() {
        let mut dedup = Dedup::new(3);
        for n in 1..=4 {
            dedup.insert(id(n));
        }
        assert!(!dedup.contains(&id(1)));
        assert!((2..=4).all(|n| dedup.contains(&id(n))));
        assert_eq!(dedup.len(), 3);
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut dedup = Dedup::new(0);
        assert!(dedup.insert(id(1)));
        assert!(dedup.insert(id(1)));
        assert!(dedup.is_empty() && !dedup.contains(&id(1)));
    }

    proptest! {
        /// Against a model: a FIFO of distinct ids of at most `capacity`, re-inserts not
        /// refreshing an id's age.
        #[test]
        fn behaves_as_a_bounded_fifo_of_distinct_ids(
            capacity in 1usize..8,
            ids in proptest::collection::vec(0u16..12, 0..64),
        ) {
            let mut dedup = Dedup::new(capacity);
            let mut model: VecDeque<u16> = VecDeque::new();
            for n in ids {
                let fresh = !model.contains(&n);
                prop_assert_eq!(dedup.insert(id(n)), fresh);
                if fresh {
                    if model.len() == capacity {
                        model.pop_front();
                    }
                    model.push_back(n);
                }
                prop_assert_eq!(dedup.len(), model.len());
                for m in 0..12 {
                    prop_assert_eq!(dedup.contains(&id(m)), model.contains(&m));
                }
            }
        }
    }
}
