//! End-to-end encryption: pairwise sessions (X3DH + Double Ratchet) and room keys (sender keys).
//!
//! How a conversation starts and runs:
//!
//! 1. Every node keeps its [`x3dh::PrekeySecrets`] and publishes a [`x3dh::PrekeyUpload`]; the
//!    server hands each requester a [`x3dh::PrekeyBundle`] with a different one-time prekey.
//! 2. Alice runs X3DH against Bob's bundle in [`ratchet::Session::initiate`]. Every message she
//!    sends carries an [`x3dh::SessionInit`] until Bob answers.
//! 3. Bob runs X3DH from his side in [`ratchet::Session::respond`] on the first of her messages
//!    to arrive; that consumes his one-time prekey.
//! 4. From then on both sides [`ratchet::Session::encrypt`] and [`ratchet::Session::decrypt`]
//!    with the Double Ratchet.
//! 5. In a room every member encrypts with its own [`sender_key::SenderKey`] and hands its
//!    [`sender_key::SenderKeyDistribution`] to the other members over their pairwise sessions.
//!    [`room::RoomKeys`] decides who gets which key as membership changes, and rotates the key
//!    whenever someone is removed.
//!
//! Everything here is sans-IO and deterministic given the RNG passed in: no clocks, no I/O.
//! Time-based policy (when to rotate the signed prekey, when to replenish one-time prekeys) is
//! the caller's.
//!
//! Identities are plain ed25519 keys. X3DH also needs them for Diffie-Hellman; they are converted
//! to X25519 the way libsodium's `crypto_sign_ed25519_{sk,pk}_to_curve25519` do: the secret
//! scalar is the (clamped) first half of SHA-512 of the ed25519 seed, and the public key is the
//! Edwards point mapped to its Montgomery u-coordinate. `CRYPTO.md` has the threat model.

pub mod at_rest;
pub mod file;
pub mod link;
pub mod ratchet;
pub mod room;
pub mod sender_key;
pub mod x3dh;

mod primitives;

/// Everything that can go wrong. Every error leaves the state it was returned from unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A signature (prekey, membership update, sender envelope) does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The ciphertext does not authenticate: wrong key, or the message was tampered with.
    #[error("message does not decrypt: wrong key or tampered message")]
    Decrypt,
    /// The message key is gone: the message was already decrypted (a duplicate or replay), or its
    /// key was evicted from the bounded skipped-key store.
    #[error("duplicate message: its key was already used or discarded")]
    DuplicateMessage,
    /// The message is further ahead of its chain than the skip window allows.
    #[error("message is too far ahead of its chain")]
    TooManySkipped,
    /// The message was sent before the sender key was handed to us; by design we cannot read it.
    #[error("message predates the sender key we were given")]
    BeforeKeyDistribution,
    /// We hold no sender key with this id from this sender.
    #[error("no sender key with this id from this sender")]
    UnknownSenderKey,
    /// The identity is not a current member of the room (or I am not, when sending).
    #[error("not a current member of the room")]
    NotAMember,
    /// The membership update is not newer than the one already applied.
    #[error("membership update is not newer than the current membership")]
    StaleMembership,
    /// The membership update is not from the room's owner.
    #[error("membership update is not from the room owner")]
    NotRoomOwner,
    /// The membership update moves `keys_from` back, or past its own epoch.
    #[error("membership update has an impossible keys_from epoch")]
    MalformedMembership,
    /// The message's sender key is from an epoch newer than the membership we hold: we missed
    /// an update, and should ask a member for it.
    #[error("message is from a membership epoch we have not seen yet")]
    FutureEpoch,
    /// The message's sender key predates the room's last removal, and the grace is over.
    #[error("message is under a sender key from before the last removal")]
    StaleEpoch,
    /// The membership update is for another room.
    #[error("membership update is for a different room")]
    WrongRoom,
    /// The prekey an initiation names is unknown, rotated out, or (one-time) already used.
    #[error("the prekey named by the session initiation is unknown or already used")]
    MissingPrekey,
    /// [`ratchet::Session::respond`] was given a message without a [`x3dh::SessionInit`].
    #[error("message carries no session initiation")]
    MissingSessionInit,
    /// The message carries an initiation for another session: the peer started a new session,
    /// which the caller should answer with [`ratchet::Session::respond`].
    #[error("message belongs to a different session")]
    SessionMismatch,
    /// A peer's X25519 public key has small order, so Diffie-Hellman with it would be predictable.
    #[error("peer public key is invalid (small order)")]
    InvalidPublicKey,
    /// The sender key has produced all 2^32 - 1 of its message keys and must be replaced.
    #[error("sender key chain exhausted; rotate the key")]
    ChainExhausted,
    /// The plaintext exceeds ChaCha20-Poly1305's per-message limit (256 GiB).
    #[error("plaintext too large to encrypt")]
    MessageTooLarge,
    /// A file chunk is not where, or not as long as, its file's offer says it can be.
    #[error("not a chunk of this file")]
    NotAChunk,
}
