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
use crate::wire::rendezvous::MAX_BATCH;
use crate::wire::{PresenceRecord, PresenceState, UserRecord};

/// Users whose presence is kept in memory; past that, the records of those not heard of for
/// the longest go (they are on disk, and the rendezvous says again).
pub const MAX_HEARD: usize = 4096;

/// What we last heard of each user, and in which order (a counter).
#[derive(Debug, Default)]
pub struct Presence {
    heard: HashMap<UserName, (u64, PresenceRecord)>,
    next: u64,
}

/// What follows from a presence push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Check this contact's key again (it may have come back with a new one).
    pub check_key: Option<UserName>,
    /// This user came online: try what waits for it now.
    pub came_online: Option<UserName>,
}

/// What a presence call asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Nobody to ask about: an empty answer.
    Nobody,
    /// The rendezvous cannot be asked: what we last knew of these, marked stale.
    Stale(Vec<UserName>),
    /// Ask the rendezvous about these (`explicit`: the caller named them, not the contacts).
    Ask {
        names: Vec<UserName>,
        explicit: bool,
    },
}

/// A presence call for `names` (none: our `contacts`, the first request's worth of them),
/// while the rendezvous can be asked (`logged_in`) or not. More names than one request holds
/// are refused.
pub fn query(
    names: Vec<UserName>,
    contacts: impl FnOnce() -> Vec<UserName>,
    logged_in: bool,
) -> Result<Query, TooManyNames> {
    let explicit = !names.is_empty();
    if names.len() > MAX_BATCH {
        return Err(TooManyNames);
    }
    let mut names = if explicit { names } else { contacts() };
    names.truncate(MAX_BATCH);
    Ok(match (names.is_empty(), logged_in) {
        (true, _) => Query::Nobody,
        (false, false) => Query::Stale(names),
        (false, true) => Query::Ask { names, explicit },
    })
}

/// A presence call named more users than one request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("at most {MAX_BATCH} names at a time")]
pub struct TooManyNames;

/// Why a presence call fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown user {} at this rendezvous", .0.iter().map(UserName::as_str).collect::<Vec<_>>().join(", "))]
pub struct UnknownUsers(pub Vec<UserName>);

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
/// answer's order; a name the caller gave (`explicit`) that it does not know is an error.
pub fn answer<'a>(
    names: &[UserName],
    explicit: bool,
    users: &'a [UserRecord],
) -> Result<Vec<&'a UserRecord>, UnknownUsers> {
    let unknown: Vec<UserName> = names
        .iter()
        .filter(|name| !users.iter().any(|u| &u.name == *name))
        .cloned()
        .collect();
    if explicit && !unknown.is_empty() {
        return Err(UnknownUsers(unknown));
    }
    Ok(users.iter().filter(|u| names.contains(&u.name)).collect())
}

impl Presence {
    /// The rendezvous pushed a contact's presence; what follows when it came online (from
    /// offline, or first heard).
    pub fn pushed(&mut self, record: PresenceRecord, logged_in: bool) -> Pushed {
        let came_online = record.state != PresenceState::Offline
            && self
                .heard
                .get(&record.name)
                .is_none_or(|(_, old)| old.state == PresenceState::Offline);
        let name = record.name.clone();
        self.heard(record);
        Pushed {
            // It may have come back with another key: ask, and see.
            check_key: (came_online && logged_in).then(|| name.clone()),
            // What waits for it goes now, not at its backoff.
            came_online: came_online.then_some(name),
        }
    }

    /// The rendezvous said this of a user (a lookup's answer, a subscription).
    pub fn heard(&mut self, record: PresenceRecord) {
        if self.heard.len() >= MAX_HEARD && !self.heard.contains_key(&record.name) {
            let oldest = self.heard.iter().min_by_key(|(_, (at, _))| *at);
            if let Some(oldest) = oldest.map(|(name, _)| name.clone()) {
                self.heard.remove(&oldest);
            }
        }
        self.next += 1;
        self.heard.insert(record.name.clone(), (self.next, record));
    }

    /// What we last heard of `name` here (no store, no connections: a room's member list).
    pub fn heard_state(&self, name: &UserName) -> KnownState {
        self.heard
            .get(name)
            .map_or(KnownState::Unknown, |(_, record)| {
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
                let heard = self.heard.get(name).map(|(_, record)| record.clone());
                let heard = heard.or_else(|| stored(name));
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
        let mut online = |n, state, logged_in| {
            let pushed = presence.pushed(record(n, state, None), logged_in);
            assert_eq!(
                pushed.check_key.is_some(),
                pushed.came_online.is_some() && logged_in
            );
            pushed.came_online.is_some()
        };
        assert!(online("ann", PresenceState::Online, true));
        assert!(!online("ann", PresenceState::Away, true));
        assert!(!online("ann", PresenceState::Online, true));
        assert!(!online("ann", PresenceState::Offline, true));
        assert!(
            online("ann", PresenceState::Away, false),
            "no lookup while logged out"
        );
        assert!(!online("ben", PresenceState::Offline, true));
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

    fn user(n: &str) -> UserRecord {
        UserRecord {
            name: name(n),
            identity: ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key(),
            presence: record(n, PresenceState::Online, Some(1)),
        }
    }

    #[test]
    fn a_presence_call_asks_about_whom_it_is_told_or_the_contacts_and_unknown_names_fail() {
        let contacts = || vec![name("ann"), name("ben")];
        assert_eq!(query(Vec::new(), Vec::new, true), Ok(Query::Nobody));
        assert_eq!(
            query(Vec::new(), contacts, true),
            Ok(Query::Ask {
                names: contacts(),
                explicit: false
            })
        );
        assert_eq!(
            query(vec![name("cat")], contacts, false),
            Ok(Query::Stale(vec![name("cat")]))
        );
        let many = (0..=MAX_BATCH).map(|i| name(&format!("u{i}"))).collect();
        assert_eq!(query(many, contacts, true), Err(TooManyNames));
        let users = vec![user("ann"), user("zed")];
        let records = answer(&contacts(), false, &users).unwrap();
        assert_eq!(
            records,
            [&users[0]],
            "only those asked about; ben is just not there"
        );
        let unknown = answer(&contacts(), true, &users).unwrap_err();
        assert_eq!(unknown.to_string(), "unknown user ben at this rendezvous");
    }

    #[test]
    fn what_is_kept_in_memory_is_bounded_and_the_longest_unheard_goes() {
        let mut presence = Presence::default();
        for i in 0..MAX_HEARD {
            presence.heard(record(&format!("u{i}"), PresenceState::Online, None));
        }
        presence.heard(record("u0", PresenceState::Away, None));
        presence.heard(record("new", PresenceState::Online, None));
        assert_eq!(presence.heard.len(), MAX_HEARD);
        assert_eq!(
            presence.heard_state(&name("u1")),
            KnownState::Unknown,
            "u1 went"
        );
        assert_eq!(
            presence.heard_state(&name("u0")),
            KnownState::Heard(PresenceState::Away),
            "heard again, kept"
        );
    }
}
