//! Presence: who is online, away or offline, and when the server last heard from them.
//!
//! The server calls [`PresenceTable::heard`] on every login and heartbeat, [`PresenceTable::gone`]
//! when a session ends, and [`PresenceTable::handle_timeout`] when [`PresenceTable::next_due`]
//! passes. Each returns the records whose *state* changed — exactly what to push to subscribers;
//! heartbeats that change nothing but the last-seen time push nothing.

use std::collections::HashMap;
use std::time::Duration;

use super::{Deadlines, Millis};
use crate::name::UserName;
use crate::wire::{PresenceRecord, PresenceState};

/// Presence of the users with a session since the server started.
#[derive(Debug, Clone)]
pub struct PresenceTable {
    timeout: Millis,
    users: HashMap<UserName, Entry>,
    expiry: Deadlines<UserName>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: PresenceState,
    last_seen_ms: Millis,
}

impl PresenceTable {
    /// A user who has not been heard from for `timeout` goes offline.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            users: HashMap::new(),
            expiry: Deadlines::new(),
        }
    }

    /// A login or heartbeat from `name`, who says it is `state`. `Offline` means the user chose to
    /// appear offline until its next heartbeat. Returns the new record if the state changed.
    pub fn heard(
        &mut self,
        name: &UserName,
        state: PresenceState,
        now: Millis,
    ) -> Option<PresenceRecord> {
        let previous = self.users.insert(
            name.clone(),
            Entry {
                state,
                last_seen_ms: now,
            },
        );
        match state {
            PresenceState::Offline => {
                self.expiry.remove(name);
            }
            PresenceState::Online | PresenceState::Away => {
                self.expiry
                    .set(name.clone(), now.saturating_add(self.timeout));
            }
        }
        let was = previous.map_or(PresenceState::Offline, |e| e.state);
        (was != state).then(|| record(name, state, now))
    }

    /// The session of `name` ended (logout or disconnect). Returns the offline record, to push if
    /// the user was not already offline, and to persist as last seen either way.
    pub fn gone(&mut self, name: &UserName, now: Millis) -> (PresenceRecord, bool) {
        self.expiry.remove(name);
        let was = self.users.remove(name).map(|e| e.state);
        let changed = matches!(was, Some(PresenceState::Online | PresenceState::Away));
        // The session was alive until now, heartbeating or not.
        (record(name, PresenceState::Offline, now), changed)
    }

    /// The current record of `name`, if it has had a session since the server started.
    pub fn record(&self, name: &UserName) -> Option<PresenceRecord> {
        self.users
            .get(name)
            .map(|e| record(name, e.state, e.last_seen_ms))
    }

    /// When the next user may time out.
    pub fn next_due(&self) -> Option<Millis> {
        self.expiry.next_due()
    }

    /// Users not heard from within the timeout go offline; returns their records.
    pub fn handle_timeout(&mut self, now: Millis) -> Vec<PresenceRecord> {
        self.expiry
            .expire(now)
            .into_iter()
            .filter_map(|name| {
                let entry = self.users.get_mut(&name)?;
                entry.state = PresenceState::Offline;
                Some(record(&name, PresenceState::Offline, entry.last_seen_ms))
            })
            .collect()
    }

    /// How many users are online or away.
    pub fn present(&self) -> usize {
        self.expiry.len()
    }
}

fn record(name: &UserName, state: PresenceState, last_seen_ms: Millis) -> PresenceRecord {
    PresenceRecord {
        name: name.clone(),
        state,
        last_seen_ms: Some(last_seen_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PresenceState::*;

    fn alice() -> UserName {
        UserName::new("alice").unwrap()
    }

    #[test]
    fn a_login_is_a_change_and_repeated_heartbeats_are_not() {
        let mut table = PresenceTable::new(Duration::from_secs(60));
        let rec = table.heard(&alice(), Online, 1_000).unwrap();
        assert_eq!((rec.state, rec.last_seen_ms), (Online, Some(1_000)));
        assert_eq!(table.heard(&alice(), Online, 2_000), None);
        assert_eq!(table.record(&alice()).unwrap().last_seen_ms, Some(2_000));
        assert_eq!(table.heard(&alice(), Away, 3_000).unwrap().state, Away);
        assert_eq!(table.present(), 1);
    }

    #[test]
    fn a_user_who_stops_heartbeating_goes_offline_after_the_timeout() {
        let mut table = PresenceTable::new(Duration::from_secs(60));
        table.heard(&alice(), Online, 0);
        table.heard(&alice(), Online, 30_000);
        assert_eq!(table.next_due(), Some(90_000));
        assert!(table.handle_timeout(89_999).is_empty());
        let expired = table.handle_timeout(90_000);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].state, Offline);
        // Last seen stays at the last heartbeat, not the moment of expiry.
        assert_eq!(expired[0].last_seen_ms, Some(30_000));
        assert_eq!(table.next_due(), None);
        assert_eq!(table.present(), 0);
        // A heartbeat after the timeout brings the user back, and that is a change.
        assert_eq!(
            table.heard(&alice(), Online, 100_000).unwrap().state,
            Online
        );
    }

    #[test]
    fn choosing_offline_and_ending_the_session_are_changes_once() {
        let mut table = PresenceTable::new(Duration::from_secs(60));
        table.heard(&alice(), Online, 0);
        assert_eq!(table.heard(&alice(), Offline, 10).unwrap().state, Offline);
        assert_eq!(table.next_due(), None);
        let (rec, changed) = table.gone(&alice(), 20);
        assert!(!changed);
        assert_eq!(rec.last_seen_ms, Some(20));
        table.heard(&alice(), Away, 30);
        let (rec, changed) = table.gone(&alice(), 40);
        assert!(changed);
        assert_eq!((rec.state, rec.last_seen_ms), (Offline, Some(40)));
        assert_eq!(table.record(&alice()), None);
    }
}
