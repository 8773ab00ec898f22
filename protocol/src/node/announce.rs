//! When what the node tells its user (the `listen` events) goes out:
//! - [`Unnamed`]: a message from a sender we cannot name yet waits, a little, for the rendezvous
//!   to name it, so that scripts can answer by name;
//! - [`Connections`]: how a peer is connected is told when it changes, or when the peer can now
//!   be named and could not before.

use std::collections::HashMap;
use std::hash::Hash;

/// Senders whose events wait for their name at once; a further one's go out unnamed.
pub const MAX_UNNAMED_SENDERS: usize = 64;
/// Events one sender's wait holds; a further one goes out unnamed.
pub const MAX_HELD_PER_SENDER: usize = 32;

/// Events waiting for their sender's name, by the sender's identity key. `E` is the driver's
/// event.
#[derive(Debug)]
pub struct Unnamed<E> {
    held: HashMap<[u8; 32], Vec<E>>,
}

impl<E> Default for Unnamed<E> {
    fn default() -> Self {
        Self {
            held: HashMap::new(),
        }
    }
}

impl<E> Unnamed<E> {
    /// Holds `event` until `sender` is named; `Some(event)` when it is to go out now, unnamed
    /// (the holding is full).
    pub fn hold(&mut self, sender: [u8; 32], event: E) -> Option<E> {
        if self.held.len() >= MAX_UNNAMED_SENDERS && !self.held.contains_key(&sender) {
            return Some(event);
        }
        let held = self.held.entry(sender).or_default();
        if held.len() >= MAX_HELD_PER_SENDER {
            return Some(event);
        }
        held.push(event);
        None
    }

    /// `sender` is named now (or will not be): its events, in order, to go out.
    pub fn release(&mut self, sender: &[u8; 32]) -> Vec<E> {
        self.held.remove(sender).unwrap_or_default()
    }

    /// The senders whose events wait.
    pub fn senders(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.held.keys()
    }
}

/// How each peer's connection was last told, and whether the peer could be named then. `P` is
/// a peer, `K` how it is connected.
#[derive(Debug)]
pub struct Connections<P, K> {
    told: HashMap<P, (K, bool)>,
}

impl<P, K> Default for Connections<P, K> {
    fn default() -> Self {
        Self {
            told: HashMap::new(),
        }
    }
}

impl<P: Eq + Hash, K: PartialEq + Copy> Connections<P, K> {
    /// `peer` is now connected as `kind` (`None`: not at all), and `named` says whether it can
    /// be named: whether to tell.
    pub fn changed(&mut self, peer: P, kind: Option<K>, named: bool) -> bool {
        let Some(kind) = kind else {
            return self.told.remove(&peer).is_some();
        };
        match self.told.get(&peer) {
            Some((told, was_named)) if *told == kind && (*was_named || !named) => false,
            _ => {
                self.told.insert(peer, (kind, named));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_wait_for_their_senders_name_within_bounds() {
        let mut unnamed = Unnamed::default();
        assert_eq!(unnamed.hold([1; 32], "a"), None);
        assert_eq!(unnamed.hold([1; 32], "b"), None);
        assert_eq!(unnamed.release(&[1; 32]), vec!["a", "b"]);
        assert!(unnamed.release(&[1; 32]).is_empty(), "released once");
        // One sender's wait is bounded: what does not fit goes out at once.
        for _ in 0..MAX_HELD_PER_SENDER {
            assert_eq!(unnamed.hold([2; 32], "x"), None);
        }
        assert_eq!(unnamed.hold([2; 32], "late"), Some("late"));
        // So is the number of senders waiting.
        for i in 0..MAX_UNNAMED_SENDERS as u8 - 1 {
            assert_eq!(unnamed.hold([i + 10; 32], "y"), None);
        }
        assert_eq!(unnamed.hold([200; 32], "z"), Some("z"));
        assert_eq!(unnamed.hold([10; 32], "y2"), None, "one already waiting");
        assert_eq!(unnamed.senders().count(), MAX_UNNAMED_SENDERS);
    }

    #[test]
    fn a_connection_is_told_when_it_changes_or_can_first_be_named() {
        let mut told = Connections::default();
        assert!(told.changed(1, Some("direct"), false));
        assert!(!told.changed(1, Some("direct"), false), "nothing new");
        assert!(told.changed(1, Some("direct"), true), "named now");
        assert!(!told.changed(1, Some("direct"), false), "named before");
        assert!(told.changed(1, Some("relayed"), true));
        assert!(told.changed(1, None, true), "gone");
        assert!(!told.changed(1, None, true), "gone already");
        assert!(!told.changed(2, None, false), "never told");
    }
}
