//! One room's keys and membership, as a sans-IO state machine.
//!
//! 1. The room's owner signs every [`MembershipUpdate`] (room, epoch, the epoch of the last
//!    removal, full member list); the epoch goes up with every change. Each member passes every
//!    update it receives to [`RoomKeys::apply_membership`]; newer epochs win.
//! 2. `apply_membership` answers with [`KeyAction`]s for the caller to carry out over pairwise
//!    sessions. When anyone is removed I rotate my sender key and send the new one to the
//!    remaining members only, and forget the removed members' keys. When members are added I send
//!    them my current key at its current index, so they cannot read what came before.
//! 3. Distributions arriving over pairwise sessions go to [`RoomKeys::accept_distribution`], which
//!    takes them only from current members.
//! 4. [`RoomKeys::encrypt`] and [`RoomKeys::decrypt`] bind every message to the room, its
//!    sender and the epoch its sender key was made for as associated data; [`RoomKeys::sign`]
//!    and [`RoomKeys::verify`] cover the envelope.
//! 5. Epochs: every sender key belongs to the epoch it was made in. [`RoomKeys::check_epoch`]
//!    refuses a message from an epoch newer than ours ([`CryptoError::FutureEpoch`]: ask for the
//!    membership update), and one whose key predates the last removal
//!    ([`CryptoError::StaleEpoch`]) once [`EPOCH_GRACE_MS`] have passed since we learned of it.
//!
//! 6. Linked devices: membership lists accounts, and each device of a member account sends under
//!    a sender key of its own. [`Accounts`] says whose a device is and which devices an account
//!    has (its pinned device list); keys go to every device of every member account, mine
//!    included, and [`RoomKeys::devices_changed`] hands my key to a new device or, when one is
//!    gone, rotates it. With no linked devices anywhere ([`Solo`]) each key is its own account.
//!
//! A removed member keeps what it already had: the old keys read the messages sent before
//! everyone has rotated. Each remaining member rotates on applying the update, so messages sent
//! after that are out of its reach; a member that missed the update and still sends under its
//! old key is refused by the others after the grace, until it has caught up and rotated.

use std::collections::{BTreeMap, HashSet};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::CryptoError;
use super::sender_key::{
    MessageKey, ReceivedSenderKey, SenderKey, SenderKeyDistribution, SenderKeyMessage,
};

const MEMBERSHIP_DOMAIN: &[u8] = b"palaver/v1/room-membership";

/// How long after learning of a removal a receiver still takes messages under keys from before
/// it. Messages sent just before the removal are still in flight: gossipsub delivers within a
/// few heartbeats (1 s each) and re-offers what a peer missed for 3 s, a sender republishes
/// what nobody took every few seconds, and the membership update itself may take a retry or two
/// over the pairwise session. 30 s covers those with room to spare, while keeping short the
/// window in which a member that missed the removal can still be read by the removed member.
pub const EPOCH_GRACE_MS: u64 = 30_000;

/// The receiver's clock for the epoch checks, and the grace it allows (normally
/// [`EPOCH_GRACE_MS`]; tests shorten it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochClock {
    pub now_ms: u64,
    pub grace_ms: u64,
}

impl EpochClock {
    /// `now_ms` with the standard grace.
    pub fn at(now_ms: u64) -> Self {
        Self {
            now_ms,
            grace_ms: EPOCH_GRACE_MS,
        }
    }
}

/// The owner's signed statement of who is in the room as of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipUpdate {
    pub room: [u8; 32],
    /// Goes up by one with every change the owner signs.
    pub epoch: u64,
    /// The epoch of the last removal (at most `epoch`): sender keys made for an earlier epoch
    /// are known to someone no longer in the room, so receivers refuse them (after a grace).
    pub keys_from: u64,
    /// Everyone in the room, the owner included if the owner takes part.
    pub members: Vec<VerifyingKey>,
    pub owner: VerifyingKey,
    /// The owner's signature over the domain-separated encoding of all the fields above.
    pub signature: Signature,
}

impl MembershipUpdate {
    /// Signs a membership; [`RoomKeys::next_membership`] picks `epoch` and `keys_from` for a
    /// change.
    pub fn sign(
        owner: &SigningKey,
        room: [u8; 32],
        epoch: u64,
        keys_from: u64,
        members: Vec<VerifyingKey>,
    ) -> Self {
        let owner_key = owner.verifying_key();
        let signature = owner.sign(&Self::signed_bytes(
            &room, epoch, keys_from, &members, &owner_key,
        ));
        Self {
            room,
            epoch,
            keys_from,
            members,
            owner: owner_key,
            signature,
        }
    }

    /// Checks the signature by `self.owner`. Whether that is the room's owner is for
    /// [`RoomKeys::apply_membership`] to decide.
    pub fn verify(&self) -> Result<(), CryptoError> {
        let bytes = Self::signed_bytes(
            &self.room,
            self.epoch,
            self.keys_from,
            &self.members,
            &self.owner,
        );
        self.owner
            .verify_strict(&bytes, &self.signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    fn signed_bytes(
        room: &[u8; 32],
        epoch: u64,
        keys_from: u64,
        members: &[VerifyingKey],
        owner: &VerifyingKey,
    ) -> Vec<u8> {
        let mut bytes =
            Vec::with_capacity(MEMBERSHIP_DOMAIN.len() + 32 + 16 + 32 + 8 + 32 * members.len());
        bytes.extend_from_slice(MEMBERSHIP_DOMAIN);
        bytes.extend_from_slice(room);
        bytes.extend_from_slice(&epoch.to_be_bytes());
        bytes.extend_from_slice(&keys_from.to_be_bytes());
        bytes.extend_from_slice(owner.as_bytes());
        bytes.extend_from_slice(&(members.len() as u64).to_be_bytes());
        for member in members {
            bytes.extend_from_slice(member.as_bytes());
        }
        bytes
    }
}

/// Whose devices are whose: the account each device key speaks for, and each account's devices,
/// as their pinned device lists say.
pub trait Accounts {
    /// The account `key` speaks for: itself unless a device list names it.
    fn account_of(&self, key: &VerifyingKey) -> VerifyingKey;
    /// The devices of `account`: just the account key unless it has a device list.
    fn devices_of(&self, account: &VerifyingKey) -> Vec<VerifyingKey>;
}

/// No linked devices: every key is an account with one device, itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Accounts for Solo {
    fn account_of(&self, key: &VerifyingKey) -> VerifyingKey {
        *key
    }

    fn devices_of(&self, account: &VerifyingKey) -> Vec<VerifyingKey> {
        vec![*account]
    }
}

/// Something the caller must do after a membership change.
#[derive(Debug, Clone)]
pub enum KeyAction {
    /// Send `distribution` to each device in `to`, each over its pairwise session.
    Distribute {
        to: Vec<VerifyingKey>,
        distribution: SenderKeyDistribution,
    },
}

/// My keys for one room: my sender key, the keys other members gave me, and the membership
/// they are valid for. Serialize it to persist it.
#[derive(Serialize, Deserialize)]
pub struct RoomKeys {
    room: [u8; 32],
    owner: VerifyingKey,
    /// This device's key (an account of its own, or a linked device of a member account).
    me: VerifyingKey,
    my_key: SenderKey,
    /// `None` until the first membership update arrives.
    membership: Option<Membership>,
    /// Received keys by the device key that sent them.
    received: BTreeMap<[u8; 32], MemberKeys>,
}

#[derive(Serialize, Deserialize)]
struct Membership {
    epoch: u64,
    members: Vec<VerifyingKey>,
    /// Keys made for an earlier epoch are refused once the grace has passed.
    keys_from: u64,
    /// When (our clock) `keys_from` last went up: the grace runs from here.
    keys_from_since_ms: u64,
    /// The owner's signed update, as applied: any member can hand it to one that missed it.
    signed: MembershipUpdate,
}

/// A member's current key and the one it replaced: after a rotation, messages under the old key
/// may still be in flight.
#[derive(Serialize, Deserialize)]
struct MemberKeys {
    current: ReceivedSenderKey,
    previous: Option<ReceivedSenderKey>,
}

impl MemberKeys {
    fn get(&self, key_id: u32) -> Option<&ReceivedSenderKey> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|key| key.key_id() == key_id)
    }

    fn get_mut(&mut self, key_id: u32) -> Option<&mut ReceivedSenderKey> {
        std::iter::once(&mut self.current)
            .chain(self.previous.as_mut())
            .find(|key| key.key_id() == key_id)
    }
}

impl RoomKeys {
    /// My keys for `room`, owned by `owner`. Nothing is sent until the first membership update
    /// is applied.
    pub fn new(
        rng: &mut (impl CryptoRng + RngCore),
        room: [u8; 32],
        owner: VerifyingKey,
        me: VerifyingKey,
    ) -> Self {
        Self {
            room,
            owner,
            me,
            my_key: SenderKey::generate(rng, 0),
            membership: None,
            received: BTreeMap::new(),
        }
    }

    pub fn room(&self) -> &[u8; 32] {
        &self.room
    }

    /// The current epoch, or `None` before the first membership update.
    pub fn epoch(&self) -> Option<u64> {
        self.membership.as_ref().map(|membership| membership.epoch)
    }

    /// The current members (empty before the first membership update).
    pub fn members(&self) -> &[VerifyingKey] {
        self.membership
            .as_ref()
            .map_or(&[], |membership| &membership.members)
    }

    /// Whether `account` is listed.
    pub fn is_member(&self, account: &VerifyingKey) -> bool {
        self.members().contains(account)
    }

    /// Whether device `key` speaks for a listed account.
    pub fn is_member_device(&self, key: &VerifyingKey, accounts: &impl Accounts) -> bool {
        self.is_member(&accounts.account_of(key))
    }

    /// Every device of `of` but this one.
    fn devices(
        &self,
        of: impl IntoIterator<Item = VerifyingKey>,
        accounts: &impl Accounts,
    ) -> Vec<VerifyingKey> {
        let mut seen = HashSet::new();
        of.into_iter()
            .flat_map(|account| accounts.devices_of(&account))
            .filter(|device| *device != self.me && seen.insert(device.to_bytes()))
            .collect()
    }

    /// The epoch of the last removal: keys made for an earlier epoch are refused after the grace.
    pub fn keys_from(&self) -> Option<u64> {
        self.membership
            .as_ref()
            .map(|membership| membership.keys_from)
    }

    /// The owner's signed membership as last applied, to hand to a member that missed it.
    pub fn signed_membership(&self) -> Option<&MembershipUpdate> {
        self.membership
            .as_ref()
            .map(|membership| &membership.signed)
    }

    /// For the owner: the next membership, listing `members`. Its epoch follows the current one;
    /// if anyone current is missing from `members`, it is also the new `keys_from`, so every key
    /// the removed members hold is retired.
    pub fn next_membership(
        &self,
        owner: &SigningKey,
        members: Vec<VerifyingKey>,
    ) -> MembershipUpdate {
        let epoch = self.epoch().unwrap_or(0) + 1;
        let anyone_removed = self
            .members()
            .iter()
            .any(|member| !members.contains(member));
        let keys_from = match self.keys_from() {
            Some(keys_from) if !anyone_removed => keys_from,
            _ => epoch,
        };
        MembershipUpdate::sign(owner, self.room, epoch, keys_from, members)
    }

    /// Applies a newer membership and says which keys to send to which devices. Rejects updates
    /// for other rooms, not signed by the room's owner, not newer than the current epoch, or
    /// moving `keys_from` back (or past its own epoch). `now_ms` starts the grace when
    /// `keys_from` rises.
    pub fn apply_membership(
        &mut self,
        rng: &mut (impl CryptoRng + RngCore),
        update: &MembershipUpdate,
        now_ms: u64,
        accounts: &impl Accounts,
    ) -> Result<Vec<KeyAction>, CryptoError> {
        if update.room != self.room {
            return Err(CryptoError::WrongRoom);
        }
        if update.owner != self.owner {
            return Err(CryptoError::NotRoomOwner);
        }
        update.verify()?;
        if self.epoch().is_some_and(|epoch| update.epoch <= epoch) {
            return Err(CryptoError::StaleMembership);
        }
        if update.keys_from > update.epoch
            || self
                .keys_from()
                .is_some_and(|keys_from| update.keys_from < keys_from)
        {
            return Err(CryptoError::MalformedMembership);
        }

        let mut listed = HashSet::new();
        let members: Vec<VerifyingKey> = update
            .members
            .iter()
            .filter(|member| listed.insert(member.to_bytes()))
            .copied()
            .collect();
        let previous: HashSet<[u8; 32]> =
            self.members().iter().map(VerifyingKey::to_bytes).collect();
        let my_account = accounts.account_of(&self.me).to_bytes();
        let was_member = previous.contains(&my_account);
        let anyone_removed = previous.iter().any(|member| !listed.contains(member));
        let added: Vec<VerifyingKey> = members
            .iter()
            .filter(|member| !previous.contains(member.as_bytes()))
            .copied()
            .collect();

        self.received.retain(|device, _| {
            VerifyingKey::from_bytes(device)
                .is_ok_and(|device| listed.contains(accounts.account_of(&device).as_bytes()))
        });
        let is_member = listed.contains(&my_account);
        let keys_from_since_ms = match &self.membership {
            Some(old) if old.keys_from == update.keys_from => old.keys_from_since_ms,
            _ => now_ms,
        };
        self.membership = Some(Membership {
            epoch: update.epoch,
            members,
            keys_from: update.keys_from,
            keys_from_since_ms,
            signed: update.clone(),
        });
        if !is_member {
            // Removed (or not yet added): nothing to send, nothing to keep.
            self.received.clear();
            return Ok(Vec::new());
        }

        // A removed member knows my current chain key: replace it, and give the new one only to
        // those who remain. Joining (or rejoining) also starts a fresh key, because everyone else
        // dropped my old one when I left. A key from before the owner's last removal goes too,
        // even if I saw no one leave (someone left and came back between the updates I got).
        let stale = self.my_key.epoch() < update.keys_from;
        let rotate = anyone_removed || !was_member || stale;
        let to = match rotate {
            true => self.devices(self.members().to_vec(), accounts),
            false => self.devices(added, accounts),
        };
        if rotate {
            self.my_key = self.my_key.rotate(rng, update.epoch);
        }
        Ok(self.distribute(to))
    }

    /// `account` (a member's, or mine) gained the devices `added` and lost `removed`; `accounts`
    /// already says so. A lost device held my key: I rotate and hand the new one to every device
    /// left in the room, and forget the keys it gave me. A new device gets my key as it is now
    /// (it reads nothing sent before).
    pub fn devices_changed(
        &mut self,
        rng: &mut (impl CryptoRng + RngCore),
        account: &VerifyingKey,
        added: &[VerifyingKey],
        removed: &[VerifyingKey],
        accounts: &impl Accounts,
    ) -> Vec<KeyAction> {
        if !self.is_member(account) || !self.is_member_device(&self.me, accounts) {
            return Vec::new();
        }
        for device in removed {
            self.received.remove(device.as_bytes());
        }
        if !removed.is_empty() {
            let epoch = self.epoch().unwrap_or(0);
            self.my_key = self.my_key.rotate(rng, epoch);
            let everyone = self.devices(self.members().to_vec(), accounts);
            return self.distribute(everyone);
        }
        let added = added.iter().copied().filter(|device| *device != self.me);
        self.distribute(added.collect())
    }

    fn distribute(&self, to: Vec<VerifyingKey>) -> Vec<KeyAction> {
        if to.is_empty() {
            return Vec::new();
        }
        vec![KeyAction::Distribute {
            to,
            distribution: self.my_key.distribution(),
        }]
    }

    /// Takes a sender key that device `from` sent us over our pairwise session. Only current
    /// members' devices' keys are accepted ([`CryptoError::NotAMember`]: if the update adding them has not arrived
    /// yet, retry after it), and only for an epoch we know ([`CryptoError::FutureEpoch`]: retry
    /// after the update). A key we already hold is kept as it is: taking it again at an earlier
    /// index would let replayed messages decrypt a second time.
    pub fn accept_distribution(
        &mut self,
        from: &VerifyingKey,
        distribution: &SenderKeyDistribution,
        accounts: &impl Accounts,
    ) -> Result<(), CryptoError> {
        if !self.is_member_device(from, accounts)
            || *from == self.me
            || !self.is_member_device(&self.me, accounts)
        {
            return Err(CryptoError::NotAMember);
        }
        if self.epoch().is_some_and(|epoch| distribution.epoch > epoch) {
            return Err(CryptoError::FutureEpoch);
        }
        let key = ReceivedSenderKey::from_distribution(distribution);
        match self.received.get_mut(from.as_bytes()) {
            None => {
                self.received.insert(
                    from.to_bytes(),
                    MemberKeys {
                        current: key,
                        previous: None,
                    },
                );
            }
            Some(keys) if keys.get(distribution.key_id).is_some() => {}
            Some(keys) => keys.previous = Some(std::mem::replace(&mut keys.current, key)),
        }
        Ok(())
    }

    /// My current sender key's distribution, e.g. to resend to a member who lost it.
    pub fn my_distribution(&self) -> SenderKeyDistribution {
        self.my_key.distribution()
    }

    /// Encrypts a message from me to the room. Never under a key from before the last removal
    /// ([`CryptoError::StaleEpoch`]; applying the membership has already replaced it).
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        accounts: &impl Accounts,
    ) -> Result<SenderKeyMessage, CryptoError> {
        self.encrypt_keeping_key(plaintext, accounts)
            .map(|(message, _)| message)
    }

    /// [`RoomKeys::encrypt`], handing out the message's own key too
    /// ([`SenderKey::encrypt_keeping_key`]).
    pub fn encrypt_keeping_key(
        &mut self,
        plaintext: &[u8],
        accounts: &impl Accounts,
    ) -> Result<(SenderKeyMessage, MessageKey), CryptoError> {
        if !self.is_member_device(&self.me, accounts) {
            return Err(CryptoError::NotAMember);
        }
        if self
            .keys_from()
            .is_some_and(|keys_from| self.my_key.epoch() < keys_from)
        {
            return Err(CryptoError::StaleEpoch);
        }
        let ad = associated_data(&self.room, &self.me);
        self.my_key.encrypt_keeping_key(plaintext, &ad)
    }

    /// Whether a message under a sender key made for `epoch` may be read now: not from an epoch
    /// we have not seen ([`CryptoError::FutureEpoch`]: ask a member for the membership update),
    /// and not from before the last removal once the grace since we learned of it is over
    /// ([`CryptoError::StaleEpoch`]). A clock that went back counts as the grace being over.
    pub fn check_epoch(&self, epoch: u64, clock: EpochClock) -> Result<(), CryptoError> {
        let membership = self.membership.as_ref().ok_or(CryptoError::NotAMember)?;
        if epoch > membership.epoch {
            return Err(CryptoError::FutureEpoch);
        }
        let in_grace = clock
            .now_ms
            .checked_sub(membership.keys_from_since_ms)
            .is_some_and(|elapsed| elapsed < clock.grace_ms);
        if epoch < membership.keys_from && !in_grace {
            return Err(CryptoError::StaleEpoch);
        }
        Ok(())
    }

    /// Decrypts a message that device `sender` (authenticated by the envelope signature, see
    /// [`RoomKeys::verify`]) sent to the room, if its epoch passes [`RoomKeys::check_epoch`].
    pub fn decrypt(
        &mut self,
        sender: &VerifyingKey,
        message: &SenderKeyMessage,
        clock: EpochClock,
        accounts: &impl Accounts,
    ) -> Result<Vec<u8>, CryptoError> {
        self.decrypt_keeping_key(sender, message, clock, accounts)
            .map(|(plaintext, _)| plaintext)
    }

    /// [`RoomKeys::decrypt`], handing out the message's own key too
    /// ([`ReceivedSenderKey::decrypt_keeping_key`]).
    pub fn decrypt_keeping_key(
        &mut self,
        sender: &VerifyingKey,
        message: &SenderKeyMessage,
        clock: EpochClock,
        accounts: &impl Accounts,
    ) -> Result<(Vec<u8>, MessageKey), CryptoError> {
        if !self.is_member_device(sender, accounts) {
            return Err(CryptoError::NotAMember);
        }
        self.check_epoch(message.epoch, clock)?;
        let ad = associated_data(&self.room, sender);
        self.received_key(sender, message.key_id)?
            .decrypt_keeping_key(message, &ad)
    }

    /// Signs an envelope with my current sender key.
    pub fn sign(&self, bytes: &[u8]) -> Signature {
        self.my_key.sign(bytes)
    }

    /// Checks an envelope signature by `sender`'s sender key `key_id`.
    pub fn verify(
        &self,
        sender: &VerifyingKey,
        key_id: u32,
        bytes: &[u8],
        signature: &Signature,
        accounts: &impl Accounts,
    ) -> Result<(), CryptoError> {
        if !self.is_member_device(sender, accounts) {
            return Err(CryptoError::NotAMember);
        }
        self.received
            .get(sender.as_bytes())
            .and_then(|keys| keys.get(key_id))
            .ok_or(CryptoError::UnknownSenderKey)?
            .verify(bytes, signature)
    }

    fn received_key(
        &mut self,
        sender: &VerifyingKey,
        key_id: u32,
    ) -> Result<&mut ReceivedSenderKey, CryptoError> {
        self.received
            .get_mut(sender.as_bytes())
            .and_then(|keys| keys.get_mut(key_id))
            .ok_or(CryptoError::UnknownSenderKey)
    }
}

impl std::fmt::Debug for RoomKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomKeys")
            .field("room", &self.room)
            .field("me", &self.me)
            .field("epoch", &self.epoch())
            .field("keys_from", &self.keys_from())
            .field("members", &self.members().len())
            .field("my_key", &self.my_key)
            .field("senders_with_keys", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl RoomKeys {
    /// The room's owner, who signs its membership.
    pub fn owner(&self) -> &VerifyingKey {
        &self.owner
    }

    /// The signing key `sender` handed us with its sender key `key_id`, if we hold that key:
    /// a room envelope must be signed with exactly this key.
    pub fn signing_key_of(&self, sender: &VerifyingKey, key_id: u32) -> Option<&VerifyingKey> {
        self.received
            .get(sender.as_bytes())?
            .get(key_id)
            .map(ReceivedSenderKey::signing_key)
    }
}

/// What every message `sender` sends to private room `room` is bound to as associated data (see
/// [`RoomKeys::encrypt`]); also what [`MessageKey::reseal`] needs to make one's ciphertext again.
pub fn associated_data(room: &[u8; 32], sender: &VerifyingKey) -> [u8; 64] {
    let mut ad = [0; 64];
    ad[..32].copy_from_slice(room);
    ad[32..].copy_from_slice(sender.as_bytes());
    ad
}
