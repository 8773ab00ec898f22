//! What we know of other users' presence: the rendezvous's pushes and answers, and what is said
//! when it cannot be asked.
//!
//! A contact that comes online may have come back with another key, and may have messages
//! waiting for it: [`Presence::pushed`] says so. A presence call answers with the rendezvous's
//! records ([`answer`]); while the rendezvous is down, with what we last heard, marked stale
//! ([`Presence::last_known`]) — a peer we are connected to right now is online whatever we last
//! heard, one we never heard of is unknown. The driver keeps the records on disk too, so a
//! restart while the rendezvous is down still knows the last state.

use std::collections::HashMap;

use crate::UserName;
use crate::wire::{PresenceRecord, PresenceState, UserRecord};

/// What we last heard of each user.
#[derive(Debug, Default)]
pub struct Presence {
    heard: HashMap<UserName, PresenceRecord>,
}

/// A user's state as we last knew it, for when the rendezvous cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownState {
    Heard(PresenceState),
    /// Never heard of (and not connected to us).
    Unknown,
}

impl KnownState {
    pub fn as_str(self) -> &'static str {
        match self {
            KnownState::Heard(state) => state_str(state),
            KnownState::Unknown => "unknown",
        }
    }
}

/// How a presence state is named to scripts.
pub fn state_str(state: PresenceState) -> &'static str {
    match state {
        PresenceState::Online => "online",
        PresenceState::Away => "away",
        PresenceState::Offline => "offline",
    }
}

/// What we last knew of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastKnown {
    pub name: UserName,
    pub state: KnownState,
    pub last_seen_ms: Option<u64>,
}

/// The rendezvous's answer to a presence call for `names`: the records asked for, in the
/// answer's order, and the names it does not know.
pub fn answer<'a>(
    names: &'a [UserName],
    users: &'a [UserRecord],
) -> (Vec<&'a UserRecord>, Vec<&'a UserName>) {
    let records = users.iter().filter(|u| names.contains(&u.name)).collect();
    let unknown = names
        .iter()
        .filter(|name| !users.iter().any(|u| &u.name == *name))
        .collect();
    (records, unknown)
}

impl Presence {
    /// The rendezvous pushed a contact's presence; `true` when it came online (from offline, or
    /// first heard): ask for its key again and deliver what waits for it.
    pub fn pushed(&mut self, record: PresenceRecord) -> bool {
        let came_online = record.state != PresenceState::Offline
            && self
                .heard
                .get(&record.name)
                .is_none_or(|old| old.state == PresenceState::Offline);
        self.heard(record);
        came_online
    }

    /// The rendezvous said this of a user (a lookup's answer, a subscription).
    pub fn heard(&mut self, record: PresenceRecord) {
        self.heard.insert(record.name.clone(), record);
    }

    /// What we last heard of `name` here (no store, no connections: a room's member list).
    pub fn heard_state(&self, name: &UserName) -> KnownState {
        self.heard.get(name).map_or(KnownState::Unknown, |record| {
            KnownState::Heard(record.state)
        })
    }

    /// What we last knew of `names`: what we heard (here, else `stored`), but online for one
    /// we are `connected` to now.
    pub fn last_known(
        &self,
        names: &[UserName],
        connected: impl Fn(&UserName) -> bool,
        stored: impl Fn(&UserName) -> Option<PresenceRecord>,
    ) -> Vec<LastKnown> {
        names
            .iter()
            .map(|name| {
                let heard = self.heard.get(name).cloned().or_else(|| stored(name));
                let state = match (connected(name), &heard) {
                    (true, _) => KnownState::Heard(PresenceState::Online),
                    (false, Some(record)) => KnownState::Heard(record.state),
                    (false, None) => KnownState::Unknown,
                };
                LastKnown {
                    name: name.clone(),
                    state,
                    last_seen_ms: heard.and_then(|record| record.last_seen_ms),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> UserName {
        UserName::new(n).unwrap()
    }

    fn record(n: &str, state: PresenceState, last_seen_ms: Option<u64>) -> PresenceRecord {
        PresenceRecord {
            name: name(n),
            state,
            last_seen_ms,
        }
    }

    #[test]
    fn a_contact_comes_online_when_first_heard_or_back_from_offline() {
        let mut presence = Presence::default();
        assert!(presence.pushed(record("ann", PresenceState::Online, None)));
        assert!(!presence.pushed(record("ann", PresenceState::Away, None)));
        assert!(!presence.pushed(record("ann", PresenceState::Online, None)));
        assert!(!presence.pushed(record("ann", PresenceState::Offline, Some(5))));
        assert!(presence.pushed(record("ann", PresenceState::Away, None)));
        assert!(!presence.pushed(record("ben", PresenceState::Offline, Some(1))));
    }

    #[test]
    fn the_last_known_state_is_what_we_heard_unless_connected_now() {
        let mut presence = Presence::default();
        presence.heard(record("ann", PresenceState::Offline, Some(7)));
        let names = [name("ann"), name("ben"), name("cat"), name("dan")];
        let known = presence.last_known(
            &names,
            |n| n.as_str() == "cat",
            |n| (n.as_str() == "ben").then(|| record("ben", PresenceState::Away, Some(3))),
        );
        let states: Vec<(&str, Option<u64>)> = known
            .iter()
            .map(|k| (k.state.as_str(), k.last_seen_ms))
            .collect();
        assert_eq!(
            states,
            [
                ("offline", Some(7)),
                ("away", Some(3)), // from the store, after a restart
                ("online", None),  // connected now, never heard of
                ("unknown", None),
            ]
        );
    }
}
