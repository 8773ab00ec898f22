//! The control-socket methods: parse the params, carry the call out, answer.

use palaver_protocol::node::presence;
use palaver_protocol::node::session::refusal_hint;
use palaver_protocol::node::trust::{self, VerifyStep};
use palaver_protocol::wire::{PresenceRecord, RendezvousRequest, UserRecord};
use palaver_protocol::{RoomName, UserName};
use serde_json::{Value, json};

use super::{Node, Pending};
use crate::rpc::Reply;
use crate::rpc::{Call, Command, RpcError};
use crate::store::{ConversationId, StateBatch, StateKey, Store};

/// Reads `history` for `with` (a user) or `room`, resolving names from the store.
pub(crate) fn history(
    store: &Store,
    with: Option<&str>,
    room: Option<&str>,
    limit: usize,
) -> Result<Vec<Value>, RpcError> {
    history_page(store, with, room, None, limit)
}

/// Like [`history`], but only the messages before the one with id `before` (hex), for paging back.
pub(crate) fn history_page(
    store: &Store,
    with: Option<&str>,
    room: Option<&str>,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<Value>, RpcError> {
    let conversation = conversation_of(store, with, room)?;
    // The cursor is a message id; its entry gives the order key to read back from.
    let before = match before {
        None => None,
        Some(id) => Some(order_key_of(store, &conversation, id, "before")?),
    };
    let entries = store
        .history_before(&conversation, before.as_ref().map(|key| &key[..]), limit)
        .map_err(|e| RpcError::failed(e.to_string()))?;
    // Which of each sender's room messages we hold, to show where some are missing: every
    // room text takes its sender's next sequence number, so a jump is a message we have not
    // (yet) received. (Direct conversations number their control messages too, so a jump
    // there means nothing.)
    let held = match &conversation {
        ConversationId::Room(room) => {
            palaver_protocol::node::rooms::gap_fill::held(store.room_log_index(room))
        }
        ConversationId::Direct(_) => Default::default(),
    };
    Ok(entries
        .into_iter()
        .map(|mut entry| {
            let missing = palaver_protocol::VerifyingKey::from_bytes(&entry.sender)
                .map_or(0, |sender| held.missing_before(&sender, entry.seq));
            // Names learned after a message arrived replace the stand-in it was stored with.
            if let Ok(Some(name)) = store.get::<String>(StateKey::Peer(entry.sender)) {
                entry.from = name;
            }
            if let ConversationId::Direct(key) = entry.conversation
                && let Ok(Some(name)) = store.get::<String>(StateKey::Peer(key))
            {
                entry.label = name;
            }
            let mut json = entry.to_json();
            if let Some(file) = super::files::file_json(store, &entry.id, None) {
                json["file"] = file;
            }
            if missing > 0 {
                json["missing_before"] = Value::from(missing);
            }
            // Ours, copied to other devices: how each copy fared.
            if entry.status != crate::store::Status::Received
                && let Ok(Some(copies)) =
                    store.get::<Vec<super::direct::CopyStatus>>(StateKey::CopyStatuses(entry.id))
            {
                json["copies"] = copies.iter().map(|c| c.to_json()).collect();
            }
            json
        })
        .collect())
}

/// The order key of message `id` (hex), which must belong to `conversation`; `param` names it
/// in the error.
fn order_key_of(
    store: &Store,
    conversation: &ConversationId,
    id: &str,
    param: &str,
) -> Result<[u8; palaver_protocol::delivery::HISTORY_KEY_LEN], RpcError> {
    palaver_protocol::MessageId::from_hex(id)
        .and_then(|id| store.entry(&id).ok().flatten())
        .filter(|entry| entry.conversation == *conversation)
        .map(|entry| entry.order_key())
        .ok_or_else(|| {
            RpcError::invalid(format!("{param:?} is not a message of this conversation"))
        })
}

/// The conversation `with` (a user) or `room` names, resolved from the store.
fn conversation_of(
    store: &Store,
    with: Option<&str>,
    room: Option<&str>,
) -> Result<ConversationId, RpcError> {
    Ok(match (with, room) {
        (Some(name), None) => {
            let name: UserName = name
                .parse()
                .map_err(|e: palaver_protocol::name::NameError| RpcError::invalid(e.to_string()))?;
            let contact = super::trust::load_contact(store, name.as_str())
                .map_err(|e| RpcError::failed(e.to_string()))?
                .ok_or_else(|| RpcError::failed(format!("no conversation with {name}")))?;
            ConversationId::Direct(contact.conversation)
        }
        (None, Some(room)) => {
            let room: RoomName = room
                .parse()
                .map_err(|e: palaver_protocol::name::NameError| RpcError::invalid(e.to_string()))?;
            let id = match super::rooms::stored_id(store, &room) {
                Ok(id) => id,
                // Read without the daemon in a passphrase-protected home: the room records are
                // sealed, but each history line names its room.
                Err(crate::store::StoreError::SecretsSealed) => store.room_by_label(&room),
                Err(err) => return Err(RpcError::failed(err.to_string())),
            };
            let id = id.ok_or_else(|| RpcError::failed(format!("no room called {room}")))?;
            ConversationId::Room(id)
        }
        _ => {
            return Err(RpcError::invalid(
                "give exactly one of --with NAME or --room ROOM",
            ));
        }
    })
}

/// `read`: marks a conversation read up to `up_to` (a message id; by default its latest
/// message). The marker never moves back. Answers the `read` event's fields (`conversation`,
/// `unread`), and whether the marker `moved` (the caller then tells the event stream).
pub(crate) fn mark_read(
    store: &Store,
    with: Option<&str>,
    room: Option<&str>,
    up_to: Option<&str>,
) -> Result<(crate::rpc::Event, bool), RpcError> {
    let conversation = conversation_of(store, with, room)?;
    let up_to = match up_to {
        None => None,
        Some(id) => Some(order_key_of(store, &conversation, id, "up_to")?),
    };
    let failed = |e: crate::store::StoreError| RpcError::failed(e.to_string());
    let moved = store
        .mark_read(&conversation, up_to.as_ref().map(|key| &key[..]))
        .map_err(failed)?;
    let unread = store.unread(&conversation).map_err(failed)?;
    let label = match (with, room) {
        (Some(name), _) => name.to_lowercase(),
        (_, Some(room)) => format!("#{}", room.trim_start_matches('#').to_lowercase()),
        _ => String::new(),
    };
    let read = crate::rpc::Event::Read {
        conversation: label,
        unread: unread.count as u64,
    };
    Ok((read, moved))
}

/// Every conversation with at least one message, most recent first:
/// `{"conversation", "kind": "direct"|"room", "last_at", "last_from", "last_text", "unread",
/// "first_unread"}`, named as `history` names them; `unread` counts received messages after the
/// read marker (at most [`crate::store::MAX_UNREAD_COUNTED`]), `first_unread` is the id of the
/// first of them (or null).
pub(crate) fn conversations(store: &Store) -> Result<Vec<Value>, RpcError> {
    let mut list = Vec::new();
    for conversation in store.conversations() {
        let last = store
            .history(&conversation, 1)
            .map_err(|e| RpcError::failed(e.to_string()))?;
        let Some(mut last) = last.into_iter().next() else {
            continue;
        };
        if let Ok(Some(name)) = store.get::<String>(StateKey::Peer(last.sender)) {
            last.from = name;
        }
        let kind = match conversation {
            ConversationId::Direct(key) => {
                if let Ok(Some(name)) = store.get::<String>(StateKey::Peer(key)) {
                    last.label = name;
                }
                "direct"
            }
            ConversationId::Room(_) => "room",
        };
        let unread = store
            .unread(&conversation)
            .map_err(|e| RpcError::failed(e.to_string()))?;
        list.push(json!({
            "conversation": last.label,
            "kind": kind,
            "last_at": last.sent_at_ms,
            "last_from": last.from,
            "last_text": last.text,
            "unread": unread.count,
            "first_unread": unread.first.map(|id| id.to_hex()),
        }));
    }
    list.sort_by_key(|c| std::cmp::Reverse(c["last_at"].as_u64().unwrap_or(0)));
    Ok(list)
}

impl Node {
    pub(crate) fn on_call(&mut self, call: Call) {
        let Call { command, reply } = call;
        let answer = |reply: Reply, result: Result<Value, RpcError>| {
            let _ = reply.send(result);
        };
        match command {
            Command::Status => answer(reply, Ok(self.status())),
            Command::Send {
                to,
                text,
                client_id,
            } => self.send_text(to, text, client_id, reply),
            Command::History {
                with,
                room,
                before,
                limit,
            } => {
                let page = history_page(
                    &self.store,
                    with.as_deref(),
                    room.as_deref(),
                    before.as_deref(),
                    limit,
                );
                answer(reply, page.map(Value::Array));
            }
            Command::Conversations => answer(reply, conversations(&self.store).map(Value::Array)),
            Command::Read { with, room, up_to } => {
                let (with, room, up_to) = (with.as_deref(), room.as_deref(), up_to.as_deref());
                let result = mark_read(&self.store, with, room, up_to).map(|(read, moved)| {
                    let mut answer = read.to_json();
                    if moved {
                        // Other windows clear their badges too.
                        self.emit(read);
                    }
                    // The answer is the event's fields.
                    if let Some(fields) = answer.as_object_mut() {
                        fields.remove("type");
                    }
                    answer
                });
                answer(reply, result);
            }
            Command::Presence { names } => self.presence_call(names, reply),
            Command::Peers => answer(reply, Ok(self.peers())),
            Command::Verify { name, confirm } => self.verify(name, confirm, reply),
            Command::RoomCreate { room, public } => {
                let result = self.room_create(room, public);
                self.answer_when_durable(reply, result);
            }
            Command::RoomInvite { room, name } => self.room_invite(room, name, reply, false),
            Command::RoomKick { room, name } => self.room_kick(room, name, reply),
            Command::RoomJoin { room, public } => {
                let result = self.room_join(room, public);
                self.answer_when_durable(reply, result);
            }
            Command::RoomLeave { room } => {
                let result = self.room_leave(room);
                self.answer_when_durable(reply, result);
            }
            Command::RoomMembers { room } => answer(reply, self.room_members(&room)),
            Command::RoomList => answer(reply, Ok(self.room_list())),
            Command::RoomSend { room, text } => self.room_send(room, text, reply),
            Command::SendFile { to, path } => {
                self.send_file(super::files::FileTo::User(to), path, reply)
            }
            Command::RoomSendFile { room, path } => {
                self.send_file(super::files::FileTo::Room(room), path, reply)
            }
            Command::Files => {
                let transfers = &self.state.files;
                let list =
                    super::files::list_files(&self.store, |id| transfers.under_way(id).cloned());
                answer(reply, Ok(Value::Array(list)))
            }
            Command::FileInfo { id } => answer(reply, self.file_info(&id)),
            Command::FileAccept { id } => self.decide_file(id, true, reply),
            Command::FileReject { id } => self.decide_file(id, false, reply),
            Command::DeviceLink { confirm } => self.device_link(confirm, reply),
            Command::DeviceLinkConfirm { add } => self.device_link_confirm(add, reply),
            Command::DeviceLinkWait => self.device_link_wait(reply),
            Command::DeviceList { name } => answer(reply, self.device_list_call(name)),
            Command::DeviceRevoke { device } => self.device_revoke(device, reply),
            Command::Shutdown => {
                self.stopping = true;
                answer(reply, Ok(json!(true)));
            }
        }
    }

    fn status(&self) -> Value {
        json!({
            "name": self.name.as_str(),
            "peer_id": self.swarm.local_peer_id().to_string(),
            "fingerprint": self.identity.fingerprint().to_string(),
            "rendezvous": {
                // The instance in use now (of `instances`, tried in order when one fails).
                "address": self.reach.rendezvous_addr().to_string(),
                "server": self.reach.rendezvous_peer().map(|p| p.to_string()),
                "instances": self.reach.rendezvous_instances().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "connected": self.reach.rendezvous_connected(),
                "logged_in": self.state.session.is_logged_in(),
                // The server's refusal of our login, verbatim, and what to do about it.
                "refused": self.state.session.refusal().map(ToString::to_string),
                "hint": self.state.session.refusal().map(|r| refusal_hint(r.reason)),
            },
            "listen": self.reach.listen_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "outbox": self.state.delivery.len(),
            "gossip": self.gossip_status(),
        })
    }

    /// The peers we are connected to, and how, for `status`.
    fn peers(&self) -> Value {
        let mut peers: Vec<Value> = self
            .swarm
            .connected_peers()
            .filter(|peer| !self.is_rendezvous(peer))
            .filter_map(|peer| {
                let (connection, addr) = self.connection_kind(peer)?;
                let name = self.name_of_peer(peer);
                let verified = name.as_deref().is_some_and(|n| self.is_verified(n));
                Some(json!({
                    "name": name,
                    "verified": verified,
                    "peer_id": peer.to_string(),
                    "connection": connection,
                    "addr": addr.to_string(),
                }))
            })
            .collect();
        peers.sort_by_key(|p| p["peer_id"].as_str().map(str::to_owned));
        Value::Array(peers)
    }

    fn presence_call(&mut self, names: Vec<UserName>, reply: Reply) {
        let logged_in = self.state.session.is_logged_in();
        match presence::query(names, || self.contact_names(), logged_in) {
            Err(err) => drop(reply.send(Err(RpcError::invalid(err.to_string())))),
            Ok(presence::Query::Nobody) => drop(reply.send(Ok(json!([])))),
            Ok(presence::Query::Stale(names)) => {
                drop(reply.send(Ok(self.last_known_presence(&names))))
            }
            Ok(presence::Query::Ask { names, explicit }) => {
                let reply = self.replies.park(reply);
                let request = RendezvousRequest::Lookup {
                    names: names.clone(),
                };
                let pending = Pending::Presence {
                    names,
                    explicit,
                    reply,
                };
                self.rendezvous_request(request, pending);
            }
        }
    }

    /// The rendezvous's answer to a presence lookup (`"stale": false`); a name the caller gave
    /// that the rendezvous does not know is an error.
    pub(crate) fn presence_answer(
        &mut self,
        names: &[UserName],
        explicit: bool,
        users: Vec<UserRecord>,
    ) -> Result<Value, RpcError> {
        let answer = presence::answer(names, explicit, &users).map(|records| {
            let records = records.into_iter().map(|user| {
                let mut record = super::link::presence_json(&user.presence);
                record["stale"] = Value::Bool(false);
                record["verified"] = self.is_verified(user.name.as_str()).into();
                record
            });
            Value::Array(records.collect())
        });
        for user in users {
            self.remember_presence(user.presence);
        }
        answer.map_err(|unknown| RpcError::failed(unknown.to_string()))
    }

    /// What we last heard of each of `names`, marked `"stale": true`, for when the rendezvous
    /// cannot be asked: a peer we are connected to right now is online whatever we last heard;
    /// one we never heard of is `unknown`.
    pub(crate) fn last_known_presence(&self, names: &[UserName]) -> Value {
        let connected = |name: &UserName| {
            self.contact_key(name).is_some_and(|key| {
                self.swarm
                    .is_connected(&palaver_protocol::identity::peer_id_of(&key))
            })
        };
        let stored = |name: &UserName| {
            let key = presence_key(name.as_str());
            self.store.get(StateKey::Meta(&key)).ok().flatten()
        };
        let known = self.presence.last_known(names, connected, stored);
        let records = known
            .into_iter()
            .map(|known| {
                json!({
                    "name": known.name.as_str(),
                    "state": known.state.as_str(),
                    "last_seen": known.last_seen_ms,
                    "stale": true,
                    "verified": self.is_verified(known.name.as_str()),
                })
            })
            .collect();
        Value::Array(records)
    }

    /// Keeps what the rendezvous answered of a user's presence (a lookup, a subscription): in
    /// memory, and in the store (see [`Node::store_presence`]).
    pub(crate) fn remember_presence(&mut self, record: PresenceRecord) {
        self.store_presence(&record);
        self.presence.heard(record);
    }

    /// Keeps a user's presence in the store, so that a daemon restarted while the rendezvous
    /// is down still knows the last state.
    pub(crate) fn store_presence(&self, record: &PresenceRecord) {
        let key = presence_key(record.name.as_str());
        // Best effort: it is only shown, marked stale, when nothing fresher can be had.
        if let Err(err) = self
            .store
            .apply(StateBatch::default().put(StateKey::Meta(&key), record))
        {
            tracing::debug!("cannot keep presence: {err}");
        }
    }

    /// Asks the rendezvous for `name`'s key first when it can (so that a change shows now),
    /// then answers with the safety number (see [`Node::answer_verify`]).
    pub(crate) fn verify(&mut self, name: UserName, confirm: bool, reply: Reply) {
        let (logged_in, known) = (
            self.state.session.is_logged_in(),
            self.contact_key(&name).is_some(),
        );
        match trust::verify_step(&name, logged_in, known) {
            Ok(VerifyStep::LookUp) => {
                let request = RendezvousRequest::Lookup {
                    names: vec![name.clone()],
                };
                let pending = Pending::Verify {
                    name,
                    confirm,
                    reply: self.replies.park(reply),
                };
                self.rendezvous_request(request, pending);
            }
            Ok(VerifyStep::Answer) => self.answer_verify(name, confirm, reply),
            Err(err) => drop(reply.send(Err(RpcError::failed(err.to_string())))),
        }
    }
}

fn presence_key(name: &str) -> String {
    format!("presence/{name}")
}
