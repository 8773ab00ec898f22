//! What the user asks: create, invite, kick, join, leave, and sealing a message to send.

use super::*;
use crate::wire::{Body, Envelope};

/// Our message to a room, sealed: the frame to publish, and what the room's log keeps of it.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub id: MessageId,
    pub frame: Vec<u8>,
    pub log: LogRecord,
}

impl Rooms {
    /// A new room, private (made only on the device holding the account key, which owns it; our
    /// account is its first member) or public (anyone who knows the name may join).
    pub fn create(
        &mut self,
        name: RoomName,
        public: bool,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<RoomId, RoomError> {
        if self.id_by_name(&name).is_some() {
            return Err(RoomError::Exists(name));
        }
        let me = self.identity.public();
        if !public && self.account() != me {
            return Err(RoomError::PrivateOnAccountDevice);
        }
        let (id, keys, told) = if public {
            let (id, keys) = public_room_keys(&name, &me, rng);
            (id, keys, None)
        } else {
            let id = RoomId::random(rng);
            let mut keys = RoomKeys::new(rng, id.0, me, me);
            let update = keys.next_membership(self.identity.signing_key(), vec![self.account()]);
            let actions = keys.apply_membership(rng, &update, now, &self.roster)?;
            (
                id,
                RoomCrypto::Private(Box::new(keys)),
                Some((update, actions)),
            )
        };
        let room = Room {
            id,
            name: name.clone(),
            keys,
            joined: true,
            invitation: None,
            removed: false,
        };
        self.by_id.insert(id, room);
        self.outputs.push_back(Output::Save(id));
        self.outputs.push_back(Output::MeshChanged(id));
        self.outputs.push_back(Output::Subscribe(id));
        if let Some((membership, actions)) = told {
            // Our other devices are in it too: invited (so that our key finds the room), then
            // given our key, which makes them join.
            let invite = RoomInvite {
                room: id,
                name,
                membership,
                invite_secret: None,
            };
            let account = self.account();
            self.send_to_accounts(id, vec![account], Payload::RoomInvite(invite));
            self.carry_out(id, actions);
        }
        self.seek(&id);
        Ok(id)
    }

    /// Room `name`, if this device owns it and it is private (only then are its members ours to
    /// change).
    pub fn owned(&self, name: &RoomName) -> Result<RoomId, RoomError> {
        let room = self.find(name)?;
        if room.is_public() {
            return Err(RoomError::Public(name.clone()));
        }
        match room.owner() {
            Some(owner) if owner == self.identity.public() => Ok(room.id),
            Some(owner) if self.roster.account_of(&owner) == self.account() => {
                Err(RoomError::OwnedByOurOtherDevice(name.clone()))
            }
            _ => Err(RoomError::NotOwner(name.clone())),
        }
    }

    /// What inviting `user` into room `name` takes first, before [`Rooms::invite`]: `key` is
    /// the user's pinned key if we have one, `me` our own name, `can_look_up` whether the
    /// rendezvous can be asked now, and `looked_up` whether it just was.
    pub fn invite_step(
        &self,
        name: &RoomName,
        user: &UserName,
        me: &UserName,
        key: Option<VerifyingKey>,
        can_look_up: bool,
        looked_up: bool,
    ) -> Result<InviteStep, RoomError> {
        if user == me {
            return Err(RoomError::InvitingSelf(name.clone()));
        }
        self.owned(name)?;
        match key {
            Some(key) => Ok(InviteStep::Invite(key)),
            // Asked once: asking again would go round for ever (a key that cannot be pinned).
            None if looked_up => Err(RoomError::KeyNotTakenIn(user.clone())),
            None if can_look_up => Ok(InviteStep::LookUp),
            None => Err(RoomError::CannotLookUp),
        }
    }

    /// Invites `user` (`key`) to room `name`: a new membership, the invitation, then our key.
    pub fn invite(
        &mut self,
        name: &RoomName,
        user: &UserName,
        key: VerifyingKey,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(), RoomError> {
        let id = self.owned(name)?;
        let mut members = self.by_id[&id].members();
        if members.contains(&key) {
            let (user, room) = (user.clone(), name.clone());
            return Err(RoomError::AlreadyMember { user, room });
        }
        members.push(key);
        let (update, actions) = self.change_membership(id, members, now, rng)?;
        // The invitation goes first, so the keys that follow find the room.
        let invite = RoomInvite {
            room: id,
            name: name.clone(),
            membership: update,
            invite_secret: None,
        };
        self.send_to_accounts(id, vec![key], Payload::RoomInvite(invite));
        self.carry_out(id, actions);
        Ok(())
    }

    /// Removes `user` (`key`, if we know one) from room `name`; every remaining member rotates.
    pub fn kick(
        &mut self,
        name: &RoomName,
        user: &UserName,
        key: Option<VerifyingKey>,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(), RoomError> {
        let id = self.owned(name)?;
        let not_member = || RoomError::NotMember {
            user: user.clone(),
            room: name.clone(),
        };
        let key = key.ok_or_else(not_member)?;
        if key == self.account() {
            return Err(RoomError::KickingSelf);
        }
        let before = self.by_id[&id].members();
        if !before.contains(&key) {
            return Err(not_member());
        }
        let members = before.into_iter().filter(|m| *m != key).collect();
        let (update, actions) = self.change_membership(id, members, now, rng)?;
        // The removed member learns it was removed (and stops sending to the room).
        self.send_to_accounts(id, vec![key], Payload::Membership(update));
        self.carry_out(id, actions);
        Ok(())
    }

    /// Accepts the invitation to room `name`.
    pub fn join(
        &mut self,
        name: &RoomName,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(), RoomError> {
        let id = self
            .id_by_name(name)
            .ok_or_else(|| RoomError::NoInvitation(name.clone()))?;
        self.join_room(id, now, rng)
    }

    /// Accepts the invitation to room `id`.
    pub(super) fn join_room(
        &mut self,
        id: RoomId,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(), RoomError> {
        let room = self.by_id.get_mut(&id).ok_or(RoomError::Gone)?;
        let name = &room.name.clone();
        if room.is_active() {
            return Ok(());
        }
        let account = self.roster.account_of(&self.identity.public());
        let Some(update) = room
            .invitation
            .take()
            .filter(|u| u.members.contains(&account))
        else {
            return Err(RoomError::RemovedAskAgain(name.clone()));
        };
        let RoomCrypto::Private(keys) = &mut room.keys else {
            return Err(RoomError::Public(name.clone()));
        };
        let actions = match keys.apply_membership(rng, &update, now, &self.roster) {
            Ok(actions) => actions,
            Err(err) => {
                room.invitation = Some(update);
                return Err(err.into());
            }
        };
        room.joined = true;
        room.removed = false;
        let owner = room
            .owner()
            .filter(|owner| *owner != self.identity.public());
        self.outputs.push_back(Output::Save(id));
        self.outputs.push_back(Output::MeshChanged(id));
        self.outputs.push_back(Output::Subscribe(id));
        self.carry_out(id, actions);
        // Keys that came before we accepted.
        self.take_early_keys(id, now);
        // An update that overtook our invitation found no room here: the owner hands us its
        // latest, so that a member added since is known before its first message.
        if let Some(owner) = owner {
            self.send(id, owner, Payload::MembershipRequest { room: id });
        }
        self.seek(&id);
        Ok(())
    }

    /// Joins public room `name` (creating it here if we have never seen it); `true` if it is
    /// new to us.
    pub fn join_public(
        &mut self,
        name: &RoomName,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<bool, RoomError> {
        if self.id_by_name(name).is_some() {
            self.join(name, now, rng)?;
            return Ok(false);
        }
        self.create(name.clone(), true, now, rng)?;
        Ok(true)
    }

    /// Leaves room `name` and forgets it (its history stays with the driver). Our account
    /// leaves: the owner signs it out on every device. The owner, once alone in its room with
    /// other devices of ours, signs our account out itself, so that those leave too, and keeps
    /// the room as one we were removed from (leaving it again forgets it).
    pub fn leave(
        &mut self,
        name: &RoomName,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<RoomId, RoomError> {
        let room = self.find(name)?;
        let (id, me) = (room.id, self.identity.public());
        let (owner, public, active) = (room.owner(), room.is_public(), room.is_active());
        if owner == Some(me) && room.members().len() > 1 {
            return Err(RoomError::OwnerLeaving(name.clone()));
        }
        let account = self.account();
        let ours_too = self.roster.devices_of(&account).len() > 1;
        if owner == Some(me) && active && ours_too {
            // Signed out, and kept (as a room we were removed from) at the new epoch: that is
            // what our other devices hear, and what a restart must not sign again.
            let (update, _) = self.change_membership(id, Vec::new(), now, rng)?;
            self.send_to_accounts(id, vec![account], Payload::Membership(update));
            if let Some(room) = self.by_id.get_mut(&id) {
                room.removed = true;
            }
            self.outputs.push_back(Output::Unsubscribe(id));
            return Ok(id);
        }
        if let Some(owner) = owner.filter(|o| *o != me && active) {
            // Leaving takes our whole account out; the owner's account stays in its room.
            if self.roster.account_of(&owner) == account {
                return Err(RoomError::OwnedByOurOtherDevice(name.clone()));
            }
            self.send(id, owner, Payload::Leave { room: id });
        }
        if public {
            self.outputs.push_back(Output::Unregister(id));
        }
        self.by_id.remove(&id);
        self.held.remove(&id);
        self.early_keys.remove(&id);
        self.missing_keys.retain(|(room, _), _| *room != id);
        self.answered.retain(|(room, _), _| *room != id);
        self.dirty.remove(&id);
        self.unpublished.remove(&id);
        self.outputs.push_back(Output::Unsubscribe(id));
        self.outputs.push_back(Output::Forget(id));
        self.written(id);
        self.outputs.push_back(Output::MeshChanged(id));
        Ok(id)
    }

    /// Room `name`, if we may write in it now (before the driver stamps a message for it).
    pub fn writable(&self, name: &RoomName) -> Result<RoomId, RoomError> {
        let room = self.find(name)?;
        if !room.joined {
            return Err(RoomError::NotJoined(name.clone()));
        }
        if room.removed {
            return Err(RoomError::Removed(name.clone()));
        }
        Ok(room.id)
    }

    /// Encrypts and signs `content` as our next message to room `id` (its chain moves: write
    /// the room with the message, [`Rooms::room`]).
    pub fn seal(&mut self, id: RoomId, content: &Content) -> Result<Sealed, RoomError> {
        if let Payload::Text(text) = &content.payload
            && text.len() > crate::wire::MAX_TEXT_LEN
        {
            return Err(RoomError::TooLong);
        }
        self.may_seal()?;
        let plaintext = codec::encode(content)?;
        let me = self.identity.public();
        let room = self.by_id.get_mut(&id).ok_or(RoomError::Gone)?;
        if !room.is_active() {
            return Err(RoomError::Removed(room.name.clone()));
        }
        let ((message, key), signing_key) = match &mut room.keys {
            RoomCrypto::Private(keys) => (
                keys.encrypt_keeping_key(&plaintext, &self.roster)?,
                keys.my_distribution().signing_key,
            ),
            // Signed by our identity key: everyone who knows the name holds the derived one.
            RoomCrypto::Public { mine, .. } => (
                mine.encrypt_keeping_key(&plaintext, &public_ad(&id, &me))?,
                me,
            ),
        };
        let message = RoomMessage {
            room: id,
            sender: me,
            signing_key,
            message,
        };
        let body = Body::Room(message.clone());
        let envelope = match &room.keys {
            RoomCrypto::Private(keys) => Envelope::sign_with(body, |bytes| keys.sign(bytes))?,
            RoomCrypto::Public { .. } => Envelope::sign(body, self.identity.signing_key())?,
        };
        let (id, frame) = (envelope.id(), envelope.to_bytes()?);
        let public = matches!(room.keys, RoomCrypto::Public { .. });
        let signed = (&message, envelope.signature);
        let log = LogRecord::of_text(id, frame.clone(), signed, content, key, public);
        let sealed = Sealed { id, frame, log };
        // Published, and handed to gap fill, once durable.
        self.awaiting_flush.insert(sealed.id);
        Ok(sealed)
    }
}
