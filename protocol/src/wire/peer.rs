//! Node ↔ node: deliver an envelope and get the recipient's acknowledgement that it is durable, or
//! ask a room member for the messages one missed (gap fill, by per-sender sequence numbers).

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::{Envelope, MessageId, RoomId};

/// The most envelopes one gap-fill response carries; the requester asks again while `more`.
pub const MAX_GAP_FILL: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    Deliver(Box<Envelope>),
    GapFill(GapFillRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// The envelope is durable at the recipient (or was already): the sender may mark it delivered.
    Stored {
        id: MessageId,
    },
    /// Not accepted, with a reason for the log; the sender retries or uses the mailbox.
    Rejected {
        reason: String,
    },
    GapFill(GapFillResponse),
}

/// "Send me what you have in `room` after these sequence numbers" — senders not listed from the
/// start of what the responder holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapFillRequest {
    pub room: RoomId,
    pub cursors: Vec<SenderCursor>,
    pub max: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderCursor {
    pub sender: VerifyingKey,
    /// The highest sequence number held without a gap.
    pub have_through: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapFillResponse {
    pub envelopes: Vec<Envelope>,
    pub more: bool,
}
