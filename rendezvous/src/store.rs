//! The server's durable state behind one interface: accounts, prekeys, the mailbox and
//! discovery records.
//!
//! [`Storage`] is what the service asks of a store; two back-ends answer it:
//! - [`sled::SledStore`] (the default, no setup): one embedded database under `--data DIR`,
//!   owned by one instance;
//! - [`postgres::PgStore`] (`--store postgres://…`): one PostgreSQL database shared by any number
//!   of instances, which then serve one user population.
//!
//! The interface is synchronous, like the service that calls it: a store call is a short
//! local write for sled and one round trip (in a transaction where it changes several rows) for
//! PostgreSQL. Every write is atomic; [`Storage::flush_blocking`] makes everything written so far
//! durable, and the server calls it before it acknowledges anything that must survive a kill -9
//! (PostgreSQL has committed by the time a write returns, so there it has nothing left to do).

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use libp2p::PeerId;
use palaver_protocol::codec;
use palaver_protocol::identity::devices::SignedDeviceList;
use palaver_protocol::crypto::x3dh::{OneTimePrekey, PrekeyBundle, PrekeyUpload, SignedPrekey};
use palaver_protocol::rendezvous::discovery::Namespace;
use palaver_protocol::rendezvous::mailbox::Usage;
use palaver_protocol::wire::{MailItem, SignedPeerRecord};
use palaver_protocol::{MessageId, UserName, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub(crate) mod postgres;
pub(crate) mod sled;
#[cfg(test)]
mod tests;

/// Why the store failed: the disk or the database, or bytes in it we did not write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("storage holds a record that does not decode ({0}); the data directory is damaged")]
    Corrupt(String),
    /// The database is unreachable or did not answer in time: the request may be retried.
    #[error("the database is unavailable ({0}); try again shortly")]
    Unavailable(String),
    /// The database refused a query or its schema is not ours.
    #[error("database: {0}")]
    Database(String),
    /// `--store` names something this server cannot use.
    #[error("--store {url}: {reason}")]
    Location { url: String, reason: String },
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// The store every part of the server shares (the actor's group commit flushes it from a
/// blocking thread while the service writes through it).
pub(crate) type SharedStore = Arc<dyn Storage>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredUser {
    pub(crate) identity: VerifyingKey,
    pub(crate) registered_at_ms: u64,
    pub(crate) last_seen_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSignedPrekey {
    identity: VerifyingKey,
    signed_prekey: SignedPrekey,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Registration {
    New,
    /// The name was already bound to this key (a retry): nothing changed.
    AlreadyYours,
    /// The name is bound to another key.
    Taken,
    /// This key already has another name.
    KeyHasName(UserName),
}

impl Registration {
    /// What registering a name already bound to `user` with `identity` means.
    pub(crate) fn of_bound(user: &StoredUser, identity: &VerifyingKey) -> Self {
        if user.identity == *identity {
            Self::AlreadyYours
        } else {
            Self::Taken
        }
    }
}

/// What a deposit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deposit {
    /// Stored; the stored record is this many bytes.
    Stored(u64),
    /// Already held (same message id): nothing changed.
    Duplicate,
}

/// Whose prekeys and mailbox: an account's first device — the account key itself, filed under
/// the bare name as before there were devices — or one of its linked devices, filed under
/// `name/<device key in hex>`. `/` is not in the name alphabet, so the two never collide, and
/// neither holds a 0 byte (the sled back-end's separator).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Holder {
    text: String,
    name: UserName,
    device: Option<VerifyingKey>,
}

impl Holder {
    pub(crate) fn account(name: &UserName) -> Self {
        Self {
            text: name.as_str().to_owned(),
            name: name.clone(),
            device: None,
        }
    }

    pub(crate) fn device(name: &UserName, device: &VerifyingKey) -> Self {
        let hex: String = device.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        Self {
            text: format!("{name}/{hex}"),
            name: name.clone(),
            device: Some(*device),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The account this holder belongs to.
    pub(crate) fn name(&self) -> &UserName {
        &self.name
    }

    /// The linked device, or `None` for the account key's own.
    pub(crate) fn linked_device(&self) -> Option<&VerifyingKey> {
        self.device.as_ref()
    }

    /// A holder as the store wrote it.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("mailbox holder: {what}"));
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
        let Some((name, hex)) = text.split_once('/') else {
            return Ok(Self::account(&name_of_bytes(bytes)?));
        };
        let mut key = [0u8; 32];
        if hex.len() != 64 {
            return Err(corrupt("device key is not 64 hex digits"));
        }
        for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| corrupt("not hex"))?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| corrupt("not hex"))?;
        }
        let device = VerifyingKey::from_bytes(&key).map_err(|_| corrupt("not a key"))?;
        Ok(Self::device(&name_of_bytes(name.as_bytes())?, &device))
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A message removed from a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) recipient: Holder,
    pub(crate) bytes: u64,
}

/// What a discovery registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutRecord {
    /// Stored (new, or replacing the peer's earlier record in that namespace).
    Stored,
    /// The peer already holds its most registrations: nothing changed.
    PeerFull,
    /// The store holds its most registrations: nothing changed.
    Full,
}

/// How many discovery registrations may be held, per peer and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordLimits {
    pub(crate) per_peer: usize,
    pub(crate) total: usize,
}

/// Accounts, prekeys, the mailbox and discovery records, as the service uses them.
pub(crate) trait Storage: Send + Sync + Debug {
    /// Makes everything written so far durable (blocking: call it off the async threads).
    fn flush_blocking(&self) -> Result<()>;

    // ---- accounts ----
    fn user(&self, name: &UserName) -> Result<Option<StoredUser>>;
    /// The name bound to `identity`, if any.
    fn name_of(&self, identity: &VerifyingKey) -> Result<Option<UserName>>;
    /// Binds `name` to `identity`, first come first served; one name per key.
    fn register(
        &self,
        name: &UserName,
        identity: &VerifyingKey,
        now_ms: u64,
    ) -> Result<Registration>;
    /// Records when the user was last seen (not flushed: losing it in a crash is harmless).
    fn set_last_seen(&self, name: &UserName, ms: u64) -> Result<()>;
    fn user_count(&self) -> Result<u64>;
    /// Forgets `name` — its key, its devices, their prekeys and held mail — so that it can be
    /// registered again (an admin's action for a user who lost their key); false if there was
    /// no such user.
    fn remove_user(&self, name: &UserName) -> Result<bool>;

    // ---- devices ----
    /// The device list `name` published last, if any.
    fn devices(&self, name: &UserName) -> Result<Option<SignedDeviceList>>;
    /// Stores `name`'s new device list. Devices it no longer names leave with their prekeys
    /// and held mail (reported removed); the devices it names are found by
    /// [`Storage::device_owner`]. A list naming another account's device is refused.
    fn put_devices(&self, name: &UserName, list: &SignedDeviceList) -> Result<Vec<Removed>>;
    /// The account whose published list names `device` (a linked device, not an account key).
    fn device_owner(&self, device: &VerifyingKey) -> Result<Option<UserName>>;

    // ---- prekeys ----
    /// Replaces the user's signed prekey and all its one-time prekeys.
    fn publish_prekeys(&self, name: &Holder, upload: &PrekeyUpload) -> Result<()>;
    fn has_signed_prekey(&self, name: &Holder) -> Result<bool>;
    /// Adds one-time prekeys (a key with an id already held replaces it).
    fn add_one_time_prekeys(&self, name: &Holder, keys: &[OneTimePrekey]) -> Result<()>;
    fn one_time_count(&self, name: &Holder) -> Result<u32>;
    /// A bundle for `name`, consuming its lowest-numbered one-time prekey (each handed out once,
    /// whichever instance asks) if `with_one_time`; `None` if it has published no signed prekey.
    fn take_bundle(&self, name: &Holder, with_one_time: bool) -> Result<Option<PrekeyBundle>>;

    // ---- mailbox ----
    fn holds(&self, name: &Holder, id: &MessageId) -> Result<bool>;
    fn deposit(&self, to: &Holder, id: &MessageId, item: &MailItem) -> Result<Deposit>;
    /// Up to `max` held messages for `name`, oldest first, together at most `max_bytes` (but at
    /// least one), skipping any deposited before `not_before` (expired, swept soon).
    fn fetch(
        &self,
        name: &Holder,
        max: usize,
        max_bytes: u64,
        not_before: u64,
    ) -> Result<Vec<MailItem>>;
    /// Deletes the acknowledged messages of `name`; ids it does not hold are ignored. Each
    /// message is reported removed once, however many acks (at however many instances) race.
    fn ack(&self, name: &Holder, ids: &[MessageId]) -> Result<Vec<Removed>>;
    /// Deletes every message deposited before `cutoff`, oldest first, at most `max` per call.
    fn expire(&self, cutoff: u64, max: usize) -> Result<Vec<Removed>>;
    /// What `name`'s mailbox holds now (the quota check and the "mail waiting" count).
    fn usage(&self, name: &Holder) -> Result<Usage>;
    /// What all mailboxes hold together (for the gauges at start).
    fn mailbox_totals(&self) -> Result<Usage>;

    // ---- discovery ----
    /// Keeps `peer`'s `record` under `namespace` until `expires_ms`, replacing its earlier one
    /// there. A registration that would be new is refused (nothing changes) when the peer holds
    /// `limits.per_peer` already, or the store `limits.total`. (Across instances the counts may
    /// overshoot by the registrations racing at that moment.)
    fn put_record(
        &self,
        namespace: &Namespace,
        peer: &PeerId,
        record: &SignedPeerRecord,
        expires_ms: u64,
        limits: RecordLimits,
    ) -> Result<PutRecord>;
    /// Takes `peer`'s record out of `namespace` (nothing if it has none there).
    fn remove_record(&self, namespace: &Namespace, peer: &PeerId) -> Result<()>;
    /// Whether `peer` holds a record under `namespace` still valid after `now_ms`.
    fn holds_record(&self, namespace: &Namespace, peer: &PeerId, now_ms: u64) -> Result<bool>;
    /// Up to `max` records under `namespace` still valid after `now_ms`, the latest to expire
    /// (the most recently renewed) first.
    fn records(
        &self,
        namespace: &Namespace,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<SignedPeerRecord>>;
    /// Deletes records that expired by `now_ms`, at most `max` per call; how many it deleted.
    fn expire_records(&self, now_ms: u64, max: usize) -> Result<usize>;
}

/// Where the durable state lives: sled under the data directory, or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `<data>/db`, owned by this instance.
    Sled,
    /// A `postgres://USER@HOST:PORT/DB` URL (or key=value connection string), shared.
    Postgres(String),
}

impl StoreLocation {
    /// Parses `--store`: a `postgres://` or `postgresql://` URL. (`sled` names the default.)
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if text == "sled" {
            return Ok(Self::Sled);
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres(text.to_owned()));
        }
        Err(format!(
            "expected postgres://USER@HOST:PORT/DB (or `sled`, the default), got {:?}",
            redact(text)
        ))
    }

    /// Opens the store: sled in `data_dir`, or a pool to PostgreSQL (running migrations).
    pub(crate) fn open(&self, data_dir: &Path, cache_bytes: u64) -> Result<SharedStore> {
        Ok(match self {
            Self::Sled => Arc::new(sled::SledStore::open(data_dir, cache_bytes)?),
            Self::Postgres(url) => Arc::new(postgres::PgStore::open(url)?),
        })
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sled => f.write_str("sled"),
            Self::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// A URL fit for a log line or an error: the password, if any, left out.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            if user_info.contains(':') {
                format!("{scheme}://{user}:…@{host}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    codec::encode(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn name_of_bytes(bytes: &[u8]) -> Result<UserName> {
    let text = std::str::from_utf8(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    UserName::new(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The size a deposit will take, for the quota check (the same encoding in both back-ends).
pub(crate) fn encoded_len(item: &MailItem) -> Result<u64> {
    Ok(encode(item)?.len() as u64)
}
