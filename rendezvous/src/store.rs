//! Durable state in sled: accounts, prekeys and the mailbox, under `--data DIR`.
//!
//! Three trees, each written only with atomic batches so a crash leaves either all of a change or
//! none of it; the server flushes before it acknowledges anything that must survive a kill -9
//! (registrations, prekeys, deposits, acks). Keys are prefixed by kind; names never contain a 0
//! byte, so `name || 0` is an unambiguous prefix.
//!
//! - `accounts`: `u name` → [`StoredUser`]; `k key` → name (one name per key).
//! - `prekeys`: `s name` → [`StoredSignedPrekey`]; `o name 0 id` → one-time prekey.
//! - `mail`: `m name 0 time id` → [`MailItem`]; `i name 0 id` → time (dedup and ack);
//!   `e time name 0 id` → nothing (the expiry index, oldest first).

use std::collections::HashMap;
use std::path::Path;

use palaver_protocol::codec;
use palaver_protocol::crypto::x3dh::{OneTimePrekey, PrekeyBundle, PrekeyUpload, SignedPrekey};
use palaver_protocol::rendezvous::mailbox::Usage;
use palaver_protocol::wire::MailItem;
use palaver_protocol::{MessageId, UserName, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Why the store failed: the disk, or bytes on it we did not write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage holds a record that does not decode ({0}); the data directory is damaged")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, StoreError>;

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

/// What a deposit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deposit {
    /// Stored; the stored record is this many bytes.
    Stored(u64),
    /// Already held (same message id): nothing changed.
    Duplicate,
}

/// A message removed from a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) recipient: UserName,
    pub(crate) bytes: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: sled::Db,
    accounts: sled::Tree,
    prekeys: sled::Tree,
    mail: sled::Tree,
}

const SEP: u8 = 0;

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        k.extend_from_slice(part);
    }
    k
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    codec::encode(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn name_of_bytes(bytes: &[u8]) -> Result<UserName> {
    let text = std::str::from_utf8(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    UserName::new(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn be_u64(bytes: &[u8]) -> Result<u64> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("timestamp is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(array))
}

impl Store {
    /// Opens (or creates) the store in `dir`, caching at most `cache_bytes` in memory.
    pub(crate) fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .open()?;
        Ok(Self {
            accounts: db.open_tree("accounts")?,
            prekeys: db.open_tree("prekeys")?,
            mail: db.open_tree("mail")?,
            db,
        })
    }

    /// Makes everything written so far durable (blocking: call it off the async threads).
    pub(crate) fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    // ---- accounts ----

    pub(crate) fn user(&self, name: &UserName) -> Result<Option<StoredUser>> {
        self.accounts
            .get(key(&[b"u", name.as_str().as_bytes()]))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// The name bound to `identity`, if any.
    pub(crate) fn name_of(&self, identity: &VerifyingKey) -> Result<Option<UserName>> {
        self.accounts
            .get(key(&[b"k", identity.as_bytes()]))?
            .map(|v| name_of_bytes(&v))
            .transpose()
    }

    pub(crate) fn register(
        &self,
        name: &UserName,
        identity: &VerifyingKey,
        now_ms: u64,
    ) -> Result<Registration> {
        if let Some(user) = self.user(name)? {
            return Ok(if user.identity == *identity {
                Registration::AlreadyYours
            } else {
                Registration::Taken
            });
        }
        let by_key = key(&[b"k", identity.as_bytes()]);
        if let Some(existing) = self.accounts.get(&by_key)? {
            return Ok(Registration::KeyHasName(name_of_bytes(&existing)?));
        }
        let user = StoredUser {
            identity: *identity,
            registered_at_ms: now_ms,
            last_seen_ms: None,
        };
        let mut batch = sled::Batch::default();
        batch.insert(key(&[b"u", name.as_str().as_bytes()]), encode(&user)?);
        batch.insert(by_key, name.as_str().as_bytes());
        self.accounts.apply_batch(batch)?;
        Ok(Registration::New)
    }

    /// Records when the user was last seen (not flushed: losing it in a crash is harmless).
    pub(crate) fn set_last_seen(&self, name: &UserName, ms: u64) -> Result<()> {
        if let Some(mut user) = self.user(name)? {
            user.last_seen_ms = Some(ms);
            self.accounts
                .insert(key(&[b"u", name.as_str().as_bytes()]), encode(&user)?)?;
        }
        Ok(())
    }

    pub(crate) fn user_count(&self) -> usize {
        self.accounts.scan_prefix(b"u").count()
    }

    // ---- prekeys ----

    fn one_time_prefix(name: &UserName) -> Vec<u8> {
        key(&[b"o", name.as_str().as_bytes(), &[SEP]])
    }

    /// Replaces the user's signed prekey and all its one-time prekeys.
    pub(crate) fn publish_prekeys(&self, name: &UserName, upload: &PrekeyUpload) -> Result<()> {
        let mut batch = sled::Batch::default();
        let prefix = Self::one_time_prefix(name);
        for entry in self.prekeys.scan_prefix(&prefix).keys() {
            batch.remove(entry?);
        }
        let signed = StoredSignedPrekey {
            identity: upload.identity,
            signed_prekey: upload.signed_prekey.clone(),
        };
        batch.insert(key(&[b"s", name.as_str().as_bytes()]), encode(&signed)?);
        for one_time in &upload.one_time_prekeys {
            batch.insert(
                key(&[&prefix, &one_time.id.to_be_bytes()]),
                encode(one_time)?,
            );
        }
        self.prekeys.apply_batch(batch)?;
        Ok(())
    }

    pub(crate) fn has_signed_prekey(&self, name: &UserName) -> Result<bool> {
        Ok(self
            .prekeys
            .contains_key(key(&[b"s", name.as_str().as_bytes()]))?)
    }

    /// Adds one-time prekeys (a key with an id already held replaces it).
    pub(crate) fn add_one_time_prekeys(
        &self,
        name: &UserName,
        keys: &[OneTimePrekey],
    ) -> Result<()> {
        let prefix = Self::one_time_prefix(name);
        let mut batch = sled::Batch::default();
        for one_time in keys {
            batch.insert(
                key(&[&prefix, &one_time.id.to_be_bytes()]),
                encode(one_time)?,
            );
        }
        self.prekeys.apply_batch(batch)?;
        Ok(())
    }

    pub(crate) fn one_time_count(&self, name: &UserName) -> Result<u32> {
        let count = self
            .prekeys
            .scan_prefix(Self::one_time_prefix(name))
            .count();
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// A bundle for `name`, consuming its lowest-numbered one-time prekey; `None` if it has
    /// published no signed prekey.
    pub(crate) fn take_bundle(&self, name: &UserName) -> Result<Option<PrekeyBundle>> {
        let Some(signed) = self.prekeys.get(key(&[b"s", name.as_str().as_bytes()]))? else {
            return Ok(None);
        };
        let signed: StoredSignedPrekey = decode(&signed)?;
        let one_time_prekey = match self.prekeys.scan_prefix(Self::one_time_prefix(name)).next() {
            Some(entry) => {
                let (k, v) = entry?;
                self.prekeys.remove(k)?;
                Some(decode::<OneTimePrekey>(&v)?)
            }
            None => None,
        };
        Ok(Some(PrekeyBundle {
            identity: signed.identity,
            signed_prekey: signed.signed_prekey,
            one_time_prekey,
        }))
    }

    // ---- mailbox ----

    fn mail_prefix(name: &UserName) -> Vec<u8> {
        key(&[b"m", name.as_str().as_bytes(), &[SEP]])
    }

    fn index_key(name: &UserName, id: &MessageId) -> Vec<u8> {
        key(&[b"i", name.as_str().as_bytes(), &[SEP], &id.0])
    }

    pub(crate) fn holds(&self, name: &UserName, id: &MessageId) -> Result<bool> {
        Ok(self.mail.contains_key(Self::index_key(name, id))?)
    }

    /// The size a deposit will take, for the quota check.
    pub(crate) fn encoded_len(item: &MailItem) -> Result<u64> {
        Ok(encode(item)?.len() as u64)
    }

    pub(crate) fn deposit(
        &self,
        to: &UserName,
        id: &MessageId,
        item: &MailItem,
    ) -> Result<Deposit> {
        let index = Self::index_key(to, id);
        if self.mail.contains_key(&index)? {
            return Ok(Deposit::Duplicate);
        }
        let time = item.deposited_at_ms.to_be_bytes();
        let value = encode(item)?;
        let len = value.len() as u64;
        let mut batch = sled::Batch::default();
        batch.insert(key(&[&Self::mail_prefix(to), &time, &id.0]), value);
        batch.insert(index, &time[..]);
        batch.insert(
            key(&[b"e", &time, to.as_str().as_bytes(), &[SEP], &id.0]),
            &[][..],
        );
        self.mail.apply_batch(batch)?;
        Ok(Deposit::Stored(len))
    }

    /// Up to `max` held messages for `name`, oldest first, together at most `max_bytes` (but at
    /// least one), skipping any deposited before `not_before` (expired, swept soon).
    pub(crate) fn fetch(
        &self,
        name: &UserName,
        max: usize,
        max_bytes: u64,
        not_before: u64,
    ) -> Result<Vec<MailItem>> {
        let mut items = Vec::new();
        let mut bytes = 0u64;
        for entry in self.mail.scan_prefix(Self::mail_prefix(name)) {
            if items.len() >= max {
                break;
            }
            let (_, value) = entry?;
            let len = value.len() as u64;
            if !items.is_empty() && bytes + len > max_bytes {
                break;
            }
            let item: MailItem = decode(&value)?;
            if item.deposited_at_ms < not_before {
                continue;
            }
            bytes += len;
            items.push(item);
        }
        Ok(items)
    }

    fn remove_message(
        &self,
        name: &UserName,
        id: &MessageId,
        time: [u8; 8],
    ) -> Result<Option<Removed>> {
        let item_key = key(&[&Self::mail_prefix(name), &time, &id.0]);
        let Some(value) = self.mail.get(&item_key)? else {
            return Ok(None);
        };
        let mut batch = sled::Batch::default();
        batch.remove(item_key);
        batch.remove(Self::index_key(name, id));
        batch.remove(key(&[b"e", &time, name.as_str().as_bytes(), &[SEP], &id.0]));
        self.mail.apply_batch(batch)?;
        Ok(Some(Removed {
            recipient: name.clone(),
            bytes: value.len() as u64,
        }))
    }

    /// Deletes the acknowledged messages of `name`; ids it does not hold are ignored.
    pub(crate) fn ack(&self, name: &UserName, ids: &[MessageId]) -> Result<Vec<Removed>> {
        let mut removed = Vec::new();
        for id in ids {
            let Some(time) = self.mail.get(Self::index_key(name, id))? else {
                continue;
            };
            let time = be_u64(&time)?.to_be_bytes();
            removed.extend(self.remove_message(name, id, time)?);
        }
        Ok(removed)
    }

    /// Deletes every message deposited before `cutoff`, oldest first, at most `max` per call.
    pub(crate) fn expire(&self, cutoff: u64, max: usize) -> Result<Vec<Removed>> {
        let mut due = Vec::new();
        for entry in self.mail.scan_prefix(b"e").keys() {
            let entry = entry?;
            // `e` time(8) name 0 id(32)
            if entry.len() < 1 + 8 + 1 + 1 + 32 || due.len() >= max {
                break;
            }
            let time = be_u64(&entry[1..9])?;
            if time >= cutoff {
                break;
            }
            let rest = &entry[9..];
            let (name, id) = rest.split_at(rest.len() - 32);
            let name = name_of_bytes(name.strip_suffix(&[SEP]).unwrap_or(name))?;
            let mut message = [0u8; 32];
            message.copy_from_slice(id);
            due.push((name, MessageId(message), time));
        }
        let mut removed = Vec::new();
        for (name, id, time) in due {
            removed.extend(self.remove_message(&name, &id, time.to_be_bytes())?);
        }
        Ok(removed)
    }

    /// What every mailbox holds (read once at startup).
    pub(crate) fn mailbox_usage(&self) -> Result<HashMap<UserName, Usage>> {
        let mut usage: HashMap<UserName, Usage> = HashMap::new();
        for entry in self.mail.scan_prefix(b"m") {
            let (k, v) = entry?;
            let end = k
                .iter()
                .position(|&b| b == SEP)
                .ok_or_else(|| StoreError::Corrupt("mail key without separator".into()))?;
            let name = name_of_bytes(&k[1..end])?;
            usage.entry(name).or_default().add(v.len() as u64);
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palaver_protocol::Identity;

    fn name(n: &str) -> UserName {
        UserName::new(n).unwrap()
    }

    fn key_of(seed: u8) -> VerifyingKey {
        Identity::from_secret_bytes(&[seed; 32]).public()
    }

    #[test]
    fn a_name_binds_to_one_key_and_a_key_to_one_name_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let alice = name("alice");
            assert_eq!(
                store.register(&alice, &key_of(1), 5).unwrap(),
                Registration::New
            );
            assert_eq!(
                store.register(&alice, &key_of(1), 6).unwrap(),
                Registration::AlreadyYours
            );
            assert_eq!(
                store.register(&alice, &key_of(2), 7).unwrap(),
                Registration::Taken
            );
            assert_eq!(
                store.register(&name("alice2"), &key_of(1), 8).unwrap(),
                Registration::KeyHasName(alice.clone())
            );
            store.set_last_seen(&alice, 99).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let user = store.user(&name("alice")).unwrap().unwrap();
        assert_eq!(user.identity, key_of(1));
        assert_eq!(user.registered_at_ms, 5);
        assert_eq!(user.last_seen_ms, Some(99));
        assert_eq!(store.user_count(), 1);
    }

    #[test]
    fn expiry_removes_only_old_mail_and_keeps_the_indexes_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let bob = name("bob");
        // MailItem needs an envelope; build a minimal signed one.
        let item = |t: u64, n: u8| {
            let sender = Identity::from_secret_bytes(&[n; 32]);
            let body =
                palaver_protocol::wire::Body::Direct(palaver_protocol::wire::DirectMessage {
                    sender: sender.public(),
                    recipient: key_of(9),
                    message: palaver_protocol::crypto::ratchet::RatchetMessage {
                        init: None,
                        header: palaver_protocol::crypto::ratchet::Header {
                            dh: x25519_dalek::PublicKey::from([n; 32]),
                            previous_chain_len: 0,
                            index: 0,
                        },
                        ciphertext: vec![n; 10],
                    },
                });
            let envelope = palaver_protocol::Envelope::sign(body, sender.signing_key()).unwrap();
            MailItem {
                envelope,
                deposited_at_ms: t,
            }
        };
        let (a, b) = (item(100, 1), item(200, 2));
        let (ida, idb) = (a.envelope.id(), b.envelope.id());
        assert!(matches!(
            store.deposit(&bob, &ida, &a),
            Ok(Deposit::Stored(_))
        ));
        assert_eq!(store.deposit(&bob, &ida, &a).unwrap(), Deposit::Duplicate);
        assert!(matches!(
            store.deposit(&bob, &idb, &b),
            Ok(Deposit::Stored(_))
        ));
        assert_eq!(store.mailbox_usage().unwrap()[&bob].messages, 2);
        let removed = store.expire(150, 100).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!store.holds(&bob, &ida).unwrap());
        assert!(store.holds(&bob, &idb).unwrap());
        assert_eq!(store.fetch(&bob, 10, 1 << 20, 0).unwrap(), vec![b.clone()]);
        assert_eq!(store.ack(&bob, &[idb, ida]).unwrap().len(), 1);
        assert!(store.fetch(&bob, 10, 1 << 20, 0).unwrap().is_empty());
        assert!(store.mailbox_usage().unwrap().is_empty());
        assert_eq!(store.mail.len(), 0);
    }
}
