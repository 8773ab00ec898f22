//! Linked devices: the account's signed device list, and which device a request is for.
//!
//! The server keeps the list the account key signed last and files each device's prekeys and
//! mail apart ([`Holder`]). It checks a new list with the rule every peer applies
//! ([`DevicePin`]): signed by the account key, never older than the one held. So the server
//! refuses what peers would, but cannot add a device itself: peers verify the signature again.

use palaver_protocol::identity::devices::{DeviceChange, DevicePin, SignedDeviceList};
use palaver_protocol::wire::rendezvous::{AccountDevices, MAX_LINK_LEN, SealedLink};

use super::*;

/// How long a link message is held.
pub(crate) const LINK_TTL_MS: Millis = 5 * 60 * 1000;
/// Link messages held at once, and their bytes together: linking is rare, and what is held
/// is in memory only (a restart loses it; the devices try again).
const MAX_LINK_SLOTS: usize = 256;
const MAX_LINK_BYTES: usize = 8 * 1024 * 1024;

/// Link messages by slot, each until taken or [`LINK_TTL_MS`] old.
///
/// A peer with no session (the new device) may post only at a slot a session is waiting on:
/// the linking device asks for its request slot from the start, which marks the slot awaited
/// (one per session). So a stranger cannot fill the drop; a session holds at most one awaited
/// slot and one message of its own.
#[derive(Debug, Default)]
pub(crate) struct LinkDrop {
    slots: HashMap<[u8; 32], (Millis, SealedLink)>,
    bytes: usize,
    /// Slots sessions wait on, by slot and by session.
    awaited: HashMap<[u8; 32], Millis>,
    awaiting: HashMap<PeerId, [u8; 32]>,
    /// The slot each session last posted at.
    posted: HashMap<PeerId, [u8; 32]>,
}

impl LinkDrop {
    pub(super) fn expire(&mut self, now: Millis) {
        let bytes = &mut self.bytes;
        let fresh = |at: &Millis| now.saturating_sub(*at) < LINK_TTL_MS;
        self.slots.retain(|_, (at, sealed)| {
            let keep = fresh(at);
            if !keep {
                *bytes -= sealed.0.len();
            }
            keep
        });
        self.awaited.retain(|_, at| fresh(at));
        let (awaited, slots) = (&self.awaited, &self.slots);
        self.awaiting.retain(|_, slot| awaited.contains_key(slot));
        self.posted.retain(|_, slot| slots.contains_key(slot));
    }

    /// `peer`'s session waits on `slot` (replacing what it waited on before).
    fn await_slot(&mut self, peer: PeerId, slot: [u8; 32], now: Millis) {
        if let Some(previous) = self.awaiting.insert(peer, slot)
            && previous != slot
        {
            self.awaited.remove(&previous);
        }
        self.awaited.insert(slot, now);
    }

    fn take(&mut self, slot: &[u8; 32]) -> Option<SealedLink> {
        let (_, sealed) = self.slots.remove(slot)?;
        self.bytes -= sealed.0.len();
        Some(sealed)
    }
}

impl Service {
    /// Where `device`'s prekeys and mail are filed, if it is the account key of `name`
    /// (registered as `user`) or a device its list names.
    pub(super) fn holder_of(
        &self,
        name: &UserName,
        user: &store::StoredUser,
        device: &VerifyingKey,
    ) -> Result<Option<Holder>, StoreError> {
        if *device == user.identity {
            return Ok(Some(Holder::account(name)));
        }
        Ok((self.store.device_owner(device)?.as_ref() == Some(name))
            .then(|| Holder::device(name, device)))
    }

    pub(super) fn publish_devices(
        &mut self,
        me: &UserName,
        key: VerifyingKey,
        offered: SignedDeviceList,
        now: Millis,
    ) -> Handled {
        let Some(user) = self.store.user(me)? else {
            return Err(refuse(RefusalReason::UnknownUser, "your account is gone"));
        };
        if key != user.identity {
            return Err(refuse(
                RefusalReason::NotAllowed,
                "only the device holding the account key changes the device list",
            ));
        }
        let mut pin = DevicePin::new(user.identity);
        if let Some(held) = self.store.devices(me)? {
            pin.accept(&held)
                .map_err(|e| StoreError::Corrupt(format!("the held device list: {e}")))?;
        }
        let removed = match pin.accept(&offered) {
            Ok(DeviceChange::Same) => return Ok(Reply::now(RendezvousResponse::Done)),
            Ok(DeviceChange::Updated { added, removed }) => {
                for device in &added {
                    let taken = match self.store.name_of(&device.key)? {
                        Some(owner) => Some(owner),
                        None => self.store.device_owner(&device.key)?.filter(|o| o != me),
                    };
                    if let Some(owner) = taken {
                        return Err(refuse(
                            RefusalReason::Invalid,
                            format!("the device {} is {owner}'s key already", device.label),
                        ));
                    }
                }
                removed
            }
            Err(error) => {
                return Err(refuse(
                    RefusalReason::Invalid,
                    format!("device list refused: {error}"),
                ));
            }
        };
        let mail_gone = self.store.put_devices(me, &offered)?;
        self.forget_mail(&mail_gone);
        let removed: Vec<VerifyingKey> = removed.into_iter().map(|d| d.key).collect();
        self.devices_changed(me, &removed, now);
        self.tell_cluster(ClusterEvent::DevicesChanged {
            name: me.clone(),
            removed,
        });
        Ok(Reply::durable(RendezvousResponse::Done))
    }
}

impl Service {
    pub(super) fn fetch_devices(&mut self, names: Vec<UserName>) -> Handled {
        check_batch(names.len(), "names")?;
        let mut lists = Vec::new();
        for name in names {
            if let Some(list) = self.store.devices(&name)? {
                lists.push(AccountDevices { name, list });
            }
        }
        Ok(Reply::now(RendezvousResponse::Devices(lists)))
    }

    pub(super) fn link_post(
        &mut self,
        peer: PeerId,
        slot: [u8; 32],
        sealed: SealedLink,
        now: Millis,
    ) -> Handled {
        if sealed.0.len() > MAX_LINK_LEN {
            return Err(refuse(
                RefusalReason::TooLarge,
                format!("a link message is at most {MAX_LINK_LEN} bytes"),
            ));
        }
        let logged_in = self.is_logged_in(&peer);
        self.link_drop.expire(now);
        let drop = &mut self.link_drop;
        if !logged_in && !drop.awaited.contains_key(&slot) {
            return Err(refuse(
                RefusalReason::NotAllowed,
                "no device is waiting for this link code (it expired, or was used): run \
                 `palaver device link` again on the device holding the account key",
            ));
        }
        // A second post at a slot replaces the first; a session's earlier post goes.
        drop.take(&slot);
        if logged_in
            && let Some(previous) = drop.posted.insert(peer, slot)
            && previous != slot
        {
            drop.take(&previous);
        }
        if drop.slots.len() >= MAX_LINK_SLOTS || drop.bytes + sealed.0.len() > MAX_LINK_BYTES {
            return Err(refuse(
                RefusalReason::RateLimited,
                "the server holds too many link messages now; try again in a few minutes",
            ));
        }
        drop.bytes += sealed.0.len();
        drop.slots.insert(slot, (now, sealed));
        Ok(Reply::now(RendezvousResponse::Done))
    }

    /// What is at `slot`, taken; a session asking waits on it from now on.
    pub(super) fn link_take(&mut self, peer: PeerId, slot: &[u8; 32], now: Millis) -> Reply {
        self.link_drop.expire(now);
        if self.is_logged_in(&peer) {
            self.link_drop.await_slot(peer, *slot, now);
        }
        Reply::now(RendezvousResponse::Link(self.link_drop.take(slot)))
    }

    /// `name`'s device list changed (here, or at another instance): the `removed` devices'
    /// sessions here end now, not at their next reconnect, and the sessions watching `name`,
    /// and `name`'s own other devices, are told to fetch the list.
    pub(super) fn devices_changed(&mut self, name: &UserName, removed: &[VerifyingKey], now: Millis) {
        for device in removed {
            if let Some(peer) = self.session_of(&Holder::device(name, device)) {
                if let Some(session) = self.peers.get_mut(&peer).and_then(|p| p.session.take()) {
                    self.end_session(peer, session, now);
                }
                self.disconnects.push(peer);
            }
        }
        let watchers = self.subscribers.get(name).into_iter().flatten();
        let own = self.online.get(name).into_iter().flatten();
        let told: HashSet<PeerId> = watchers.chain(own).copied().collect();
        for peer in told {
            self.pushes
                .push((peer, ServerPush::DevicesChanged { name: name.clone() }));
        }
    }
}
