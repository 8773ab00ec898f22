//! Rooms, driven: the decisions are [`palaver_protocol::node::rooms`]'s; this carries them out
//! against the swarm (a gossipsub topic per room, the gate on its mesh), the store (room
//! records, the room log that gap fill serves, history) and the pairwise outbox.
//!
//! Our own messages are published only once durable (a crash must not make us reuse a chain
//! index); one published while nobody was subscribed yet goes out again when the machine says
//! (a moment later, or when a peer joins the topic).

use std::collections::{BTreeMap, HashMap};

use libp2p::request_response::OutboundRequestId;
use libp2p::{PeerId, gossipsub};
use palaver_protocol::identity::devices::DevicePin;
use palaver_protocol::identity::peer_id_of;
use palaver_protocol::node::rooms::{
    Output, ReadMessage, Room, RoomError, RoomEvent, Rooms, topic_name,
};
use palaver_protocol::{Identity, MessageId, RoomId, VerifyingKey};
use rand_core::OsRng;
use serde_json::{Value, json};

mod commands;
mod gap_fill;
mod receive;

use super::Node;
use super::direct::{Job, short_key};
use crate::rpc::RpcError;
use crate::store::{ConversationId, HistoryEntry, StateBatch, StateKey, Status, Store, StoreError};

/// What the driver keeps of rooms beside the machine: gap fill requests out, and the messages
/// read in this wake-up, written together at its end ([`Node::write_room_reads`]).
#[derive(Debug, Default)]
pub(crate) struct RoomIo {
    gap_fills: HashMap<OutboundRequestId, (RoomId, PeerId)>,
    /// Whom we ask for what we missed, and when again.
    asking: palaver_protocol::node::rooms::gap_fill::GapFills,
    reads: Vec<ReadMessage>,
}

/// Room messages read but not yet written, at most; past that they are written at once.
const MAX_UNWRITTEN_READS: usize = 256;

impl RoomIo {
    /// Whether message `id` is read and waiting to be written (as good as stored: a second copy
    /// of it must not reach the room machine, whose chain has moved past it).
    pub(crate) fn is_unwritten(&self, id: &MessageId) -> bool {
        self.reads.iter().any(|read| read.id == *id)
    }
}

/// The rooms in the store, with every pinned device list (whose devices are whose). A room
/// record an older version wrote in a format this one no longer reads (room keys before
/// membership epochs) is left where it is and skipped, with a warning: its history stays; to
/// write in it again, its owner invites us again.
pub(crate) fn load(store: &Store, identity: &Identity) -> Result<Rooms, StoreError> {
    let mut rooms = Vec::new();
    for (key, room) in store.scan_each(StateKey::Room(RoomId([0; 32]))) {
        match room {
            Ok(room) => rooms.push(room),
            Err(StoreError::Corrupt { detail, .. }) => tracing::warn!(
                room = %hex::encode(key.get(1..).unwrap_or_default()),
                "a room stored by an older version cannot be read ({detail}); its history \
                 stays, but ask its owner to invite you again to write in it"
            ),
            Err(err) => return Err(err),
        }
    }
    let mut rooms = Rooms::new(identity.clone(), rooms);
    let pins = store.scan_each::<DevicePin>(StateKey::Devices(""));
    for (key, pin) in pins {
        match pin {
            Ok(pin) => rooms.know_devices(pin.list()),
            Err(err) => tracing::warn!(
                user = %String::from_utf8_lossy(key.get(1..).unwrap_or_default()),
                "cannot read a pinned device list: {err}"
            ),
        }
    }
    Ok(rooms)
}

/// The id of the room called `name` in the store, read without the daemon (for `history`).
pub(crate) fn stored_id(
    store: &Store,
    name: &palaver_protocol::RoomName,
) -> Result<Option<RoomId>, StoreError> {
    for (_, room) in store.scan_each::<Room>(StateKey::Room(RoomId([0; 32]))) {
        match room {
            Ok(room) if &room.name == name => return Ok(Some(room.id)),
            Ok(_) | Err(StoreError::Corrupt { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(None)
}

fn topic(id: &RoomId) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(topic_name(id))
}

/// A room's log of envelopes, for gap fill: `(sender, seq)` →
/// [`LogRecord`](palaver_protocol::node::rooms::LogRecord).
fn log_key(room: &RoomId, sender: &VerifyingKey, seq: u64) -> StateKey<'static> {
    StateKey::RoomLog(*room, sender.to_bytes(), seq)
}

/// A refused room command, for the control socket.
fn refused(err: RoomError) -> RpcError {
    match err {
        RoomError::TooLong => RpcError::invalid(err.to_string()),
        err => RpcError::failed(err.to_string()),
    }
}

impl Node {
    fn persist_room(&self, id: &RoomId, batch: &mut StateBatch) {
        if let Some(room) = self.state.rooms.room(id) {
            batch.put(StateKey::Room(*id), room);
        }
    }

    /// Carries out what the rooms machine decided, in order. A room record that cannot be
    /// written is handed back to the machine, which has it written again a moment later and
    /// holds what is to be sent about the room until then (the first such error is returned,
    /// for a command to answer with), rather than the change living only in memory.
    pub(crate) fn drive_rooms(&mut self) -> Result<(), StoreError> {
        let mut result = Ok(());
        let mut sought = false;
        while let Some(output) = self.state.poll_room_output(super::now_ms(), &mut OsRng) {
            match output {
                Output::Save(id) => {
                    let mut batch = StateBatch::default();
                    self.persist_room(&id, &mut batch);
                    match self.store.apply(&batch) {
                        Ok(()) => self.state.rooms.written(id),
                        Err(err) => {
                            tracing::error!("cannot store a room change ({err}); trying again");
                            self.state.rooms.write_failed(id, super::now_ms());
                            result = result.and(Err(err));
                        }
                    }
                }
                Output::Forget(id) => {
                    let forget = self
                        .store
                        .apply(StateBatch::default().remove(StateKey::Room(id)));
                    if let Err(err) = forget {
                        tracing::error!("cannot forget a room ({err})");
                        result = result.and(Err(err));
                    }
                }
                Output::KeyGiven {
                    room,
                    members,
                    distribution,
                } => {
                    let mut batch = StateBatch::default();
                    for member in &members {
                        batch.put(StateKey::KeyGiven(room, member.to_bytes()), &distribution);
                    }
                    if let Err(err) = self.store.apply(&batch) {
                        tracing::error!("cannot note a room key handed out ({err}); trying again");
                        let now = super::now_ms();
                        (self.state.rooms).key_given_failed(room, members, distribution, now);
                        result = result.and(Err(err));
                    }
                }
                Output::Send { to, payload, .. } => self.send_direct(Job::to_key(to, *payload)),
                Output::Read(read) => {
                    self.room_io.reads.push(*read);
                    if self.room_io.reads.len() >= MAX_UNWRITTEN_READS {
                        self.write_room_reads();
                    }
                }
                Output::Republish(room) => self.republish(room),
                Output::MeshChanged(id) => self.gate_room(&id),
                Output::Subscribe(id) => {
                    let _ = self.swarm.behaviour_mut().gossipsub.subscribe(&topic(&id));
                }
                Output::Unsubscribe(id) => {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .unsubscribe(&topic(&id));
                }
                // The delivery planner was asked to reach them.
                Output::Seek { .. } => sought = true,
                Output::Register(room) => self.register_in_room(room),
                Output::Unregister(room) => self.unregister_from_room(room),
                Output::Event(RoomEvent::Invited { room, from }) => {
                    let from = self.name_of_key(&from).unwrap_or_else(|| short_key(&from));
                    let room = room.to_string();
                    self.emit(crate::rpc::Event::Invite { room, from });
                }
                Output::Event(RoomEvent::Removed { room }) => {
                    let room = room.to_string();
                    self.emit(crate::rpc::Event::Removed { room });
                }
            }
        }
        if sought {
            self.drive_delivery();
        }
        result
    }

    /// The messages the machine read since the last call: into the history and the rooms' logs,
    /// one [`Store::record_in_order`] per room, then to `listen`. Called at the end of every wake-up of the
    /// actor: the receives of one wake-up share their write. Our clock moves past each message's
    /// stamp, and each is filed under its own (bounded against a clock far ahead of ours; by its
    /// send time if an old peer sent a bare Lamport counter); the clock's advance goes with them.
    pub(crate) fn write_room_reads(&mut self) {
        if self.room_io.reads.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.room_io.reads);
        let mut clock = match self.clock() {
            Ok(clock) => clock,
            Err(err) => {
                return tracing::error!("cannot store {} room messages: {err}", reads.len());
            }
        };
        let mut by_room: BTreeMap<RoomId, Vec<(HistoryEntry, StateBatch, ReadMessage)>> =
            BTreeMap::new();
        for read in reads {
            let from = self.name_of_key(&read.sender);
            let stamp = clock.observe(read.stamp.or_sent_at(read.sent_at_ms), super::now_ms());
            let entry = HistoryEntry {
                id: read.id,
                conversation: ConversationId::Room(read.room),
                label: format!("#{}", read.room_name),
                from: from.unwrap_or_else(|| short_key(&read.sender)),
                sender: read.sender.to_bytes(),
                text: read.text.clone(),
                sent_at_ms: read.sent_at_ms,
                stamp,
                seq: read.seq,
                status: Status::Received,
            };
            let mut batch = StateBatch::default();
            batch.put(log_key(&read.room, &read.sender, read.seq), &read.log);
            if let Some(offer) = &read.file {
                let record = palaver_protocol::node::files::Incoming::offered(
                    offer.clone(),
                    read.sender,
                    Some(read.room),
                );
                batch.put(StateKey::FileIn(read.id), &record);
            }
            by_room
                .entry(read.room)
                .or_default()
                .push((entry, batch, read));
        }
        let mut advanced = StateBatch::default();
        advanced.put(StateKey::Meta(super::direct::CLOCK_META), &clock.current());
        for (room, items) in by_room {
            let entries: Vec<(&HistoryEntry, &StateBatch)> = items
                .iter()
                .map(|(entry, batch, _)| (entry, batch))
                .collect();
            // The clock's advance goes with the first room's write (it only moves forward).
            let new = self
                .store
                .record_in_order(&ConversationId::Room(room), &entries, &advanced);
            advanced = StateBatch::default();
            let new = match new {
                Ok(new) => new,
                Err(err) => {
                    tracing::error!("cannot store {} room messages: {err}", items.len());
                    continue;
                }
            };
            for ((entry, _, read), new) in items.into_iter().zip(new) {
                if !new {
                    continue;
                }
                let named = self.name_of_key(&read.sender).is_some();
                self.emit_message(&read.sender, Some(&entry), named);
                if let Some(offer) = read.file {
                    self.file_offered(read.id, offer, read.sender, Some(read.room), None);
                }
            }
        }
    }

    /// Tells the gate who may now be in room `id`'s topic.
    fn gate_room(&mut self, id: &RoomId) {
        let topic = topic(id).hash();
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        match self.state.rooms.mesh(id) {
            Some(members) => gossipsub.set_members(topic, members.iter().map(peer_id_of).collect()),
            None => gossipsub.open(&topic),
        }
    }

    /// At start-up: the rooms' topics and their gates, and what a previous run could not
    /// publish yet.
    pub(crate) fn subscribe_room_topics(&mut self) {
        self.state.rooms.start();
        match self.unsent() {
            Ok(unsent) => {
                for (room, ..) in unsent {
                    self.state.rooms.unpublished(room, super::now_ms());
                }
            }
            // What waits goes out at the next start.
            Err(err) => tracing::error!("cannot read the room messages not yet published: {err}"),
        }
        let _ = self.drive_rooms();
    }

    /// Writes the rooms whose receiving chains moved since they were last written (on the way
    /// out; otherwise the machine has them written a moment after they moved).
    pub(crate) fn save_dirty_rooms(&mut self) {
        let mut batch = StateBatch::default();
        for id in self.state.rooms.take_dirty() {
            self.persist_room(&id, &mut batch);
        }
        if let Err(err) = self.store.apply(&batch) {
            // A receiving chain a little behind only derives forward again after the restart.
            tracing::error!("cannot store room state on the way out: {err}");
        }
    }

    /// Our messages stored as not yet published (nobody was subscribed when they were sealed).
    fn unsent(&self) -> Result<Vec<(RoomId, Vec<u8>, MessageId)>, StoreError> {
        self.store.scan(StateKey::RoomUnsent(MessageId([0; 32])))
    }

    /// Publishes again our messages in `room` that found nobody subscribed; the machine
    /// said when.
    fn republish(&mut self, room: RoomId) {
        let unsent = match self.unsent() {
            Ok(unsent) => unsent,
            Err(err) => {
                tracing::error!("cannot read the room messages not yet published: {err}");
                // Asked again a moment later.
                return self.state.rooms.unpublished(room, super::now_ms());
            }
        };
        for (_, frame, id) in unsent.into_iter().filter(|(r, ..)| *r == room) {
            // One not yet durable is published by its flush.
            if self.state.rooms.may_publish(&id) {
                self.publish(&room, frame, id);
            }
        }
    }

    fn publish(&mut self, room: &RoomId, frame: Vec<u8>, id: MessageId) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic(room), frame)
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                // Left behind, it is published once more at the next start (gossip and the
                // receivers drop the duplicate).
                let mut published = StateBatch::default();
                published.remove(StateKey::RoomUnsent(id));
                if let Err(err) = self.store.apply(&published) {
                    tracing::warn!("cannot note room message {id} as published: {err}");
                }
                self.set_status(&id, Status::Sent);
            }
            Err(err) => {
                tracing::debug!("room message {id} not published yet: {err}");
                self.state.rooms.unpublished(*room, super::now_ms());
            }
        }
    }

    /// What the gate and the room checks turned away, for `status`.
    pub(crate) fn gossip_status(&self) -> Value {
        let counters = self.swarm.behaviour().gossipsub.counters();
        let mut status = serde_json::to_value(counters).unwrap_or_else(|_| json!({}));
        if let Some(fields) = status.as_object_mut() {
            // Messages that reached the signature and decryption checks and failed them: an
            // outsider's never get this far.
            fields.insert(
                "rejected_after_checks".into(),
                json!(self.state.rooms.rejected()),
            );
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use palaver_protocol::{Identity, RoomId, RoomName};

    use crate::store::{StateBatch, StateKey, Store};

    /// A home whose room records an older version wrote still starts: those rooms are skipped.
    #[test]
    fn a_room_record_in_an_old_format_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = StateBatch::default();
        batch.put(
            StateKey::Room(RoomId([4; 32])),
            &"room keys before epochs".to_string(),
        );
        store.apply(&batch).unwrap();
        let identity = Identity::from_secret_bytes(&[1; 32]);
        let rooms = super::load(&store, &identity).expect("loads");
        assert_eq!(rooms.iter().count(), 0);
        let team = RoomName::new("team").unwrap();
        assert_eq!(super::stored_id(&store, &team).unwrap(), None);
    }
}
