//! The node's durable state in sled.
//!
//! - one tree per conversation (`history/d/<peer key>` or `history/r/<room id>`), keyed by
//!   [`HistoryOrder`]'s key — `(stamp, sender, seq)` in big-endian bytes — so a range scan is
//!   display order;
//! - the `state` tree: the message index (id → where its history entry lives; also the durable
//!   dedup record), and namespaced keys for sessions, rooms, the outbox, contacts and counters.
//!
//! A received direct message is one transaction over its conversation tree and `state`
//! ([`Store::record`]): the history entry, its index entry and whatever session state decrypting
//! it changed. The caller flushes before acknowledging, so an acknowledged message survives a
//! crash and a replayed one is recognised by its id. Received room messages, which change no
//! state of their own, are plain writes in a crash-safe order instead ([`Store::record_in_order`]).

use std::path::Path;

use palaver_protocol::crypto::at_rest::{SEALED, SecretsKey};
use palaver_protocol::delivery::{HISTORY_KEY_LEN, HistoryOrder, Stamp};
use palaver_protocol::node::direct::pairwise::PeerSessions;
use palaver_protocol::node::rooms::LogRecord;
use palaver_protocol::wire::TransferId;
use palaver_protocol::{MessageId, RoomId, codec};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::Transactional;
use std::convert::Infallible;

use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

mod migrate;

/// Set once history is keyed by the hybrid clock (see [`migrate`]).
const HYBRID_ORDER_META: &str = "hybrid_order";
/// Set when the daemon stopped cleanly, every ratchet session on disk as it was last used; taken
/// out at the next start (see [`Store::resume_sessions`]).
const SESSIONS_SETTLED_META: &str = "sessions_settled";
mod unread;

pub use unread::{MAX_UNREAD_COUNTED, Unread};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("the store is in use by a running daemon; use the daemon (or stop it)")]
    Locked,
    #[error("store: corrupt record under {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error(
        "the store's secrets are sealed under the identity's passphrase: give it \
         (PALAVER_PASSPHRASE or --passphrase-file)"
    )]
    SecretsSealed,
}

/// A message's delivery status, as `history` and `listen` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Sending,
    Sent,
    Delivered,
    Queued,
    Failed,
    Received,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Queued => "queued",
            Status::Failed => "failed",
            Status::Received => "received",
        }
    }

    /// Statuses only move forward: a late "sent" must not undo "delivered".
    pub(crate) fn rank(self) -> u8 {
        match self {
            Status::Sending => 0,
            Status::Sent | Status::Queued | Status::Failed => 1,
            Status::Delivered | Status::Received => 2,
        }
    }
}

/// Which conversation a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConversationId {
    /// With the user holding this identity key.
    Direct([u8; 32]),
    Room(RoomId),
}

impl ConversationId {
    fn tree_name(&self) -> String {
        match self {
            ConversationId::Direct(key) => format!("history/d/{}", hex::encode(key)),
            ConversationId::Room(room) => format!("history/r/{}", room.to_hex()),
        }
    }

    fn from_tree_name(name: &[u8]) -> Option<Self> {
        let name = std::str::from_utf8(name).ok()?;
        let mut id = [0u8; 32];
        if let Some(key) = name.strip_prefix("history/d/") {
            hex::decode_to_slice(key, &mut id).ok()?;
            Some(ConversationId::Direct(id))
        } else {
            RoomId::from_hex(name.strip_prefix("history/r/")?).map(ConversationId::Room)
        }
    }
}

/// The sender of a history line that nobody sent: a notice of our own ("bob's safety number
/// changed"). No identity key is all zeroes.
pub const NOTICE_SENDER: [u8; 32] = [0; 32];

/// One message in a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: MessageId,
    pub conversation: ConversationId,
    /// How people name the conversation: the other user's name, or `#room`.
    pub label: String,
    /// The sender's user name.
    pub from: String,
    pub sender: [u8; 32],
    pub text: String,
    pub sent_at_ms: u64,
    /// Where it sorts: the hybrid logical clock stamp it is filed under.
    pub stamp: Stamp,
    pub seq: u64,
    pub status: Status,
}

impl HistoryEntry {
    /// Its place in the conversation.
    pub fn order(&self) -> HistoryOrder {
        HistoryOrder {
            stamp: self.stamp,
            sender: self.sender,
            seq: self.seq,
        }
    }

    /// Byte order of this key is display order.
    pub fn order_key(&self) -> [u8; HISTORY_KEY_LEN] {
        self.order().to_key_bytes()
    }

    /// A notice of our own, not a message (see [`NOTICE_SENDER`]).
    pub fn is_notice(&self) -> bool {
        self.sender == NOTICE_SENDER
    }

    /// The JSON line `history --json` prints (notices with `"notice": true` and no sender).
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "id": self.id.to_hex(),
            "conversation": self.label,
            "from": self.from,
            "text": self.text,
            "sent_at": self.sent_at_ms,
            "status": self.status.as_str(),
        });
        if self.is_notice() {
            json["notice"] = true.into();
        }
        json
    }
}

/// Where a message's history entry lives (the value of the message index).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    /// `None` for control messages (receipts, keys, membership), which have no history entry.
    conversation: Option<ConversationId>,
    order_key: Vec<u8>,
}

/// The tree of the last [`Store::record_in_order`] call's [`Recording`], its one key (a tree of
/// its own: a note of a few KiB rewritten on every call would make `state`'s pages heavy).
const RECORDING_TREE: &str = "recording";
/// The most messages one [`Recording`] notes (a long import is written as several, each note a
/// few KiB at most; only the last can be cut short).
const RECORDING_AT_ONCE: usize = 64;

/// What a [`Store::record_in_order`] call set out to write, noted before it writes anything, so
/// that opening the store can take out a message a crash cut short.
#[derive(Debug, Serialize, Deserialize)]
struct Recording {
    conversation: ConversationId,
    messages: Vec<RecordingOf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordingOf {
    id: MessageId,
    /// Where it was to be filed (it may have gone just after, see [`Store::file_entry`]).
    order_key: Vec<u8>,
    /// The keys of what it carried.
    carried: Vec<Vec<u8>>,
}

/// Namespaces of the `state` tree.
#[derive(Debug, Clone)]
pub enum StateKey<'a> {
    Session([u8; 32]),
    Room(RoomId),
    Outbox(MessageId),
    /// A user name → identity key learned from the rendezvous.
    Contact(&'a str),
    /// An identity key → user name (the reverse of `Contact`).
    Peer([u8; 32]),
    /// My last sequence number in a conversation.
    Seq(ConversationId),
    /// What a room's log keeps of a message (its [`LogRecord`]), by room, sender and sequence
    /// number (for gap fill).
    RoomLog(RoomId, [u8; 32], u64),
    /// A room message of mine not yet handed to gossip.
    RoomUnsent(MessageId),
    /// The sender key of mine I handed a member of a room, as I handed it (to hand again).
    KeyGiven(RoomId, [u8; 32]),
    /// The order key of the last message read in a conversation (see [`Store::unread`]).
    ReadUpTo(ConversationId),
    /// A file offered to us, by the message that offered it: how far it got
    /// ([`palaver_protocol::node::files::Incoming`]).
    FileIn(MessageId),
    /// A file we serve whole, by its transfer id ([`palaver_protocol::node::files::Served`]).
    Served(TransferId),
    /// The transfer id of a file we offered, by the message that offered it.
    FileSent(MessageId),
    /// A user's device list, as pinned ([`palaver_protocol::identity::devices::DevicePin`]);
    /// under our own name, our account's.
    Devices(&'a str),
    /// A copy of one of our messages for another device: the message, whose device, which.
    CopyOf(MessageId),
    /// How each copy of one of our messages fared, by device (`history --json`'s `copies`).
    CopyStatuses(MessageId),
    /// The copies of one of our messages not sealed yet
    /// ([`palaver_protocol::node::devices::PendingCopies`]).
    CopiesPending(MessageId),
    Meta(&'a str),
}

impl StateKey<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(80);
        match self {
            StateKey::Session(key) => bytes.extend([&[b's'][..], key].concat()),
            StateKey::Room(room) => bytes.extend([&[b'r'][..], &room.0].concat()),
            StateKey::Outbox(id) => bytes.extend([&[b'o'][..], &id.0].concat()),
            StateKey::Contact(name) => bytes.extend([&[b'c'][..], name.as_bytes()].concat()),
            StateKey::Peer(key) => bytes.extend([&[b'p'][..], key].concat()),
            StateKey::Seq(ConversationId::Direct(key)) => {
                bytes.extend([&[b'q', b'd'][..], key].concat())
            }
            StateKey::Seq(ConversationId::Room(room)) => {
                bytes.extend([&[b'q', b'r'][..], &room.0].concat())
            }
            StateKey::RoomLog(room, sender, seq) => {
                bytes.extend([&[b'l'][..], &room.0, sender, &seq.to_be_bytes()].concat())
            }
            StateKey::RoomUnsent(id) => bytes.extend([&[b'u'][..], &id.0].concat()),
            StateKey::KeyGiven(room, member) => {
                bytes.extend([&[b'k'][..], &room.0, member].concat())
            }
            StateKey::ReadUpTo(ConversationId::Direct(key)) => {
                bytes.extend([&[b'w', b'd'][..], key].concat())
            }
            StateKey::ReadUpTo(ConversationId::Room(room)) => {
                bytes.extend([&[b'w', b'r'][..], &room.0].concat())
            }
            StateKey::FileIn(id) => bytes.extend([&[b'f'][..], &id.0].concat()),
            StateKey::Served(transfer) => bytes.extend([&[b'v'][..], &transfer.0].concat()),
            StateKey::FileSent(id) => bytes.extend([&[b'x'][..], &id.0].concat()),
            StateKey::Devices(name) => bytes.extend([&[b'D'][..], name.as_bytes()].concat()),
            StateKey::CopyOf(id) => bytes.extend([&[b'C'][..], &id.0].concat()),
            StateKey::CopiesPending(id) => bytes.extend([&[b'P'][..], &id.0].concat()),
            StateKey::CopyStatuses(id) => bytes.extend([&[b'S'][..], &id.0].concat()),
            StateKey::Meta(name) => bytes.extend([&[b'm'][..], name.as_bytes()].concat()),
        }
        bytes
    }
}

const INDEX_TAG: u8 = b'i';

fn index_key(id: &MessageId) -> Vec<u8> {
    let mut key = vec![INDEX_TAG];
    key.extend_from_slice(&id.0);
    key
}

/// State changes to commit together with a history entry (or alone).
#[derive(Debug, Default)]
pub struct StateBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl StateBatch {
    pub fn put<T: Serialize>(&mut self, key: StateKey<'_>, value: &T) -> &mut Self {
        // Values we store are our own types, which always encode.
        let bytes = codec::encode(value).unwrap_or_default();
        self.ops.push((key.bytes(), Some(bytes)));
        self
    }

    pub fn remove(&mut self, key: StateKey<'_>) -> &mut Self {
        self.ops.push((key.bytes(), None));
        self
    }

    /// Removes a record by the raw key a scan found it under (one that did not decode).
    pub fn remove_raw(&mut self, key: Vec<u8>) -> &mut Self {
        self.ops.push((key, None));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// `other`'s changes after these.
    pub fn extend(&mut self, other: StateBatch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }

    /// Applies the changes inside a transaction on the `state` tree, secrets sealed.
    fn apply_in(
        &self,
        state: &TransactionalTree,
        secrets: Option<&SecretsKey>,
    ) -> Result<(), UnabortableTransactionError> {
        for (key, value) in self.at_rest(secrets) {
            match value {
                Some(value) => state.insert(key, value)?,
                None => state.remove(key)?,
            };
        }
        Ok(())
    }

    /// The changes as written: each key with its value (sealed if a secret), or `None` to remove.
    fn at_rest<'a>(
        &'a self,
        secrets: Option<&'a SecretsKey>,
    ) -> impl Iterator<Item = (&'a [u8], Option<Vec<u8>>)> + 'a {
        self.ops.iter().map(move |(key, value)| {
            let value = value.as_ref().map(|value| at_rest(secrets, key, value));
            (key.as_slice(), value)
        })
    }
}

/// The namespaces whose values are secrets to seal at rest (see [`StateKey::bytes`]): ratchet
/// sessions, room keys, the sender keys handed to members, the keys of files offered to us and
/// of files we serve; and our prekey secrets' one key.
const SECRET_NAMESPACES: [u8; 5] = [b's', b'r', b'k', b'f', b'v'];
/// `StateKey::Meta("prekeys")`, where `daemon::link` keeps our prekey secrets.
const PREKEY_SECRETS_KEY: &[u8] = b"mprekeys";

fn is_secret(key: &[u8]) -> bool {
    key.first()
        .is_some_and(|tag| SECRET_NAMESPACES.contains(tag))
        || key == PREKEY_SECRETS_KEY
}

/// What is written under `key`: `value`, sealed if it is a secret and the store has the key.
fn at_rest(secrets: Option<&SecretsKey>, key: &[u8], value: &[u8]) -> Vec<u8> {
    match secrets {
        Some(secrets) if is_secret(key) => secrets.seal(&mut rand_core::OsRng, key, value),
        _ => value.to_vec(),
    }
}

/// Our transactions never abort on purpose: a storage error is their only failure.
/// How far a message is moved on (stamp + 1 each) when its place in history is taken.
const MAX_PLACE_TRIES: u64 = 1024;

/// Writes `entry` into `history` and the index, unless its id is known. Its place (stamp,
/// sender, seq) is never taken from another message: only a sender reusing a sequence number
/// (or stamps clamped to the same bound) can collide, and the later message is then filed just
/// after, rather than overwriting the earlier one. `false` if nothing was written.
fn insert_entry(
    history: &TransactionalTree,
    state: &TransactionalTree,
    entry: &HistoryEntry,
) -> Result<bool, UnabortableTransactionError> {
    if state.get(index_key(&entry.id))?.is_some() {
        return Ok(false);
    }
    let mut placed = entry.clone();
    for _ in 0..MAX_PLACE_TRIES {
        let order_key = placed.order_key();
        if history.get(order_key)?.is_none() {
            let index = IndexEntry {
                conversation: Some(placed.conversation),
                order_key: order_key.to_vec(),
            };
            let index = codec::encode(&index).unwrap_or_default();
            history.insert(&order_key[..], codec::encode(&placed).unwrap_or_default())?;
            state.insert(index_key(&placed.id), index)?;
            return Ok(true);
        }
        placed.stamp = placed.stamp.next();
    }
    // A sender flooding one place: the rest of its messages there are not kept.
    Ok(false)
}

fn committed<T>(result: Result<T, TransactionError<Infallible>>) -> Result<T, StoreError> {
    result.map_err(|err| match err {
        TransactionError::Storage(err) => err.into(),
        TransactionError::Abort(never) => match never {},
    })
}

/// The node's store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    state: sled::Tree,
    /// See [`RECORDING_TREE`].
    recording: sled::Tree,
    /// Set in a passphrase-protected home: secrets are sealed under it (see [`is_secret`]).
    secrets: Option<std::sync::Arc<SecretsKey>>,
}

impl Store {
    /// Opens the store again right after a handle to it was dropped (tests): sled's background
    /// flusher may hold the directory's lock a moment longer, so a lock is waited for (up to
    /// 10 s).
    #[cfg(test)]
    pub(crate) fn reopen(dir: &Path) -> Self {
        Self::retry_while_locked(|| Self::open(dir))
    }

    /// [`Store::reopen`], sealed (tests).
    #[cfg(test)]
    pub(crate) fn reopen_sealed(dir: &Path, secrets: SecretsKey) -> Self {
        let secrets = std::sync::Arc::new(secrets);
        Self::retry_while_locked(|| Self::open_sealed_shared(dir, secrets.clone()))
    }

    #[cfg(test)]
    fn retry_while_locked(open: impl Fn() -> Result<Self, StoreError>) -> Self {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Ok(store) => return store,
                Err(StoreError::Locked) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(err) => panic!("cannot reopen the store: {err}"),
            }
        }
    }

    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                StoreError::Locked
            }
            sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::Locked,
            other => StoreError::Sled(other),
        })?;
        let state = db.open_tree("state")?;
        let recording = db.open_tree(RECORDING_TREE)?;
        let store = Self {
            db,
            state,
            recording,
            secrets: None,
        };
        // Once per store, not at every open: nothing writes counter keys after it.
        if store.get::<bool>(StateKey::Meta(HYBRID_ORDER_META))? != Some(true) {
            let moved = migrate::rekey_lamport_history(&store, crate::daemon::now_ms())?;
            store.apply(StateBatch::default().put(StateKey::Meta(HYBRID_ORDER_META), &true))?;
            store.flush()?;
            if moved > 0 {
                tracing::info!(
                    "re-keyed {moved} history entries from Lamport to hybrid clock order"
                );
            }
        }
        let undone = store.undo_cut_short()?;
        if undone > 0 {
            tracing::info!("took out {undone} received messages a crash left half written");
        }
        Ok(store)
    }

    /// Opens the store of a passphrase-protected home: its secrets are sealed under `secrets`
    /// from now on, and any written before (in the clear) are sealed now.
    pub fn open_sealed(dir: &Path, secrets: SecretsKey) -> Result<Self, StoreError> {
        Self::open_sealed_shared(dir, std::sync::Arc::new(secrets))
    }

    fn open_sealed_shared(
        dir: &Path,
        secrets: std::sync::Arc<SecretsKey>,
    ) -> Result<Self, StoreError> {
        let mut store = Self::open(dir)?;
        let mut batch = sled::Batch::default();
        let mut sealed = 0;
        let secrets_held = SECRET_NAMESPACES
            .iter()
            .flat_map(|tag| store.state.scan_prefix([*tag]))
            .chain(store.state.scan_prefix(PREKEY_SECRETS_KEY));
        for item in secrets_held {
            let (key, value) = item?;
            if is_secret(&key) && value.first() != Some(&SEALED) {
                batch.insert(key.clone(), at_rest(Some(&secrets), &key, &value));
                sealed += 1;
            }
        }
        if sealed > 0 {
            store.state.apply_batch(batch)?;
            store.flush()?;
            tracing::info!("sealed {sealed} secrets in the store under the passphrase");
        }
        store.secrets = Some(secrets);
        Ok(store)
    }

    /// Notes that every stored ratchet session is as it was last used, so the next start need
    /// not skip past their reservations: for a clean stop, once the last flush is done and
    /// nothing can write a session any more.
    pub fn settle_sessions(&self) -> Result<(), StoreError> {
        self.apply(StateBatch::default().put(StateKey::Meta(SESSIONS_SETTLED_META), &true))?;
        self.flush()
    }

    /// The room whose history is labelled `#room` (for reading without the room records).
    pub fn room_by_label(&self, room: &palaver_protocol::RoomName) -> Option<RoomId> {
        let label = format!("#{room}");
        self.conversations()
            .into_iter()
            .find_map(|conversation| match conversation {
                ConversationId::Room(id) => self
                    .history(&conversation, 1)
                    .ok()?
                    .first()
                    .is_some_and(|entry| entry.label == label)
                    .then_some(id),
                ConversationId::Direct(_) => None,
            })
    }

    /// The value stored under `key`, opened if sealed.
    fn read_value<T: DeserializeOwned>(&self, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
        self.read_with(key, bytes, codec::decode::<T>)
    }

    /// [`Store::read_value`] with a decoder of its own (one that also reads an older layout).
    fn read_with<T>(
        &self,
        key: &[u8],
        bytes: &[u8],
        decoder: impl Fn(&[u8]) -> Result<T, codec::DecodeError>,
    ) -> Result<T, StoreError> {
        let what = String::from_utf8_lossy(&key[..1]);
        let corrupt = |e: codec::DecodeError| StoreError::Corrupt {
            key: what.to_string(),
            detail: e.to_string(),
        };
        if bytes.first() != Some(&SEALED) {
            return decoder(bytes).map_err(corrupt);
        }
        let secrets = self.secrets.as_ref().ok_or(StoreError::SecretsSealed)?;
        let plain = secrets.open(key, bytes).map_err(|e| StoreError::Corrupt {
            key: what.to_string(),
            detail: format!("a sealed secret does not open: {e}"),
        })?;
        decoder(&plain).map_err(corrupt)
    }

    /// Our ratchet sessions with the peer whose identity key is `peer`, in either layout they
    /// were stored in ([`PeerSessions::from_stored`]).
    pub fn sessions(&self, peer: [u8; 32]) -> Result<Option<PeerSessions>, StoreError> {
        let key = StateKey::Session(peer).bytes();
        match self.state.get(&key)? {
            Some(bytes) => Ok(Some(self.read_with(
                &key,
                &bytes,
                PeerSessions::from_stored,
            )?)),
            None => Ok(None),
        }
    }

    /// Makes every stored ratchet session safe to encrypt with after a restart
    /// ([`PeerSessions::resume`]): run once at start, before anything is sealed, and flushed.
    /// After a clean stop ([`Store::settle_sessions`]) nothing left that the stored sessions do
    /// not show, so nothing is skipped and peers see no gap. How many peers' sessions it moved on.
    pub fn resume_sessions(&self) -> Result<usize, StoreError> {
        if self.get::<bool>(StateKey::Meta(SESSIONS_SETTLED_META))? == Some(true) {
            // From here on a crash can happen again: the note goes, on disk, before any send.
            self.apply(StateBatch::default().remove(StateKey::Meta(SESSIONS_SETTLED_META)))?;
            self.flush()?;
            return Ok(0);
        }
        let mut batch = StateBatch::default();
        let mut moved = 0;
        let prefix = &StateKey::Session([0; 32]).bytes()[..1];
        for item in self.state.scan_prefix(prefix) {
            let (key, bytes) = item?;
            let Ok(peer) = <[u8; 32]>::try_from(&key[1..]) else {
                continue;
            };
            // One that does not read cannot seal either (a send to that peer fails and says
            // why): it is left as it is.
            let mut sessions = match self.read_with(&key, &bytes, PeerSessions::from_stored) {
                Ok(sessions) => sessions,
                Err(err) => {
                    tracing::warn!("ratchet sessions that do not read: {err}");
                    continue;
                }
            };
            if sessions.resume() {
                batch.put(StateKey::Session(peer), &sessions);
                moved += 1;
            }
        }
        if moved > 0 {
            self.apply(&batch)?;
            self.flush()?;
        }
        Ok(moved)
    }

    fn history_tree(&self, conversation: &ConversationId) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(conversation.tree_name())?)
    }

    /// Records a message with `batch`, atomically; `false` (and nothing written) if its id is known.
    pub fn record(&self, entry: &HistoryEntry, batch: &StateBatch) -> Result<bool, StoreError> {
        let history = self.history_tree(&entry.conversation)?;
        let secrets = self.secrets.as_deref();
        let result = (&history, &self.state).transaction(|(history, state)| {
            let inserted = insert_entry(history, state, entry)?;
            if inserted {
                batch.apply_in(state, secrets)?;
            }
            Ok::<_, ConflictableTransactionError<Infallible>>(inserted)
        });
        committed(result)
    }

    /// Records messages of one conversation (received room messages, our own sends; received
    /// direct messages through [`Store::record_received`]),
    /// each with what goes with it (`batch`, written only for an entry that is new), and
    /// `always`, written first and kept whatever follows: what only moves forward, like the
    /// clock, or our room's chain when we seal (it must never go back, or a key would seal
    /// twice). Which were new.
    ///
    /// Plain writes, not a transaction: sled seals and writes its log buffer twice for every
    /// batch or transaction, which made a received room message cost several times what its
    /// bytes do (BENCHMARKS.md). Instead the writes go in an order that a crash cannot leave
    /// half done, since sled recovers a prefix of its log: first a note of what is about to be
    /// written ([`Recording`], one key for up to [`RECORDING_AT_ONCE`] messages), then per
    /// message its history entry, `batch` (what the message carries: its log record for gap
    /// fill, a file offer) and its index entry last, which marks it as known. A message the
    /// crash cut short is taken out again when the store opens ([`Store::undo_cut_short`]), so
    /// it is simply not known and comes back by gap fill. So `batch` must hold only what the
    /// message brings, never state it consumed (a ratchet step): that goes in `always`, in
    /// [`Store::record_received`]'s `consumed`, or through [`Store::record`].
    pub fn record_in_order(
        &self,
        conversation: &ConversationId,
        entries: &[(&HistoryEntry, &StateBatch)],
        always: &StateBatch,
    ) -> Result<Vec<bool>, StoreError> {
        self.write_plain(always)?;
        let mut new = Vec::with_capacity(entries.len());
        for part in entries.chunks(RECORDING_AT_ONCE) {
            new.extend(self.record_part_in_order(conversation, part)?);
        }
        Ok(new)
    }

    /// Records a direct message as it is received, in plain writes rather than
    /// [`Store::record`]'s transaction (which costs several times what its keys do,
    /// BENCHMARKS.md): `moved_on` first (what only moves forward, the clock), then the message
    /// with what it `brings` as [`Store::record_in_order`] writes them, then, only if it was new,
    /// `consumed`: the ratchet step that opened it and a one-time prekey it used up, key by key
    /// in the order given. Whether it was new.
    ///
    /// A crash can leave the message stored and `consumed` (or its tail) unwritten, so the
    /// session behind by this one message. That is safe: the message is known, so a copy of it
    /// is acknowledged without being opened again; the ratchet behind it still opens what comes
    /// next (a DH step taken again from the same keys derives the same chain); and nothing that
    /// left was sealed with the state that was lost: a message leaves once its own writes are
    /// flushed, or once a reservation covering it is ([`PeerSessions::send_ahead`], counted only
    /// after a flush that covered `consumed` when the receipt wrote it), and sled keeps a prefix
    /// of its log. `consumed` must list the session
    /// before the prekey it used up: a prekey gone with the session that used it lost would
    /// leave the peer's next message, which carries the same initiation, unopenable. One case
    /// heals later than it would have: a peer starting a new session whose first message is
    /// stored and its session lost; its copies of that message are known and not opened again,
    /// so our sends go under the old session until the peer's next message, which carries the
    /// initiation again, starts it.
    pub fn record_received(
        &self,
        entry: &HistoryEntry,
        brings: &StateBatch,
        consumed: &StateBatch,
        moved_on: &StateBatch,
    ) -> Result<bool, StoreError> {
        let new = self.record_in_order(&entry.conversation, &[(entry, brings)], moved_on)?;
        let new = new.first().copied().unwrap_or(false);
        if new {
            self.write_plain(consumed)?;
        }
        Ok(new)
    }

    /// [`Store::record_in_order`] of at most [`RECORDING_AT_ONCE`] messages, under one
    /// [`Recording`].
    fn record_part_in_order(
        &self,
        conversation: &ConversationId,
        entries: &[(&HistoryEntry, &StateBatch)],
    ) -> Result<Vec<bool>, StoreError> {
        let history = self.history_tree(conversation)?;
        let recording = Recording {
            conversation: *conversation,
            messages: entries
                .iter()
                .map(|(entry, batch)| RecordingOf {
                    id: entry.id,
                    order_key: entry.order_key().to_vec(),
                    carried: batch.ops.iter().map(|(key, _)| key.clone()).collect(),
                })
                .collect(),
        };
        self.recording.insert(
            RECORDING_TREE,
            codec::encode(&recording).unwrap_or_default(),
        )?;
        let mut new = Vec::with_capacity(entries.len());
        for (entry, batch) in entries {
            if self.state.contains_key(index_key(&entry.id))? {
                new.push(false);
                continue;
            }
            let Some(place) = Self::file_entry(&history, entry)? else {
                new.push(false);
                continue;
            };
            self.write_plain(batch)?;
            let index = IndexEntry {
                conversation: Some(*conversation),
                order_key: place.to_key_bytes().to_vec(),
            };
            self.state.insert(
                index_key(&entry.id),
                codec::encode(&index).unwrap_or_default(),
            )?;
            new.push(true);
        }
        Ok(new)
    }

    /// Takes out what the last [`Store::record_in_order`] wrote of messages it did not finish
    /// (no index entry): their history entries and what they carried. Run at open, before
    /// anything reads. How many messages it took out.
    fn undo_cut_short(&self) -> Result<usize, StoreError> {
        let Some(bytes) = self.recording.get(RECORDING_TREE)? else {
            return Ok(0);
        };
        let Ok(recording) = codec::decode::<Recording>(&bytes) else {
            self.recording.remove(RECORDING_TREE)?;
            return Ok(0);
        };
        if !self.has_history(&recording.conversation) {
            return Ok(0);
        }
        let history = self.history_tree(&recording.conversation)?;
        let mut undone = 0;
        for message in &recording.messages {
            if self.state.contains_key(index_key(&message.id))? {
                continue;
            }
            let Some(mut order) = HistoryOrder::from_key_bytes(&message.order_key) else {
                continue;
            };
            for _ in 0..MAX_PLACE_TRIES {
                let Some(bytes) = history.get(order.to_key_bytes())? else {
                    break;
                };
                if decode::<HistoryEntry>("history", &bytes).is_ok_and(|held| held.id == message.id)
                {
                    // Its history entry went first: without one, nothing of it was written, and
                    // a carried key (a log record by sender and seq) may be another message's.
                    history.remove(order.to_key_bytes())?;
                    for carried in &message.carried {
                        self.state.remove(carried.as_slice())?;
                    }
                    undone += 1;
                    break;
                }
                order.stamp = order.stamp.next();
            }
        }
        // A note whose messages all finished stays: read again at every open, it finds nothing.
        if undone > 0 {
            self.flush()?;
        }
        Ok(undone)
    }

    /// Writes `entry` into `history` at its own place, or just after it if another message
    /// holds it (as [`insert_entry`]); a place already holding this very message (written before
    /// a crash cut its recording short) is taken as it is. Where it went; `None` if a sender
    /// floods the place. One compare-and-swap a message, not a read and a write.
    fn file_entry(
        history: &sled::Tree,
        entry: &HistoryEntry,
    ) -> Result<Option<HistoryOrder>, StoreError> {
        let mut order = entry.order();
        let mut moved = std::borrow::Cow::Borrowed(entry);
        for _ in 0..MAX_PLACE_TRIES {
            let bytes = codec::encode(moved.as_ref()).unwrap_or_default();
            match history.compare_and_swap(order.to_key_bytes(), None::<&[u8]>, Some(bytes))? {
                Ok(()) => return Ok(Some(order)),
                Err(taken) => {
                    let holder = taken.current.as_deref().map(|bytes| {
                        decode::<HistoryEntry>("history", bytes).map(|holder| holder.id)
                    });
                    if let Some(Ok(id)) = holder
                        && id == entry.id
                    {
                        return Ok(Some(order));
                    }
                    order.stamp = order.stamp.next();
                    moved.to_mut().stamp = order.stamp;
                }
            }
        }
        Ok(None)
    }

    /// Writes `batch` key by key, in order, secrets sealed (see [`Store::record_in_order`]).
    /// Writes `batch` change by change, in order, without a sled batch: for changes whose every
    /// prefix a crash may leave is harmless (a sled batch seals and writes its log buffer twice).
    pub fn write_in_order(&self, batch: &StateBatch) -> Result<(), StoreError> {
        self.write_plain(batch)
    }

    fn write_plain(&self, batch: &StateBatch) -> Result<(), StoreError> {
        for (key, value) in batch.at_rest(self.secrets.as_deref()) {
            match value {
                Some(value) => self.state.insert(key, value)?,
                None => self.state.remove(key)?,
            };
        }
        Ok(())
    }

    /// Whether `conversation` has a history tree (opening one would create it).
    fn has_history(&self, conversation: &ConversationId) -> bool {
        let name = conversation.tree_name();
        self.db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes())
    }

    /// Records many messages of one conversation (for example history handed over by a linked
    /// device, or an import), in order as [`Store::record_in_order`]; entries whose id is known
    /// are skipped. How many were new.
    pub fn record_many(
        &self,
        conversation: &ConversationId,
        entries: &[HistoryEntry],
    ) -> Result<usize, StoreError> {
        let nothing = StateBatch::default();
        let entries: Vec<(&HistoryEntry, &StateBatch)> =
            entries.iter().map(|entry| (entry, &nothing)).collect();
        let new = self.record_in_order(conversation, &entries, &nothing)?;
        Ok(new.into_iter().filter(|new| *new).count())
    }

    /// Moves every message of conversation `from` into `into`, renamed `label` (a sender first
    /// filed under its own key, now known as a linked device of a contact; lines from its
    /// stand-in name `stand_in` become `label`'s), in one transaction; how many moved.
    pub fn merge_conversation(
        &self,
        from: &ConversationId,
        into: &ConversationId,
        stand_in: &str,
        label: &str,
    ) -> Result<usize, StoreError> {
        if from == into {
            return Ok(0);
        }
        if !self.has_history(from) {
            return Ok(0);
        }
        let source = self.history_tree(from)?;
        let target = self.history_tree(into)?;
        let entries = source
            .iter()
            .map(|item| {
                let (key, bytes) = item?;
                Ok((key, decode::<HistoryEntry>("history", &bytes)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let result = (&source, &target, &self.state).transaction(|(source, target, state)| {
            let mut moved = 0;
            for (key, entry) in &entries {
                let index = state.remove(index_key(&entry.id))?;
                let mut merged = entry.clone();
                merged.conversation = *into;
                merged.label = label.to_owned();
                if merged.from == stand_in {
                    merged.from = label.to_owned();
                }
                if insert_entry(target, state, &merged)? {
                    source.remove(key)?;
                    moved += 1;
                } else if let Some(index) = index {
                    // No place for it there (or its id is known there): it stays where it was.
                    state.insert(index_key(&entry.id), index)?;
                }
            }
            Ok::<_, ConflictableTransactionError<Infallible>>(moved)
        });
        let moved = committed(result)?;
        let mut leftovers = StateBatch::default();
        leftovers
            .remove(StateKey::ReadUpTo(*from))
            .remove(StateKey::Seq(*from));
        self.apply(&leftovers)?;
        if source.is_empty() {
            drop(source);
            self.db.drop_tree(from.tree_name())?;
        }
        Ok(moved)
    }

    /// Records that a control message `id` was taken in, with `batch`, atomically; `false` (and
    /// nothing written) if it was known.
    pub fn record_control(&self, id: &MessageId, batch: &StateBatch) -> Result<bool, StoreError> {
        let index = codec::encode(&IndexEntry {
            conversation: None,
            order_key: Vec::new(),
        })
        .unwrap_or_default();
        let result = self.state.transaction(|state| {
            if state.get(index_key(id))?.is_some() {
                return Ok(false);
            }
            state.insert(index_key(id), index.as_slice())?;
            batch.apply_in(state, self.secrets.as_deref())?;
            Ok::<_, ConflictableTransactionError<Infallible>>(true)
        });
        committed(result)
    }

    /// Applies state changes alone, atomically. A single change is a plain write: sled makes one key's
    /// write atomic anyway, and its batches seal and write its log buffer twice each, which a
    /// room send's one removal after publishing paid on every message (BENCHMARKS.md).
    pub fn apply(&self, batch: &StateBatch) -> Result<(), StoreError> {
        if batch.ops.len() == 1 {
            return self.write_plain(batch);
        }
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.at_rest(self.secrets.as_deref()) {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        Ok(self.state.apply_batch(sled_batch)?)
    }

    pub fn contains(&self, id: &MessageId) -> Result<bool, StoreError> {
        Ok(self.state.contains_key(index_key(id))?)
    }

    /// The history entry of `id`, if stored.
    pub fn entry(&self, id: &MessageId) -> Result<Option<HistoryEntry>, StoreError> {
        let Some(index) = self.state.get(index_key(id))? else {
            return Ok(None);
        };
        let index: IndexEntry = decode("index", &index)?;
        let Some(conversation) = index.conversation else {
            return Ok(None);
        };
        let history = self.history_tree(&conversation)?;
        match history.get(&index.order_key)? {
            Some(bytes) => Ok(Some(decode("history", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Moves `id` to `status` (only forwards); the updated entry if it changed.
    pub fn set_status(
        &self,
        id: &MessageId,
        status: Status,
    ) -> Result<Option<HistoryEntry>, StoreError> {
        let Some(index) = self.state.get(index_key(id))? else {
            return Ok(None);
        };
        let index: IndexEntry = decode("index", &index)?;
        let Some(conversation) = index.conversation else {
            return Ok(None);
        };
        let history = self.history_tree(&conversation)?;
        let Some(bytes) = history.get(&index.order_key)? else {
            return Ok(None);
        };
        let mut entry: HistoryEntry = decode("history", &bytes)?;
        if entry.status == status || status.rank() < entry.status.rank() {
            return Ok(None);
        }
        entry.status = status;
        history.insert(&index.order_key, codec::encode(&entry).unwrap_or_default())?;
        Ok(Some(entry))
    }

    /// The last `limit` messages of a conversation, oldest first.
    pub fn history(
        &self,
        conversation: &ConversationId,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.history_before(conversation, None, limit)
    }

    /// The `limit` messages before `before` (an order key; `None`: the end), oldest first.
    pub fn history_before(
        &self,
        conversation: &ConversationId,
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let history = self.history_tree(conversation)?;
        let range = match before {
            Some(before) => history.range(..before.to_vec()),
            None => history.iter(),
        };
        let mut entries = range
            .rev()
            .take(limit)
            .map(|item| {
                let (_, bytes) = item?;
                decode::<HistoryEntry>("history", &bytes)
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.reverse();
        Ok(entries)
    }

    /// Every conversation with at least one message.
    pub fn conversations(&self) -> Vec<ConversationId> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|name| ConversationId::from_tree_name(name))
            .collect()
    }

    pub fn get<T: DeserializeOwned>(&self, key: StateKey<'_>) -> Result<Option<T>, StoreError> {
        let key = key.bytes();
        match self.state.get(&key)? {
            Some(bytes) => Ok(Some(self.read_value(&key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether anything is stored under `key` (without reading it: a secret stays sealed).
    pub fn holds(&self, key: StateKey<'_>) -> bool {
        self.state.contains_key(key.bytes()).unwrap_or(false)
    }

    /// Every value in one namespace with its key, each decoded on its own: one record that does
    /// not decode does not hide the others.
    pub fn scan_each<T: DeserializeOwned>(
        &self,
        namespace: StateKey<'_>,
    ) -> Vec<(Vec<u8>, Result<T, StoreError>)> {
        let prefix = &namespace.bytes()[..1];
        self.state
            .scan_prefix(prefix)
            .map(|item| match item {
                Ok((key, bytes)) => {
                    let value = self.read_value(&key, &bytes);
                    (key.to_vec(), value)
                }
                Err(err) => (Vec::new(), Err(err.into())),
            })
            .collect()
    }

    /// Every value in one namespace (for example every outbox item).
    pub fn scan<T: DeserializeOwned>(&self, namespace: StateKey<'_>) -> Result<Vec<T>, StoreError> {
        let prefix = &namespace.bytes()[..1];
        self.state
            .scan_prefix(prefix)
            .map(|item| {
                let (key, bytes) = item?;
                self.read_value(&key, &bytes)
            })
            .collect()
    }

    /// The names under one namespace whose keys are text (contacts, meta).
    pub fn scan_keys(&self, namespace: StateKey<'_>) -> Vec<String> {
        let prefix = &namespace.bytes()[..1];
        self.state
            .scan_prefix(prefix)
            .keys()
            .filter_map(|key| {
                key.ok()
                    .and_then(|key| String::from_utf8(key[1..].to_vec()).ok())
            })
            .collect()
    }

    /// `(sender, seq)` of every message in a room's log, in order.
    pub fn room_log_index(&self, room: &RoomId) -> Vec<([u8; 32], u64)> {
        (self.state.scan_prefix(room_log_prefix(room)).keys())
            .filter_map(|key| log_key_parts(&key.ok()?))
            .collect()
    }

    /// `(sender, seq, record)` of every message in a room's log, in order, as it is read; each
    /// record is decoded only when called for (`None` if it does not decode: gap fill leaves it
    /// to another member).
    pub fn room_log(
        &self,
        room: &RoomId,
    ) -> impl Iterator<Item = ([u8; 32], u64, impl FnOnce() -> Option<LogRecord>)> + '_ {
        self.state
            .scan_prefix(room_log_prefix(room))
            .filter_map(|item| {
                let (key, value) = item.ok()?;
                let (sender, seq) = log_key_parts(&key)?;
                Some((sender, seq, move || decode_log_record(&value)))
            })
    }

    /// Makes everything written so far durable. Blocks; the daemon calls it from one place at a
    /// time (its group commit), never from many tasks at once.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Where room `room`'s [`StateKey::RoomLog`] keys start.
fn room_log_prefix(room: &RoomId) -> Vec<u8> {
    let mut prefix = StateKey::RoomLog(*room, [0; 32], 0).bytes();
    prefix.truncate(1 + room.0.len());
    prefix
}

/// `(sender, seq)` of a [`StateKey::RoomLog`] key.
fn log_key_parts(key: &[u8]) -> Option<([u8; 32], u64)> {
    let sender: [u8; 32] = key.get(33..65)?.try_into().ok()?;
    let seq = u64::from_be_bytes(key.get(65..73)?.try_into().ok()?);
    Some((sender, seq))
}

/// A room log record; or, written before records, a bare frame (as [`LogRecord::Frame`]). The
/// two cannot be mistaken for each other: after the codec's version byte, a bare frame goes on
/// with its length (an envelope's hundreds of bytes: one byte of at least 2, or the marker of a
/// longer one), a record with its variant, 0 or 1.
fn decode_log_record(bytes: &[u8]) -> Option<LogRecord> {
    codec::decode::<LogRecord>(bytes)
        .or_else(|_| codec::decode::<Vec<u8>>(bytes).map(LogRecord::Frame))
        .ok()
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    codec::decode(bytes).map_err(|e| StoreError::Corrupt {
        key: what.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
