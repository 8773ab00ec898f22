//! The pairwise sessions with one peer: the current one, and a few recent ones.
//!
//! When two users open a session to each other at the same moment, each answers the other's
//! initiation and the two end up on different sessions. Like Signal, we keep the recent sessions:
//! a message decrypts with whichever session its sender used, and that session becomes current,
//! so both sides converge on one session after one message each way.

use palaver_protocol::crypto::ratchet::{RatchetMessage, Session};
use serde::{Deserialize, Serialize};

/// Recent sessions kept besides the current one.
const MAX_ARCHIVED: usize = 3;

#[derive(Serialize, Deserialize)]
pub(crate) struct PeerSessions {
    current: Session,
    archived: Vec<Session>,
}

impl PeerSessions {
    pub(crate) fn new(session: Session) -> Self {
        Self {
            current: session,
            archived: Vec::new(),
        }
    }

    /// `session` becomes current; the previous one is kept for messages still in flight.
    pub(crate) fn promote(&mut self, session: Session) {
        let previous = std::mem::replace(&mut self.current, session);
        self.archived.insert(0, previous);
        self.archived.truncate(MAX_ARCHIVED);
    }

    /// The session new messages are encrypted with.
    pub(crate) fn current(&mut self) -> &mut Session {
        &mut self.current
    }

    /// Decrypts with whichever session the sender used (each attempt that fails changes
    /// nothing); the one that worked becomes current.
    pub(crate) fn decrypt(&mut self, message: &RatchetMessage) -> Option<Vec<u8>> {
        if let Ok(plaintext) = self.current.decrypt(message) {
            return Some(plaintext);
        }
        let (i, plaintext) = self
            .archived
            .iter_mut()
            .enumerate()
            .find_map(|(i, session)| session.decrypt(message).ok().map(|p| (i, p)))?;
        let session = self.archived.remove(i);
        self.promote(session);
        Some(plaintext)
    }
}
