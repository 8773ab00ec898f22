//! Presence: heartbeats in, changes pushed to the sessions subscribed to them.

use super::*;

impl Service {
    pub(super) fn presence_of(&self, name: &UserName, user: &store::StoredUser) -> PresenceRecord {
        self.effective_presence(name)
            .unwrap_or_else(|| PresenceRecord {
                name: name.clone(),
                state: PresenceState::Offline,
                last_seen_ms: user.last_seen_ms,
            })
    }

    /// The user was heard from; `state` is what it says it is (`None`: any request, which keeps
    /// the current state alive without changing it).
    pub(super) fn presence_heard(
        &mut self,
        name: &UserName,
        state: Option<PresenceState>,
        now: Millis,
    ) {
        let state = match state {
            Some(state) => state,
            None => match self.presence.record(name).map(|r| r.state) {
                // A request is not a heartbeat for a user shown offline (by choice or timeout).
                Some(PresenceState::Offline) | None => return,
                Some(current) => current,
            },
        };
        if let Some(record) = self.presence.heard(name, state, now) {
            self.presence_changed(record);
        }
        self.metrics
            .online_users
            .set(gauge(self.presence.present()));
    }

    /// A change in this instance's presence table: the other instances are told, and our
    /// subscribers shown the user's presence across all of them.
    pub(super) fn presence_changed(&mut self, record: PresenceRecord) {
        self.publish_presence(&record);
        let shown = self.effective_presence(&record.name).unwrap_or(record);
        self.push_presence(shown);
    }

    pub(super) fn push_presence(&mut self, record: PresenceRecord) {
        self.metrics.presence_updates.inc();
        if let Some(subscribers) = self.subscribers.get(&record.name) {
            for peer in subscribers {
                self.pushes
                    .push((*peer, ServerPush::Presence(record.clone())));
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, peer: PeerId, names: &[UserName]) {
        for name in names {
            if let Some(set) = self.subscribers.get_mut(name) {
                set.remove(&peer);
                if set.is_empty() {
                    self.subscribers.remove(name);
                }
            }
        }
    }

    pub(super) fn subscribe(&mut self, peer: PeerId, mut names: Vec<UserName>) -> Handled {
        check_batch(names.len(), "names")?;
        let max = self.limits.max_subscriptions;
        if names.len() > max {
            return Err(refuse(
                RefusalReason::TooLarge,
                format!(
                    "at most {max} users may be watched per session, got {}",
                    names.len()
                ),
            ));
        }
        names.sort();
        names.dedup();
        let old = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.session.as_mut())
            .map(|s| std::mem::take(&mut s.subscriptions))
            .unwrap_or_default();
        self.unsubscribe(peer, &old);
        // Names not registered (yet, or any more) are watched too: when one is registered and
        // logs in, its watchers hear of it and look its key up again.
        let mut users = Vec::with_capacity(names.len());
        let mut kept = Vec::with_capacity(names.len());
        for name in names {
            if let Some(user) = self.store.user(&name)? {
                users.push(UserRecord {
                    name: name.clone(),
                    identity: user.identity,
                    presence: self.presence_of(&name, &user),
                });
            }
            self.subscribers
                .entry(name.clone())
                .or_default()
                .insert(peer);
            kept.push(name);
        }
        if let Some(session) = self.peers.get_mut(&peer).and_then(|p| p.session.as_mut()) {
            session.subscriptions = kept;
        }
        Ok(Reply::now(RendezvousResponse::Users(users)))
    }
}
