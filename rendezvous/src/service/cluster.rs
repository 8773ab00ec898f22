//! Presence and pushes across instances sharing one database.
//!
//! Each instance publishes its own users' presence changes, an `Alive` beat every third of the
//! presence timeout, and pushes for users whose session is not here (new mail, low prekeys). It
//! keeps what the others said per instance and answers lookups and subscriptions with the
//! *effective* presence: online (or away) wherever the user has a session, else offline. An
//! instance not heard from for the presence timeout is taken for dead: its users are shown
//! offline to our subscribers. The notes travel on a [`crate::cluster::ClusterBus`]; this module
//! only decides.

use serde::{Deserialize, Serialize};

use super::*;

/// What one instance tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ClusterEvent {
    /// A user's presence changed at the sending instance.
    Presence(PresenceRecord),
    /// The sending instance is up.
    Alive,
    /// For the session of `name`, if it is at the receiving instance.
    ForUser { name: UserName, push: ServerPush },
    /// For the session of `name`'s linked `device`, if it is at the receiving instance.
    ForDevice {
        name: UserName,
        device: VerifyingKey,
        push: ServerPush,
    },
    /// `name` published a new device list without these devices.
    DevicesChanged {
        name: UserName,
        removed: Vec<VerifyingKey>,
    },
}

#[derive(Debug, Default)]
struct Instance {
    heard_at: Millis,
    /// Its users who are online or away.
    present: HashMap<UserName, PresenceRecord>,
}

/// What this instance knows of the others.
#[derive(Debug, Default)]
pub(super) struct ClusterView {
    instances: HashMap<String, Instance>,
    outbox: Vec<ClusterEvent>,
    next_alive: Millis,
}

impl ClusterView {
    fn present_elsewhere(&self, name: &UserName) -> Option<&PresenceRecord> {
        self.instances.values().find_map(|i| i.present.get(name))
    }

    pub(super) fn next_due(&self, timeout: Millis) -> Option<Millis> {
        self.instances
            .values()
            .map(|i| i.heard_at.saturating_add(timeout))
            .chain([self.next_alive])
            .min()
    }
}

impl Service {
    /// Serve as one of several instances over a shared store.
    pub(crate) fn join_cluster(&mut self) {
        self.cluster = Some(ClusterView::default());
    }

    /// Notes for the other instances, in order.
    pub(crate) fn take_cluster_events(&mut self) -> Vec<ClusterEvent> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.outbox))
            .unwrap_or_default()
    }

    /// A user's presence as all instances together know it: online or away wherever it has a
    /// session; else what this instance last saw.
    pub(super) fn effective_presence(&self, name: &UserName) -> Option<PresenceRecord> {
        let here = self.presence.record(name);
        if here
            .as_ref()
            .is_some_and(|r| r.state != PresenceState::Offline)
        {
            return here;
        }
        self.cluster
            .as_ref()
            .and_then(|c| c.present_elsewhere(name).cloned())
            .or(here)
    }

    /// Hands `push` to the session of `holder`'s device here, or to the instance that has it.
    pub(super) fn push_to(&mut self, holder: &Holder, push: ServerPush) {
        if let Some(peer) = self.session_of(holder) {
            self.pushes.push((peer, push));
        } else if let Some(cluster) = self.cluster.as_mut() {
            let name = holder.name().clone();
            cluster.outbox.push(match holder.linked_device() {
                None => ClusterEvent::ForUser { name, push },
                Some(device) => ClusterEvent::ForDevice {
                    name,
                    device: *device,
                    push,
                },
            });
        }
    }

    /// The peer whose session is `holder`'s, if it is here.
    pub(super) fn session_of(&self, holder: &Holder) -> Option<PeerId> {
        self.online.get(holder.name())?.iter().copied().find(|peer| {
            self.peers
                .get(peer)
                .and_then(|p| p.session.as_ref())
                .is_some_and(|s| s.holder == *holder)
        })
    }

    /// Tells the other instances, if there are any.
    pub(super) fn tell_cluster(&mut self, event: ClusterEvent) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.outbox.push(event);
        }
    }

    /// Our own user's presence changed: tell the other instances.
    pub(super) fn publish_presence(&mut self, record: &PresenceRecord) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.outbox.push(ClusterEvent::Presence(record.clone()));
        }
    }

    /// A note from instance `from`.
    pub(crate) fn cluster_event(&mut self, from: String, event: ClusterEvent, now: Millis) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let instance = cluster.instances.entry(from).or_default();
        instance.heard_at = now;
        match event {
            ClusterEvent::Alive => {}
            ClusterEvent::Presence(record) => {
                if record.state == PresenceState::Offline {
                    instance.present.remove(&record.name);
                } else {
                    instance.present.insert(record.name.clone(), record.clone());
                }
                let shown = self.effective_presence(&record.name).unwrap_or(record);
                self.push_presence(shown);
            }
            ClusterEvent::ForUser { name, push } => {
                if let Some(peer) = self.session_of(&Holder::account(&name)) {
                    self.pushes.push((peer, push));
                }
            }
            ClusterEvent::ForDevice { name, device, push } => {
                if let Some(peer) = self.session_of(&Holder::device(&name, &device)) {
                    self.pushes.push((peer, push));
                }
            }
            ClusterEvent::DevicesChanged { name, removed } => {
                self.devices_changed(&name, &removed, now)
            }
        }
    }

    /// The beat, and instances gone silent: their users shown offline.
    pub(super) fn cluster_tick(&mut self, now: Millis) {
        let timeout = millis(self.limits.presence_timeout);
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if now >= cluster.next_alive {
            cluster.outbox.push(ClusterEvent::Alive);
            cluster.next_alive = now.saturating_add((timeout / 3).max(1));
        }
        let dead: Vec<String> = cluster
            .instances
            .iter()
            .filter(|(_, i)| i.heard_at.saturating_add(timeout) <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut gone = Vec::new();
        for id in dead {
            if let Some(instance) = cluster.instances.remove(&id) {
                tracing::warn!(instance = %id, users = instance.present.len(), "an instance went silent; its users are shown offline");
                gone.extend(
                    instance
                        .present
                        .into_values()
                        .map(|r| (r, instance.heard_at)),
                );
            }
        }
        for (record, heard_at) in gone {
            let shown = self
                .effective_presence(&record.name)
                .unwrap_or(PresenceRecord {
                    name: record.name,
                    state: PresenceState::Offline,
                    last_seen_ms: Some(heard_at),
                });
            self.push_presence(shown);
        }
    }
}
