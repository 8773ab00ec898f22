//! When what the node tells its user (the `listen` events) goes out:
//! - [`Unnamed`]: a message from a sender we cannot name yet waits, a little, for the rendezvous
//!   to name it (asked once per sender), so that scripts can answer by name;
//! - [`Connections`]: how a peer is connected is told when it changes, or when the peer can now
//!   be named and could not before.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Senders asked about at once; a further one is not asked about, its events go out unnamed.
pub const MAX_ASKING: usize = 256;
/// Senders whose events wait for their name at once; a further one's go out unnamed.
pub const MAX_UNNAMED_SENDERS: usize = 64;
/// Events one sender's wait holds; a further one goes out unnamed.
pub const MAX_HELD_PER_SENDER: usize = 32;

/// Events waiting for their sender's name, by the sender's identity key, and the senders the
/// rendezvous is being asked about. `E` is the driver's event.
#[derive(Debug)]
pub struct Unnamed<E> {
    held: HashMap<[u8; 32], Vec<E>>,
    asking: HashSet<[u8; 32]>,
}

impl<E> Default for Unnamed<E> {
    fn default() -> Self {
        Self {
            held: HashMap::new(),
            asking: HashSet::new(),
        }
    }
}

/// What to do about something from a sender we cannot name.
#[derive(Debug, PartialEq, Eq)]
pub struct Stranger<E> {
    /// Ask the rendezvous who holds the sender's key (not asked already); answer with
    /// [`Unnamed::release`].
    pub ask: bool,
    /// The event to emit now, unnamed (nobody is asked about the sender, or the wait is full).
    pub emit: Option<E>,
}

impl<E> Unnamed<E> {
    /// Something came from `sender`, whom we cannot name: with `event` (a message to tell of),
    /// or without (a control message).
    pub fn heard(&mut self, sender: [u8; 32], event: Option<E>) -> Stranger<E> {
        let ask = self.asking.len() < MAX_ASKING && self.asking.insert(sender);
        let emit = match event {
            Some(event) if self.asking.contains(&sender) => self.hold(sender, event),
            event => event,
        };
        Stranger { ask, emit }
    }

    /// Holds `event` until `sender` is named; `Some(event)` when it is to go out now, unnamed
    /// (the holding is full).
    fn hold(&mut self, sender: [u8; 32], event: E) -> Option<E> {
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

    /// `sender` is named now (or the rendezvous does not know it): its events, in order, to go
    /// out; a later message from it asks again.
    pub fn release(&mut self, sender: &[u8; 32]) -> Vec<E> {
        self.asking.remove(sender);
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
    fn a_stranger_is_asked_about_once_and_its_messages_wait_for_the_answer() {
        let mut unnamed = Unnamed::default();
        let first = unnamed.heard([1; 32], Some("a"));
        assert_eq!(
            first,
            Stranger {
                ask: true,
                emit: None
            }
        );
        let control = unnamed.heard([1; 32], None);
        assert_eq!(
            control,
            Stranger {
                ask: false,
                emit: None
            },
            "asked already"
        );
        let second = unnamed.heard([1; 32], Some("b"));
        assert_eq!(
            second,
            Stranger {
                ask: false,
                emit: None
            }
        );
        assert_eq!(unnamed.release(&[1; 32]), vec!["a", "b"]);
        assert!(unnamed.release(&[1; 32]).is_empty(), "released once");
        // Named (or not known): a later message asks again.
        assert!(unnamed.heard([1; 32], None).ask);
        // Too many asked about: the next is not, and its message goes out at once.
        let mut full = Unnamed::default();
        for i in 0..MAX_ASKING as u16 {
            let mut key = [0; 32];
            key[..2].copy_from_slice(&i.to_be_bytes());
            assert!(full.heard(key, None).ask);
        }
        let late = full.heard([9; 32], Some("now"));
        assert_eq!(
            late,
            Stranger {
                ask: false,
                emit: Some("now")
            }
        );
    }

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
