//! The envelope: what one user sends to another user or to a room.
//!
//! Sending: build the [`Content`], encrypt its encoding (Double Ratchet for a [`DirectMessage`],
//! the sender's room key for a [`RoomMessage`]), then [`Envelope::sign`]. Receiving:
//! [`Envelope::from_bytes`] bounds, decodes and verifies the signature before anything else looks at
//! it; its [`MessageId`] is then checked for duplicates; only then is it decrypted.
//!
//! Direct envelopes are signed by the sender's identity key. Room envelopes are signed by the
//! sender's current *sender-key* signing key, which members received over their pairwise sessions;
//! the key is carried in the envelope so gossip can check the signature without state, and members
//! check that it is the one the sender distributed. In a public room, whose derived keys everyone
//! who knows the name holds, that key is the sender's identity key itself ([`Envelope::sign`]).

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{MAX_ENVELOPE_LEN, MessageId, RoomId, WireError};
use crate::codec;
use crate::crypto::ratchet::RatchetMessage;
use crate::crypto::room::MembershipUpdate;
use crate::crypto::sender_key::{SenderKeyDistribution, SenderKeyMessage};
use crate::delivery::Stamp;
use crate::identity;
use crate::name::RoomName;

const DIRECT_DOMAIN: &[u8] = b"palaver/v1/envelope/direct";
const ROOM_DOMAIN: &[u8] = b"palaver/v1/envelope/room";

/// A signed, end-to-end encrypted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub body: Body,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    Direct(DirectMessage),
    Room(RoomMessage),
}

/// One user to another, through their Double Ratchet session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    pub sender: VerifyingKey,
    pub recipient: VerifyingKey,
    pub message: RatchetMessage,
}

/// One member to a room, under the sender's current sender key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    pub room: RoomId,
    pub sender: VerifyingKey,
    /// The key that signs this envelope: the sender key's signing key (private rooms), or the
    /// sender's identity key (public rooms).
    pub signing_key: VerifyingKey,
    pub message: SenderKeyMessage,
}

impl Body {
    fn domain(&self) -> &'static [u8] {
        match self {
            Body::Direct(_) => DIRECT_DOMAIN,
            Body::Room(_) => ROOM_DOMAIN,
        }
    }

    /// The key whose signature this body must carry.
    pub fn signer(&self) -> &VerifyingKey {
        match self {
            Body::Direct(direct) => &direct.sender,
            Body::Room(room) => &room.signing_key,
        }
    }

    /// The identity of the user who sent it.
    pub fn sender(&self) -> &VerifyingKey {
        match self {
            Body::Direct(direct) => &direct.sender,
            Body::Room(room) => &room.sender,
        }
    }
}

impl Envelope {
    /// Signs `body` with `key`, which must be the body's [`Body::signer`].
    pub fn sign(body: Body, key: &SigningKey) -> Result<Self, WireError> {
        if key.verifying_key() != *body.signer() {
            return Err(WireError::WrongSigner);
        }
        let signature = ed25519_dalek::Signer::sign(key, &signed_message(&body)?);
        Ok(Self { body, signature })
    }

    /// Signs a room body with the sender's [`crate::crypto::sender_key::SenderKey::sign`] (or
    /// `RoomKeys::sign`), which adds the sender-key signature domain itself.
    pub fn sign_with(body: Body, sign: impl FnOnce(&[u8]) -> Signature) -> Result<Self, WireError> {
        let message = identity::domain_separated(body.domain(), &signed_bytes(&body)?);
        let signature = sign(&message);
        Ok(Self { body, signature })
    }

    /// Checks the signature against the body's signer.
    pub fn verify(&self) -> Result<(), WireError> {
        self.body
            .signer()
            .verify_strict(&signed_message(&self.body)?, &self.signature)
            .map_err(|_| WireError::BadSignature)
    }

    /// Decodes (bounded) and verifies an envelope received from anywhere.
    pub fn from_bytes(frame: &[u8]) -> Result<Self, WireError> {
        let envelope = Self::from_own_bytes(frame)?;
        envelope.verify()?;
        Ok(envelope)
    }

    /// Decodes (bounded) an envelope this node sealed itself and kept (its outbox), without
    /// checking its signature again — a signature check is most of a decode's cost, and the
    /// recipient makes it anyway. Anything that came from elsewhere goes through
    /// [`Envelope::from_bytes`].
    pub fn from_own_bytes(frame: &[u8]) -> Result<Self, WireError> {
        if frame.len() > MAX_ENVELOPE_LEN {
            return Err(WireError::TooLarge(frame.len()));
        }
        Ok(codec::decode_bounded(frame, MAX_ENVELOPE_LEN)?)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let bytes = codec::encode(self).map_err(|_| WireError::TooLarge(MAX_ENVELOPE_LEN + 1))?;
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(WireError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// The message id: a hash of the canonical encoding, so every path agrees on it.
    pub fn id(&self) -> MessageId {
        // Our own values always encode; an envelope too large to encode has no path to travel on,
        // and hashing the body's debug form would be worse than hashing an empty frame.
        MessageId::of_frame(&codec::encode(self).unwrap_or_default())
    }

    pub fn sender(&self) -> &VerifyingKey {
        self.body.sender()
    }
}

/// Exactly what the signer signs: the domain-separated body; for rooms, wrapped once more in the
/// sender-key signature domain (room envelopes are signed through the sender key).
fn signed_message(body: &Body) -> Result<Vec<u8>, WireError> {
    let message = identity::domain_separated(body.domain(), &signed_bytes(body)?);
    Ok(match body {
        Body::Direct(_) => message,
        Body::Room(_) => crate::crypto::sender_key::signed_bytes(&message),
    })
}

fn signed_bytes(body: &Body) -> Result<Vec<u8>, WireError> {
    codec::encode(body).map_err(|_| WireError::TooLarge(MAX_ENVELOPE_LEN + 1))
}

/// What an envelope carries, once decrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// The sender's wall clock, for display only; order comes from `stamp`.
    pub sent_at_ms: u64,
    /// The sender's hybrid logical clock: history is ordered by (stamp, sender, seq). Encoded as
    /// the `u64` Lamport time it replaced; an old peer's counter is filed by `sent_at_ms`
    /// ([`Stamp::or_sent_at`]).
    pub stamp: Stamp,
    /// The sender's sequence number in this conversation, from 1, with no gaps.
    pub seq: u64,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A message a person wrote.
    Text(String),
    /// The recipient has these messages durably in its history.
    Receipt(Vec<MessageId>),
    /// An invitation into a room, sent over the pairwise session.
    RoomInvite(RoomInvite),
    /// The sender's (new) sender key for a room, sent to each member over the pairwise session.
    SenderKey {
        room: RoomId,
        distribution: SenderKeyDistribution,
    },
    /// A membership change signed by the room's owner.
    Membership(MembershipUpdate),
    /// The sender left the room.
    Leave { room: RoomId },
    /// The sender holds messages of ours in this room under a sender key it never got: the
    /// answer is our current key ([`Payload::SenderKey`]), if the sender is a member.
    KeyRequest { room: RoomId },
    /// The sender holds messages in this room from a membership epoch newer than its own: it
    /// missed an update. The answer is the owner's latest signed one ([`Payload::Membership`]),
    /// if the sender is a member.
    MembershipRequest { room: RoomId },
    /// A file, offered: the receiver fetches its chunks from the sender (or, in a room, from a
    /// member that has it) under the message's id.
    File(super::FileOffer),
    /// A small file whole (at most [`super::file::MAX_WHOLE_FILE_LEN`]), so that it travels like
    /// a message — through the mailbox too — and needs no fetch.
    FileWhole {
        offer: super::FileOffer,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The file offered in message `file` will not be fetched (the recipient rejected it, or it
    /// failed there), and why: its sender stops waiting.
    FileDeclined { file: MessageId, reason: String },
    /// A line this account sent from another of its devices, copied here so that every device
    /// shows the whole conversation: `text` went to `to` (account key `to_key`) as message `id`
    /// at `sent_at_ms`. Taken only from one of the account's own devices.
    Sent {
        to: crate::UserName,
        to_key: ed25519_dalek::VerifyingKey,
        id: MessageId,
        text: String,
        sent_at_ms: u64,
    },
}

impl Payload {
    /// What a conversation's history shows of it; `None` for control messages, which it does
    /// not show.
    pub fn history_text(&self) -> Option<String> {
        match self {
            Payload::Text(text) => Some(text.clone()),
            Payload::File(offer) | Payload::FileWhole { offer, .. } => Some(offer.summary()),
            _ => None,
        }
    }

    /// The file it offers, if it does.
    pub fn file_offer(&self) -> Option<&super::FileOffer> {
        match self {
            Payload::File(offer) | Payload::FileWhole { offer, .. } => Some(offer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInvite {
    pub room: RoomId,
    pub name: RoomName,
    pub membership: MembershipUpdate,
    /// For public rooms: the secret the room key is derived from.
    pub invite_secret: Option<[u8; 32]>,
}
