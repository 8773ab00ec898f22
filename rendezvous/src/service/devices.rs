//! Linked devices: the account's signed device list, and which device a request is for.
//!
//! The server keeps the list the account key signed last and files each device's prekeys and
//! mail apart ([`Holder`]). It checks a new list with the rule every peer applies
//! ([`DevicePin`]): signed by the account key, never older than the one held. So the server
//! refuses what peers would, but cannot add a device itself: peers verify the signature again.

use palaver_protocol::identity::devices::{DeviceChange, DevicePin, SignedDeviceList};

use super::*;

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
        self.store.put_devices(me, &offered)?;
        // A device taken off the list is logged out now, not at its next reconnect.
        for device in removed {
            if let Some(peer) = self.session_of(&Holder::device(me, &device.key)) {
                if let Some(session) = self.peers.get_mut(&peer).and_then(|p| p.session.take()) {
                    self.end_session(peer, session, now);
                }
                self.disconnects.push(peer);
            }
        }
        Ok(Reply::durable(RendezvousResponse::Done))
    }
}
