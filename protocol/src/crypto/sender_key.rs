//! Sender keys for rooms (Signal's group messaging construction).
//!
//! 1. Each member makes a [`SenderKey`] and sends its [`SenderKeyDistribution`] to every other
//!    member over their pairwise `Session`s, which encrypt and authenticate it.
//! 2. Each receiver turns the distribution into a [`ReceivedSenderKey`].
//! 3. The sender encrypts each room message once with [`SenderKey::encrypt`] (one KDF-chain step,
//!    whatever the room size), puts the [`SenderKeyMessage`] in its wire envelope and signs the
//!    envelope with [`SenderKey::sign`]. Receivers check that signature with
//!    [`ReceivedSenderKey::verify`] before [`ReceivedSenderKey::decrypt`]: the chain key is shared
//!    by every member, so only the signature tells the sender from other members.
//!
//! The chain only moves forward. A receiver holds keys from the index it was given onwards, so a
//! member who joins cannot read what was sent before, and used message keys are deleted. There
//! is no healing within one sender key: whoever steals its chain key reads the rest of its
//! messages. That is why `RoomKeys` replaces it whenever a member is removed.
//!
//! Public rooms ([`SenderKey::from_invite_secret`], [`ReceivedSenderKey::from_invite_secret`])
//! derive each member's chain and signing key from the invite secret and a key id the member
//! draws at random when it joins, so anyone holding the invite reads every message from the
//! start and can sign as any member; the envelope must then carry the sender's identity
//! signature for authorship to mean anything. The random key id is what keeps a member who
//! leaves and joins again from deriving the same chain, and so the same (key, nonce), twice.

use std::collections::VecDeque;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::CryptoError;
use super::primitives::{Chain, SecretKey, hkdf, open, seal};

/// The furthest ahead of its chain one sender-key message may be.
pub const MAX_SKIP: u32 = 1000;

/// The most skipped message keys kept per received sender key; the oldest go first.
pub const MAX_SKIPPED_KEYS: usize = 1000;

const MESSAGE_DOMAIN: &[u8] = b"palaver/v1/sender-key-message";
const SIGNATURE_DOMAIN: &[u8] = b"palaver/v1/sender-key-envelope";
const PUBLIC_ROOM_INFO: &[u8] = b"palaver/v1/public-room-sender-key";

/// What a member sends to each other member (inside a pairwise session) so they can read its
/// messages from `index` onwards. Plaintext content: the caller encrypts it. Wiped on drop.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SenderKeyDistribution {
    pub key_id: u32,
    /// The room membership epoch the key was made for (0 in public rooms): its messages carry
    /// it, and receivers refuse keys from before the room's last removal.
    pub epoch: u64,
    pub index: u32,
    pub chain_key: [u8; 32],
    #[zeroize(skip)]
    pub signing_key: VerifyingKey,
}

impl std::fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("key_id", &self.key_id)
            .field("epoch", &self.epoch)
            .field("index", &self.index)
            .field("signing_key", &self.signing_key)
            .finish_non_exhaustive()
    }
}

/// One room message encrypted under a sender key. Carries no signature: the wire layer signs
/// the whole envelope with [`SenderKey::sign`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKeyMessage {
    pub key_id: u32,
    /// The epoch of the sender key (see [`SenderKeyDistribution::epoch`]); authenticated as
    /// associated data.
    pub epoch: u64,
    pub index: u32,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Our own outbound sender key: a KDF chain and the ed25519 key that signs our envelopes.
#[derive(Serialize, Deserialize)]
pub struct SenderKey {
    key_id: u32,
    /// The membership epoch this key was made for.
    epoch: u64,
    chain: Chain,
    signing_key: SigningKey,
}

impl SenderKey {
    /// A fresh sender key with a random id, for membership `epoch` (0 outside private rooms).
    pub fn generate(rng: &mut (impl CryptoRng + RngCore), epoch: u64) -> Self {
        Self {
            key_id: rng.next_u32(),
            epoch,
            chain: Chain::new(SecretKey::random(rng)),
            signing_key: SigningKey::generate(rng),
        }
    }

    /// A fresh replacement (new chain, new signing key) for membership `epoch`, whose id follows
    /// this one's, so receivers that still hold the old key can tell the two apart.
    pub fn rotate(&self, rng: &mut (impl CryptoRng + RngCore), epoch: u64) -> Self {
        Self {
            key_id: self.key_id.wrapping_add(1),
            ..Self::generate(rng, epoch)
        }
    }

    /// `member`'s sender key in a public room, derived from the invite secret so that anyone
    /// with the invite can read (see the module docs for what that gives up), under a fresh
    /// random key id: every join starts a chain never used before.
    pub fn from_invite_secret(
        secret: &[u8; 32],
        member: &VerifyingKey,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Self {
        let key_id = rng.next_u32();
        let (chain_key, signing_key) = invite_derived_key(secret, member, key_id);
        Self {
            key_id,
            epoch: 0,
            chain: Chain::new(chain_key),
            signing_key,
        }
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The membership epoch this key was made for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The current chain position, for receivers: they can read from our next message on.
    pub fn distribution(&self) -> SenderKeyDistribution {
        SenderKeyDistribution {
            key_id: self.key_id,
            epoch: self.epoch,
            index: self.chain.index(),
            chain_key: *self.chain.key().as_bytes(),
            signing_key: self.signing_key.verifying_key(),
        }
    }

    /// Encrypts one message, binding the key's epoch and `associated_data` (the room and sender,
    /// via `RoomKeys`).
    /// Fails after 2^32 - 1 messages ([`CryptoError::ChainExhausted`]: rotate) or for plaintexts
    /// over 256 GiB; either way nothing changes.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        associated_data: &[u8],
    ) -> Result<SenderKeyMessage, CryptoError> {
        self.encrypt_keeping_key(plaintext, associated_data)
            .map(|(message, _)| message)
    }

    /// [`Self::encrypt`], handing out the message's own key too (see [`MessageKey`]).
    pub fn encrypt_keeping_key(
        &mut self,
        plaintext: &[u8],
        associated_data: &[u8],
    ) -> Result<(SenderKeyMessage, MessageKey), CryptoError> {
        let mut chain = self.chain.clone();
        let (index, message_key) = chain.next_message_key()?;
        let ad = message_ad(self.key_id, self.epoch, index, associated_data);
        let ciphertext = seal(&message_key, &ad, plaintext)?;
        self.chain = chain;
        let message = SenderKeyMessage {
            key_id: self.key_id,
            epoch: self.epoch,
            index,
            ciphertext,
        };
        Ok((message, MessageKey(message_key)))
    }

    /// Signs an envelope (domain-separated) with this sender key's signing key.
    pub fn sign(&self, bytes: &[u8]) -> Signature {
        self.signing_key.sign(&signed_bytes(bytes))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }
}

impl std::fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKey")
            .field("key_id", &self.key_id)
            .field("epoch", &self.epoch)
            .field("index", &self.chain.index())
            .field("verifying_key", &self.signing_key.verifying_key())
            .finish_non_exhaustive()
    }
}

/// Another member's sender key, as handed to us: decrypts its messages from the distribution's
/// index onwards. Serialize it to persist it; secrets are wiped on drop.
#[derive(Serialize, Deserialize)]
pub struct ReceivedSenderKey {
    key_id: u32,
    /// The membership epoch the sender made the key for; its messages must carry it.
    epoch: u64,
    /// Where the distribution started us: earlier messages are out of reach by design.
    first_index: u32,
    chain: Chain,
    signing_key: VerifyingKey,
    /// Keys of messages skipped over, oldest first.
    skipped: VecDeque<(u32, SecretKey)>,
}

impl ReceivedSenderKey {
    pub fn from_distribution(distribution: &SenderKeyDistribution) -> Self {
        Self {
            key_id: distribution.key_id,
            epoch: distribution.epoch,
            first_index: distribution.index,
            chain: Chain::starting_at(
                SecretKey::from_bytes(&distribution.chain_key),
                distribution.index,
            ),
            signing_key: distribution.signing_key,
            skipped: VecDeque::new(),
        }
    }

    /// `member`'s sender key `key_id` in a public room (the id its messages carry), derived
    /// from the invite secret.
    pub fn from_invite_secret(secret: &[u8; 32], member: &VerifyingKey, key_id: u32) -> Self {
        let (chain_key, signing_key) = invite_derived_key(secret, member, key_id);
        Self {
            key_id,
            epoch: 0,
            first_index: 0,
            chain: Chain::new(chain_key),
            signing_key: signing_key.verifying_key(),
            skipped: VecDeque::new(),
        }
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The membership epoch the sender made this key for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn signing_key(&self) -> &VerifyingKey {
        &self.signing_key
    }

    /// Checks an envelope signature made with the sender's [`SenderKey::sign`].
    pub fn verify(&self, bytes: &[u8], signature: &Signature) -> Result<(), CryptoError> {
        self.signing_key
            .verify_strict(&signed_bytes(bytes), signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Decrypts one message. Out-of-order messages within [`MAX_SKIP`] decrypt; replays fail
    /// with [`CryptoError::DuplicateMessage`], messages from before our distribution with
    /// [`CryptoError::BeforeKeyDistribution`]; a message claiming another epoch than the key's
    /// is [`CryptoError::UnknownSenderKey`]. Any error leaves the key unchanged.
    pub fn decrypt(
        &mut self,
        message: &SenderKeyMessage,
        associated_data: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.decrypt_keeping_key(message, associated_data)
            .map(|(plaintext, _)| plaintext)
    }

    /// [`Self::decrypt`], handing out the message's own key too, for a caller that keeps the
    /// plaintext and wants to make the ciphertext again later ([`MessageKey::reseal`]).
    pub fn decrypt_keeping_key(
        &mut self,
        message: &SenderKeyMessage,
        associated_data: &[u8],
    ) -> Result<(Vec<u8>, MessageKey), CryptoError> {
        if message.key_id != self.key_id || message.epoch != self.epoch {
            return Err(CryptoError::UnknownSenderKey);
        }
        let ad = message_ad(self.key_id, message.epoch, message.index, associated_data);

        if message.index < self.chain.index() {
            let Some(position) = self
                .skipped
                .iter()
                .position(|(index, _)| *index == message.index)
            else {
                return Err(if message.index < self.first_index {
                    CryptoError::BeforeKeyDistribution
                } else {
                    CryptoError::DuplicateMessage
                });
            };
            let key = self.skipped[position].1.clone();
            let plaintext = open(&key, &ad, &message.ciphertext)?;
            self.skipped.remove(position);
            return Ok((plaintext, MessageKey(key)));
        }

        let advanced = self.chain.advance_to(message.index, MAX_SKIP)?;
        let plaintext = open(&advanced.message_key, &ad, &message.ciphertext)?;
        self.chain = advanced.chain;
        self.skipped.extend(advanced.skipped);
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_front();
        }
        Ok((plaintext, MessageKey(advanced.message_key)))
    }
}

/// One room message's own key, handed out by [`SenderKey::encrypt_keeping_key`] and
/// [`ReceivedSenderKey::decrypt_keeping_key`] to a caller that keeps the plaintext and wants the
/// ciphertext back later without storing it (the room log, for gap fill). It opens that one
/// message only — message keys come one way off the chain — so beside the plaintext it reveals
/// nothing more. Wiped on drop.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct MessageKey(SecretKey);

impl MessageKey {
    /// The ciphertext of `message` (whose own ciphertext is not read), made again from the
    /// `plaintext` and `associated_data` it was sealed with: sealing under a one-use key is
    /// deterministic, so the same inputs give the same bytes.
    pub(crate) fn reseal(
        &self,
        message: &SenderKeyMessage,
        associated_data: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let ad = message_ad(
            message.key_id,
            message.epoch,
            message.index,
            associated_data,
        );
        seal(&self.0, &ad, plaintext)
    }
}

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageKey(<redacted>)")
    }
}

impl std::fmt::Debug for ReceivedSenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedSenderKey")
            .field("key_id", &self.key_id)
            .field("epoch", &self.epoch)
            .field("first_index", &self.first_index)
            .field("index", &self.chain.index())
            .field("signing_key", &self.signing_key)
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// Binds the ciphertext to its key id, membership epoch and index as well as the caller's
/// associated data; the fixed-length prefix keeps the concatenation unambiguous.
fn message_ad(key_id: u32, epoch: u64, index: u32, associated_data: &[u8]) -> Vec<u8> {
    [
        MESSAGE_DOMAIN,
        &key_id.to_be_bytes(),
        &epoch.to_be_bytes(),
        &index.to_be_bytes(),
        associated_data,
    ]
    .concat()
}

/// Envelope signatures are domain-separated so a sender-key signature can never be passed off
/// as a signature in another Palaver context.
/// What [`SenderKey::sign`] signs for `bytes`: its own domain prefix, then the bytes.
pub fn signed_bytes(bytes: &[u8]) -> Vec<u8> {
    [SIGNATURE_DOMAIN, bytes].concat()
}

/// HKDF(invite secret, info = label || member || key id) → chain key, signing key seed.
fn invite_derived_key(
    secret: &[u8; 32],
    member: &VerifyingKey,
    key_id: u32,
) -> (SecretKey, SigningKey) {
    let info = [PUBLIC_ROOM_INFO, member.as_bytes(), &key_id.to_be_bytes()].concat();
    let okm = hkdf::<64>(&[0; 32], secret, &info);
    let chain_key = SecretKey::from_bytes(&std::array::from_fn(|i| okm[i]));
    let signing_key = SigningKey::from_bytes(&std::array::from_fn(|i| okm[32 + i]));
    (chain_key, signing_key)
}

/// Compares in constant time over the chain key (it is a secret).
impl PartialEq for SenderKeyDistribution {
    fn eq(&self, other: &Self) -> bool {
        let diff = self
            .chain_key
            .iter()
            .zip(&other.chain_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0)
            & (self.key_id == other.key_id)
            & (self.epoch == other.epoch)
            & (self.index == other.index)
            & (self.signing_key == other.signing_key)
    }
}

impl Eq for SenderKeyDistribution {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn exhausted_sender_key_refuses_to_encrypt_and_changes_nothing() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut sender = SenderKey::generate(&mut rng, 1);
        sender.chain = Chain::starting_at(SecretKey::from_bytes(&[5; 32]), u32::MAX - 1);
        let mut receiver = ReceivedSenderKey::from_distribution(&sender.distribution());

        let last = sender.encrypt(b"last", b"").unwrap();
        assert_eq!(last.index, u32::MAX - 1);
        assert_eq!(
            sender.encrypt(b"one more", b""),
            Err(CryptoError::ChainExhausted)
        );
        assert_eq!(sender.distribution().index, u32::MAX);

        assert_eq!(receiver.decrypt(&last, b"").unwrap(), b"last");
        let beyond = SenderKeyMessage {
            index: u32::MAX,
            ..last
        };
        assert_eq!(
            receiver.decrypt(&beyond, b""),
            Err(CryptoError::ChainExhausted)
        );
    }

    #[test]
    fn invite_derivation_is_per_member_and_per_key_id_and_readers_derive_the_same() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let alice = SigningKey::generate(&mut rng).verifying_key();
        let bob = SigningKey::generate(&mut rng).verifying_key();
        let secret = [9; 32];
        let mine = SenderKey::from_invite_secret(&secret, &alice, &mut rng);
        let once = mine.distribution();
        let reader = ReceivedSenderKey::from_invite_secret(&secret, &alice, once.key_id);
        assert_eq!(reader.chain.key().as_bytes(), &once.chain_key);
        assert_eq!(reader.signing_key, once.signing_key);
        let other = ReceivedSenderKey::from_invite_secret(&secret, &bob, once.key_id);
        assert_ne!(other.chain.key().as_bytes(), &once.chain_key);
        assert_ne!(other.signing_key, once.signing_key);
    }

    #[test]
    fn a_member_who_joins_a_public_room_again_never_repeats_a_message_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let member = SigningKey::generate(&mut rng).verifying_key();
        let secret = [4; 32];
        // Joins, leaves, joins again: the same secret, the same member, a chain from index 0.
        let mut first = SenderKey::from_invite_secret(&secret, &member, &mut rng);
        let mut second = SenderKey::from_invite_secret(&secret, &member, &mut rng);
        assert_ne!(first.key_id(), second.key_id());
        assert_ne!(
            first.distribution().chain_key,
            second.distribution().chain_key
        );
        // The first message keys of both chains: the nonce is constant, so equal keys would
        // mean equal keystreams. They differ, and so do the ciphertexts of the same text.
        let first_keys: Vec<[u8; 32]> = (0..3)
            .map(|_| *first.chain.next_message_key().unwrap().1.as_bytes())
            .collect();
        let second_keys: Vec<[u8; 32]> = (0..3)
            .map(|_| *second.chain.next_message_key().unwrap().1.as_bytes())
            .collect();
        for key in &first_keys {
            assert!(!second_keys.contains(key));
        }
        let a = first.encrypt(b"same text", b"ad").unwrap();
        let b = second.encrypt(b"same text", b"ad").unwrap();
        assert_eq!(a.index, b.index);
        assert_ne!(a.ciphertext, b.ciphertext);
        // Each reader derives the chain from the key id the message carries.
        for message in [&a, &b] {
            let mut reader =
                ReceivedSenderKey::from_invite_secret(&secret, &member, message.key_id);
            assert_eq!(reader.decrypt(message, b"ad").unwrap(), b"same text");
        }
    }
}
