//! Receiving room traffic: messages (held while their sender's key is missing), sender keys,
//! membership updates, and the peers that come and go.

use super::*;

impl Node {
    pub(crate) fn on_gossip(
        &mut self,
        source: PeerId,
        message_id: gossipsub::MessageId,
        data: Vec<u8>,
    ) {
        let acceptance = match Envelope::from_bytes(&data) {
            Ok(envelope) if matches!(envelope.body, Body::Room(_)) => {
                let id = envelope.id();
                if self.store.contains(&id).unwrap_or(false) {
                    gossipsub::MessageAcceptance::Ignore
                } else {
                    let Body::Room(room) = envelope.body else {
                        return;
                    };
                    match self.receive_room(id, room, data) {
                        Ok(()) => gossipsub::MessageAcceptance::Accept,
                        Err(RoomReject::Held | RoomReject::Stale) => {
                            gossipsub::MessageAcceptance::Ignore
                        }
                        Err(RoomReject::Invalid(reason)) => {
                            self.rooms.rejected_gossip += 1;
                            tracing::debug!("room message from {source} rejected: {reason}");
                            gossipsub::MessageAcceptance::Reject
                        }
                    }
                }
            }
            _ => {
                self.rooms.rejected_gossip += 1;
                gossipsub::MessageAcceptance::Reject
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &source, acceptance);
    }

    /// Takes in a room message (gossip or gap fill); `Held` when its sender's key is still to come.
    pub(crate) fn receive_room(
        &mut self,
        id: MessageId,
        message: RoomMessage,
        frame: Vec<u8>,
    ) -> Result<(), RoomReject> {
        let me = self.identity.public();
        let room_id = message.room;
        let clock = self.epoch_clock();
        let room = self
            .rooms
            .by_id
            .get_mut(&room_id)
            .ok_or(RoomReject::Invalid("unknown room".into()))?;
        if !room.joined || room.removed {
            return Err(RoomReject::Invalid("not a member".into()));
        }
        if message.sender == me {
            return Err(RoomReject::Invalid("my own message".into()));
        }
        let plaintext = match &mut room.keys {
            RoomCrypto::Private(keys) => {
                if !keys.is_member(&message.sender) {
                    return Err(RoomReject::Invalid("sender is not a member".into()));
                }
                let epoch = keys.check_epoch(message.message.epoch, clock);
                if epoch == Err(CryptoError::StaleEpoch) {
                    tracing::debug!(
                        "refusing {id}: {}'s key is from before the last removal",
                        short_key(&message.sender)
                    );
                    self.hand_membership_to_stale_sender(room_id, message.sender);
                    return Err(RoomReject::Stale);
                }
                let behind = epoch == Err(CryptoError::FutureEpoch);
                match keys.signing_key_of(&message.sender, message.message.key_id) {
                    Some(key) if *key != message.signing_key => {
                        return Err(RoomReject::Invalid(
                            "signed with a key the sender did not give us".into(),
                        ));
                    }
                    Some(_) if !behind => keys.decrypt(&message.sender, &message.message, clock),
                    _ => {
                        tracing::debug!(
                            "holding {id} until {}'s key {} (epoch {}) arrives",
                            short_key(&message.sender),
                            message.message.key_id,
                            message.message.epoch
                        );
                        let missing = &mut self.rooms.missing_keys;
                        if missing.len() < MAX_MISSING_KEYS {
                            let entry = missing
                                .entry((room_id, message.sender.to_bytes()))
                                .or_insert(MissingKey {
                                    since: now_ms(),
                                    asked: None,
                                    behind,
                                });
                            entry.behind |= behind;
                        }
                        hold(&mut self.rooms.held, id, message, frame);
                        return Err(RoomReject::Held);
                    }
                }
            }
            RoomCrypto::Public {
                secret, received, ..
            } => public_sender_key(secret, received, &message)?
                .decrypt(&message.message, &public_ad(&room_id, &message.sender)),
        }
        .map_err(|e| RoomReject::Invalid(format!("cannot decrypt: {e}")))?;
        let content: Content = codec::decode(&plaintext)
            .map_err(|e| RoomReject::Invalid(format!("bad content: {e}")))?;
        let Payload::Text(text) = content.payload else {
            return Err(RoomReject::Invalid("rooms carry text only".into()));
        };
        let room_name = room.name.clone();
        let from = self.name_of_key(&message.sender);
        let named = from.is_some();
        if from.is_none() {
            self.rendezvous_request(
                palaver_protocol::wire::RendezvousRequest::WhoIs {
                    keys: vec![message.sender],
                },
                crate::daemon::Pending::WhoIs {
                    keys: vec![message.sender.to_bytes()],
                    call: None,
                },
            );
        }
        let mut batch = StateBatch::default();
        let entry = HistoryEntry {
            id,
            conversation: ConversationId::Room(room_id),
            label: format!("#{room_name}"),
            from: from.unwrap_or_else(|| short_key(&message.sender)),
            sender: message.sender.to_bytes(),
            text,
            sent_at_ms: content.sent_at_ms,
            stamp: self.observe_stamp(content.stamp, content.sent_at_ms, &mut batch),
            seq: content.seq,
            status: Status::Received,
        };
        batch.put(log_key(&room_id, &message.sender, content.seq), &frame);
        // The receiving chain that moved is written within a second, not with every message: a
        // chain that restarts a little behind only derives forward again (replays are caught
        // by the message index first), and the room is most of what a message would write.
        self.rooms.dirty.insert(room_id);
        match self.store.record(&entry, &batch) {
            Ok(true) => self.emit_message(&entry, named),
            Ok(false) => {}
            Err(err) => return Err(RoomReject::Invalid(format!("store: {err}"))),
        }
        Ok(())
    }

    pub(crate) fn on_room_invite(&mut self, sender: VerifyingKey, invite: RoomInvite) {
        if let Some(reason) = invite_refusal(self.rooms.by_id.get(&invite.room), &sender, &invite) {
            tracing::warn!(
                "ignoring an invitation from {}: {reason}",
                short_key(&sender)
            );
            return;
        }
        let me = self.identity.public();
        let inviter = self
            .name_of_key(&sender)
            .unwrap_or_else(|| short_key(&sender));
        match self.rooms.by_id.get_mut(&invite.room) {
            Some(room) if room.joined && !room.removed => return,
            Some(room) => {
                keep_newest(&mut room.invitation, invite.membership.clone());
                room.removed = false;
                room.joined = false;
            }
            None => {
                let keys = RoomKeys::new(&mut OsRng, invite.room.0, sender, me);
                self.rooms.by_id.insert(
                    invite.room,
                    Room {
                        id: invite.room,
                        name: invite.name.clone(),
                        keys: RoomCrypto::Private(Box::new(keys)),
                        joined: false,
                        invitation: Some(invite.membership.clone()),
                        removed: false,
                    },
                );
            }
        }
        self.save_received_room(&invite.room);
        self.gate_room(&invite.room);
        self.emit(crate::rpc::Event::Invite {
            room: invite.name.to_string(),
            from: inviter,
        });
    }

    pub(crate) fn on_sender_key(
        &mut self,
        from: VerifyingKey,
        room_id: RoomId,
        distribution: SenderKeyDistribution,
    ) {
        let joined = self.rooms.by_id.get(&room_id).map(|room| room.joined);
        if joined != Some(true) {
            // Not joined yet, or the invitation is still on its way: keep it (bounded) for then.
            if joined.is_some() || self.rooms.early_keys.len() < MAX_EARLY_KEYS {
                let early = self.rooms.early_keys.entry(room_id).or_default();
                if early.len() < MAX_EARLY_KEYS {
                    early.push((from, distribution));
                }
            }
            return;
        }
        let Some(room) = self.rooms.by_id.get_mut(&room_id) else {
            return;
        };
        let RoomCrypto::Private(keys) = &mut room.keys else {
            return;
        };
        if let Err(err) = keys.accept_distribution(&from, &distribution) {
            tracing::debug!(
                "sender key from {} for {}: {err}",
                short_key(&from),
                room.name
            );
            // The membership update that adds `from` may still be on its way.
            let early = self.rooms.early_keys.entry(room_id).or_default();
            if early.len() < MAX_EARLY_KEYS {
                early.push((from, distribution));
            }
            return;
        }
        tracing::debug!(
            "took {}'s sender key {} for {}",
            short_key(&from),
            distribution.key_id,
            room.name
        );
        self.rooms.missing_keys.remove(&(room_id, from.to_bytes()));
        self.save_received_room(&room_id);
        self.release_held(room_id);
    }

    pub(super) fn release_held(&mut self, room_id: RoomId) {
        let held: Vec<_> = self
            .rooms
            .held
            .remove(&room_id)
            .map(Vec::from)
            .unwrap_or_default();
        for (id, message, frame) in held {
            let _ = self.receive_room(id, message, frame);
        }
    }

    pub(crate) fn on_membership(&mut self, sender: VerifyingKey, update: MembershipUpdate) {
        let room_id = RoomId(update.room);
        let me = self.identity.public();
        let Some(room) = self.rooms.by_id.get_mut(&room_id) else {
            return;
        };
        // The owner sends it, or a member forwards it to one that missed it: either way the
        // owner's signature is what counts.
        if room.owner() != Some(update.owner) || update.verify().is_err() {
            return tracing::debug!(
                "ignoring a membership update from {}: not signed by the owner",
                short_key(&sender)
            );
        }
        if !room.joined {
            // Not accepted yet: join with the newest membership (updates may arrive out of order;
            // joining with an older one would leave the newest members without our key).
            keep_newest(&mut room.invitation, update);
            self.save_received_room(&room_id);
            self.gate_room(&room_id);
            return;
        }
        let RoomCrypto::Private(keys) = &mut room.keys else {
            return;
        };
        match keys.apply_membership(&mut OsRng, &update, now_ms()) {
            Ok(actions) => {
                let removed = !update.members.contains(&me);
                let name = room.name.clone();
                if removed {
                    room.removed = true;
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .unsubscribe(&topic(&room_id));
                    self.emit(crate::rpc::Event::Removed {
                        room: name.to_string(),
                    });
                }
                self.save_received_room(&room_id);
                self.gate_room(&room_id);
                self.carry_out(room_id, actions);
                let early = self.rooms.early_keys.remove(&room_id).unwrap_or_default();
                for (from, distribution) in early {
                    self.on_sender_key(from, room_id, distribution);
                }
                // Messages held for this epoch: readable now, or waiting for keys instead.
                for missing in self
                    .rooms
                    .missing_keys
                    .iter_mut()
                    .filter(|((room, _), _)| *room == room_id)
                {
                    missing.1.behind = false;
                }
                self.release_held(room_id);
                self.find_members(&room_id);
            }
            Err(err) => tracing::debug!("membership update for {}: {err}", room.name),
        }
    }

    pub(crate) fn on_member_left(&mut self, sender: VerifyingKey, room_id: RoomId) {
        let Some(room) = self.rooms.by_id.get(&room_id) else {
            return;
        };
        if room.owner() != Some(self.identity.public()) || !room.is_member(&sender) {
            return;
        }
        let members: Vec<VerifyingKey> = room
            .members()
            .into_iter()
            .filter(|m| *m != sender)
            .collect();
        match self.change_membership(room_id, members) {
            Ok((_, actions)) => self.carry_out(room_id, actions),
            Err(err) => tracing::warn!("removing a member who left: {err}"),
        }
    }
}
