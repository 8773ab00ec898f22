//! The room commands of the control socket: create, join, invite, kick, leave, send, list.

use super::*;

impl Node {
    pub(crate) fn room_create(&mut self, name: RoomName, public: bool) -> Result<Value, RpcError> {
        if self.rooms.by_name(&name).is_some() {
            return Err(RpcError::failed(format!(
                "you already have a room called {name}"
            )));
        }
        let me = self.identity.public();
        let (id, keys) = if public {
            let (id, secret) = public_room(&name);
            let mine = Box::new(SenderKey::from_invite_secret(&secret, &me, &mut OsRng));
            (
                id,
                RoomCrypto::Public {
                    secret,
                    mine,
                    received: BTreeMap::new(),
                },
            )
        } else {
            let id = RoomId::random(&mut OsRng);
            let mut keys = RoomKeys::new(&mut OsRng, id.0, me, me);
            let update = keys.next_membership(self.identity.signing_key(), vec![me]);
            keys.apply_membership(&mut OsRng, &update, now_ms())
                .map_err(|e| RpcError::failed(e.to_string()))?;
            (id, RoomCrypto::Private(Box::new(keys)))
        };
        self.rooms.by_id.insert(
            id,
            Room {
                id,
                name: name.clone(),
                keys,
                joined: true,
                invitation: None,
                removed: false,
            },
        );
        self.save_room(&id)?;
        self.gate_room(&id);
        let _ = self.swarm.behaviour_mut().gossipsub.subscribe(&topic(&id));
        self.find_members(&id);
        Ok(json!({"room": name.as_str(), "id": id.to_hex(), "public": public}))
    }

    /// The room called `name`, or a clear error.
    pub(crate) fn room_id(&self, name: &RoomName) -> Result<RoomId, RpcError> {
        self.rooms
            .by_name(name)
            .ok_or_else(|| RpcError::failed(format!("no room called {name}")))
    }

    pub(super) fn owned_room(&self, name: &RoomName) -> Result<RoomId, RpcError> {
        let id = self.room_id(name)?;
        let room = &self.rooms.by_id[&id];
        if room.is_public() {
            return Err(RpcError::failed(format!(
                "{name} is public: anyone may join, and nobody can be removed"
            )));
        }
        if room.owner() != Some(self.identity.public()) {
            return Err(RpcError::failed(format!(
                "only the owner of {name} can change its members"
            )));
        }
        Ok(id)
    }

    /// Invites `name` (the owner only): a new membership, the invitation, and our key.
    pub(crate) fn room_invite(&mut self, room: RoomName, name: UserName, reply: Reply) {
        let id = match self.owned_room(&room) {
            Ok(id) => id,
            Err(err) => return drop(reply.send(Err(err))),
        };
        let Some(key) = self.contact_key(&name) else {
            // Look the name up first, then invite.
            if !self.session.is_logged_in() {
                let _ = reply.send(Err(RpcError::failed(
                    "not connected to the rendezvous; cannot look up the user",
                )));
                return;
            }
            let request = palaver_protocol::wire::RendezvousRequest::Lookup {
                names: vec![name.clone()],
            };
            self.rendezvous_request(
                request,
                crate::daemon::Pending::LookupThenInvite {
                    room,
                    user: name,
                    reply,
                },
            );
            return;
        };
        let mut members = self.rooms.by_id[&id].members();
        if members.contains(&key) {
            let _ = reply.send(Err(RpcError::failed(format!(
                "{name} is already a member of {room}"
            ))));
            return;
        }
        members.push(key);
        let result = self
            .change_membership(id, members)
            .map(|(update, actions)| {
                // The invitation goes first, so the keys that follow find the room.
                let invite = RoomInvite {
                    room: id,
                    name: room.clone(),
                    membership: update,
                    invite_secret: None,
                };
                self.send_direct(Job::to_key(key, Payload::RoomInvite(invite)));
                self.carry_out(id, actions);
                json!({"room": room.as_str(), "invited": name.as_str()})
            });
        self.answer_when_durable(reply, result);
    }

    pub(crate) fn room_kick(&mut self, room: RoomName, name: UserName, reply: Reply) {
        let id = match self.owned_room(&room) {
            Ok(id) => id,
            Err(err) => return drop(reply.send(Err(err))),
        };
        let Some(key) = self.contact_key(&name) else {
            let _ = reply.send(Err(RpcError::failed(format!(
                "{name} is not a member of {room}"
            ))));
            return;
        };
        if key == self.identity.public() {
            let _ = reply.send(Err(RpcError::failed(
                "the owner cannot kick themselves; use `room leave`",
            )));
            return;
        }
        let members: Vec<VerifyingKey> = self.rooms.by_id[&id]
            .members()
            .into_iter()
            .filter(|m| *m != key)
            .collect();
        if members.len() == self.rooms.by_id[&id].members().len() {
            let _ = reply.send(Err(RpcError::failed(format!(
                "{name} is not a member of {room}"
            ))));
            return;
        }
        let result = self
            .change_membership(id, members)
            .map(|(update, actions)| {
                // The removed member learns it was removed (and stops sending to the room).
                self.send_direct(Job::to_key(key, Payload::Membership(update)));
                self.carry_out(id, actions);
                json!({"room": room.as_str(), "kicked": name.as_str()})
            });
        self.answer_when_durable(reply, result);
    }

    /// Signs and applies a new member list and tells the members; returns the key hand-outs the
    /// change asks for, which the caller carries out once anything that must precede them is sent.
    pub(super) fn change_membership(
        &mut self,
        id: RoomId,
        members: Vec<VerifyingKey>,
    ) -> Result<(MembershipUpdate, Vec<KeyAction>), RpcError> {
        let me = self.identity.public();
        let room = self
            .rooms
            .by_id
            .get_mut(&id)
            .ok_or_else(|| RpcError::failed("no such room"))?;
        // Members who were already in: they learn of the change by a membership message (a new
        // member learns of it from its invitation).
        let previous_members = room.members();
        let RoomCrypto::Private(keys) = &mut room.keys else {
            return Err(RpcError::failed("public room"));
        };
        let removes = previous_members.iter().any(|m| !members.contains(m));
        let update = keys.next_membership(self.identity.signing_key(), members.clone());
        let actions = keys
            .apply_membership(&mut OsRng, &update, now_ms())
            .map_err(|e| RpcError::failed(e.to_string()))?;
        self.save_room(&id)?;
        self.gate_room(&id);
        for member in members
            .iter()
            .filter(|m| **m != me && previous_members.contains(m))
        {
            if removes && self.fault_drops_removals_to(member) {
                continue;
            }
            self.send_direct(Job::to_key(*member, Payload::Membership(update.clone())));
        }
        self.find_members(&id);
        Ok((update, actions))
    }

    pub(super) fn carry_out(&mut self, room: RoomId, actions: Vec<KeyAction>) {
        for KeyAction::Distribute { to, distribution } in actions {
            // Kept as handed out, so a member who never got it can have the same again
            // (never an earlier index than it was given: no history from before it joined).
            let mut batch = StateBatch::default();
            for member in &to {
                batch.put(StateKey::KeyGiven(room, member.to_bytes()), &distribution);
            }
            if let Err(err) = self.store.apply(&batch) {
                tracing::warn!("store: {err}");
            }
            for member in to {
                if self.fault_drops_keys_to(&member) {
                    continue;
                }
                self.send_direct(Job::to_key(
                    member,
                    Payload::SenderKey {
                        room,
                        distribution: distribution.clone(),
                    },
                ));
            }
        }
    }

    pub(crate) fn room_join(&mut self, name: RoomName) -> Result<Value, RpcError> {
        let Some(id) = self.rooms.by_name(&name) else {
            return Err(RpcError::failed(format!(
                "no invitation to {name}; ask its owner to invite you, or create it with --public for a public room"
            )));
        };
        let room = self
            .rooms
            .by_id
            .get_mut(&id)
            .ok_or_else(|| RpcError::failed("no such room"))?;
        if room.joined && !room.removed {
            return Ok(json!({"room": name.as_str(), "joined": true}));
        }
        let Some(update) = room.invitation.take() else {
            return Err(RpcError::failed(format!(
                "you were removed from {name}; ask its owner to invite you again"
            )));
        };
        let RoomCrypto::Private(keys) = &mut room.keys else {
            return Err(RpcError::failed("public room"));
        };
        let actions = keys
            .apply_membership(&mut OsRng, &update, now_ms())
            .map_err(|e| RpcError::failed(e.to_string()))?;
        room.joined = true;
        room.removed = false;
        self.save_room(&id)?;
        self.gate_room(&id);
        let _ = self.swarm.behaviour_mut().gossipsub.subscribe(&topic(&id));
        self.carry_out(id, actions);
        // Keys that came before we accepted.
        for (from, distribution) in self.rooms.early_keys.remove(&id).unwrap_or_default() {
            self.on_sender_key(from, id, distribution);
        }
        self.find_members(&id);
        Ok(json!({"room": name.as_str(), "joined": true}))
    }

    /// Joins a public room by name (creating it locally if we have never seen it).
    pub(crate) fn room_join_public(&mut self, name: RoomName) -> Result<Value, RpcError> {
        if self.rooms.by_name(&name).is_some() {
            return self.room_join(name);
        }
        self.room_create(name.clone(), true)?;
        Ok(json!({"room": name.as_str(), "joined": true, "public": true}))
    }

    pub(crate) fn room_leave(&mut self, name: RoomName) -> Result<Value, RpcError> {
        let id = self.room_id(&name)?;
        let me = self.identity.public();
        let room = &self.rooms.by_id[&id];
        let owner = room.owner();
        if owner == Some(me) && room.members().len() > 1 {
            return Err(RpcError::failed(format!(
                "you own {name}: kick the other members first, then leave"
            )));
        }
        let public = room.is_public();
        if let Some(owner) = owner.filter(|o| *o != me && room.joined && !room.removed) {
            self.send_direct(Job::to_key(owner, Payload::Leave { room: id }));
        }
        if public {
            self.unregister_from_room(id);
        }
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .unsubscribe(&topic(&id));
        self.rooms.by_id.remove(&id);
        self.store
            .apply(StateBatch::default().remove(StateKey::Room(id)))
            .map_err(|e| RpcError::failed(e.to_string()))?;
        self.gate_room(&id);
        Ok(json!({"room": name.as_str(), "left": true}))
    }

    pub(crate) fn room_members(&self, name: &RoomName) -> Result<Value, RpcError> {
        let id = self.room_id(name)?;
        let room = &self.rooms.by_id[&id];
        let owner = room.owner();
        let members: Vec<Value> = self
            .known_members(room)
            .iter()
            .map(|key| {
                let name = self.name_of_key(key).unwrap_or_else(|| short_key(key));
                let state = self
                    .presence
                    .get(&name)
                    .map(|p| crate::daemon::link::state_str(p.state))
                    .unwrap_or("unknown");
                json!({"name": name, "owner": owner == Some(*key), "presence": state})
            })
            .collect();
        Ok(Value::Array(members))
    }

    /// Who is in a room as far as we can tell: a private room's member list; for a public room,
    /// which anyone may join unannounced, ourselves and everyone we have heard from in it.
    pub(super) fn known_members(&self, room: &Room) -> Vec<VerifyingKey> {
        let RoomCrypto::Public { received, .. } = &room.keys else {
            return room.members();
        };
        let mut keys: Vec<[u8; 32]> = vec![self.identity.public().to_bytes()];
        keys.extend(received.keys().copied());
        keys.extend(
            self.store
                .room_log_index(&room.id)
                .into_iter()
                .map(|(sender, _)| sender),
        );
        let mut seen = HashSet::new();
        keys.into_iter()
            .filter(|key| seen.insert(*key))
            .filter_map(|key| VerifyingKey::from_bytes(&key).ok())
            .collect()
    }

    pub(crate) fn room_list(&self) -> Value {
        let me = self.identity.public();
        Value::Array(
            self.rooms
                .by_id
                .values()
                .map(|room| {
                    let state = match (room.joined, room.removed) {
                        (_, true) => "removed",
                        (true, false) => "joined",
                        (false, false) => "invited",
                    };
                    json!({
                        "room": room.name.as_str(),
                        "id": room.id.to_hex(),
                        "public": room.is_public(),
                        "owner": room.owner().map(|o| o == me).unwrap_or(false),
                        "members": self.known_members(room).len(),
                        "state": state,
                        // The membership epoch we hold (private rooms; null before joining and
                        // for public rooms): members that agree on it read each other.
                        "epoch": match &room.keys {
                            RoomCrypto::Private(keys) => keys.epoch(),
                            RoomCrypto::Public { .. } => None,
                        },
                    })
                })
                .collect(),
        )
    }

    /// Sends `text` to a room; answers once the message is durable and published (or waiting
    /// for a subscriber).
    pub(crate) fn room_send(&mut self, name: RoomName, text: String, reply: Reply) {
        match self.room_seal(name, text) {
            Ok((room, frame, id)) => {
                self.rooms.not_yet_durable.insert(id);
                // Published only once durable: a crash must not make us reuse a chain index.
                self.when_durable(move |node, flushed| {
                    if flushed.is_ok() {
                        node.rooms.not_yet_durable.remove(&id);
                    }
                    let result = flushed
                        .map_err(|e| RpcError::failed(not_durable(&e)))
                        .map(|()| {
                            // A daemon on its way out has stopped its swarm: the message stays
                            // unsent on disk and goes out at the next start.
                            if !node.stopping {
                                node.publish(&room, frame, id);
                            }
                            let status = node.store.entry(&id).ok().flatten().map(|e| e.status);
                            let status = status.unwrap_or(Status::Sending).as_str();
                            json!({"id": id.to_hex(), "status": status})
                        });
                    let _ = reply.send(result);
                });
            }
            Err(err) => drop(reply.send(Err(err))),
        }
    }

    /// Encrypts and stores our next message to a room: `(room, frame, id)` to publish.
    pub(super) fn room_seal(
        &mut self,
        name: RoomName,
        text: String,
    ) -> Result<(RoomId, Vec<u8>, MessageId), RpcError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(RpcError::invalid(format!(
                "a message has at most {MAX_TEXT_LEN} bytes"
            )));
        }
        let id = self.room_id(&name)?;
        {
            let room = &self.rooms.by_id[&id];
            if !room.joined {
                return Err(RpcError::failed(format!(
                    "you are invited to {name} but have not joined: `room join {name}`"
                )));
            }
            if room.removed {
                return Err(RpcError::failed(format!("you were removed from {name}")));
            }
        }
        let conversation = ConversationId::Room(id);
        let stamp = self.next_stamp();
        let seq = self.next_seq(&conversation);
        let content = Content {
            sent_at_ms: now_ms(),
            stamp,
            seq,
            payload: Payload::Text(text.clone()),
        };
        let plaintext = codec::encode(&content).map_err(|e| RpcError::failed(e.to_string()))?;
        let me = self.identity.public();
        let room = self
            .rooms
            .by_id
            .get_mut(&id)
            .ok_or_else(|| RpcError::failed("no such room"))?;
        let (message, signing_key) = match &mut room.keys {
            RoomCrypto::Private(keys) => {
                let message = keys
                    .encrypt(&plaintext)
                    .map_err(|e| RpcError::failed(e.to_string()))?;
                (message, keys.my_distribution().signing_key)
            }
            RoomCrypto::Public { mine, .. } => {
                let message = mine
                    .encrypt(&plaintext, &public_ad(&id, &me))
                    .map_err(|e| RpcError::failed(e.to_string()))?;
                // Signed by our identity key: everyone who knows the name holds the derived one.
                (message, me)
            }
        };
        let body = Body::Room(RoomMessage {
            room: id,
            sender: me,
            signing_key,
            message,
        });
        let room = &self.rooms.by_id[&id];
        let envelope = match &room.keys {
            RoomCrypto::Private(keys) => Envelope::sign_with(body, |bytes| keys.sign(bytes)),
            RoomCrypto::Public { .. } => Envelope::sign(body, self.identity.signing_key()),
        }
        .map_err(|e| RpcError::failed(e.to_string()))?;
        let frame = envelope
            .to_bytes()
            .map_err(|e| RpcError::failed(e.to_string()))?;
        let msg_id = envelope.id();
        let entry = HistoryEntry {
            id: msg_id,
            conversation,
            label: format!("#{name}"),
            from: self.name.to_string(),
            sender: me.to_bytes(),
            text,
            sent_at_ms: content.sent_at_ms,
            stamp,
            seq,
            status: Status::Sending,
        };
        let mut batch = StateBatch::default();
        batch
            .put(StateKey::Meta(crate::daemon::direct::CLOCK_META), &stamp)
            .put(StateKey::Seq(conversation), &seq)
            .put(log_key(&id, &me, seq), &frame)
            .put(StateKey::RoomUnsent(msg_id), &(id, frame.clone(), msg_id));
        self.persist_room(&id, &mut batch);
        self.store
            .record(&entry, &batch)
            .map_err(|e| RpcError::failed(format!("could not store the message: {e}")))?;
        Ok((id, frame, msg_id))
    }

    pub(super) fn publish(&mut self, room: &RoomId, frame: Vec<u8>, id: MessageId) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic(room), frame)
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                let _ = self
                    .store
                    .apply(StateBatch::default().remove(StateKey::RoomUnsent(id)));
                self.set_status(&id, Status::Sent);
            }
            Err(err) => tracing::debug!("room message {id} not published yet: {err}"),
        }
    }
}
