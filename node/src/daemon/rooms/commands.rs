//! The room commands of the control socket: create, join, invite, kick, leave, send, list.
//! Each asks the machine, carries out what it decided, and answers once that is durable.

use palaver_protocol::node::rooms::InviteStep;
use palaver_protocol::wire::{Content, Payload};
use palaver_protocol::{MessageId, RoomId, RoomName, UserName};
use rand_core::OsRng;
use serde_json::{Value, json};

use super::{log_key, refused};
use crate::daemon::direct::SendFailed;
use crate::daemon::durable::{AfterFlush, Flushed, not_durable};
use crate::daemon::{Node, now_ms};
use crate::rpc::{Reply, RpcError};
use crate::store::{ConversationId, HistoryEntry, StateBatch, StateKey, Status};

impl Node {
    /// Carries out a command's decisions; the command fails if a record could not be written.
    fn carry_out_command(&mut self) -> Result<(), RpcError> {
        self.drive_rooms()
            .map_err(|e| RpcError::failed(e.to_string()))
    }

    pub(crate) fn room_create(&mut self, name: RoomName, public: bool) -> Result<Value, RpcError> {
        let created = self
            .state
            .rooms
            .create(name.clone(), public, now_ms(), &mut OsRng);
        let id = created.map_err(refused)?;
        self.carry_out_command()?;
        Ok(json!({"room": name.as_str(), "id": id.to_hex(), "public": public}))
    }

    /// Invites `name` (the owner only); a user we have no key for is looked up first
    /// (`looked_up`: that was done).
    pub(crate) fn room_invite(
        &mut self,
        room: RoomName,
        name: UserName,
        reply: Reply,
        looked_up: bool,
    ) {
        let (key, can_look_up) = (self.contact_key(&name), self.state.session.is_logged_in());
        let step =
            self.state
                .rooms
                .invite_step(&room, &name, &self.name, key, can_look_up, looked_up);
        let key = match step {
            Ok(InviteStep::Invite(key)) => key,
            Ok(InviteStep::LookUp) => {
                let request = palaver_protocol::wire::RendezvousRequest::Lookup {
                    names: vec![name.clone()],
                };
                let reply = self.replies.park(reply);
                let pending = crate::daemon::Pending::Invite {
                    room,
                    user: name,
                    reply,
                };
                return self.rendezvous_request(request, pending);
            }
            Err(err) => return drop(reply.send(Err(refused(err)))),
        };
        let result = self
            .state
            .rooms
            .invite(&room, &name, key, now_ms(), &mut OsRng)
            .map_err(refused)
            .and_then(|()| self.carry_out_command())
            .map(|()| json!({"room": room.as_str(), "invited": name.as_str()}));
        self.answer_when_durable(reply, result);
    }

    pub(crate) fn room_kick(&mut self, room: RoomName, name: UserName, reply: Reply) {
        let key = self.contact_key(&name);
        let result = self
            .state
            .rooms
            .kick(&room, &name, key, now_ms(), &mut OsRng)
            .map_err(refused)
            .and_then(|()| self.carry_out_command())
            .map(|()| json!({"room": room.as_str(), "kicked": name.as_str()}));
        self.answer_when_durable(reply, result);
    }

    pub(crate) fn room_join(&mut self, name: RoomName, public: bool) -> Result<Value, RpcError> {
        let (now, rng) = (now_ms(), &mut OsRng);
        let mut answer = json!({"room": name.as_str(), "joined": true});
        if public {
            if self
                .state
                .rooms
                .join_public(&name, now, rng)
                .map_err(refused)?
            {
                answer["public"] = json!(true);
            }
        } else {
            self.state.rooms.join(&name, now, rng).map_err(refused)?;
        }
        self.carry_out_command()?;
        Ok(answer)
    }

    pub(crate) fn room_leave(&mut self, name: RoomName) -> Result<Value, RpcError> {
        let now = now_ms();
        (self.state.rooms)
            .leave(&name, now, &mut OsRng)
            .map_err(refused)?;
        self.carry_out_command()?;
        Ok(json!({"room": name.as_str(), "left": true}))
    }

    pub(crate) fn room_members(&self, name: &RoomName) -> Result<Value, RpcError> {
        let room = self.state.rooms.find(name).map_err(refused)?;
        let owner = room.owner();
        let members: Vec<Value> = self
            .known_members(room)
            .iter()
            .map(|key| {
                let name = self
                    .name_of_key(key)
                    .unwrap_or_else(|| super::short_key(key));
                let state = UserName::new(&name)
                    .map_or("unknown", |name| self.presence.heard_state(&name).as_str());
                json!({"name": name, "owner": owner == Some(*key), "presence": state})
            })
            .collect();
        Ok(Value::Array(members))
    }

    fn known_members(
        &self,
        room: &palaver_protocol::node::rooms::Room,
    ) -> Vec<palaver_protocol::VerifyingKey> {
        let logged = self.store.room_log_index(&room.id).into_iter();
        room.known_members(self.identity.public(), logged.map(|(sender, _)| sender))
    }

    pub(crate) fn room_list(&self) -> Value {
        // Owned by our account (on the device holding its key).
        let me = self.state.rooms.account();
        let rooms = self.state.rooms.iter().map(|room| {
            json!({
                "room": room.name.as_str(),
                "id": room.id.to_hex(),
                "public": room.is_public(),
                "owner": room.owner() == Some(me),
                "members": self.known_members(room).len(),
                "state": room.state(),
                // The membership epoch we hold (private rooms; null before joining and for
                // public rooms): members that agree on it read each other.
                "epoch": room.epoch(),
            })
        });
        Value::Array(rooms.collect())
    }

    /// Sends `text` to a room; answers once the message is durable and published (or waiting
    /// for a subscriber).
    pub(crate) fn room_send(&mut self, name: RoomName, text: String, reply: Reply) {
        self.room_send_payload(name, Payload::Text(text), None, reply)
    }

    /// Sends `payload` (a text or a file offer, served from `served_from`) to a room.
    pub(crate) fn room_send_payload(
        &mut self,
        name: RoomName,
        payload: Payload,
        served_from: Option<std::path::PathBuf>,
        reply: Reply,
    ) {
        let (room, frame, id) = match self.room_seal(name, payload, served_from) {
            Ok(sealed) => sealed,
            Err(err) => return drop(reply.send(Err(err))),
        };
        // Published only once durable: a crash must not make us reuse a chain index.
        self.when_durable(AfterFlush::RoomSealed {
            room,
            frame,
            id,
            reply,
        });
    }

    /// Our room message is on disk: published now, and the send answered.
    pub(crate) fn on_room_message_durable(
        &mut self,
        room: RoomId,
        frame: Vec<u8>,
        id: MessageId,
        reply: Reply,
        flushed: Flushed,
    ) {
        if flushed.is_ok() {
            self.state.rooms.settled(&id);
        }
        let result = flushed
            .map_err(|e| RpcError::failed(not_durable(&e)))
            .map(|()| {
                // A daemon on its way out has stopped its swarm: the message stays unsent on
                // disk and goes out at the next start.
                if !self.stopping {
                    self.publish(&room, frame, id);
                }
                let status = self.store.entry(&id).ok().flatten().map(|e| e.status);
                let status = status.unwrap_or(Status::Sending).as_str();
                json!({"id": id.to_hex(), "status": status})
            });
        let _ = reply.send(result);
    }

    /// Seals and stores our next message to a room: `(room, frame, id)` to publish.
    fn room_seal(
        &mut self,
        name: RoomName,
        payload: Payload,
        served_from: Option<std::path::PathBuf>,
    ) -> Result<
        (
            palaver_protocol::RoomId,
            Vec<u8>,
            palaver_protocol::MessageId,
        ),
        RpcError,
    > {
        let room = self.state.rooms.writable(&name).map_err(refused)?;
        let conversation = ConversationId::Room(room);
        let unreadable = |e| RpcError::failed(SendFailed::Unreadable(e).to_string());
        let stamp = self.next_stamp().map_err(unreadable)?;
        let seq = self.next_seq(&conversation).map_err(unreadable)?;
        let text = payload.history_text().unwrap_or_default();
        let offer = payload.file_offer().cloned();
        let content = Content {
            sent_at_ms: now_ms(),
            stamp,
            seq,
            payload,
        };
        let sealed = self.state.rooms.seal(room, &content).map_err(refused)?;
        let me = self.identity.public();
        let entry = HistoryEntry {
            id: sealed.id,
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
        // Plain writes in a crash-safe order, not a transaction (`Store::record_in_order`; a
        // transaction's log writes were most of a send's cost): first what the send moved on,
        // kept whatever follows — the room, whose chain moved (so that a crash can never seal
        // twice under one key), the clock and our sequence number — then the message with what
        // it brings, which a crash cut short takes out again (members then see our sequence
        // number skip one, the honest trace of a send that never finished). Nothing of it
        // leaves before the flush that follows.
        let mut moved_on = StateBatch::default();
        moved_on
            .put(StateKey::Meta(crate::daemon::direct::CLOCK_META), &stamp)
            .put(StateKey::Seq(conversation), &seq);
        self.persist_room(&room, &mut moved_on);
        let mut brings = StateBatch::default();
        brings.put(log_key(&room, &me, seq), &sealed.log).put(
            StateKey::RoomUnsent(sealed.id),
            &(room, sealed.frame.clone(), sealed.id),
        );
        if let (Some(offer), Some(path)) = (&offer, &served_from) {
            let audience = palaver_protocol::node::files::Audience::Room(room);
            Self::put_served(&mut brings, sealed.id, offer, audience, path);
        }
        let stored = self
            .store
            .record_in_order(&conversation, &[(&entry, &brings)], &moved_on);
        let failed = match stored {
            Ok(new) if new == [true] => None,
            Ok(_) => Some("its place in the history is flooded".to_owned()),
            Err(err) => Some(SendFailed::NotStored(err).to_string()),
        };
        if let Some(failed) = failed {
            // Never published: it waits for no flush.
            self.state.rooms.settled(&sealed.id);
            return Err(RpcError::failed(failed));
        }
        Ok((room, sealed.frame, sealed.id))
    }
}
