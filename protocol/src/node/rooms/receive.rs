//! What arrives: room messages (gossip or gap fill; held while their sender's key is missing),
//! and the room payloads of pairwise messages — invitations, sender keys, membership updates,
//! key and membership requests, and members leaving.

use super::*;
use crate::wire::{Body, Envelope};

/// What gossip is to be told about a frame that came in on a room topic: whether to pass it on
/// to the other peers in the mesh, and whether to hold it against who relayed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipVerdict {
    /// Taken: pass it on.
    Accept,
    /// Genuine or harmless but not taken now (a duplicate, held for a key, or stale): neither
    /// passed on nor held against the relay.
    Ignore,
    /// Not a valid room message: not passed on, and held against the relay; why.
    Reject(String),
}

impl Rooms {
    /// A frame that came in on a room topic. `stored` says whether the driver has the message
    /// with this id already (its store holds every message read or sent); a room message is
    /// otherwise taken in as by [`Self::receive`], and anything else is counted as rejected.
    pub fn on_gossip(
        &mut self,
        frame: Vec<u8>,
        stored: impl FnOnce(&MessageId) -> bool,
        now: u64,
    ) -> GossipVerdict {
        let envelope = match Envelope::from_bytes(&frame) {
            Ok(envelope) => envelope,
            Err(err) => {
                self.count_rejected();
                return GossipVerdict::Reject(format!("not an envelope: {err}"));
            }
        };
        let id = envelope.id();
        let Body::Room(message) = envelope.body else {
            self.count_rejected();
            return GossipVerdict::Reject("not a room message".into());
        };
        if stored(&id) {
            return GossipVerdict::Ignore;
        }
        match self.receive(id, (message, envelope.signature), frame, now) {
            Ok(()) => GossipVerdict::Accept,
            Err(RoomReject::Held | RoomReject::Stale) => GossipVerdict::Ignore,
            Err(RoomReject::Invalid(reason)) => GossipVerdict::Reject(reason),
        }
    }

    /// Takes in a room message (`envelope`: its body and signature, as in `frame`) whose
    /// envelope was verified and which we have not seen before; on success it is handed out as
    /// [`Output::Read`]. `Held` while its sender's key is still to come.
    pub fn receive(
        &mut self,
        id: MessageId,
        envelope: (RoomMessage, Signature),
        frame: Vec<u8>,
        now: u64,
    ) -> Result<(), RoomReject> {
        let result = self.open(id, envelope, frame, now);
        if let Err(RoomReject::Invalid(_)) = &result {
            self.rejected += 1;
        }
        result
    }

    fn open(
        &mut self,
        id: MessageId,
        (message, signature): (RoomMessage, Signature),
        frame: Vec<u8>,
        now: u64,
    ) -> Result<(), RoomReject> {
        let me = self.identity.public();
        let room_id = message.room;
        let clock = self.epoch_clock(now);
        let room = self
            .by_id
            .get_mut(&room_id)
            .ok_or(RoomReject::Invalid("unknown room".into()))?;
        if !room.is_active() {
            return Err(RoomReject::Invalid("not a member".into()));
        }
        if message.sender == me {
            return Err(RoomReject::Invalid("my own message".into()));
        }
        let opened = match &mut room.keys {
            RoomCrypto::Private(keys) => {
                let epoch = keys.check_epoch(message.message.epoch, clock);
                if !keys.is_member_device(&message.sender, &self.roster) {
                    if epoch == Err(CryptoError::FutureEpoch) {
                        // Added by an update we have not seen: held while we ask for it.
                        self.hold(id, (message, signature), frame, true, now);
                        return Err(RoomReject::Held);
                    }
                    let early = self.early_keys.get(&room_id);
                    if early.is_some_and(|keys| keys.iter().any(|(k, _)| *k == message.sender)) {
                        // A device that handed us its key but whose list we do not have yet
                        // (just linked, say): held until the list says whose it is. Or a
                        // member removed by an update it missed: handed it, so it stops.
                        self.hand_membership_to_stale_sender(room_id, message.sender, now);
                        self.hold(id, (message, signature), frame, false, now);
                        return Err(RoomReject::Held);
                    }
                    // Removed by an update it has not seen: hand it over, so it stops.
                    self.hand_membership_to_stale_sender(room_id, message.sender, now);
                    return Err(RoomReject::Invalid("sender is not a member".into()));
                }
                if epoch == Err(CryptoError::StaleEpoch) {
                    self.hand_membership_to_stale_sender(room_id, message.sender, now);
                    return Err(RoomReject::Stale);
                }
                let behind = epoch == Err(CryptoError::FutureEpoch);
                match keys.signing_key_of(&message.sender, message.message.key_id) {
                    Some(key) if *key != message.signing_key => {
                        return Err(RoomReject::Invalid(
                            "signed with a key the sender did not give us".into(),
                        ));
                    }
                    Some(_) if !behind => keys.decrypt_keeping_key(
                        &message.sender,
                        &message.message,
                        clock,
                        &self.roster,
                    ),
                    _ => {
                        self.hold(id, (message, signature), frame, behind, now);
                        return Err(RoomReject::Held);
                    }
                }
            }
            RoomCrypto::Public {
                secret, received, ..
            } => public_sender_key(secret, received, &message)?
                .decrypt_keeping_key(&message.message, &public_ad(&room_id, &message.sender)),
        }
        .map_err(|e| RoomReject::Invalid(format!("cannot decrypt: {e}")))?;
        let read = Self::read(room, id, (&message, signature), opened, frame)?;
        // The receiving chain that moved is written a moment later, not with every message: a
        // chain that restarts a little behind only derives forward again (replays are caught
        // by the message index first), and the room is most of what a message would write.
        self.mark_dirty(room_id, now);
        self.outputs.push_back(Output::Read(Box::new(read)));
        Ok(())
    }

    /// `sender` is still sending under a key from before the last removal: it missed the
    /// update, so hand it over (at most every [`STALE_PUSH_EVERY_MS`] per member).
    fn hand_membership_to_stale_sender(&mut self, room: RoomId, sender: VerifyingKey, now: u64) {
        if !self.may_answer(room, &sender, now) {
            return;
        }
        if let Some(update) = self.signed_membership(&room) {
            self.send(room, sender, Payload::Membership(update));
        }
    }

    fn signed_membership(&self, room: &RoomId) -> Option<MembershipUpdate> {
        match &self.by_id.get(room)?.keys {
            RoomCrypto::Private(keys) => keys.signed_membership().cloned(),
            RoomCrypto::Public { .. } => None,
        }
    }

    /// An invitation from `sender`; `Err` says why it is ignored. One to a room we are in
    /// already (it overtook the update that removed us) is taken as the membership it carries.
    pub fn on_invite(
        &mut self,
        sender: VerifyingKey,
        invite: RoomInvite,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(), RoomError> {
        if let Some(reason) = invite_refusal(self.by_id.get(&invite.room), &sender, &invite) {
            return Err(RoomError::InvitationRefused(reason));
        }
        if self.roster.account_of(&sender) != sender {
            // Rooms are owned by account keys: a linked device's could be revoked.
            return Err(RoomError::InvitationRefused(
                "from a linked device, not an account key",
            ));
        }
        let me = self.identity.public();
        let account = self.account();
        match self.by_id.get_mut(&invite.room) {
            Some(room) if room.is_active() => {
                let newer = room
                    .epoch()
                    .is_none_or(|epoch| invite.membership.epoch > epoch);
                return match newer {
                    true => self.on_membership(invite.membership, now, rng),
                    false => Ok(()),
                };
            }
            Some(room) if room.epoch().is_some_and(|e| invite.membership.epoch <= e) => {
                return Ok(()); // an old invitation, overtaken by our removal
            }
            Some(room) => {
                keep_newest(&mut room.invitation, invite.membership.clone());
                room.removed = false;
                room.joined = false;
            }
            None => {
                let keys = RoomKeys::new(rng, invite.room.0, sender, me);
                // Another room of that name is ours already: this one is told apart.
                let name = self.free_name(&invite.name);
                self.by_id.insert(
                    invite.room,
                    Room {
                        id: invite.room,
                        name,
                        keys: RoomCrypto::Private(Box::new(keys)),
                        joined: false,
                        invitation: Some(invite.membership.clone()),
                        removed: false,
                    },
                );
            }
        }
        self.outputs.push_back(Output::Save(invite.room));
        self.outputs.push_back(Output::MeshChanged(invite.room));
        // From another of our devices, it is a room our account is in: it joins us itself.
        if self.roster.account_of(&sender) != account {
            let room = self.by_id[&invite.room].name.clone();
            let from = sender;
            self.outputs
                .push_back(Output::Event(RoomEvent::Invited { room, from }));
        }
        Ok(())
    }

    /// A member's sender key for a room (from one of its devices). One from another of our own
    /// devices for a room we are only invited to says that our account joined it there: we join
    /// too.
    pub fn on_sender_key(
        &mut self,
        from: VerifyingKey,
        room_id: RoomId,
        distribution: SenderKeyDistribution,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) {
        let me = self.identity.public();
        let ours = from != me && self.roster.account_of(&from) == self.account();
        if ours && self.by_id.get(&room_id).is_some_and(|room| !room.joined) {
            // Unless the invitation is gone (we were removed since): then the key waits, kept
            // early, as any key for a room we are not in.
            let _ = self.join_room(room_id, now, rng);
        }
        self.take_key(from, room_id, distribution, now);
    }

    fn take_key(
        &mut self,
        from: VerifyingKey,
        room_id: RoomId,
        distribution: SenderKeyDistribution,
        now: u64,
    ) {
        let joined = self.by_id.get(&room_id).map(|room| room.joined);
        if joined != Some(true) {
            // Not joined yet, or the invitation is still on its way: keep it (bounded) for then.
            if joined.is_some() || self.early_keys.len() < MAX_EARLY_KEYS {
                self.keep_early(room_id, from, distribution);
            }
            return;
        }
        let Some(room) = self.by_id.get_mut(&room_id) else {
            return;
        };
        let RoomCrypto::Private(keys) = &mut room.keys else {
            return;
        };
        if keys
            .accept_distribution(&from, &distribution, &self.roster)
            .is_err()
        {
            // The membership update that adds `from` may still be on its way.
            return self.keep_early(room_id, from, distribution);
        }
        self.missing_keys.remove(&(room_id, from.to_bytes()));
        self.outputs.push_back(Output::Save(room_id));
        self.release_held(room_id, now);
    }

    fn keep_early(
        &mut self,
        room: RoomId,
        from: VerifyingKey,
        distribution: SenderKeyDistribution,
    ) {
        let early = self.early_keys.entry(room).or_default();
        // One key a sender: a key handed again (asked for, resent, rotated) takes no second place.
        early.retain(|(f, _)| *f != from);
        if early.len() < MAX_EARLY_KEYS {
            early.push((from, distribution));
        }
    }

    /// Keys that came before they could be taken: taken now, if they can be.
    pub(super) fn take_early_keys(&mut self, room: RoomId, now: u64) {
        for (from, distribution) in self.early_keys.remove(&room).unwrap_or_default() {
            self.take_key(from, room, distribution, now);
        }
    }

    /// The owner's signed membership update, from the owner or forwarded by a member.
    pub fn on_membership(
        &mut self,
        update: MembershipUpdate,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(), RoomError> {
        let room_id = RoomId(update.room);
        let me = self.account();
        let Some(room) = self.by_id.get_mut(&room_id) else {
            return Ok(());
        };
        // Either way the owner's signature is what counts.
        if room.owner() != Some(update.owner) {
            return Err(RoomError::NotOwner(room.name.clone()));
        }
        update.verify()?;
        if room.removed && !update.members.contains(&me) {
            return Ok(()); // nothing more of this room concerns us
        }
        if room.epoch().is_some_and(|epoch| update.epoch <= epoch) {
            return Ok(()); // one we had, or older
        }
        if !room.is_active() {
            // Not accepted yet (or removed, and named again): join with the newest membership
            // (updates may arrive out of order; joining with an older one would leave the
            // newest members without our key).
            let kept = room.invitation.as_ref().map(|u| u.epoch);
            let owner = update.owner;
            keep_newest(&mut room.invitation, update);
            if room.invitation.as_ref().map(|u| u.epoch) == kept {
                return Ok(()); // nothing new
            }
            if room.removed {
                // Named again by the owner: an invitation like any other.
                room.removed = false;
                room.joined = false;
                self.outputs.push_back(Output::Event(RoomEvent::Invited {
                    room: room.name.clone(),
                    from: owner,
                }));
            }
            self.outputs.push_back(Output::Save(room_id));
            self.outputs.push_back(Output::MeshChanged(room_id));
            return Ok(());
        }
        let RoomCrypto::Private(keys) = &mut room.keys else {
            return Ok(());
        };
        let actions = keys.apply_membership(rng, &update, now, &self.roster)?;
        if !update.members.contains(&me) {
            room.removed = true;
            self.outputs.push_back(Output::Unsubscribe(room_id));
            self.outputs.push_back(Output::Event(RoomEvent::Removed {
                room: room.name.clone(),
            }));
        }
        self.outputs.push_back(Output::Save(room_id));
        self.outputs.push_back(Output::MeshChanged(room_id));
        self.carry_out(room_id, actions);
        self.take_early_keys(room_id, now);
        // Messages held for this epoch: readable now, or waiting for keys instead.
        for ((_, _), missing) in self
            .missing_keys
            .iter_mut()
            .filter(|((room, _), _)| *room == room_id)
        {
            missing.behind = false;
        }
        self.release_held(room_id, now);
        self.seek(&room_id);
        Ok(())
    }

    /// A member lacks our key: hand it again, as we first handed it to them (`given`, read from
    /// what [`Output::KeyGiven`] wrote) or, if we never did, as it is now. One we do not count
    /// as a member is asked for the membership that names it (we may have missed its addition).
    pub fn on_key_request(
        &mut self,
        from: VerifyingKey,
        room_id: RoomId,
        given: Option<SenderKeyDistribution>,
        now: u64,
    ) -> Result<(), &'static str> {
        let me = self.account();
        let Some(room) = self.by_id.get(&room_id) else {
            return Err("no such room");
        };
        let RoomCrypto::Private(keys) = &room.keys else {
            return Err("a public room");
        };
        if !room.is_active() || !keys.is_member(&me) {
            return Err("not a member");
        }
        if !keys.is_member_device(&from, &self.roster) {
            // Perhaps added by an update we missed: one who holds it hands it over, and
            // applying it hands our key to the new members.
            if self.may_answer(room_id, &from, now) {
                self.send(room_id, from, Payload::MembershipRequest { room: room_id });
            }
            return Err("not a member as far as we know; asked it for the membership");
        }
        let current = keys.my_distribution();
        let distribution = match given.filter(|given| given.key_id == current.key_id) {
            Some(given) => given,
            None => {
                self.outputs.push_back(Output::KeyGiven {
                    room: room_id,
                    members: vec![from],
                    distribution: current.clone(),
                });
                current
            }
        };
        self.send(
            room_id,
            from,
            Payload::SenderKey {
                room: room_id,
                distribution,
            },
        );
        Ok(())
    }

    /// A member holds messages from an epoch it has not seen: hand it the owner's signed update
    /// we applied (any member may; the owner's signature is what counts).
    pub fn on_membership_request(
        &mut self,
        from: VerifyingKey,
        room_id: RoomId,
    ) -> Result<(), &'static str> {
        let room = self.by_id.get(&room_id).ok_or("no such room")?;
        if !room.is_active() || room.is_public() || !room.is_member(&from, &self.roster) {
            return Err("not a member");
        }
        if let Some(update) = self.signed_membership(&room_id) {
            self.send(room_id, from, Payload::Membership(update));
        }
        Ok(())
    }

    /// A member left a room we own (from one of its devices): sign its account out, and tell
    /// its other devices.
    pub fn on_member_left(
        &mut self,
        sender: VerifyingKey,
        room_id: RoomId,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(), RoomError> {
        let Some(room) = self.by_id.get(&room_id) else {
            return Ok(());
        };
        let leaver = self.roster.account_of(&sender);
        if room.owner() != Some(self.identity.public())
            || !room.is_member(&leaver, &self.roster)
            || leaver == self.account()
        {
            return Ok(());
        }
        let members = room
            .members()
            .into_iter()
            .filter(|m| *m != leaver)
            .collect();
        let (update, actions) = self.change_membership(room_id, members, now, rng)?;
        self.send_to_accounts(room_id, vec![leaver], Payload::Membership(update));
        self.carry_out(room_id, actions);
        Ok(())
    }
}
