//! Sealing a direct message for one peer and opening one from a peer: the pairwise Double
//! Ratchet sessions, the hybrid clock stamp and the signed envelope, without the store.
//! Receiving runs [`admit`] (which envelopes are opened at all), [`open`], then [`received`]
//! (what the message becomes: a line in the history, perhaps offering a file, or a control
//! payload).
//!
//! The caller loads the state these change (the peer's sessions, our clock, the conversation's
//! sequence number, our one-time prekeys) and commits all of it with the message in one batch;
//! nothing here is durable on its own.

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::crypto::CryptoError;
use crate::crypto::ratchet::{ChainPlace, LegacySession, RatchetMessage, SendAhead, Session};
use crate::crypto::x3dh::{PrekeyBundle, PrekeySecrets};
use crate::delivery::{HybridClock, Stamp};
use crate::wire::{
    Body, Content, DirectMessage, Envelope, FileOffer, MAX_TEXT_LEN, MessageId, Payload, WireError,
};

/// Recent sessions kept besides the current one.
const MAX_ARCHIVED: usize = 3;

/// The pairwise sessions with one peer: the current one, and a few recent ones.
///
/// When two users open a session to each other at the same moment, each answers the other's
/// initiation and the two end up on different sessions. Like Signal, we keep the recent sessions:
/// a message decrypts with whichever session its sender used, and that session becomes current,
/// so both sides converge on one session after one message each way.
///
/// Stored as [`Stored`]; [`PeerSessions::from_stored`] also reads the layout before it.
pub struct PeerSessions {
    current: Session,
    archived: Vec<Session>,
}

/// How [`PeerSessions`] are stored. The layout before [`SendAhead`] began with the length of
/// our identity key (32) and this one begins with its variant's index (0), so neither can be
/// read as the other.
/// Written from borrowed sessions (`&Session`, `&[Session]`), read into owned ones: the same
/// bytes.
#[derive(Serialize, Deserialize)]
enum Stored<Current, Archived> {
    WithSendAhead {
        current: Current,
        archived: Archived,
    },
}

/// The layout before [`SendAhead`].
#[derive(Deserialize)]
struct LegacyPeerSessions {
    current: LegacySession,
    archived: Vec<LegacySession>,
}

impl Serialize for PeerSessions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Stored::WithSendAhead {
            current: &self.current,
            archived: self.archived.as_slice(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PeerSessions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Stored::WithSendAhead { current, archived } =
            Stored::<Session, Vec<Session>>::deserialize(deserializer)?;
        Ok(Self { current, archived })
    }
}

impl std::fmt::Debug for PeerSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sessions hold secrets: only their count is shown.
        f.debug_struct("PeerSessions")
            .field("archived", &self.archived.len())
            .finish_non_exhaustive()
    }
}

impl PeerSessions {
    pub fn new(session: Session) -> Self {
        Self {
            current: session,
            archived: Vec::new(),
        }
    }

    /// `session` becomes current; the previous one is kept for messages still in flight.
    pub fn promote(&mut self, session: Session) {
        let previous = std::mem::replace(&mut self.current, session);
        self.archived.insert(0, previous);
        self.archived.truncate(MAX_ARCHIVED);
    }

    /// Reads sessions as stored, in this layout or the one before it.
    pub fn from_stored(bytes: &[u8]) -> Result<Self, codec::DecodeError> {
        codec::decode::<PeerSessions>(bytes).or_else(|err| {
            let legacy = codec::decode::<LegacyPeerSessions>(bytes).map_err(|_| err)?;
            Ok(Self {
                current: legacy.current.into(),
                archived: legacy.archived.into_iter().map(Session::from).collect(),
            })
        })
    }

    /// [`Session::resume`] for each session (any of them can become current again): done to
    /// sessions read back after a restart, before they encrypt. Whether any changed.
    pub fn resume(&mut self) -> bool {
        let mut changed = self.current.resume();
        for session in &mut self.archived {
            changed |= session.resume();
        }
        changed
    }

    /// What the current session reserves once this state is durable (see [`SendAhead`]).
    pub fn send_ahead(&self) -> Option<SendAhead> {
        self.current.send_ahead()
    }

    /// Decrypts with whichever session the sender used (each attempt that fails changes
    /// nothing); the one that worked becomes current.
    pub fn decrypt(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        message: &RatchetMessage,
    ) -> Option<Vec<u8>> {
        if let Ok(plaintext) = self.current.decrypt(rng, message) {
            return Some(plaintext);
        }
        let (i, plaintext) = self
            .archived
            .iter_mut()
            .enumerate()
            .find_map(|(i, session)| session.decrypt(rng, message).ok().map(|p| (i, p)))?;
        let session = self.archived.remove(i);
        self.promote(session);
        Some(plaintext)
    }
}

/// Opens a session from the peer's prekey bundle (the sender's side of X3DH); it becomes current.
pub fn start_session(
    rng: &mut (impl RngCore + CryptoRng),
    identity: &SigningKey,
    bundle: &PrekeyBundle,
    existing: Option<PeerSessions>,
) -> Result<PeerSessions, CryptoError> {
    let session = Session::initiate(rng, identity, bundle)?;
    Ok(match existing {
        Some(mut sessions) => {
            sessions.promote(session);
            sessions
        }
        None => PeerSessions::new(session),
    })
}

/// Why a message could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot encrypt: {0}")]
    Crypto(#[from] CryptoError),
    #[error("message too large: {0}")]
    TooLarge(String),
}

/// A message sealed for its recipient: what to store and send.
#[derive(Debug)]
pub struct Sealed {
    pub id: MessageId,
    /// The signed envelope, encoded: what goes on the wire and into the outbox.
    pub frame: Vec<u8>,
    /// Its stamp and send time, for our own history.
    pub stamp: Stamp,
    pub sent_at_ms: u64,
    /// Where it sits in our sending chain: it may leave before it is durable if a durable
    /// copy of the sessions reserves this place ([`SendAhead::covers`]).
    pub place: ChainPlace,
}

/// Encrypts `payload` for `recipient` with the current session, stamped with `clock` and `seq`,
/// and signs the envelope. The sessions and the clock are advanced: commit them with the message.
#[allow(clippy::too_many_arguments)]
pub fn seal(
    rng: &mut (impl RngCore + CryptoRng),
    identity: &SigningKey,
    recipient: VerifyingKey,
    sessions: &mut PeerSessions,
    clock: &mut HybridClock,
    seq: u64,
    payload: Payload,
    now_ms: u64,
) -> Result<Sealed, SealError> {
    let stamp = clock.tick(now_ms);
    let content = Content {
        sent_at_ms: now_ms,
        stamp,
        seq,
        payload,
    };
    let plaintext = codec::encode(&content).map_err(|e| SealError::TooLarge(e.to_string()))?;
    let message = sessions.current.encrypt(rng, &plaintext)?;
    let place = sessions.current.place_of(&message.header);
    let body = Body::Direct(DirectMessage {
        sender: identity.verifying_key(),
        recipient,
        message,
    });
    let envelope =
        Envelope::sign(body, identity).map_err(|e| SealError::TooLarge(e.to_string()))?;
    let frame = envelope
        .to_bytes()
        .map_err(|e| SealError::TooLarge(e.to_string()))?;
    Ok(Sealed {
        id: envelope.id(),
        frame,
        stamp,
        sent_at_ms: now_ms,
        place,
    })
}

/// Why a received direct message was refused (the sender is told, and may try again).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("not addressed to me")]
    NotForMe,
    #[error("cannot open the session: {0}")]
    Session(CryptoError),
    #[error("cannot decrypt (no session, or a replay)")]
    Undecryptable,
    #[error("bad content: {0}")]
    BadContent(String),
    #[error("text too long")]
    TextTooLong,
}

/// A direct message opened.
#[derive(Debug)]
pub struct Opened {
    pub sender: VerifyingKey,
    /// The sessions with the sender, advanced: commit them with the message.
    pub sessions: PeerSessions,
    /// Our prekeys with the one-time prekey taken out that answered the sender's session
    /// initiation, if one did: commit them with the message, and only then make them ours (a
    /// message we fail to store must still open when it comes again).
    pub prekeys_after: Option<PrekeySecrets>,
    /// The stamp to file it under (ours moved past it: commit the clock too).
    pub stamp: Stamp,
    pub sent_at_ms: u64,
    pub seq: u64,
    pub payload: Payload,
}

/// Opens `direct`, sent to `me`, with our sessions with its sender (answering a session
/// initiation with our prekeys if none of them decrypts it). `prekeys` are not changed: what
/// a session initiation uses up comes back in [`Opened::prekeys_after`]. Nothing changes on
/// failure.
pub fn open(
    rng: &mut (impl RngCore + CryptoRng),
    me: &SigningKey,
    mut existing: Option<PeerSessions>,
    prekeys: &PrekeySecrets,
    clock: &mut HybridClock,
    direct: &DirectMessage,
    now_ms: u64,
) -> Result<Opened, OpenError> {
    if direct.recipient != me.verifying_key() {
        return Err(OpenError::NotForMe);
    }
    let sender = direct.sender;
    let decrypted = existing
        .as_mut()
        .and_then(|sessions| sessions.decrypt(rng, &direct.message));
    let (sessions, plaintext, prekeys_after) = match (existing, decrypted) {
        (Some(sessions), Some(plaintext)) => (sessions, plaintext, None),
        // No session, or the sender started a new one: answer its initiation.
        (existing, None) if direct.message.init.is_some() => {
            let mut staged = prekeys.clone();
            let (session, plaintext) =
                Session::respond(rng, me, &mut staged, &sender, &direct.message)
                    .map_err(OpenError::Session)?;
            let sessions = match existing {
                Some(mut sessions) => {
                    sessions.promote(session);
                    sessions
                }
                None => PeerSessions::new(session),
            };
            (sessions, plaintext, Some(staged))
        }
        _ => return Err(OpenError::Undecryptable),
    };
    let content: Content =
        codec::decode(&plaintext).map_err(|e| OpenError::BadContent(e.to_string()))?;
    if let Payload::Text(text) = &content.payload
        && text.len() > MAX_TEXT_LEN
    {
        return Err(OpenError::TextTooLong);
    }
    // A file offer a receiver cannot take (a name with a path in it, bytes sent whole that
    // are not the file offered) is refused with the message.
    match &content.payload {
        Payload::FileWhole { offer, bytes } => offer.check_whole(bytes),
        Payload::File(offer) => offer.check(),
        _ => Ok(()),
    }
    .map_err(|e| OpenError::BadContent(e.to_string()))?;
    let stamp = clock.observe(content.stamp.or_sent_at(content.sent_at_ms), now_ms);
    Ok(Opened {
        sender,
        sessions,
        prekeys_after,
        stamp,
        sent_at_ms: content.sent_at_ms,
        seq: content.seq,
        payload: content.payload,
    })
}

/// Why an envelope that came by direct delivery or from the mailbox is not opened.
#[derive(Debug, thiserror::Error)]
pub enum NotOpened {
    #[error("bad envelope: {0}")]
    Invalid(#[from] WireError),
    #[error("room messages travel by gossip and gap fill")]
    RoomByDirect,
}

/// An envelope that came by direct delivery or from the mailbox: its signature is checked
/// first; then there is nothing to open if it is `stored` already (it is acknowledged again,
/// and taken in no more), else the direct message to [`open`]. Room messages are refused here:
/// they travel by gossip and gap fill, where the room's own checks run.
pub fn admit(envelope: Envelope, stored: bool) -> Result<Option<DirectMessage>, NotOpened> {
    envelope.verify()?;
    if stored {
        return Ok(None);
    }
    match envelope.body {
        Body::Direct(direct) => Ok(Some(direct)),
        Body::Room(_) => Err(NotOpened::RoomByDirect),
    }
}

/// What an opened message becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A line in the conversation. A file it offers has its transfer record stored with the
    /// line and, if the line is new, is fetched — or, sent `whole`, checked — once stored.
    Entry {
        text: String,
        offer: Option<FileOffer>,
        whole: Option<Vec<u8>>,
    },
    /// A line we sent to `to` (account key `to_key`) at `sent_at_ms` from another of our
    /// devices: filed in the conversation with `to`, as ours.
    Sent {
        to: crate::UserName,
        to_key: VerifyingKey,
        text: String,
        sent_at_ms: u64,
    },
    /// Not shown in the history: recorded as seen with the message, then carried out
    /// (receipts, declines, room keys and membership).
    Control(Box<Payload>),
}

/// What `payload` (of an [`Opened`] message) becomes. A [`Payload::Sent`] is a line only
/// `from_own_device` (see [`crate::node::devices::is_own_device`]); from anyone else it is a
/// control message that does nothing.
pub fn received(payload: Payload, from_own_device: bool) -> Received {
    match payload {
        Payload::Sent {
            to,
            to_key,
            text,
            sent_at_ms,
            ..
        } if from_own_device && text.len() <= MAX_TEXT_LEN => {
            return Received::Sent {
                to,
                to_key,
                text,
                sent_at_ms,
            };
        }
        Payload::Sent { .. } => return Received::Control(Box::new(payload)),
        _ => {}
    }
    let Some(text) = payload.history_text() else {
        return Received::Control(Box::new(payload));
    };
    let (offer, whole) = match payload {
        Payload::FileWhole { offer, bytes } => (Some(offer), Some(bytes)),
        Payload::File(offer) => (Some(offer), None),
        _ => (None, None),
    };
    Received::Entry { text, offer, whole }
}

#[cfg(test)]
#[path = "pairwise_tests.rs"]
mod tests;
