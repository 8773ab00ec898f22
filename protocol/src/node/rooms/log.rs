//! The room log: every room message a member holds, by sender and sequence number, which gap
//! fill serves to members who missed some ([`Rooms::answer_gap_fill`]).
//!
//! A text message's frame is mostly its text, sealed, and the history already holds that text.
//! So the log keeps the frame without it ([`LogRecord::WithoutText`]): the envelope with its
//! ciphertext left out, the content with its text left out, and the message's own key, from
//! which [`LogRecord::frame`] makes the frame again, byte for byte, given the text. Sealing under
//! a one-use key is deterministic, and the signature covers the rest. A record is only kept so if
//! making it again gave the very frame that came ([`LogRecord::of_text`]), and a frame made again
//! is only handed out if it is that message (its id): never a second ciphertext under the key.
//! Anything else (a file offer, a sender whose encoding we would not reproduce) keeps its frame.
//! Records so kept depend on the encoding staying as it is; a test pins it.
//!
//! The key opens that one message only, and sits beside its plaintext in the same store, so
//! keeping it reveals nothing the history does not.

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

use super::public_ad;
use crate::codec;
use crate::crypto::room::associated_data;
use crate::crypto::sender_key::{MessageKey, SenderKeyMessage};
use crate::wire::{Body, Content, Envelope, MessageId, Payload, RoomMessage};

/// How one room message is kept in its room's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LogRecord {
    /// The frame as it came.
    Frame(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A text message without its text, which the history holds under its id.
    WithoutText(Box<WithoutText>),
}

/// A text message's frame, less its text ([`LogRecord::WithoutText`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WithoutText {
    /// The message whose history entry holds the text.
    id: MessageId,
    /// The envelope's body, its ciphertext left out.
    message: RoomMessage,
    signature: Signature,
    /// What was sealed, its text left out.
    content: Content,
    key: MessageKey,
    /// A public room's messages are bound to other associated data than a private room's.
    public: bool,
}

impl LogRecord {
    /// The record of text message `id` just read from `frame` (whose envelope is `message` and
    /// `signature`, and which sealed `content` under `key`): without its text if that gives
    /// `frame` back exactly, else the frame.
    pub(super) fn of_text(
        id: MessageId,
        frame: Vec<u8>,
        (message, signature): (&RoomMessage, Signature),
        content: &Content,
        key: MessageKey,
        public: bool,
    ) -> Self {
        let Payload::Text(text) = &content.payload else {
            return LogRecord::Frame(frame);
        };
        let record = WithoutText {
            id,
            message: RoomMessage {
                room: message.room,
                sender: message.sender,
                signing_key: message.signing_key,
                message: SenderKeyMessage {
                    ciphertext: Vec::new(),
                    ..message.message
                },
            },
            signature,
            content: Content {
                payload: Payload::Text(String::new()),
                ..*content
            },
            key,
            public,
        };
        if record.frame(text).as_deref() == Some(frame.as_slice()) {
            LogRecord::WithoutText(Box::new(record))
        } else {
            LogRecord::Frame(frame)
        }
    }

    /// The message whose text (from the history) [`LogRecord::frame`] needs, if it needs one.
    pub fn text_of(&self) -> Option<&MessageId> {
        match self {
            LogRecord::Frame(_) => None,
            LogRecord::WithoutText(record) => Some(&record.id),
        }
    }

    /// The message's frame: as kept, or made again from its `text` (see [`LogRecord::text_of`]).
    /// `None` if it needs a text and has none, or that text does not make this very message
    /// again.
    pub fn frame(&self, text: Option<&str>) -> Option<Vec<u8>> {
        match self {
            LogRecord::Frame(frame) => Some(frame.clone()),
            LogRecord::WithoutText(record) => record.frame(text?),
        }
    }
}

impl WithoutText {
    fn frame(&self, text: &str) -> Option<Vec<u8>> {
        let mut content = self.content.clone();
        content.payload = Payload::Text(text.to_owned());
        let plaintext = codec::encode(&content).ok()?;
        let (room, sender) = (&self.message.room, &self.message.sender);
        let sealed = if self.public {
            let ad = public_ad(room, sender);
            self.key.reseal(&self.message.message, &ad, &plaintext)
        } else {
            let ad = associated_data(&room.0, sender);
            self.key.reseal(&self.message.message, &ad, &plaintext)
        };
        let mut message = self.message.clone();
        message.message.ciphertext = sealed.ok()?;
        let envelope = Envelope {
            body: Body::Room(message),
            signature: self.signature,
        };
        let frame = envelope.to_bytes().ok()?;
        (MessageId::of_frame(&frame) == self.id).then_some(frame)
    }
}
