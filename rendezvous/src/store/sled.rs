//! The embedded back-end: sled under `--data DIR`, owned by one instance.
//!
//! Three trees, each written only with atomic batches so a crash leaves either all of a change or
//! none of it; the server flushes before it acknowledges anything that must survive a kill -9
//! (registrations, prekeys, deposits, acks). Keys are prefixed by kind; names never contain a 0
//! byte, so `name || 0` is an unambiguous prefix.
//!
//! - `accounts`: `u name` → [`StoredUser`]; `k key` → name (one name per key); `d name` → the
//!   account's [`SignedDeviceList`]; `v device key` → name (the linked devices it names).
//! - `prekeys`: `s holder` → [`StoredSignedPrekey`]; `o holder 0 id` → one-time prekey.
//! - `mail`: `m holder 0 time id` → [`MailItem`]; `i holder 0 id` → time (dedup and ack);
//!   `e time holder 0 id` → nothing (the expiry index, oldest first).
//!
//! A [`Holder`] is a name, or `name/device` for a linked device.
//! - `discovery`: `r namespace 0 peer` → expiry ‖ signed record; `p len(peer) peer namespace` →
//!   nothing (a peer's registrations, counted against its limit); `e expiry namespace 0 peer` →
//!   nothing (the expiry index). Namespaces are text without a 0 byte; a peer id is raw bytes.
//!
//! Each mailbox's [`Usage`] and the number of discovery records are read once at open and kept
//! in memory beside the trees (this instance is their only writer).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use libp2p::PeerId;
use palaver_protocol::identity::devices::SignedDeviceList;
use palaver_protocol::crypto::x3dh::{OneTimePrekey, PrekeyBundle, PrekeyUpload};
use palaver_protocol::rendezvous::discovery::Namespace;
use palaver_protocol::rendezvous::mailbox::Usage;
use palaver_protocol::wire::{MailItem, SignedPeerRecord};
use palaver_protocol::{MessageId, UserName, VerifyingKey};

use super::{
    Deposit, Holder, PutRecord, RecordLimits, Registration, Removed, Result, Storage, StoreError,
    StoredSignedPrekey, StoredUser, decode, encode, name_of_bytes,
};

#[derive(Debug)]
pub(crate) struct SledStore {
    db: sled::Db,
    accounts: sled::Tree,
    prekeys: sled::Tree,
    mail: sled::Tree,
    discovery: sled::Tree,
    usage: Mutex<HashMap<Holder, Usage>>,
    /// Discovery records held (the `r` entries).
    records: Mutex<usize>,
}

const SEP: u8 = 0;

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        k.extend_from_slice(part);
    }
    k
}

fn be_u64(bytes: &[u8]) -> Result<u64> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("timestamp is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(array))
}

/// The expiry a discovery record's value starts with.
fn expiry_of(value: &[u8]) -> Result<[u8; 8]> {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("discovery record without expiry".into()))
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, caching at most `cache_bytes` in memory.
    pub(crate) fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .open()?;
        let mut store = Self {
            accounts: db.open_tree("accounts")?,
            prekeys: db.open_tree("prekeys")?,
            mail: db.open_tree("mail")?,
            discovery: db.open_tree("discovery")?,
            db,
            usage: Mutex::default(),
            records: Mutex::default(),
        };
        store.usage = Mutex::new(store.load_usage()?);
        store.records = Mutex::new(store.discovery.scan_prefix(b"r").count());
        Ok(store)
    }

    fn record_count(&self) -> std::sync::MutexGuard<'_, usize> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record_key(namespace: &str, peer: &[u8]) -> Vec<u8> {
        key(&[b"r", namespace.as_bytes(), &[SEP], peer])
    }

    fn peer_prefix(peer: &[u8]) -> Vec<u8> {
        // Peer ids are at most a few dozen bytes: their length fits the one byte.
        key(&[b"p", &[u8::try_from(peer.len()).unwrap_or(u8::MAX)], peer])
    }

    fn record_expiry_key(expires: [u8; 8], namespace: &str, peer: &[u8]) -> Vec<u8> {
        key(&[b"e", &expires, namespace.as_bytes(), &[SEP], peer])
    }

    /// Removes the record under `namespace` (text) of `peer` (bytes) with its indexes.
    fn remove_record_entries(&self, namespace: &str, peer: &[u8]) -> Result<bool> {
        let record_key = Self::record_key(namespace, peer);
        let Some(value) = self.discovery.get(&record_key)? else {
            return Ok(false);
        };
        let expires = expiry_of(&value)?;
        let mut batch = sled::Batch::default();
        batch.remove(record_key);
        batch.remove(key(&[&Self::peer_prefix(peer), namespace.as_bytes()]));
        batch.remove(Self::record_expiry_key(expires, namespace, peer));
        self.discovery.apply_batch(batch)?;
        let mut count = self.record_count();
        *count = count.saturating_sub(1);
        Ok(true)
    }

    fn usage_table(&self) -> std::sync::MutexGuard<'_, HashMap<Holder, Usage>> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn one_time_prefix(name: &Holder) -> Vec<u8> {
        key(&[b"o", name.as_str().as_bytes(), &[SEP]])
    }

    fn mail_prefix(name: &Holder) -> Vec<u8> {
        key(&[b"m", name.as_str().as_bytes(), &[SEP]])
    }

    fn index_key(name: &Holder, id: &MessageId) -> Vec<u8> {
        key(&[b"i", name.as_str().as_bytes(), &[SEP], &id.0])
    }

    fn remove_message(
        &self,
        name: &Holder,
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
        let mut usage = self.usage_table();
        if let Some(held) = usage.get_mut(name) {
            held.remove(value.len() as u64);
            if held.is_empty() {
                usage.remove(name);
            }
        }
        Ok(Some(Removed {
            recipient: name.clone(),
            bytes: value.len() as u64,
        }))
    }

    /// Deletes everything filed under `holder`: its held mail and its prekeys.
    fn remove_holder(&self, holder: &Holder) -> Result<Vec<Removed>> {
        let mut removed = Vec::new();
        let prefix = Self::mail_prefix(holder);
        for entry in self.mail.scan_prefix(&prefix).keys() {
            let entry = entry?;
            // `m` holder 0 time(8) id(32)
            let rest = &entry[prefix.len()..];
            if rest.len() != 8 + 32 {
                return Err(StoreError::Corrupt("mail key of the wrong length".into()));
            }
            let (time, id) = rest.split_at(8);
            let mut message = [0u8; 32];
            message.copy_from_slice(id);
            let time: [u8; 8] = time.try_into().unwrap_or_default();
            removed.extend(self.remove_message(holder, &MessageId(message), time)?);
        }
        let mut prekeys = sled::Batch::default();
        prekeys.remove(key(&[b"s", holder.as_str().as_bytes()]));
        for one_time in self.prekeys.scan_prefix(Self::one_time_prefix(holder)).keys() {
            prekeys.remove(one_time?);
        }
        self.prekeys.apply_batch(prekeys)?;
        Ok(removed)
    }

    /// Records in the mail tree, indexes included (tests).
    #[cfg(test)]
    pub(super) fn mail_records(&self) -> usize {
        self.mail.len()
    }

    /// What every mailbox holds (read once at startup).
    fn load_usage(&self) -> Result<HashMap<Holder, Usage>> {
        let mut usage: HashMap<Holder, Usage> = HashMap::new();
        for entry in self.mail.scan_prefix(b"m") {
            let (k, v) = entry?;
            let end = k
                .iter()
                .position(|&b| b == SEP)
                .ok_or_else(|| StoreError::Corrupt("mail key without separator".into()))?;
            let holder = Holder::from_bytes(&k[1..end])?;
            usage.entry(holder).or_default().add(v.len() as u64);
        }
        Ok(usage)
    }
}

impl Storage for SledStore {
    fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn user(&self, name: &UserName) -> Result<Option<StoredUser>> {
        self.accounts
            .get(key(&[b"u", name.as_str().as_bytes()]))?
            .map(|v| decode(&v))
            .transpose()
    }

    fn name_of(&self, identity: &VerifyingKey) -> Result<Option<UserName>> {
        self.accounts
            .get(key(&[b"k", identity.as_bytes()]))?
            .map(|v| name_of_bytes(&v))
            .transpose()
    }

    fn register(
        &self,
        name: &UserName,
        identity: &VerifyingKey,
        now_ms: u64,
    ) -> Result<Registration> {
        if let Some(user) = self.user(name)? {
            return Ok(Registration::of_bound(&user, identity));
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

    fn set_last_seen(&self, name: &UserName, ms: u64) -> Result<()> {
        if let Some(mut user) = self.user(name)? {
            user.last_seen_ms = Some(ms);
            self.accounts
                .insert(key(&[b"u", name.as_str().as_bytes()]), encode(&user)?)?;
        }
        Ok(())
    }

    fn user_count(&self) -> Result<u64> {
        Ok(self.accounts.scan_prefix(b"u").count() as u64)
    }

    fn remove_user(&self, name: &UserName) -> Result<bool> {
        let Some(user) = self.user(name)? else {
            return Ok(false);
        };
        // Mail and prekeys first, the account last: a crash in between leaves an account that
        // another run removes, never a free name with someone's leftovers under it.
        let linked = self.devices(name)?;
        let linked = linked.as_ref().map(|l| l.claimed().others(&user.identity));
        let mut account = sled::Batch::default();
        for device in linked.into_iter().flatten() {
            self.remove_holder(&Holder::device(name, &device.key))?;
            account.remove(key(&[b"v", device.key.as_bytes()]));
        }
        self.remove_holder(&Holder::account(name))?;
        account.remove(key(&[b"d", name.as_str().as_bytes()]));
        account.remove(key(&[b"u", name.as_str().as_bytes()]));
        account.remove(key(&[b"k", user.identity.as_bytes()]));
        self.accounts.apply_batch(account)?;
        self.db.flush()?;
        Ok(true)
    }

    fn devices(&self, name: &UserName) -> Result<Option<SignedDeviceList>> {
        self.accounts
            .get(key(&[b"d", name.as_str().as_bytes()]))?
            .map(|v| decode(&v))
            .transpose()
    }

    fn put_devices(&self, name: &UserName, list: &SignedDeviceList) -> Result<Vec<Removed>> {
        let account = list.claimed().account;
        for device in list.claimed().others(&account) {
            if self.device_owner(&device.key)?.is_some_and(|owner| owner != *name) {
                return Err(StoreError::Database(format!(
                    "{name}'s device list names another account's device"
                )));
            }
        }
        let previous = self.devices(name)?;
        let mut removed = Vec::new();
        let mut batch = sled::Batch::default();
        for gone in previous
            .iter()
            .flat_map(|p| p.claimed().others(&account))
            .filter(|d| !list.claimed().contains(&d.key))
        {
            removed.extend(self.remove_holder(&Holder::device(name, &gone.key))?);
            batch.remove(key(&[b"v", gone.key.as_bytes()]));
        }
        for device in list.claimed().others(&account) {
            batch.insert(key(&[b"v", device.key.as_bytes()]), name.as_str().as_bytes());
        }
        batch.insert(key(&[b"d", name.as_str().as_bytes()]), encode(list)?);
        self.accounts.apply_batch(batch)?;
        Ok(removed)
    }

    fn device_owner(&self, device: &VerifyingKey) -> Result<Option<UserName>> {
        self.accounts
            .get(key(&[b"v", device.as_bytes()]))?
            .map(|v| name_of_bytes(&v))
            .transpose()
    }

    fn publish_prekeys(&self, name: &Holder, upload: &PrekeyUpload) -> Result<()> {
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

    fn has_signed_prekey(&self, name: &Holder) -> Result<bool> {
        Ok(self
            .prekeys
            .contains_key(key(&[b"s", name.as_str().as_bytes()]))?)
    }

    fn add_one_time_prekeys(&self, name: &Holder, keys: &[OneTimePrekey]) -> Result<()> {
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

    fn one_time_count(&self, name: &Holder) -> Result<u32> {
        let count = self
            .prekeys
            .scan_prefix(Self::one_time_prefix(name))
            .count();
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    fn take_bundle(&self, name: &Holder, with_one_time: bool) -> Result<Option<PrekeyBundle>> {
        let Some(signed) = self.prekeys.get(key(&[b"s", name.as_str().as_bytes()]))? else {
            return Ok(None);
        };
        let signed: StoredSignedPrekey = decode(&signed)?;
        let next = with_one_time
            .then(|| self.prekeys.scan_prefix(Self::one_time_prefix(name)).next())
            .flatten();
        let one_time_prekey = match next {
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

    fn holds(&self, name: &Holder, id: &MessageId) -> Result<bool> {
        Ok(self.mail.contains_key(Self::index_key(name, id))?)
    }

    fn deposit(&self, to: &Holder, id: &MessageId, item: &MailItem) -> Result<Deposit> {
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
        self.usage_table().entry(to.clone()).or_default().add(len);
        Ok(Deposit::Stored(len))
    }

    fn fetch(
        &self,
        name: &Holder,
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

    fn ack(&self, name: &Holder, ids: &[MessageId]) -> Result<Vec<Removed>> {
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

    fn expire(&self, cutoff: u64, max: usize) -> Result<Vec<Removed>> {
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
            let name = Holder::from_bytes(name.strip_suffix(&[SEP]).unwrap_or(name))?;
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

    fn usage(&self, name: &Holder) -> Result<Usage> {
        Ok(self.usage_table().get(name).copied().unwrap_or_default())
    }

    fn mailbox_totals(&self) -> Result<Usage> {
        Ok(self
            .usage_table()
            .values()
            .fold(Usage::default(), |total, u| Usage {
                messages: total.messages.saturating_add(u.messages),
                bytes: total.bytes.saturating_add(u.bytes),
            }))
    }

    fn put_record(
        &self,
        namespace: &Namespace,
        peer: &PeerId,
        record: &SignedPeerRecord,
        expires_ms: u64,
        limits: RecordLimits,
    ) -> Result<PutRecord> {
        let (namespace, peer) = (namespace.to_string(), peer.to_bytes());
        let record_key = Self::record_key(&namespace, &peer);
        let mut batch = sled::Batch::default();
        let earlier = self.discovery.get(&record_key)?;
        if let Some(earlier) = &earlier {
            batch.remove(Self::record_expiry_key(
                expiry_of(earlier)?,
                &namespace,
                &peer,
            ));
        } else {
            if self.discovery.scan_prefix(Self::peer_prefix(&peer)).count() >= limits.per_peer {
                return Ok(PutRecord::PeerFull);
            }
            if *self.record_count() >= limits.total {
                return Ok(PutRecord::Full);
            }
        }
        let expires = expires_ms.to_be_bytes();
        let mut value = Vec::with_capacity(8 + record.0.len());
        value.extend_from_slice(&expires);
        value.extend_from_slice(&record.0);
        batch.insert(record_key, value);
        batch.insert(
            key(&[&Self::peer_prefix(&peer), namespace.as_bytes()]),
            &[][..],
        );
        batch.insert(Self::record_expiry_key(expires, &namespace, &peer), &[][..]);
        self.discovery.apply_batch(batch)?;
        if earlier.is_none() {
            *self.record_count() += 1;
        }
        Ok(PutRecord::Stored)
    }

    fn remove_record(&self, namespace: &Namespace, peer: &PeerId) -> Result<()> {
        self.remove_record_entries(&namespace.to_string(), &peer.to_bytes())?;
        Ok(())
    }

    fn holds_record(&self, namespace: &Namespace, peer: &PeerId, now_ms: u64) -> Result<bool> {
        let record_key = Self::record_key(&namespace.to_string(), &peer.to_bytes());
        match self.discovery.get(record_key)? {
            Some(value) => Ok(u64::from_be_bytes(expiry_of(&value)?) > now_ms),
            None => Ok(false),
        }
    }

    fn records(
        &self,
        namespace: &Namespace,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<SignedPeerRecord>> {
        let prefix = key(&[b"r", namespace.to_string().as_bytes(), &[SEP]]);
        let mut valid = Vec::new();
        for entry in self.discovery.scan_prefix(prefix) {
            let (_, value) = entry?;
            let expires = u64::from_be_bytes(expiry_of(&value)?);
            if expires > now_ms {
                valid.push((expires, value));
            }
        }
        valid.sort_by_key(|(expires, _)| std::cmp::Reverse(*expires));
        Ok(valid
            .into_iter()
            .take(max)
            .map(|(_, value)| SignedPeerRecord(value[8..].to_vec()))
            .collect())
    }

    fn expire_records(&self, now_ms: u64, max: usize) -> Result<usize> {
        let mut due = Vec::new();
        for entry in self.discovery.scan_prefix(b"e").keys() {
            let entry = entry?;
            // `e` expiry(8) namespace 0 peer
            if entry.len() < 1 + 8 + 1 || due.len() >= max {
                break;
            }
            if be_u64(&entry[1..9])? > now_ms {
                break;
            }
            let rest = &entry[9..];
            let split = rest
                .iter()
                .position(|&b| b == SEP)
                .ok_or_else(|| StoreError::Corrupt("discovery index without separator".into()))?;
            let namespace = std::str::from_utf8(&rest[..split])
                .map_err(|e| StoreError::Corrupt(e.to_string()))?
                .to_owned();
            due.push((namespace, rest[split + 1..].to_vec(), entry));
        }
        let mut removed = 0;
        for (namespace, peer, index) in due {
            if self.remove_record_entries(&namespace, &peer)? {
                removed += 1;
            } else {
                // An index entry whose record is gone would hold up every later expiry.
                self.discovery.remove(index)?;
            }
        }
        Ok(removed)
    }
}
