//! What arrives for rooms: gossip, and the room payloads of pairwise messages, handed to the
//! machine with the time and randomness it needs.

use libp2p::{PeerId, gossipsub};
use palaver_protocol::node::rooms::GossipVerdict;
use palaver_protocol::wire::Payload;
use palaver_protocol::{RoomId, VerifyingKey};
use rand_core::OsRng;

use super::super::now_ms;
use crate::daemon::Node;
use crate::daemon::direct::short_key;
use crate::store::StateKey;

impl Node {
    pub(crate) fn on_gossip(
        &mut self,
        source: PeerId,
        message_id: gossipsub::MessageId,
        data: Vec<u8>,
    ) {
        let (store, io) = (&self.store, &self.room_io);
        let stored = |id: &palaver_protocol::MessageId| {
            io.is_unwritten(id) || store.contains(id).unwrap_or(false)
        };
        let verdict = self.state.rooms.on_gossip(data, stored, now_ms());
        let acceptance = match verdict {
            GossipVerdict::Accept => gossipsub::MessageAcceptance::Accept,
            GossipVerdict::Ignore => gossipsub::MessageAcceptance::Ignore,
            GossipVerdict::Reject(reason) => {
                tracing::debug!("room message from {source} rejected: {reason}");
                gossipsub::MessageAcceptance::Reject
            }
        };
        let _ = self.drive_rooms();
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &source, acceptance);
    }

    /// A room payload that arrived over the pairwise session with `sender`.
    pub(crate) fn on_room_payload(&mut self, sender: VerifyingKey, payload: Payload) {
        let (now, rooms) = (now_ms(), &mut self.state.rooms);
        let ignored = match payload {
            Payload::RoomInvite(invite) => rooms
                .on_invite(sender, invite, now, &mut OsRng)
                .map_err(|err| err.to_string()),
            Payload::SenderKey { room, distribution } => {
                rooms.on_sender_key(sender, room, distribution, now, &mut OsRng);
                Ok(())
            }
            Payload::Membership(update) => rooms
                .on_membership(update, now, &mut OsRng)
                .map_err(|err| format!("a membership update: {err}")),
            Payload::Leave { room } => rooms
                .on_member_left(sender, room, now, &mut OsRng)
                .map_err(|err| format!("a member leaving: {err}")),
            Payload::KeyRequest { room } => {
                // Unanswered if the store cannot say what was handed out (the current key
                // would skip what the asker missed): it asks again.
                match self.key_given(room, &sender) {
                    Ok(given) => self
                        .state
                        .rooms
                        .on_key_request(sender, room, given, now)
                        .map_err(|reason| format!("a key request: {reason}")),
                    Err(err) => Err(format!("a key request, for now ({err})")),
                }
            }
            Payload::MembershipRequest { room } => rooms
                .on_membership_request(sender, room)
                .map_err(|reason| format!("a membership request: {reason}")),
            Payload::Text(_)
            | Payload::Receipt(_)
            | Payload::File(_)
            | Payload::FileWhole { .. }
            | Payload::FileDeclined { .. } => Ok(()),
            Payload::Sent { .. } => Err("a line sent by another device, not one of ours".into()),
        };
        if let Err(what) = ignored {
            tracing::debug!("ignoring {what} (from {})", short_key(&sender));
        }
        let _ = self.drive_rooms();
    }

    /// The sender key we handed `member` for `room`, as written down then.
    fn key_given(
        &self,
        room: RoomId,
        member: &VerifyingKey,
    ) -> Result<
        Option<palaver_protocol::crypto::sender_key::SenderKeyDistribution>,
        crate::store::StoreError,
    > {
        self.store.get(StateKey::KeyGiven(room, member.to_bytes()))
    }
}
