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
//! Epochs: every private-room message carries the membership epoch of its sender key. A message
//! from an epoch newer than ours is held while we ask its sender for the owner's signed update
//! (as for a missing key); one under a key from before the last removal is refused once the
//! grace is over ([`EpochClock`]), and we hand its sender the update it evidently missed, so it
//! rotates and its next messages go through.
//!
//! Every room message we hold (sent or received) is kept in a per-room log keyed by sender and
//! sequence number, so a member who was away can ask for what it missed ([`Node::request_gap_fill`])
//! when it next connects to another member; the answer is verified and deduplicated like gossip.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use libp2p::request_response::OutboundRequestId;
use libp2p::{PeerId, gossipsub};
use palaver_protocol::crypto::CryptoError;
use palaver_protocol::crypto::room::{
    EPOCH_GRACE_MS, EpochClock, KeyAction, MembershipUpdate, RoomKeys,
};
use palaver_protocol::crypto::sender_key::{ReceivedSenderKey, SenderKey, SenderKeyDistribution};
use palaver_protocol::identity::peer_id_of;
use palaver_protocol::wire::{Body, Content, MAX_TEXT_LEN, Payload, RoomInvite, RoomMessage};
use palaver_protocol::{Envelope, MessageId, RoomId, RoomName, UserName, VerifyingKey, codec};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod commands;
mod gap_fill;
mod mesh;
mod receive;

use super::direct::{Job, short_key};
use super::durable::not_durable;
use super::{Node, now_ms};
use crate::rpc::Reply;
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
/// Senders whose chains a public room keeps; one more is refused.
const MAX_PUBLIC_SENDERS: usize = 4096;
/// How often at most we hand the same member the membership update when it keeps sending
/// under a key from before the last removal (the update travels over the pairwise outbox,
/// which retries by itself).
const STALE_PUSH_EVERY_MS: u64 = 30_000;
/// Members we remember having handed the update to, over all rooms.
const MAX_STALE_PUSHES: usize = 1024;

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
    /// Senders whose key (or whose epoch's membership update) we lack for messages we hold:
    /// since when, and when we last asked.
    missing_keys: HashMap<(RoomId, [u8; 32]), MissingKey>,
    /// Members that sent under a key from before the last removal, and when we last handed
    /// them the membership update.
    stale_pushes: HashMap<(RoomId, [u8; 32]), u64>,
    /// Rooms whose receiving chains moved since they were last written ([`Node::save_dirty_rooms`]).
    dirty: HashSet<RoomId>,
    /// Room messages from gossip that failed the signature or decryption checks.
    rejected_gossip: u64,
}

#[derive(Debug, Clone, Copy)]
struct MissingKey {
    since: u64,
    asked: Option<u64>,
    /// The held messages are from an epoch newer than ours: what we lack is the membership
    /// update, so that is what we ask for.
    behind: bool,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("rooms", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

impl Rooms {
    /// The rooms in the store. A room record an older version wrote in a format this one no
    /// longer reads (room keys before membership epochs) is left where it is and skipped, with a
    /// warning: its history stays; to write in it again, its owner invites us again.
    pub(crate) fn load(store: &Store) -> Result<Self, StoreError> {
        let mut by_id = BTreeMap::new();
        for (key, room) in store.scan_each::<Room>(StateKey::Room(RoomId([0; 32]))) {
            match room {
                Ok(room) => {
                    by_id.insert(room.id, room);
                }
                Err(StoreError::Corrupt { detail, .. }) => tracing::warn!(
                    room = %hex::encode(key.get(1..).unwrap_or_default()),
                    "a room stored by an older version cannot be read ({detail}); its history \
                     stays, but ask its owner to invite you again to write in it"
                ),
                Err(err) => return Err(err),
            }
        }
        Ok(Self {
            by_id,
            ..Self::default()
        })
    }

    fn by_name(&self, name: &RoomName) -> Option<RoomId> {
        self.by_id
            .values()
            .find(|room| &room.name == name)
            .map(|room| room.id)
    }

    /// The public rooms we are in, whose namespaces carry our discovery record.
    pub(crate) fn public_joined(&self) -> Vec<RoomId> {
        self.by_id
            .values()
            .filter(|room| room.is_public() && room.joined && !room.removed)
            .map(|room| room.id)
            .collect()
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

    /// Writes room `id` after something received changed it. If the store refuses, the room
    /// stays dirty and is written again at the next tick, rather than the change living only in
    /// memory until a restart loses it.
    fn save_received_room(&mut self, id: &RoomId) {
        if let Err(err) = self.save_room(id) {
            tracing::error!("cannot store a room change ({}); trying again", err.message);
            self.rooms.dirty.insert(*id);
        }
    }

    pub(crate) fn subscribe_room_topics(&mut self) {
        let ids: Vec<RoomId> = self.rooms.by_id.keys().copied().collect();
        for id in &ids {
            self.gate_room(id);
        }
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
            self.delivery_input(palaver_protocol::node::direct::Input::Want(peer));
            if !self.swarm.is_connected(&peer) {
                // Without the rendezvous, it is looked up at the next login.
                self.discover(peer);
            }
        }
        if public {
            // Public rooms have no member list: members register under the room's namespace,
            // and once ours is kept, we see who else is there.
            self.register_in_room(*id);
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
                ask.push((room, sender, missing.behind));
            }
        }
        for (room, sender, behind) in ask {
            let Ok(sender) = VerifyingKey::from_bytes(&sender) else {
                continue;
            };
            let payload = if behind {
                tracing::info!("asking {} for a room's membership", short_key(&sender));
                Payload::MembershipRequest { room }
            } else {
                tracing::info!("asking {} for its key to a room", short_key(&sender));
                Payload::KeyRequest { room }
            };
            self.send_direct(Job::to_key(sender, payload));
        }
    }

    /// A member holds messages from an epoch it has not seen: hand it the owner's signed update
    /// we applied (any member may; the owner's signature is what counts).
    pub(crate) fn on_membership_request(&mut self, from: VerifyingKey, room_id: RoomId) {
        let Some(room) = self.rooms.by_id.get(&room_id) else {
            return;
        };
        let RoomCrypto::Private(keys) = &room.keys else {
            return;
        };
        if !room.joined || room.removed || !keys.is_member(&from) {
            return tracing::debug!("ignoring a membership request from {}", short_key(&from));
        }
        if let Some(update) = keys.signed_membership().cloned() {
            self.send_direct(Job::to_key(from, Payload::Membership(update)));
        }
    }

    /// `sender` is still sending under a key from before the last removal: it missed the
    /// update, so hand it over (at most every [`STALE_PUSH_EVERY_MS`] per member).
    fn hand_membership_to_stale_sender(&mut self, room_id: RoomId, sender: VerifyingKey) {
        let now = now_ms();
        let pushes = &mut self.rooms.stale_pushes;
        if pushes.len() >= MAX_STALE_PUSHES {
            pushes.retain(|_, at| now.saturating_sub(*at) < STALE_PUSH_EVERY_MS);
        }
        let key = (room_id, sender.to_bytes());
        let due = pushes
            .get(&key)
            .is_none_or(|at| now.saturating_sub(*at) >= STALE_PUSH_EVERY_MS);
        if !due || (!pushes.contains_key(&key) && pushes.len() >= MAX_STALE_PUSHES) {
            return;
        }
        pushes.insert(key, now);
        let update = self
            .rooms
            .by_id
            .get(&room_id)
            .and_then(|room| match &room.keys {
                RoomCrypto::Private(keys) => keys.signed_membership().cloned(),
                RoomCrypto::Public { .. } => None,
            });
        if let Some(update) = update {
            tracing::info!(
                "{} sends under a key from before the last removal; handing it the membership",
                short_key(&sender)
            );
            self.send_direct(Job::to_key(sender, Payload::Membership(update)));
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
        self.fault_drops_to("PALAVER_FAULT_DROP_KEYS_TO", member)
    }

    /// Test builds only: `PALAVER_FAULT_DROP_REMOVALS_TO=<user>` (on the owner) loses every
    /// membership update that removes someone on its way to that member, so the tests can show
    /// that a member that missed a kick is refused and then catches up.
    fn fault_drops_removals_to(&self, member: &VerifyingKey) -> bool {
        self.fault_drops_to("PALAVER_FAULT_DROP_REMOVALS_TO", member)
    }

    fn fault_drops_to(&self, variable: &str, member: &VerifyingKey) -> bool {
        cfg!(debug_assertions)
            && std::env::var(variable)
                .is_ok_and(|name| self.name_of_key(member).is_some_and(|n| n == name))
    }

    /// The clock for room epoch checks. Test builds take `PALAVER_ROOM_EPOCH_GRACE_MS` to
    /// shorten the grace, so a test need not wait 30 s (read once: this runs per message).
    fn epoch_clock(&self) -> EpochClock {
        static GRACE_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let grace_ms = *GRACE_MS.get_or_init(|| {
            std::env::var("PALAVER_ROOM_EPOCH_GRACE_MS")
                .ok()
                .filter(|_| cfg!(debug_assertions))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(EPOCH_GRACE_MS)
        });
        EpochClock {
            now_ms: now_ms(),
            grace_ms,
        }
    }

    /// Writes the rooms whose receiving chains moved (each tick, and before the daemon exits).
    pub(crate) fn save_dirty_rooms(&mut self) {
        let mut batch = StateBatch::default();
        let dirty = std::mem::take(&mut self.rooms.dirty);
        for id in &dirty {
            self.persist_room(id, &mut batch);
        }
        if let Err(err) = self.store.apply(&batch) {
            // Kept dirty: written again at the next tick.
            tracing::error!("cannot store room state ({err}); trying again");
            self.rooms.dirty = dirty;
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
}

/// Why a room message was not taken.
#[derive(Debug)]
pub(crate) enum RoomReject {
    /// Kept until the sender's key (or its epoch's membership update) arrives.
    Held,
    /// Under a sender key from before the last removal, after the grace: genuine, but its
    /// sender missed the update (it is handed the update). Not held against who relayed it.
    Stale,
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

/// Why an invitation from `sender` is not taken, if it is not: only a room's owner invites, to
/// the room it signed for; a room we already hold (one we were removed from, say) keeps the
/// owner it has, so nobody else can invite us back into it under their own membership.
fn invite_refusal(
    existing: Option<&Room>,
    sender: &VerifyingKey,
    invite: &RoomInvite,
) -> Option<&'static str> {
    if invite.membership.owner != *sender {
        return Some("not sent by the owner it names");
    }
    if invite.membership.room != invite.room.0 {
        return Some("its membership is for another room");
    }
    if let Some(room) = existing
        && room.owner() != Some(*sender)
    {
        return Some("not sent by the room's owner");
    }
    if invite.membership.verify().is_err() {
        return Some("its membership is not signed by the owner");
    }
    None
}

/// Keeps `update` as the membership to join with unless a newer one is already kept.
fn keep_newest(kept: &mut Option<MembershipUpdate>, update: MembershipUpdate) {
    if kept.as_ref().is_none_or(|kept| update.epoch > kept.epoch) {
        *kept = Some(update);
    }
}

/// The chain that opens a public-room `message`, once its author is proven. Everyone who knows
/// the room's name holds every member's derived keys, so authorship rests on the envelope's
/// identity signature alone: the envelope (verified on decode against `signing_key`) must be
/// signed by the sender's identity key. Only then is a chain derived and kept: for the key id
/// the member drew when it joined (a new id is a new join and replaces the old chain; replays
/// are caught by the message index before this), and for at most [`MAX_PUBLIC_SENDERS`].
fn public_sender_key<'a>(
    secret: &[u8; 32],
    received: &'a mut BTreeMap<[u8; 32], ReceivedSenderKey>,
    message: &RoomMessage,
) -> Result<&'a mut ReceivedSenderKey, RoomReject> {
    if message.signing_key != message.sender {
        return Err(RoomReject::Invalid(
            "not signed by the sender's identity key".into(),
        ));
    }
    let (sender, key_id) = (message.sender.to_bytes(), message.message.key_id);
    if !received.contains_key(&sender) && received.len() >= MAX_PUBLIC_SENDERS {
        return Err(RoomReject::Invalid("too many senders in this room".into()));
    }
    let key = received
        .entry(sender)
        .or_insert_with(|| ReceivedSenderKey::from_invite_secret(secret, &message.sender, key_id));
    if key.key_id() != key_id {
        *key = ReceivedSenderKey::from_invite_secret(secret, &message.sender, key_id);
    }
    Ok(key)
}

fn public_ad(room: &RoomId, sender: &VerifyingKey) -> Vec<u8> {
    let mut ad = b"palaver/v1/public-room/ad".to_vec();
    ad.extend_from_slice(&room.0);
    ad.extend_from_slice(sender.as_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{
        Room, RoomCrypto, RoomReject, invite_refusal, keep_newest, public_ad, public_sender_key,
    };
    use palaver_protocol::crypto::room::{MembershipUpdate, RoomKeys};
    use palaver_protocol::crypto::sender_key::SenderKey;
    use palaver_protocol::wire::{Body, RoomInvite, RoomMessage, WireError};
    use palaver_protocol::{Envelope, Identity, RoomId, RoomName};
    use rand_core::OsRng;

    /// A home whose room records an older version wrote still starts: those rooms are skipped.
    #[test]
    fn a_room_record_in_an_old_format_is_skipped_not_fatal() {
        use crate::store::{StateBatch, StateKey, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = StateBatch::default();
        batch.put(
            StateKey::Room(RoomId([4; 32])),
            &"room keys before epochs".to_string(),
        );
        store.apply(&batch).unwrap();
        let rooms = super::Rooms::load(&store).expect("loads");
        assert!(rooms.by_id.is_empty());
    }

    #[test]
    fn a_forged_public_room_message_naming_a_member_is_rejected() {
        let ann = Identity::from_secret_bytes(&[1; 32]);
        let (room, secret) = (RoomId([3; 32]), [5; 32]);
        // Knowing the name is knowing the secret: a forger derives ann's sender key itself.
        let mut derived = SenderKey::from_invite_secret(&secret, &ann.public(), &mut OsRng);
        let message = derived
            .encrypt(b"content", &public_ad(&room, &ann.public()))
            .unwrap();
        let body = |signing_key| {
            Body::Room(RoomMessage {
                room,
                sender: ann.public(),
                signing_key,
                message: message.clone(),
            })
        };
        let decoded = |envelope: Envelope| -> Result<RoomMessage, WireError> {
            match Envelope::from_bytes(&envelope.to_bytes()?)?.body {
                Body::Room(message) => Ok(message),
                Body::Direct(_) => unreachable!(),
            }
        };
        let mut received = BTreeMap::new();

        // Signed with the derived key it carries: a valid envelope, but not ann's signature.
        let forged =
            Envelope::sign_with(body(derived.verifying_key()), |b| derived.sign(b)).unwrap();
        let forged = decoded(forged).unwrap();
        assert!(matches!(
            public_sender_key(&secret, &mut received, &forged),
            Err(RoomReject::Invalid(_))
        ));
        assert!(
            received.is_empty(),
            "nothing is kept for a message that failed"
        );
        // Claiming ann's identity key as the signer: the signature does not check out.
        let claimed = Envelope::sign_with(body(ann.public()), |b| derived.sign(b)).unwrap();
        assert!(matches!(decoded(claimed), Err(WireError::BadSignature)));

        // Ann's own, signed with her identity key, opens.
        let genuine =
            decoded(Envelope::sign(body(ann.public()), ann.signing_key()).unwrap()).unwrap();
        let key = public_sender_key(&secret, &mut received, &genuine).unwrap();
        assert_eq!(
            key.decrypt(&genuine.message, &public_ad(&room, &ann.public()))
                .unwrap(),
            b"content"
        );
    }

    #[test]
    fn only_the_owner_invites_even_into_a_room_we_were_removed_from() {
        let (owner, stranger, me) = (
            Identity::from_secret_bytes(&[1; 32]),
            Identity::from_secret_bytes(&[2; 32]),
            Identity::from_secret_bytes(&[3; 32]),
        );
        let id = RoomId([7; 32]);
        let invite_by = |inviter: &Identity| RoomInvite {
            room: id,
            name: RoomName::new("team").unwrap(),
            membership: MembershipUpdate::sign(
                inviter.signing_key(),
                id.0,
                9,
                9,
                vec![inviter.public(), me.public()],
            ),
            invite_secret: None,
        };
        // A room we were removed from, owned by `owner`.
        let removed = Room {
            id,
            name: RoomName::new("team").unwrap(),
            keys: RoomCrypto::Private(Box::new(RoomKeys::new(
                &mut OsRng,
                id.0,
                owner.public(),
                me.public(),
            ))),
            joined: true,
            invitation: None,
            removed: true,
        };
        let from_owner = invite_by(&owner);
        assert_eq!(
            invite_refusal(Some(&removed), &owner.public(), &from_owner),
            None
        );
        // Someone else signs a membership naming themselves the owner of that same room.
        let from_stranger = invite_by(&stranger);
        assert_eq!(
            invite_refusal(Some(&removed), &stranger.public(), &from_stranger),
            Some("not sent by the room's owner")
        );
        // A new room: whoever signs it owns it, but must send it themselves.
        assert_eq!(
            invite_refusal(None, &stranger.public(), &from_stranger),
            None
        );
        assert_eq!(
            invite_refusal(None, &stranger.public(), &from_owner),
            Some("not sent by the owner it names")
        );
    }

    #[test]
    fn an_older_membership_arriving_late_does_not_replace_a_newer_invitation() {
        let owner = Identity::from_secret_bytes(&[1; 32]);
        let update = |epoch| {
            MembershipUpdate::sign(owner.signing_key(), [7; 32], epoch, 1, vec![owner.public()])
        };
        let mut kept = None;
        keep_newest(&mut kept, update(3));
        keep_newest(&mut kept, update(2));
        assert_eq!(kept.as_ref().map(|u| u.epoch), Some(3));
        keep_newest(&mut kept, update(4));
        assert_eq!(kept.map(|u| u.epoch), Some(4));
    }
}
