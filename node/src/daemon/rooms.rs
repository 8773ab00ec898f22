//! Rooms: a gossipsub topic per room, sender keys for encryption, gap fill for what gossip missed.
//!
//! Private rooms: the creator owns the room and signs every membership change. An invitation
//! travels over the pairwise session; `join` accepts it, and every member then hands its sender
//! key to the others, each over its pairwise session ([`KeyAction::Distribute`]). A kick makes
//! every remaining member rotate its key and hand the new one to the remaining members only.
//!
//! Public rooms: id and key are derived from the room's name, so anyone who knows the name can
//! join and read; there is no owner and no kick.
//!
//! Every room message we hold (sent or received) is kept in a per-room log keyed by sender and
//! sequence number, so a member who was away can ask for what it missed ([`Node::request_gap_fill`])
//! when it next connects to another member; the answer is verified and deduplicated like gossip.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use libp2p::request_response::OutboundRequestId;
use libp2p::{PeerId, gossipsub};
use palaver_protocol::crypto::room::{KeyAction, MembershipUpdate, RoomKeys};
use palaver_protocol::crypto::sender_key::{ReceivedSenderKey, SenderKey, SenderKeyDistribution};
use palaver_protocol::identity::peer_id_of;
use palaver_protocol::wire::{Body, Content, MAX_TEXT_LEN, Payload, RoomInvite, RoomMessage};
use palaver_protocol::{Envelope, MessageId, RoomId, RoomName, UserName, VerifyingKey, codec};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod gap_fill;

use super::direct::{Job, Reply, short_key};
use super::durable::not_durable;
use super::{Node, now_ms};
use crate::rpc::RpcError;
use crate::store::{ConversationId, HistoryEntry, StateBatch, StateKey, Status, Store, StoreError};

/// A room message waiting for its sender's key: its id, body and envelope frame.
type HeldMessage = (MessageId, RoomMessage, Vec<u8>);

/// Messages held while their sender's key has not arrived, per room.
const MAX_HELD: usize = 256;
/// Sender keys that arrived before the invitation they belong to.
const MAX_EARLY_KEYS: usize = 64;
/// How long a message waits for its sender's key before we ask the sender for it: keys normally
/// arrive within moments of the messages they open, so asking at once would only add traffic.
const KEY_WAIT_MS: u64 = 5_000;
/// How often we ask the same sender again while its key stays missing.
const KEY_ASK_EVERY_MS: u64 = 30_000;
/// Senders whose keys we wait for, over all rooms.
const MAX_MISSING_KEYS: usize = 1024;

#[derive(Serialize, Deserialize)]
pub(crate) struct Room {
    pub(crate) id: RoomId,
    pub(crate) name: RoomName,
    pub(crate) keys: RoomCrypto,
    /// `false` while this is an invitation not yet accepted.
    pub(crate) joined: bool,
    /// The owner's latest membership update, kept so that `join` can apply it.
    pub(crate) invitation: Option<MembershipUpdate>,
    /// Removed by the owner: we keep the history, but read and send nothing more.
    pub(crate) removed: bool,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum RoomCrypto {
    Private(Box<RoomKeys>),
    Public {
        secret: [u8; 32],
        mine: Box<SenderKey>,
        received: BTreeMap<[u8; 32], ReceivedSenderKey>,
    },
}

impl Room {
    fn is_public(&self) -> bool {
        matches!(self.keys, RoomCrypto::Public { .. })
    }

    fn members(&self) -> Vec<VerifyingKey> {
        match &self.keys {
            RoomCrypto::Private(keys) => keys.members().to_vec(),
            RoomCrypto::Public { .. } => Vec::new(),
        }
    }

    fn is_member(&self, key: &VerifyingKey) -> bool {
        match &self.keys {
            RoomCrypto::Private(keys) => keys.is_member(key),
            RoomCrypto::Public { .. } => true,
        }
    }

    fn owner(&self) -> Option<VerifyingKey> {
        match &self.keys {
            RoomCrypto::Private(keys) => Some(*keys.owner()),
            RoomCrypto::Public { .. } => None,
        }
    }

    fn topic(&self) -> gossipsub::IdentTopic {
        topic(&self.id)
    }
}

/// The discovery namespace prefix under which a public room's members register (then its id).
pub(crate) const ROOM_NAMESPACE: &str = "palaver/room/";

fn topic(id: &RoomId) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("palaver/room/{}", id.to_hex()))
}

/// Public rooms' id and secret come from their name.
fn public_room(name: &RoomName) -> (RoomId, [u8; 32]) {
    let derive = |label: &[u8]| -> [u8; 32] {
        Sha256::new()
            .chain_update(label)
            .chain_update(name.as_str().as_bytes())
            .finalize()
            .into()
    };
    (
        RoomId(derive(b"palaver/v1/public-room/id")),
        derive(b"palaver/v1/public-room/secret"),
    )
}

/// All rooms, in memory; each change is persisted with the message or action that caused it.
#[derive(Default)]
pub(crate) struct Rooms {
    by_id: BTreeMap<RoomId, Room>,
    held: HashMap<RoomId, VecDeque<HeldMessage>>,
    early_keys: HashMap<RoomId, Vec<(VerifyingKey, SenderKeyDistribution)>>,
    gap_fills: HashMap<OutboundRequestId, (RoomId, PeerId)>,
    /// Our own messages written but not yet durable, so not published yet.
    not_yet_durable: HashSet<MessageId>,
    /// Senders whose key we lack for messages we hold: since when, and when we last asked.
    missing_keys: HashMap<(RoomId, [u8; 32]), MissingKey>,
    /// Rooms whose receiving chains moved since they were last written ([`Node::save_dirty_rooms`]).
    dirty: HashSet<RoomId>,
}

#[derive(Debug, Clone, Copy)]
struct MissingKey {
    since: u64,
    asked: Option<u64>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("rooms", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

impl Rooms {
    pub(crate) fn load(store: &Store) -> Result<Self, StoreError> {
        let rooms = store.scan::<Room>(StateKey::Room(RoomId([0; 32])))?;
        Ok(Self {
            by_id: rooms.into_iter().map(|room| (room.id, room)).collect(),
            ..Self::default()
        })
    }

    fn by_name(&self, name: &RoomName) -> Option<RoomId> {
        self.by_id
            .values()
            .find(|room| &room.name == name)
            .map(|room| room.id)
    }

    pub(crate) fn id_by_name(&self, name: &RoomName) -> Option<RoomId> {
        self.by_name(name)
    }
}

/// A room's log of envelopes, for gap fill: `(sender, seq)` → frame.
fn log_key(room: &RoomId, sender: &VerifyingKey, seq: u64) -> StateKey<'static> {
    StateKey::RoomLog(*room, sender.to_bytes(), seq)
}

impl Node {
    fn persist_room(&self, id: &RoomId, batch: &mut StateBatch) {
        if let Some(room) = self.rooms.by_id.get(id) {
            batch.put(StateKey::Room(*id), room);
        }
    }

    /// Writes the room; a caller that answers a command answers once it is durable
    /// ([`Node::answer_when_durable`]).
    fn save_room(&self, id: &RoomId) -> Result<(), RpcError> {
        let mut batch = StateBatch::default();
        self.persist_room(id, &mut batch);
        self.store
            .apply(&batch)
            .map_err(|e| RpcError::failed(e.to_string()))
    }

    pub(crate) fn subscribe_room_topics(&mut self) {
        let topics: Vec<_> = self
            .rooms
            .by_id
            .values()
            .filter(|r| r.joined && !r.removed)
            .map(Room::topic)
            .collect();
        for topic in topics {
            let _ = self.swarm.behaviour_mut().gossipsub.subscribe(&topic);
        }
    }

    /// After login: find the other members of every room we are in.
    pub(crate) fn rooms_after_login(&mut self) {
        let ids: Vec<RoomId> = self.rooms.by_id.keys().copied().collect();
        for id in ids {
            self.find_members(&id);
        }
    }

    fn find_members(&mut self, id: &RoomId) {
        let Some(room) = self.rooms.by_id.get(id) else {
            return;
        };
        if !room.joined || room.removed {
            return;
        }
        let me = self.identity.public();
        let peers: Vec<PeerId> = room
            .members()
            .iter()
            .filter(|m| **m != me)
            .map(peer_id_of)
            .collect();
        let public = room.is_public();
        for peer in peers {
            self.wanted_peers.insert(peer);
            if !self.swarm.is_connected(&peer) {
                self.discover(peer);
            }
        }
        if public {
            // Public rooms have no member list: members register under the room's namespace.
            if let (Some(rendezvous), Ok(namespace)) = (
                self.rendezvous_peer(),
                libp2p::rendezvous::Namespace::new(format!("{ROOM_NAMESPACE}{}", id.to_hex())),
            ) && self.session.is_logged_in()
            {
                let _ = self.swarm.behaviour_mut().discovery.register(
                    namespace.clone(),
                    rendezvous,
                    None,
                );
                self.swarm.behaviour_mut().discovery.discover(
                    Some(namespace),
                    None,
                    None,
                    rendezvous,
                );
            }
        }
    }

    /// Asks each sender whose key has been missing a while for it, every so often.
    fn ask_for_missing_keys(&mut self) {
        let now = now_ms();
        // Only while we still hold something of theirs (the held queue drops its oldest).
        let held = &self.rooms.held;
        self.rooms.missing_keys.retain(|(room, sender), _| {
            held.get(room)
                .is_some_and(|queue| queue.iter().any(|(_, m, _)| m.sender.as_bytes() == sender))
        });
        let mut ask = Vec::new();
        for (&(room, sender), missing) in &mut self.rooms.missing_keys {
            let waited = now.saturating_sub(missing.since) >= KEY_WAIT_MS;
            let due = missing
                .asked
                .is_none_or(|at| now.saturating_sub(at) >= KEY_ASK_EVERY_MS);
            if waited && due {
                missing.asked = Some(now);
                ask.push((room, sender));
            }
        }
        for (room, sender) in ask {
            let Ok(sender) = VerifyingKey::from_bytes(&sender) else {
                continue;
            };
            tracing::info!("asking {} for its key to a room", short_key(&sender));
            self.send_direct(Job::to_key(sender, Payload::KeyRequest { room }));
        }
    }

    /// A member lacks our key: hand it again, as we first handed it to them (or, if we never
    /// did, as it is now).
    pub(crate) fn on_key_request(&mut self, from: VerifyingKey, room_id: RoomId) {
        let Some(room) = self.rooms.by_id.get(&room_id) else {
            return;
        };
        let RoomCrypto::Private(keys) = &room.keys else {
            return;
        };
        let me = self.identity.public();
        if !room.joined || room.removed || !keys.is_member(&from) || !keys.is_member(&me) {
            return tracing::debug!("ignoring a key request from {}", short_key(&from));
        }
        let current = keys.my_distribution();
        let given = self
            .store
            .get::<SenderKeyDistribution>(StateKey::KeyGiven(room_id, from.to_bytes()))
            .ok()
            .flatten()
            .filter(|given| given.key_id == current.key_id);
        let distribution = match given {
            Some(given) => given,
            None => {
                let mut batch = StateBatch::default();
                batch.put(StateKey::KeyGiven(room_id, from.to_bytes()), &current);
                if let Err(err) = self.store.apply(&batch) {
                    return tracing::warn!("store: {err}");
                }
                current
            }
        };
        self.send_direct(Job::to_key(
            from,
            Payload::SenderKey {
                room: room_id,
                distribution,
            },
        ));
    }

    /// Test builds only: `PALAVER_FAULT_DROP_KEYS_TO=<user>` loses every sender key handed to
    /// that user with a membership change, as a lost control message would, so the tests can
    /// show the key is asked for and handed again.
    fn fault_drops_keys_to(&self, member: &VerifyingKey) -> bool {
        cfg!(debug_assertions)
            && std::env::var("PALAVER_FAULT_DROP_KEYS_TO")
                .is_ok_and(|name| self.name_of_key(member).is_some_and(|n| n == name))
    }

    /// Writes the rooms whose receiving chains moved (each tick, and before the daemon exits).
    pub(crate) fn save_dirty_rooms(&mut self) {
        let mut batch = StateBatch::default();
        for id in std::mem::take(&mut self.rooms.dirty) {
            self.persist_room(&id, &mut batch);
        }
        if let Err(err) = self.store.apply(&batch) {
            tracing::warn!("store: {err}");
        }
    }

    pub(crate) fn rooms_tick(&mut self) {
        self.save_dirty_rooms();
        self.ask_for_missing_keys();
        // Own messages published while nobody was subscribed yet go out again.
        let sending: Vec<(RoomId, Vec<u8>, MessageId)> = self.unsent_room_messages();
        for (room, frame, id) in sending {
            if self.rooms.not_yet_durable.contains(&id) {
                continue; // its first publish waits for the flush
            }
            self.publish(&room, frame, id);
        }
    }

    fn unsent_room_messages(&self) -> Vec<(RoomId, Vec<u8>, MessageId)> {
        self.store
            .scan::<(RoomId, Vec<u8>, MessageId)>(StateKey::RoomUnsent(MessageId([0; 32])))
            .unwrap_or_default()
    }

    // ---- commands --------------------------------------------------------------------------

    pub(crate) fn room_create(&mut self, name: RoomName, public: bool) -> Result<Value, RpcError> {
        if self.rooms.by_name(&name).is_some() {
            return Err(RpcError::failed(format!(
                "you already have a room called {name}"
            )));
        }
        let me = self.identity.public();
        let (id, keys) = if public {
            let (id, secret) = public_room(&name);
            let mine = Box::new(SenderKey::from_invite_secret(&secret, &me));
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
            let update = MembershipUpdate::sign(self.identity.signing_key(), id.0, 1, vec![me]);
            keys.apply_membership(&mut OsRng, &update)
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
        let _ = self.swarm.behaviour_mut().gossipsub.subscribe(&topic(&id));
        self.find_members(&id);
        Ok(json!({"room": name.as_str(), "id": id.to_hex(), "public": public}))
    }

    fn owned_room(&self, name: &RoomName) -> Result<RoomId, RpcError> {
        let id = self
            .rooms
            .by_name(name)
            .ok_or_else(|| RpcError::failed(format!("no room called {name}")))?;
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
                super::Pending::LookupThenInvite {
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
    fn change_membership(
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
        let epoch = keys.epoch().unwrap_or(0) + 1;
        let update =
            MembershipUpdate::sign(self.identity.signing_key(), id.0, epoch, members.clone());
        let actions = keys
            .apply_membership(&mut OsRng, &update)
            .map_err(|e| RpcError::failed(e.to_string()))?;
        self.save_room(&id)?;
        for member in members
            .iter()
            .filter(|m| **m != me && previous_members.contains(m))
        {
            self.send_direct(Job::to_key(*member, Payload::Membership(update.clone())));
        }
        self.find_members(&id);
        Ok((update, actions))
    }

    fn carry_out(&mut self, room: RoomId, actions: Vec<KeyAction>) {
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
            .apply_membership(&mut OsRng, &update)
            .map_err(|e| RpcError::failed(e.to_string()))?;
        room.joined = true;
        room.removed = false;
        self.save_room(&id)?;
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
        let id = self
            .rooms
            .by_name(&name)
            .ok_or_else(|| RpcError::failed(format!("no room called {name}")))?;
        let me = self.identity.public();
        let room = &self.rooms.by_id[&id];
        let owner = room.owner();
        if owner == Some(me) && room.members().len() > 1 {
            return Err(RpcError::failed(format!(
                "you own {name}: kick the other members first, then leave"
            )));
        }
        if let Some(owner) = owner.filter(|o| *o != me && room.joined && !room.removed) {
            self.send_direct(Job::to_key(owner, Payload::Leave { room: id }));
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
        Ok(json!({"room": name.as_str(), "left": true}))
    }

    pub(crate) fn room_members(&self, name: &RoomName) -> Result<Value, RpcError> {
        let id = self
            .rooms
            .by_name(name)
            .ok_or_else(|| RpcError::failed(format!("no room called {name}")))?;
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
                    .map(|p| super::link::state_str(p.state))
                    .unwrap_or("unknown");
                json!({"name": name, "owner": owner == Some(*key), "presence": state})
            })
            .collect();
        Ok(Value::Array(members))
    }

    /// Who is in a room as far as we can tell: a private room's member list; for a public room,
    /// which anyone may join unannounced, ourselves and everyone we have heard from in it.
    fn known_members(&self, room: &Room) -> Vec<VerifyingKey> {
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
    fn room_seal(
        &mut self,
        name: RoomName,
        text: String,
    ) -> Result<(RoomId, Vec<u8>, MessageId), RpcError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(RpcError::invalid(format!(
                "a message has at most {MAX_TEXT_LEN} bytes"
            )));
        }
        let id = self
            .rooms
            .by_name(&name)
            .ok_or_else(|| RpcError::failed(format!("no room called {name}")))?;
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
                (message, mine.verifying_key())
            }
        };
        let body = Body::Room(RoomMessage {
            room: id,
            sender: me,
            signing_key,
            message,
        });
        let room = &self.rooms.by_id[&id];
        let envelope = Envelope::sign_with(body, |bytes| match &room.keys {
            RoomCrypto::Private(keys) => keys.sign(bytes),
            RoomCrypto::Public { mine, .. } => mine.sign(bytes),
        })
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
            .put(StateKey::Meta(super::direct::CLOCK_META), &stamp)
            .put(StateKey::Seq(conversation), &seq)
            .put(log_key(&id, &me, seq), &frame)
            .put(StateKey::RoomUnsent(msg_id), &(id, frame.clone(), msg_id));
        self.persist_room(&id, &mut batch);
        self.store
            .record(&entry, &batch)
            .map_err(|e| RpcError::failed(format!("could not store the message: {e}")))?;
        Ok((id, frame, msg_id))
    }

    fn publish(&mut self, room: &RoomId, frame: Vec<u8>, id: MessageId) {
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

    // ---- receiving -------------------------------------------------------------------------

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
                        Err(RoomReject::Held) => gossipsub::MessageAcceptance::Ignore,
                        Err(RoomReject::Invalid(reason)) => {
                            tracing::debug!("room message from {source} rejected: {reason}");
                            gossipsub::MessageAcceptance::Reject
                        }
                    }
                }
            }
            _ => gossipsub::MessageAcceptance::Reject,
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
                match keys.signing_key_of(&message.sender, message.message.key_id) {
                    None => {
                        tracing::debug!(
                            "holding {id} until {}'s key {} arrives",
                            short_key(&message.sender),
                            message.message.key_id
                        );
                        let missing = &mut self.rooms.missing_keys;
                        if missing.len() < MAX_MISSING_KEYS {
                            missing
                                .entry((room_id, message.sender.to_bytes()))
                                .or_insert(MissingKey {
                                    since: now_ms(),
                                    asked: None,
                                });
                        }
                        hold(&mut self.rooms.held, id, message, frame);
                        return Err(RoomReject::Held);
                    }
                    Some(key) if *key != message.signing_key => {
                        return Err(RoomReject::Invalid(
                            "signed with a key the sender did not give us".into(),
                        ));
                    }
                    Some(_) => keys.decrypt(&message.sender, &message.message),
                }
            }
            RoomCrypto::Public {
                secret, received, ..
            } => {
                let key = received
                    .entry(message.sender.to_bytes())
                    .or_insert_with(|| {
                        ReceivedSenderKey::from_invite_secret(secret, &message.sender)
                    });
                if *key.signing_key() != message.signing_key {
                    return Err(RoomReject::Invalid(
                        "not signed with the room's key for this sender".into(),
                    ));
                }
                key.decrypt(&message.message, &public_ad(&room_id, &message.sender))
            }
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
                super::Pending::WhoIs { then: None },
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
        if invite.membership.owner != sender || invite.membership.room != invite.room.0 {
            tracing::warn!("ignoring an invitation not sent by the room's owner");
            return;
        }
        if invite.membership.verify().is_err() {
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
        let _ = self.save_room(&invite.room);
        self.emit(json!({"type": "invite", "room": invite.name.as_str(), "from": inviter}));
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
        let _ = self.save_room(&room_id);
        self.release_held(room_id);
    }

    fn release_held(&mut self, room_id: RoomId) {
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
        if room.owner() != Some(sender) {
            return;
        }
        if !room.joined {
            // Not accepted yet: join with the newest membership (updates may arrive out of order;
            // joining with an older one would leave the newest members without our key).
            keep_newest(&mut room.invitation, update);
            let _ = self.save_room(&room_id);
            return;
        }
        let RoomCrypto::Private(keys) = &mut room.keys else {
            return;
        };
        match keys.apply_membership(&mut OsRng, &update) {
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
                    self.emit(json!({"type": "removed", "room": name.as_str()}));
                }
                let _ = self.save_room(&room_id);
                self.carry_out(room_id, actions);
                let early = self.rooms.early_keys.remove(&room_id).unwrap_or_default();
                for (from, distribution) in early {
                    self.on_sender_key(from, room_id, distribution);
                }
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

/// Why a room message was not taken.
#[derive(Debug)]
pub(crate) enum RoomReject {
    /// Kept until the sender's key arrives.
    Held,
    Invalid(String),
}

fn hold(
    held: &mut HashMap<RoomId, VecDeque<HeldMessage>>,
    id: MessageId,
    message: RoomMessage,
    frame: Vec<u8>,
) {
    let queue = held.entry(message.room).or_default();
    if queue.len() == MAX_HELD {
        queue.pop_front();
    }
    queue.push_back((id, message, frame));
}

/// Keeps `update` as the membership to join with unless a newer one is already kept.
fn keep_newest(kept: &mut Option<MembershipUpdate>, update: MembershipUpdate) {
    if kept.as_ref().is_none_or(|kept| update.epoch > kept.epoch) {
        *kept = Some(update);
    }
}

fn public_ad(room: &RoomId, sender: &VerifyingKey) -> Vec<u8> {
    let mut ad = b"palaver/v1/public-room/ad".to_vec();
    ad.extend_from_slice(&room.0);
    ad.extend_from_slice(sender.as_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::keep_newest;
    use palaver_protocol::Identity;
    use palaver_protocol::crypto::room::MembershipUpdate;

    #[test]
    fn an_older_membership_arriving_late_does_not_replace_a_newer_invitation() {
        let owner = Identity::from_secret_bytes(&[1; 32]);
        let update = |epoch| {
            MembershipUpdate::sign(owner.signing_key(), [7; 32], epoch, vec![owner.public()])
        };
        let mut kept = None;
        keep_newest(&mut kept, update(3));
        keep_newest(&mut kept, update(2));
        assert_eq!(kept.as_ref().map(|u| u.epoch), Some(3));
        keep_newest(&mut kept, update(4));
        assert_eq!(kept.map(|u| u.epoch), Some(4));
    }
}
