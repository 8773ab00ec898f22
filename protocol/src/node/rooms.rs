//! Rooms: membership, sender-key logistics and room crypto, as one sans-IO machine.
//!
//! Private rooms: the creator owns the room and signs every membership change. An invitation
//! travels over the pairwise session; `join` accepts it, and every member then hands its sender
//! key to the others, each over its pairwise session ([`KeyAction::Distribute`]). A kick makes
//! every remaining member rotate its key and hand the new one to the remaining members only.
//!
//! Public rooms: id and key are derived from the room's name, so anyone who knows the name can
//! join and read; there is no owner and no kick.
//!
//! Keys that go missing: a message whose sender's key has not arrived is held (bounded), and
//! after [`KEY_WAIT_MS`] its sender is asked for the key, again every [`KEY_ASK_EVERY_MS`]. A
//! key that arrives before its invitation, or before the membership update naming its sender,
//! is kept (bounded) until then.
//!
//! Epochs: every private-room message carries the membership epoch of its sender key. A message
//! from an epoch newer than ours is held while we ask its sender for the owner's signed update
//! (as for a missing key); one under a key from before the last removal is refused once the
//! grace is over ([`EpochClock`]), and we hand its sender the update it evidently missed, so it
//! rotates and its next messages go through.
//!
//! Linked devices: membership is per account, sender keys per device. The [`Roster`] (every
//! pinned device list) says which devices a member account has: each gets our key, may send,
//! and is let into the mesh. A device gained gets our key; a device lost makes us rotate
//! ([`Rooms::devices_changed`]). Private rooms are made on the device holding the account key,
//! which owns them (a linked device's key could be revoked, and with it the room's management).
//! A sender key from another of our own devices for a room we are only invited to means our
//! account joined there: this device joins too.
//!
//! [`Rooms`] takes what arrives (`receive`, `on_*`) and what the user asks (the commands), with
//! the time and randomness passed in, and hands out what to do through [`Rooms::poll_output`]:
//! records to write, pairwise payloads to send, messages read, topics to join or leave. The
//! driver owns the store, the swarm and the history; gap fill's cursors and answers are pure
//! functions of the room log it holds ([`gap_fill`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::crypto::CryptoError;
use crate::crypto::room::{
    Accounts, EPOCH_GRACE_MS, EpochClock, KeyAction, MembershipUpdate, RoomKeys,
};
use crate::crypto::sender_key::{MessageKey, ReceivedSenderKey, SenderKey, SenderKeyDistribution};
use crate::identity::Identity;
use crate::identity::devices::DeviceList;
use crate::wire::{Content, MessageId, Payload, RoomId, RoomInvite, RoomMessage, WireError};
use crate::{RoomName, UserName};

mod commands;
pub mod gap_fill;
mod log;
mod outgoing;
mod receive;
mod roster;

pub use log::{LogRecord, WithoutText};
pub use outgoing::{MAX_AWAITING_FLUSH, MAX_HELD_BACK};

pub use receive::GossipVerdict;
pub use roster::{DevicesChange, Roster};

#[cfg(test)]
mod tests;

/// Messages held while their sender's key has not arrived, per room.
pub const MAX_HELD: usize = 256;
/// Sender keys that arrived before the invitation they belong to.
pub const MAX_EARLY_KEYS: usize = 64;
/// How long a message waits for its sender's key before we ask the sender for it: keys normally
/// arrive within moments of the messages they open, so asking at once would only add traffic.
pub const KEY_WAIT_MS: u64 = 5_000;
/// How often we ask the same sender again while its key stays missing.
pub const KEY_ASK_EVERY_MS: u64 = 30_000;
/// How often we ask for a missing key before we give up and drop what we hold of that sender
/// (about four minutes): gap fill brings those messages again when we next meet a member.
pub const MAX_ASKS: u32 = 8;
/// Senders whose keys we wait for, over all rooms.
pub const MAX_MISSING_KEYS: usize = 1024;
/// Senders whose chains a public room keeps; one more is refused.
pub const MAX_PUBLIC_SENDERS: usize = 4096;
/// How often at most we hand the same member the membership update when it keeps sending
/// under a key from before the last removal, or answer one we do not count as a member (the
/// update travels over the pairwise outbox, which retries by itself).
pub const STALE_PUSH_EVERY_MS: u64 = 30_000;
/// Members we remember having answered so, over all rooms.
pub const MAX_STALE_PUSHES: usize = 1024;

/// One room as it is stored.
#[derive(Serialize, Deserialize)]
pub struct Room {
    pub id: RoomId,
    pub name: RoomName,
    pub keys: RoomCrypto,
    /// `false` while this is an invitation not yet accepted.
    pub joined: bool,
    /// The owner's latest membership update, kept so that `join` can apply it.
    pub invitation: Option<MembershipUpdate>,
    /// Removed by the owner: we keep the history, but read and send nothing more.
    pub removed: bool,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("public", &self.is_public())
            .field("state", &self.state())
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RoomCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoomCrypto::Private(_) => "RoomCrypto::Private(..)",
            RoomCrypto::Public { .. } => "RoomCrypto::Public(..)",
        })
    }
}

/// A room's keys: a private room's sender keys and membership, or a public room's derived ones.
#[derive(Serialize, Deserialize)]
pub enum RoomCrypto {
    Private(Box<RoomKeys>),
    Public {
        secret: [u8; 32],
        mine: Box<SenderKey>,
        received: BTreeMap<[u8; 32], ReceivedSenderKey>,
    },
}

impl Room {
    pub fn is_public(&self) -> bool {
        matches!(self.keys, RoomCrypto::Public { .. })
    }

    /// Joined and not removed: we read and write here.
    pub fn is_active(&self) -> bool {
        self.joined && !self.removed
    }

    /// A private room's members (a public room has no list).
    pub fn members(&self) -> Vec<VerifyingKey> {
        match &self.keys {
            RoomCrypto::Private(keys) => keys.members().to_vec(),
            RoomCrypto::Public { .. } => Vec::new(),
        }
    }

    /// Whether `key` (an account, or a device of one) is in the room.
    pub fn is_member(&self, key: &VerifyingKey, accounts: &impl Accounts) -> bool {
        match &self.keys {
            RoomCrypto::Private(keys) => keys.is_member_device(key, accounts),
            RoomCrypto::Public { .. } => true,
        }
    }

    pub fn owner(&self) -> Option<VerifyingKey> {
        match &self.keys {
            RoomCrypto::Private(keys) => Some(*keys.owner()),
            RoomCrypto::Public { .. } => None,
        }
    }

    /// The membership epoch we hold (private rooms, once joined).
    pub fn epoch(&self) -> Option<u64> {
        match &self.keys {
            RoomCrypto::Private(keys) => keys.epoch(),
            RoomCrypto::Public { .. } => None,
        }
    }

    /// "joined", "invited" or "removed".
    pub fn state(&self) -> &'static str {
        match (self.joined, self.removed) {
            (_, true) => "removed",
            (true, false) => "joined",
            (false, false) => "invited",
        }
    }

    /// Who is in the room as far as we can tell: a private room's member list; for a public
    /// room, which anyone may join unannounced, `me` and everyone whose chain we keep, and
    /// `also` (the senders in the room's log, say), each once.
    pub fn known_members(
        &self,
        me: VerifyingKey,
        also: impl IntoIterator<Item = [u8; 32]>,
    ) -> Vec<VerifyingKey> {
        let RoomCrypto::Public { received, .. } = &self.keys else {
            return self.members();
        };
        let mut seen = HashSet::new();
        std::iter::once(me.to_bytes())
            .chain(received.keys().copied())
            .chain(also)
            .filter(|key| seen.insert(*key))
            .filter_map(|key| VerifyingKey::from_bytes(&key).ok())
            .collect()
    }
}

/// A room our account is in (or invited to), as one of our devices hands it to a device being
/// linked: what the new device needs to take part. Its own sender key it makes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedRoom {
    pub id: RoomId,
    pub name: RoomName,
    /// The owner's signed membership (a private room); `None` for a public room.
    pub membership: Option<MembershipUpdate>,
}

impl Room {
    /// What a device being linked needs of this room: a private room we are in or invited to,
    /// or a public one we are in; nothing of one we were removed from.
    pub fn hand_over(&self) -> Option<LinkedRoom> {
        let membership = match &self.keys {
            _ if self.removed => return None,
            RoomCrypto::Public { .. } if !self.joined => return None,
            RoomCrypto::Public { .. } => None,
            RoomCrypto::Private(_) if !self.joined => Some(self.invitation.clone()?),
            RoomCrypto::Private(keys) => Some(keys.signed_membership()?.clone()),
        };
        Some(LinkedRoom {
            id: self.id,
            name: self.name.clone(),
            membership,
        })
    }

    /// Room `linked` on the new device `me`: a public room joined under a key of its own; a
    /// private one as an invitation, which it joins when another of our devices hands it its
    /// sender key (see the module docs) or when the user joins it. `None` if what was handed
    /// over does not hold together.
    pub fn handed_over(
        linked: LinkedRoom,
        me: VerifyingKey,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Option<Room> {
        let (keys, joined, invitation) = match linked.membership {
            None => {
                let (id, keys) = public_room_keys(&linked.name, &me, rng);
                (id == linked.id).then_some((keys, true, None))?
            }
            Some(update) => {
                if update.room != linked.id.0 || update.verify().is_err() {
                    return None;
                }
                let keys = RoomKeys::new(rng, linked.id.0, update.owner, me);
                (RoomCrypto::Private(Box::new(keys)), false, Some(update))
            }
        };
        Some(Room {
            id: linked.id,
            name: linked.name,
            keys,
            joined,
            invitation,
            removed: false,
        })
    }
}

/// Public room `name`'s id, and `me`'s keys in it (a fresh key id: a chain never used before).
fn public_room_keys(
    name: &RoomName,
    me: &VerifyingKey,
    rng: &mut (impl CryptoRng + RngCore),
) -> (RoomId, RoomCrypto) {
    let (id, secret) = public_room(name);
    let mine = Box::new(SenderKey::from_invite_secret(&secret, me, rng));
    let received = BTreeMap::new();
    let keys = RoomCrypto::Public {
        secret,
        mine,
        received,
    };
    (id, keys)
}

/// The gossipsub topic of room `id`.
pub fn topic_name(id: &RoomId) -> String {
    format!("palaver/room/{}", id.to_hex())
}

/// Public rooms' id and secret come from their name.
pub fn public_room(name: &RoomName) -> (RoomId, [u8; 32]) {
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

/// A room message read: for the history, and for the room's log (gap fill serves `log`).
#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub id: MessageId,
    pub room: RoomId,
    pub room_name: RoomName,
    pub sender: VerifyingKey,
    /// What the history shows: the text, or a file's [`FileOffer::summary`].
    pub text: String,
    /// The file it offers, if it is a file message.
    pub file: Option<crate::wire::FileOffer>,
    pub sent_at_ms: u64,
    pub stamp: crate::delivery::Stamp,
    pub seq: u64,
    /// What the room's log keeps of it, under `(sender, seq)`.
    pub log: LogRecord,
}

/// What the user should hear of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    Invited { room: RoomName, from: VerifyingKey },
    Removed { room: RoomName },
}

/// What to do.
#[derive(Debug)]
pub enum Output {
    /// Write room `id`'s record ([`Rooms::room`]) now, then [`Rooms::written`]; if that fails,
    /// [`Rooms::write_failed`] (it is handed out again a moment later).
    Save(RoomId),
    /// Remove room `id`'s record (we left it).
    Forget(RoomId),
    /// Write down that `distribution` was handed to `members` (before the sends that follow):
    /// a member who asks again gets the same, never an earlier index.
    KeyGiven {
        room: RoomId,
        members: Vec<VerifyingKey>,
        distribution: SenderKeyDistribution,
    },
    /// Send `payload` about `room` to `to` over the pairwise session (after the record of
    /// `room` is written, if the last write of it failed).
    Send {
        room: RoomId,
        to: VerifyingKey,
        payload: Box<Payload>,
    },
    /// A message was read.
    Read(Box<ReadMessage>),
    /// Publish again our messages in room `id` that found nobody subscribed (the driver keeps
    /// them); one that fails again is reported with [`Rooms::unpublished`].
    Republish(RoomId),
    /// Who may be in room `id`'s gossip mesh changed ([`Rooms::mesh`]).
    MeshChanged(RoomId),
    Subscribe(RoomId),
    Unsubscribe(RoomId),
    /// Find these members (keep a connection to each: discover, dial).
    Seek {
        room: RoomId,
        members: Vec<VerifyingKey>,
    },
    /// Register in public room `room`'s discovery namespace: its members are found there.
    Register(RoomId),
    /// Stop registering in public room `room`'s namespace.
    Unregister(RoomId),
    Event(RoomEvent),
}

/// Why a room message was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum RoomReject {
    /// Kept until the sender's key (or its epoch's membership update) arrives.
    Held,
    /// Under a sender key from before the last removal, after the grace: genuine, but its
    /// sender missed the update (it is handed the update). Not held against who relayed it.
    Stale,
    Invalid(String),
}

/// What inviting a user takes first ([`Rooms::invite_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteStep {
    /// Their key is pinned: invite them with it.
    Invite(VerifyingKey),
    /// Look them up at the rendezvous first, then ask again.
    LookUp,
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("you already have a room called {0}")]
    Exists(RoomName),
    #[error("no room called {0}")]
    NoSuchRoom(RoomName),
    #[error("{0} is public: anyone may join, and nobody can be removed")]
    Public(RoomName),
    #[error("only the owner of {0} can change its members")]
    NotOwner(RoomName),
    #[error("{user} is already a member of {room}")]
    AlreadyMember { user: UserName, room: RoomName },
    #[error("{user} is not a member of {room}")]
    NotMember { user: UserName, room: RoomName },
    #[error("the owner cannot kick themselves; use `room leave`")]
    KickingSelf,
    #[error("you are in {0} already")]
    InvitingSelf(RoomName),
    #[error("cannot invite {0}: their key could not be taken in")]
    KeyNotTakenIn(UserName),
    #[error("not connected to the rendezvous; cannot look up the user")]
    CannotLookUp,
    #[error(
        "no invitation to {0}; ask its owner to invite you, or, if it is a public room, \
         `room join {0} --public`"
    )]
    NoInvitation(RoomName),
    #[error("you were removed from {0}; ask its owner to invite you again")]
    RemovedAskAgain(RoomName),
    #[error("you own {0}: kick the other members first, then leave")]
    OwnerLeaving(RoomName),
    #[error(
        "{0} is owned by your first device (the one holding your account key): change its \
         members, or leave it, there"
    )]
    OwnedByOurOtherDevice(RoomName),
    #[error(
        "private rooms are made on the device holding your account key (your first device), \
         which manages their members; a public room (--public) can be made here"
    )]
    PrivateOnAccountDevice,
    #[error("you are invited to {0} but have not joined: `room join {0}`")]
    NotJoined(RoomName),
    #[error("you were removed from {0}")]
    Removed(RoomName),
    #[error("an invitation {0}")]
    InvitationRefused(&'static str),
    #[error("the room is gone")]
    Gone,
    #[error("a message has at most {} bytes", crate::wire::MAX_TEXT_LEN)]
    TooLong,
    #[error("too many room messages are waiting for the disk; try again in a moment")]
    DiskBehind,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Encode(#[from] crate::codec::EncodeError),
}

/// A sender whose key (or whose epoch's membership update) we lack for messages we hold.
#[derive(Debug, Clone, Copy)]
struct MissingKey {
    since: u64,
    asked: Option<u64>,
    asks: u32,
    /// The held messages are from an epoch newer than ours: what we lack is the membership
    /// update, so that is what we ask for.
    behind: bool,
}

impl MissingKey {
    fn due(&self) -> u64 {
        let waited = self.since.saturating_add(KEY_WAIT_MS);
        match self.asked {
            Some(at) => waited.max(at.saturating_add(KEY_ASK_EVERY_MS)),
            None => waited,
        }
    }
}

/// A room message waiting for its sender's key.
struct HeldMessage {
    id: MessageId,
    message: RoomMessage,
    signature: Signature,
    frame: Vec<u8>,
}

/// A receiving chain that moved is written this long after (with every other that moved
/// meanwhile), not with each message.
pub const SAVE_CHAINS_AFTER_MS: u64 = 1_000;

/// Our own messages that found nobody subscribed to their room are published again this often
/// (and at once when a peer joins the room's topic).
pub const REPUBLISH_EVERY_MS: u64 = 1_000;

/// All rooms, in memory; every change is handed out to be written ([`Output::Save`]); a
/// receiving chain's advance is written [`SAVE_CHAINS_AFTER_MS`] later.
pub struct Rooms {
    identity: Identity,
    /// Whose devices are whose (see the module docs).
    roster: Roster,
    grace_ms: u64,
    by_id: BTreeMap<RoomId, Room>,
    held: HashMap<RoomId, VecDeque<HeldMessage>>,
    early_keys: HashMap<RoomId, Vec<(VerifyingKey, SenderKeyDistribution)>>,
    missing_keys: HashMap<(RoomId, [u8; 32]), MissingKey>,
    /// Whom we last handed the membership (or asked for it) unbidden, and when: members that
    /// sent under a key from before the last removal, senders we do not count as members.
    answered: HashMap<(RoomId, [u8; 32]), u64>,
    /// Rooms whose receiving chains moved since they were last written, and when they are
    /// written (wall-clock ms).
    dirty: BTreeSet<RoomId>,
    save_dirty_at: Option<u64>,
    /// Rooms holding our own messages that found nobody subscribed, and when to try again.
    unpublished: BTreeMap<RoomId, u64>,
    /// Our own messages sealed but not yet durable ([`Rooms::settled`]).
    awaiting_flush: HashSet<MessageId>,
    /// Rooms whose last write failed, and what is to be sent about them once written.
    unwritten: BTreeMap<RoomId, VecDeque<Output>>,
    /// Room messages that failed the signature or decryption checks.
    rejected: u64,
    outputs: VecDeque<Output>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("rooms", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

impl Rooms {
    /// `rooms` as they were stored; the standard epoch grace.
    pub fn new(identity: Identity, rooms: impl IntoIterator<Item = Room>) -> Self {
        Self {
            identity,
            roster: Roster::default(),
            grace_ms: EPOCH_GRACE_MS,
            by_id: rooms.into_iter().map(|room| (room.id, room)).collect(),
            held: HashMap::new(),
            early_keys: HashMap::new(),
            missing_keys: HashMap::new(),
            answered: HashMap::new(),
            dirty: BTreeSet::new(),
            save_dirty_at: None,
            unpublished: BTreeMap::new(),
            awaiting_flush: HashSet::new(),
            unwritten: BTreeMap::new(),
            rejected: 0,
            outputs: VecDeque::new(),
        }
    }

    /// With a different grace for messages under keys from before a removal.
    pub fn with_grace_ms(mut self, grace_ms: u64) -> Self {
        self.grace_ms = grace_ms;
        self
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A device list pinned before this run: its devices stand for its account (nothing is
    /// handed out: what it changed was acted on when it was pinned).
    pub fn know_devices(&mut self, list: &DeviceList) {
        self.roster.set(list);
    }

    /// A newer device list of `list.account` (ours or a member's) is about to be pinned: in
    /// every room we share with the account, a new device gets our key, and a lost one makes us
    /// rotate ours; the mesh and the members sought follow. Keys that came early from a new
    /// device are taken now, and what they open is read. Call it before pinning the list: a
    /// crash in between learns the list, and does this, again.
    pub fn devices_changed(
        &mut self,
        list: &DeviceList,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) {
        let change = self.roster.set(list);
        if change.is_empty() {
            return;
        }
        let account = list.account;
        let ids: Vec<RoomId> = self.by_id.keys().copied().collect();
        for id in ids {
            let Some(room) = self.by_id.get_mut(&id) else {
                continue;
            };
            let invited = !room.joined
                && (room.invitation.as_ref()).is_some_and(|u| u.members.contains(&account));
            let RoomCrypto::Private(keys) = &mut room.keys else {
                continue;
            };
            if invited {
                self.outputs.push_back(Output::MeshChanged(id));
                // A key from one of our devices we did not know yet joins us now.
                for (from, distribution) in self.early_keys.remove(&id).unwrap_or_default() {
                    self.on_sender_key(from, id, distribution, now, rng);
                }
                continue;
            }
            if !room.joined || room.removed || !keys.is_member(&account) {
                continue;
            }
            let (added, removed) = (&change.added, &change.removed);
            let actions = keys.devices_changed(rng, &account, added, removed, &self.roster);
            self.outputs.push_back(Output::Save(id));
            self.outputs.push_back(Output::MeshChanged(id));
            self.carry_out(id, actions);
            self.take_early_keys(id, now);
            self.release_held(id, now);
            self.seek(&id);
        }
    }

    /// Whose devices are whose, as the pinned device lists say.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// The account this device speaks for (its own key, unless it is a linked device).
    pub fn account(&self) -> VerifyingKey {
        self.roster.account_of(&self.identity.public())
    }

    /// Whether `key` (an account or a device) is a member of room `id`, which we are in.
    pub fn has_member(&self, id: &RoomId, key: &VerifyingKey) -> bool {
        (self.by_id.get(id)).is_some_and(|r| r.is_active() && r.is_member(key, &self.roster))
    }

    pub fn room(&self, id: &RoomId) -> Option<&Room> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Room> {
        self.by_id.values()
    }

    pub fn id_by_name(&self, name: &RoomName) -> Option<RoomId> {
        self.by_id
            .values()
            .find(|room| &room.name == name)
            .map(|room| room.id)
    }

    /// `name`, or else `name-2`, `name-3`…: the first that none of our rooms is called (room
    /// names are ours, ids the owners'; two owners may pick the same name).
    fn free_name(&self, name: &RoomName) -> RoomName {
        if self.id_by_name(name).is_none() {
            return name.clone();
        }
        (2..=self.by_id.len() + 1)
            .find_map(|n| {
                let suffix = format!("-{n}");
                let room = name.as_str();
                let base: String = room
                    .chars()
                    .take(RoomName::MAX_LEN - suffix.len())
                    .collect();
                let candidate = RoomName::new(format!("{base}{suffix}")).ok()?;
                self.id_by_name(&candidate).is_none().then_some(candidate)
            })
            .unwrap_or_else(|| name.clone())
    }

    /// The room called `name`, or why not.
    pub fn find(&self, name: &RoomName) -> Result<&Room, RoomError> {
        self.id_by_name(name)
            .and_then(|id| self.by_id.get(&id))
            .ok_or_else(|| RoomError::NoSuchRoom(name.clone()))
    }

    /// The public rooms we are in, whose namespaces carry our discovery record.
    pub fn public_joined(&self) -> Vec<RoomId> {
        self.by_id
            .values()
            .filter(|room| room.is_public() && room.is_active())
            .map(|room| room.id)
            .collect()
    }

    /// The other devices in room `id` as far as we know (see [`Room::known_members`]; every
    /// device of a private room's member accounts): none if we are not in it.
    pub fn others(&self, id: &RoomId) -> Vec<VerifyingKey> {
        let me = self.identity.public();
        let room = self.by_id.get(id).filter(|room| room.is_active());
        self.devices_but_mine(room.into_iter().flat_map(|room| room.known_members(me, [])))
    }

    /// Every device of `accounts` (as the roster says) but this one, each once.
    fn devices_but_mine(
        &self,
        accounts: impl IntoIterator<Item = VerifyingKey>,
    ) -> Vec<VerifyingKey> {
        let me = self.identity.public();
        let mut seen = HashSet::new();
        (accounts.into_iter())
            .flat_map(|account| self.roster.devices_of(&account))
            .filter(|device| *device != me && seen.insert(device.to_bytes()))
            .collect()
    }

    /// The private rooms we are in whose members include `key`, an account or a device (to ask
    /// it for what we missed).
    pub fn shared_with(&self, key: &VerifyingKey) -> Vec<RoomId> {
        let roster = &self.roster;
        self.by_id
            .values()
            .filter(|room| room.is_active() && !room.is_public() && room.is_member(key, roster))
            .map(|room| room.id)
            .collect()
    }

    /// Who may be in room `id`'s gossip mesh besides us: every device of a private room's
    /// member accounts (an invitation not yet accepted admits the members it names, so they are
    /// in the mesh the moment we join). `None`: anyone (a public room, or one we no longer hold).
    pub fn mesh(&self, id: &RoomId) -> Option<Vec<VerifyingKey>> {
        let room = self.by_id.get(id)?;
        let RoomCrypto::Private(keys) = &room.keys else {
            return None;
        };
        let invited = (room.invitation.iter()).filter(|_| !room.joined);
        let members = keys
            .members()
            .iter()
            .chain(invited.flat_map(|u| &u.members));
        Some(self.devices_but_mine(members.copied()))
    }

    /// Room messages that failed the signature or decryption checks, so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Counts a room message that could not even be decoded.
    pub fn count_rejected(&mut self) {
        self.rejected += 1;
    }

    /// The rooms whose receiving chains moved since they were last written (on the way out:
    /// otherwise they are handed out as [`Output::Save`] a moment after they moved).
    pub fn take_dirty(&mut self) -> Vec<RoomId> {
        self.save_dirty_at = None;
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// Room `id` must be written (its receiving chain moved, or its last write failed): it is
    /// handed out as [`Output::Save`] [`SAVE_CHAINS_AFTER_MS`] after `now`, with the others.
    pub fn mark_dirty(&mut self, id: RoomId, now: u64) {
        if self.by_id.contains_key(&id) {
            self.dirty.insert(id);
            self.save_dirty_at
                .get_or_insert(now.saturating_add(SAVE_CHAINS_AFTER_MS));
        }
    }

    /// Some of our messages in room `id` found nobody subscribed: they are handed out as
    /// [`Output::Republish`] in [`REPUBLISH_EVERY_MS`], or when a peer joins its topic.
    pub fn unpublished(&mut self, id: RoomId, now: u64) {
        if self.by_id.get(&id).is_some_and(Room::is_active) {
            self.unpublished
                .entry(id)
                .or_insert(now.saturating_add(REPUBLISH_EVERY_MS));
        }
    }

    /// A peer joined room `id`'s topic: what found nobody before goes out now.
    pub fn topic_peer_joined(&mut self, id: RoomId) {
        if self.unpublished.remove(&id).is_some() {
            self.outputs.push_back(Output::Republish(id));
        }
    }

    /// After start-up: the topics to join, who may be in their meshes.
    pub fn start(&mut self) {
        let ids: Vec<RoomId> = self.by_id.keys().copied().collect();
        for id in ids {
            self.outputs.push_back(Output::MeshChanged(id));
            if self.by_id[&id].is_active() {
                self.outputs.push_back(Output::Subscribe(id));
            }
        }
    }

    /// After login: find the other members of every room we are in, and ask our other devices
    /// about the rooms our account is invited to that this device has not joined.
    pub fn seek_all(&mut self) {
        let ids: Vec<RoomId> = self.by_id.keys().copied().collect();
        for id in ids {
            self.seek(&id);
        }
        self.ask_our_devices();
    }

    /// A room our account is invited to but this device is not in — handed over by a link, or
    /// joined on another of our devices while this one was away (its key for us may have found
    /// no prekeys of ours yet) — is asked of our other devices: one that is in the room answers
    /// with its key, and that makes us join ([`Rooms::on_sender_key`]).
    fn ask_our_devices(&mut self) {
        let account = self.account();
        let ours = self.devices_but_mine([account]);
        let invited: Vec<RoomId> = (self.by_id.values())
            .filter(|room| !room.joined && !room.removed && !room.is_public())
            .filter(|room| (room.invitation.iter()).any(|u| u.members.contains(&account)))
            .map(|room| room.id)
            .collect();
        for room in invited {
            for device in &ours {
                self.send(room, *device, Payload::KeyRequest { room });
            }
        }
    }

    fn seek(&mut self, id: &RoomId) {
        let Some(room) = self.by_id.get(id).filter(|room| room.is_active()) else {
            return;
        };
        let members = self.devices_but_mine(room.members());
        let public = room.is_public();
        self.outputs.push_back(Output::Seek { room: *id, members });
        if public {
            self.outputs.push_back(Output::Register(*id));
        }
    }

    /// When [`Rooms::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let keys = self.missing_keys.values().map(MissingKey::due);
        let republish = self.unpublished.values().copied();
        keys.chain(republish).chain(self.save_dirty_at).min()
    }

    /// Asks each sender whose key has been missing a while for it, every so often; hands out
    /// the rooms whose chains moved to be written, and what found nobody to be published again.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.save_dirty_at.is_some_and(|at| at <= now) {
            for id in self.take_dirty() {
                self.outputs.push_back(Output::Save(id));
            }
        }
        let due: Vec<RoomId> = (self.unpublished.iter())
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.unpublished.remove(&id);
            self.outputs.push_back(Output::Republish(id));
        }
        self.ask_for_missing_keys(now);
    }

    fn ask_for_missing_keys(&mut self, now: u64) {
        // Only while we still hold something of theirs (the held queue drops its oldest).
        let held = &self.held;
        self.missing_keys.retain(|(room, sender), _| {
            held.get(room).is_some_and(|queue| {
                queue
                    .iter()
                    .any(|held| held.message.sender.as_bytes() == sender)
            })
        });
        let mut ask = Vec::new();
        let mut give_up = Vec::new();
        for (&(room, sender), missing) in &mut self.missing_keys {
            if missing.due() > now {
                continue;
            }
            if missing.asks == MAX_ASKS {
                give_up.push((room, sender));
                continue;
            }
            missing.asked = Some(now);
            missing.asks += 1;
            ask.push((room, sender, missing.behind));
        }
        for (room, sender) in give_up {
            self.missing_keys.remove(&(room, sender));
            if let Some(queue) = self.held.get_mut(&room) {
                queue.retain(|held| held.message.sender.to_bytes() != sender);
            }
        }
        ask.sort_unstable();
        for (room, sender, behind) in ask {
            let Ok(to) = VerifyingKey::from_bytes(&sender) else {
                continue;
            };
            let payload = if behind {
                Payload::MembershipRequest { room }
            } else {
                Payload::KeyRequest { room }
            };
            self.send(room, to, payload);
        }
    }

    /// Whether to answer `key` about `room` now: at most every [`STALE_PUSH_EVERY_MS`] per
    /// member and room, for at most [`MAX_STALE_PUSHES`] at once (what a non-member can make
    /// us send is bounded by this).
    fn may_answer(&mut self, room: RoomId, key: &VerifyingKey, now: u64) -> bool {
        let answered = &mut self.answered;
        if answered.len() >= MAX_STALE_PUSHES {
            answered.retain(|_, at| now.saturating_sub(*at) < STALE_PUSH_EVERY_MS);
        }
        let key = (room, key.to_bytes());
        let due = answered
            .get(&key)
            .is_none_or(|at| now.saturating_sub(*at) >= STALE_PUSH_EVERY_MS);
        if !due || (!answered.contains_key(&key) && answered.len() >= MAX_STALE_PUSHES) {
            return false;
        }
        answered.insert(key, now);
        true
    }

    fn epoch_clock(&self, now: u64) -> EpochClock {
        EpochClock {
            now_ms: now,
            grace_ms: self.grace_ms,
        }
    }

    /// Signs and applies a new member list, writes it, and tells the members who were in
    /// already, on each of their devices (a new member learns of it from its invitation);
    /// returns the update and the key hand-outs it asks for, which the caller carries out once
    /// anything that must precede them is sent.
    fn change_membership(
        &mut self,
        id: RoomId,
        members: Vec<VerifyingKey>,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(MembershipUpdate, Vec<KeyAction>), RoomError> {
        let room = self.by_id.get_mut(&id).ok_or(RoomError::Gone)?;
        let previous = room.members();
        let RoomCrypto::Private(keys) = &mut room.keys else {
            return Err(RoomError::Public(room.name.clone()));
        };
        let update = keys.next_membership(self.identity.signing_key(), members.clone());
        let actions = keys.apply_membership(rng, &update, now, &self.roster)?;
        self.outputs.push_back(Output::Save(id));
        self.outputs.push_back(Output::MeshChanged(id));
        let stayed = members.iter().filter(|m| previous.contains(m)).copied();
        self.send_to_accounts(id, stayed.collect(), Payload::Membership(update.clone()));
        self.seek(&id);
        Ok((update, actions))
    }

    fn carry_out(&mut self, room: RoomId, actions: Vec<KeyAction>) {
        for KeyAction::Distribute { to, distribution } in actions {
            self.outputs.push_back(Output::KeyGiven {
                room,
                members: to.clone(),
                distribution: distribution.clone(),
            });
            for member in to {
                self.send(
                    room,
                    member,
                    Payload::SenderKey {
                        room,
                        distribution: distribution.clone(),
                    },
                );
            }
        }
    }

    fn hold(
        &mut self,
        id: MessageId,
        (message, signature): (RoomMessage, Signature),
        frame: Vec<u8>,
        behind: bool,
        now: u64,
    ) {
        let key = (message.room, message.sender.to_bytes());
        if self.missing_keys.len() < MAX_MISSING_KEYS || self.missing_keys.contains_key(&key) {
            let entry = self.missing_keys.entry(key).or_insert(MissingKey {
                since: now,
                asked: None,
                asks: 0,
                behind,
            });
            entry.behind |= behind;
        }
        let queue = self.held.entry(message.room).or_default();
        if queue.len() == MAX_HELD {
            queue.pop_front();
        }
        queue.push_back(HeldMessage {
            id,
            message,
            signature,
            frame,
        });
    }

    /// Messages held for room `id`: read now, or held again (for another key).
    fn release_held(&mut self, id: RoomId, now: u64) {
        let held = self.held.remove(&id).unwrap_or_default();
        for held in held {
            let envelope = (held.message, held.signature);
            let _ = self.receive(held.id, envelope, held.frame, now);
        }
    }

    /// Decodes a message's content once its key opened it (`plaintext`, under `key`).
    fn read(
        room: &Room,
        id: MessageId,
        (message, signature): (&RoomMessage, Signature),
        (plaintext, key): (Vec<u8>, MessageKey),
        frame: Vec<u8>,
    ) -> Result<ReadMessage, RoomReject> {
        let content: Content = codec::decode(&plaintext)
            .map_err(|e| RoomReject::Invalid(format!("bad content: {e}")))?;
        let public = matches!(room.keys, RoomCrypto::Public { .. });
        let log = LogRecord::of_text(id, frame, (message, signature), &content, key, public);
        let (text, file) = match content.payload {
            Payload::Text(text) => (text, None),
            Payload::File(offer) => {
                offer
                    .check()
                    .map_err(|e| RoomReject::Invalid(e.to_string()))?;
                (offer.summary(), Some(offer))
            }
            _ => {
                return Err(RoomReject::Invalid(
                    "rooms carry text and files only".into(),
                ));
            }
        };
        Ok(ReadMessage {
            id,
            room: room.id,
            room_name: room.name.clone(),
            sender: message.sender,
            text,
            file,
            sent_at_ms: content.sent_at_ms,
            stamp: content.stamp,
            seq: content.seq,
            log,
        })
    }
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
