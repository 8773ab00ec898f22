//! Every message Palaver sends, in one versioned type family, all encoded by [`crate::codec`].
//!
//! - [`envelope`]: the end-to-end encrypted, signed [`Envelope`] a user sends — the same bytes travel
//!   direct, over a relay circuit, through gossipsub or through the mailbox — and the [`Content`]
//!   inside it once decrypted.
//! - [`rendezvous`]: node ↔ rendezvous server requests (accounts, prekeys, presence, mailbox,
//!   discovery) and the server's pushes.
//! - [`peer`]: node ↔ node requests (deliver an envelope, fill a room's gaps).
//! - [`file`]: a file's offer, and the stream its chunks are fetched over.

pub mod envelope;
pub mod file;
pub mod peer;
pub mod rendezvous;

use std::fmt;

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};

pub use envelope::{Body, Content, DirectMessage, Envelope, Payload, RoomInvite, RoomMessage};
pub use file::{FileFetch, FileFrame, FileOffer, TransferId};
pub use peer::{GapFillRequest, GapFillResponse, PeerRequest, PeerResponse, SenderCursor};
pub use rendezvous::{
    MailItem, PresenceRecord, PresenceState, Refusal, RefusalReason, RendezvousRequest,
    RendezvousResponse, ServerPush, SignedPeerRecord, UserRecord,
};

use crate::codec::DecodeError;

/// The largest text a message may carry, in bytes of UTF-8.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// The largest encoded envelope accepted on any path.
pub const MAX_ENVELOPE_LEN: usize = 96 * 1024;

/// Why a received frame was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("bad signature")]
    BadSignature,
    #[error("signing key does not match the envelope's signer")]
    WrongSigner,
    #[error("envelope of {0} bytes is over the {MAX_ENVELOPE_LEN}-byte limit")]
    TooLarge(usize),
    #[error("bad file offer: {0}")]
    BadFileOffer(&'static str),
}

/// A message's identity: SHA-256 over its canonical signed envelope. Used for dedup on every path.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 32]);

/// A room's identity: 32 random bytes chosen by its creator.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoomId(pub [u8; 32]);

impl RoomId {
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        Self(id)
    }
}

macro_rules! hex_id {
    ($ty:ident) => {
        impl $ty {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            pub fn from_hex(text: &str) -> Option<Self> {
                let mut id = [0u8; 32];
                hex::decode_to_slice(text, &mut id).ok()?;
                Some(Self(id))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), &self.to_hex()[..12])
            }
        }
    };
}

impl MessageId {
    /// The id of an envelope from its encoded frame. Equals [`Envelope::id`] for the canonical
    /// encoding, which is what every node sends; gossipsub uses it as its message id.
    pub fn of_frame(frame: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self(
            Sha256::new()
                .chain_update(b"palaver/v1/message-id")
                .chain_update(frame)
                .finalize()
                .into(),
        )
    }
}

hex_id!(MessageId);
hex_id!(RoomId);

/// libp2p protocol names of Palaver's own protocols.
pub mod protocol_names {
    /// Node → rendezvous: [`super::RendezvousRequest`] / [`super::RendezvousResponse`].
    pub const RENDEZVOUS: &str = "/palaver/rendezvous/1";
    /// Rendezvous → node, one long-lived stream per session, opened by the server as the
    /// session logs in: [`super::ServerPush`] frames (a big-endian `u32` length, then the encoded push),
    /// unanswered.
    pub const PUSH: &str = "/palaver/push/2";
    /// Node ↔ node: [`super::PeerRequest`] / [`super::PeerResponse`].
    pub const PEER: &str = "/palaver/peer/1";
    /// Node ↔ node, a stream of its own: [`super::FileFetch`], then [`super::FileFrame`]s.
    pub const FILE: &str = "/palaver/file/1";
}
