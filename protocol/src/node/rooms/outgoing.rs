//! What leaves for a room, and when: our own messages are published only once durable (a
//! crash must not make us reuse a chain index, nor gap fill hand out what we might seal again),
//! and what is to be sent about a room whose record could not be written waits for that write
//! (a membership must not leave before the record that signed it is on disk: a restart would
//! sign another change under the same epoch).

use std::collections::VecDeque;

use ed25519_dalek::VerifyingKey;

use super::{Output, RoomError, Rooms};
use crate::crypto::sender_key::SenderKeyDistribution;
use crate::wire::{MessageId, Payload, RoomId};

/// Sends held back behind one room's failed write; past that, the oldest go.
pub const MAX_HELD_BACK: usize = 1024;

/// Our room messages sealed and written but not yet known durable; past that, sealing waits
/// (only a disk that stopped confirming writes gets here).
pub const MAX_AWAITING_FLUSH: usize = 4096;

impl Rooms {
    /// Whether another message may be sealed: not while [`MAX_AWAITING_FLUSH`] wait for the
    /// disk.
    pub(super) fn may_seal(&self) -> Result<(), RoomError> {
        if self.awaiting_flush.len() >= MAX_AWAITING_FLUSH {
            return Err(RoomError::DiskBehind);
        }
        Ok(())
    }

    /// Our message `id` waits for the disk no more: it is durable, and may be published (and
    /// handed to gap fill) now; or it could not even be written, and will never be published
    /// (its chain index is skipped; receivers allow for that). One whose flush failed stays
    /// withheld until a restart finds it on disk (or does not).
    pub fn settled(&mut self, id: &MessageId) {
        self.awaiting_flush.remove(id);
    }

    /// Whether our message `id` may be published: it is durable.
    pub fn may_publish(&self, id: &MessageId) -> bool {
        !self.awaiting_flush.contains(id)
    }

    /// Whether our own `frame` waits for its flush (gap fill leaves it out).
    pub(super) fn withheld(&self, frame: &[u8]) -> bool {
        // Only our own are hashed to ask, and only while any wait.
        !self.awaiting_flush.is_empty() && self.awaiting_flush.contains(&MessageId::of_frame(frame))
    }

    /// Room `id`'s record could not be written: it is handed out as [`Output::Save`] again a
    /// moment after `now`, and what is to be sent about it (including what is already waiting
    /// in [`Rooms::poll_output`]) waits for [`Rooms::written`].
    pub fn write_failed(&mut self, id: RoomId, now: u64) {
        self.mark_dirty(id, now);
        if !self.by_id.contains_key(&id) {
            return;
        }
        let held = self.unwritten.entry(id).or_default();
        for output in std::mem::take(&mut self.outputs) {
            match output {
                Output::Send { room, .. } if room == id => hold(held, output),
                output => self.outputs.push_back(output),
            }
        }
    }

    /// The record that `distribution` was handed to `members` ([`Output::KeyGiven`]) could not
    /// be written: it is handed out again, and the sends about the room wait behind it, once
    /// the room's record is written ([`Rooms::write_failed`]). A member asking again must get
    /// the same key, never a later one that skips what it missed.
    pub fn key_given_failed(
        &mut self,
        room: RoomId,
        members: Vec<VerifyingKey>,
        distribution: SenderKeyDistribution,
        now: u64,
    ) {
        self.write_failed(room, now);
        if let Some(held) = self.unwritten.get_mut(&room) {
            held.push_front(Output::KeyGiven {
                room,
                members,
                distribution,
            });
        }
    }

    /// Room `id`'s record is written (or gone): what waited for it goes now.
    pub fn written(&mut self, id: RoomId) {
        let held = self.unwritten.remove(&id).unwrap_or_default();
        self.outputs.extend(held);
    }

    /// Sends `payload` about `room` to every device of each of `accounts` but this one.
    pub(super) fn send_to_accounts(
        &mut self,
        room: RoomId,
        accounts: Vec<VerifyingKey>,
        payload: Payload,
    ) {
        for device in self.devices_but_mine(accounts) {
            self.send(room, device, payload.clone());
        }
    }

    /// Sends `payload` about `room` to device `to`, or holds it while the room's record is
    /// unwritten.
    pub(super) fn send(&mut self, room: RoomId, to: VerifyingKey, payload: Payload) {
        let payload = Box::new(payload);
        let send = Output::Send { room, to, payload };
        match self.unwritten.get_mut(&room) {
            Some(held) => hold(held, send),
            None => self.outputs.push_back(send),
        }
    }
}

/// Holds `output` behind a failed write; past [`MAX_HELD_BACK`], the oldest send goes (never
/// a record of a key handed out).
fn hold(held: &mut VecDeque<Output>, output: Output) {
    if held.len() >= MAX_HELD_BACK
        && let Some(oldest) = held.iter().position(|o| matches!(o, Output::Send { .. }))
    {
        held.remove(oldest);
    }
    held.push_back(output);
}
