//! Gap fill: gossip does not reach members who are away, so a member asks another for what it
//! missed when they connect — per sender, everything after the highest sequence number it holds
//! without a gap — and takes the answer in like gossip (verified, deduplicated, decrypted).
//!
//! The room log (sender, sequence number → [`LogRecord`]) lives in the driver's store; these
//! are the decisions over it.

use std::collections::{HashMap, HashSet};

use ed25519_dalek::VerifyingKey;

use super::{LogRecord, Rooms};
use crate::codec::MAX_FRAME_LEN;
use crate::delivery::SequenceTracker;
use crate::wire::peer::MAX_GAP_FILL;
use crate::wire::{
    Body, Envelope, GapFillRequest, GapFillResponse, MessageId, RoomId, SenderCursor,
};

/// What the room log holds of each sender, from its `(sender, seq)` index: for gap fill's
/// cursors, and to show where history has holes. A gap with more than
/// [`MAX_AHEAD_PER_SENDER`](crate::delivery::MAX_AHEAD_PER_SENDER) of the sender's
/// messages after it is given up (see [`SequenceTracker`]), rather than asked for for ever.
pub fn held(index: impl IntoIterator<Item = ([u8; 32], u64)>) -> SequenceTracker {
    let mut tracker = SequenceTracker::new();
    for (sender, seq) in index {
        if let Ok(sender) = VerifyingKey::from_bytes(&sender) {
            // Seq 0 (never stored) and senders past the bound are left out.
            let _ = tracker.observe(&sender, seq);
        }
    }
    tracker
}

/// Per sender, the highest sequence number held without a gap, from the room log's index.
pub fn cursors(index: impl IntoIterator<Item = ([u8; 32], u64)>) -> Vec<SenderCursor> {
    held(index).cursors()
}

/// What we ask a member for in room `room`, given our log's index.
pub fn request(room: RoomId, index: impl IntoIterator<Item = ([u8; 32], u64)>) -> GapFillRequest {
    GapFillRequest {
        room,
        cursors: cursors(index),
        max: MAX_GAP_FILL as u16,
    }
}

/// Gap fill requests out at once; past that, a member is not asked until some are answered.
pub const MAX_GAP_FILLS_OUT: usize = 1024;

/// Whom we are asking for what we missed in which room: one request at a time per member and
/// room (a member that connects and joins the topic at once is asked once), and again only
/// while it has more and we are still taking it in.
#[derive(Debug, Default)]
pub struct GapFills {
    out: HashSet<(RoomId, [u8; 32])>,
}

impl GapFills {
    /// Whether to ask `member` (`connected` to us, or not: then the next meeting asks) about
    /// `room` now; if so, a request is out until [`GapFills::answered`].
    pub fn ask(&mut self, room: RoomId, member: &VerifyingKey, connected: bool) -> bool {
        connected
            && self.out.len() < MAX_GAP_FILLS_OUT
            && self.out.insert((room, member.to_bytes()))
    }

    /// `member` answered about `room` (or the request failed: nothing `more`): whether to ask
    /// it again now — while it is still connected, has more and the answer taught us
    /// something. Once it is gone, the next meeting asks.
    pub fn answered(&mut self, room: RoomId, member: &VerifyingKey, answer: Answered) -> bool {
        self.out.remove(&(room, member.to_bytes()));
        answer.more && answer.progressed && self.ask(room, member, answer.connected)
    }
}

/// How a gap fill request ended, for [`GapFills::answered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// The member holds more than it sent.
    pub more: bool,
    /// The answer held a message we had not read.
    pub progressed: bool,
    /// The member is still connected.
    pub connected: bool,
}

impl Rooms {
    /// Takes in the envelopes a member sent for our gap fill request about `room`, like
    /// gossip: each signed, for that room, and not `stored` yet. Whether any was read (the
    /// answer taught us something: worth asking for more).
    pub fn take_gap_fill(
        &mut self,
        room: RoomId,
        envelopes: Vec<Envelope>,
        stored: impl Fn(&MessageId) -> bool,
        now: u64,
    ) -> bool {
        let mut progressed = false;
        for envelope in envelopes {
            let (Ok(()), Ok(frame)) = (envelope.verify(), envelope.to_bytes()) else {
                self.rejected += 1;
                continue;
            };
            let id = envelope.id();
            if stored(&id) {
                continue;
            }
            if let Body::Room(message) = envelope.body
                && message.room == room
            {
                let envelope = (message, envelope.signature);
                progressed |= self.receive(id, envelope, frame, now).is_ok();
            }
        }
        progressed
    }

    /// The answer to `asker`'s gap fill request, from our room `log` in order (`(sender, seq,
    /// record)`, a record read only for a message the asker lacks; `text_of` gives a message's
    /// text from the history, for a record kept without it): what it lacks, at most
    /// [`MAX_GAP_FILL`] envelopes and half a frame's bytes, `more` if there is more. Nothing,
    /// and nothing read, for one who is not a member. Our own not yet durable leave with their
    /// publish, not before.
    pub fn answer_gap_fill<Record: FnOnce() -> Option<LogRecord>>(
        &self,
        asker: &VerifyingKey,
        request: &GapFillRequest,
        log: impl IntoIterator<Item = ([u8; 32], u64, Record)>,
        text_of: impl Fn(&MessageId) -> Option<String>,
    ) -> GapFillResponse {
        let mut response = GapFillResponse {
            envelopes: Vec::new(),
            more: false,
        };
        let Some(room) = self.room(&request.room) else {
            return response;
        };
        if !room.is_member(asker, &self.roster) || !room.is_active() {
            return response;
        }
        let have: HashMap<[u8; 32], u64> = request
            .cursors
            .iter()
            .map(|c| (c.sender.to_bytes(), c.have_through))
            .collect();
        let max = usize::from(request.max).min(MAX_GAP_FILL);
        let me = self.identity.public().to_bytes();
        let mut bytes = 0usize;
        for (sender, seq, record) in log {
            if seq <= have.get(&sender).copied().unwrap_or(0) || sender == asker.to_bytes() {
                continue;
            }
            // A record or text the store no longer gives back leaves the message out.
            let Some(record) = record() else {
                continue;
            };
            let text = record.text_of().and_then(&text_of);
            let Some(frame) = record.frame(text.as_deref()) else {
                continue;
            };
            if sender == me && self.withheld(&frame) {
                continue;
            }
            if response.envelopes.len() == max || bytes + frame.len() > MAX_FRAME_LEN / 2 {
                response.more = true;
                break;
            }
            if let Ok(envelope) = Envelope::from_bytes(&frame) {
                bytes += frame.len();
                response.envelopes.push(envelope);
            }
        }
        response
    }
}
