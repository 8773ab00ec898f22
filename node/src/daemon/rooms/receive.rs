//! What arrives for rooms: gossip, and the room payloads of pairwise messages, handed to the
//! machine with the time and randomness it needs.

use libp2p::{PeerId, gossipsub};
use palaver_protocol::node::rooms::RoomReject;
use palaver_protocol::wire::{Body, Payload};
use palaver_protocol::{Envelope, RoomId, VerifyingKey};
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
        let envelope = Envelope::from_bytes(&data).ok();
        let id = envelope.as_ref().map(Envelope::id);
        let acceptance = match (envelope.map(|e| e.body), id) {
            (Some(Body::Room(_)), Some(id)) if self.store.contains(&id).unwrap_or(false) => {
                gossipsub::MessageAcceptance::Ignore
            }
            (Some(Body::Room(message)), Some(id)) => {
                match self.state.rooms.receive(id, message, data, now_ms()) {
                    Ok(()) => gossipsub::MessageAcceptance::Accept,
                    Err(RoomReject::Held | RoomReject::Stale) => {
                        gossipsub::MessageAcceptance::Ignore
                    }
                    Err(RoomReject::Invalid(reason)) => {
                        tracing::debug!("room message from {source} rejected: {reason}");
                        gossipsub::MessageAcceptance::Reject
                    }
                }
            }
            _ => {
                self.state.rooms.count_rejected();
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
                rooms.on_sender_key(sender, room, distribution, now);
                Ok(())
            }
            Payload::Membership(update) => rooms
                .on_membership(update, now, &mut OsRng)
                .map_err(|err| format!("a membership update: {err}")),
            Payload::Leave { room } => rooms
                .on_member_left(sender, room, now, &mut OsRng)
                .map_err(|err| format!("a member leaving: {err}")),
            Payload::KeyRequest { room } => {
                let given = self.key_given(room, &sender);
                self.state
                    .rooms
                    .on_key_request(sender, room, given, now)
                    .map_err(|reason| format!("a key request: {reason}"))
            }
            Payload::MembershipRequest { room } => rooms
                .on_membership_request(sender, room)
                .map_err(|reason| format!("a membership request: {reason}")),
            Payload::Text(_) | Payload::Receipt(_) => Ok(()),
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
    ) -> Option<palaver_protocol::crypto::sender_key::SenderKeyDistribution> {
        self.store
            .get(StateKey::KeyGiven(room, member.to_bytes()))
            .ok()
            .flatten()
    }
}
