//! Gap fill: gossip does not reach members who are away, so a member asks another for what it
//! missed when they connect — per sender, everything after the highest sequence number it holds
//! without a gap — and takes the answer in like gossip (verified, deduplicated, decrypted).

use std::collections::{BTreeMap, HashMap};

use libp2p::request_response::OutboundRequestId;
use libp2p::{PeerId, gossipsub};
use palaver_protocol::identity::identity_of;
use palaver_protocol::wire::{
    Body, GapFillRequest, GapFillResponse, PeerRequest, PeerResponse, SenderCursor,
    peer::MAX_GAP_FILL,
};
use palaver_protocol::{Envelope, MessageId, RoomId, VerifyingKey};

use crate::daemon::Node;

impl Node {
    pub(crate) fn on_gossip_subscribed(&mut self, peer: PeerId, topic_hash: gossipsub::TopicHash) {
        let room = self
            .rooms
            .by_id
            .values()
            .find(|room| room.topic().hash() == topic_hash)
            .map(|r| r.id);
        if let Some(room) = room {
            self.rooms_tick();
            self.request_gap_fill(peer, room);
        }
    }

    pub(crate) fn on_room_peer_connected(&mut self, peer: PeerId) {
        let Some(key) = identity_of(&peer) else {
            return;
        };
        let shared: Vec<RoomId> = self
            .rooms
            .by_id
            .values()
            .filter(|room| {
                room.joined && !room.removed && !room.is_public() && room.is_member(&key)
            })
            .map(|room| room.id)
            .collect();
        for room in shared {
            self.request_gap_fill(peer, room);
        }
    }

    /// Per sender, the highest sequence number we hold without a gap.
    fn cursors(&self, room: &RoomId) -> Vec<SenderCursor> {
        let mut have: BTreeMap<[u8; 32], u64> = BTreeMap::new();
        for (sender, seq) in self.store.room_log_index(room) {
            let through = have.entry(sender).or_insert(0);
            if seq == *through + 1 {
                *through = seq;
            }
        }
        have.into_iter()
            .filter_map(|(sender, have_through)| {
                VerifyingKey::from_bytes(&sender)
                    .ok()
                    .map(|sender| SenderCursor {
                        sender,
                        have_through,
                    })
            })
            .collect()
    }

    pub(crate) fn request_gap_fill(&mut self, peer: PeerId, room: RoomId) {
        if !self.swarm.is_connected(&peer) {
            return;
        }
        let request = GapFillRequest {
            room,
            cursors: self.cursors(&room),
            max: MAX_GAP_FILL as u16,
        };
        let id = self
            .swarm
            .behaviour_mut()
            .peer
            .send_request(&peer, PeerRequest::GapFill(request));
        self.rooms.gap_fills.insert(id, (room, peer));
    }

    pub(crate) fn answer_gap_fill(&self, peer: PeerId, request: GapFillRequest) -> PeerResponse {
        let empty = PeerResponse::GapFill(GapFillResponse {
            envelopes: Vec::new(),
            more: false,
        });
        let Some(room) = self.rooms.by_id.get(&request.room) else {
            return empty;
        };
        let Some(asker) = identity_of(&peer) else {
            return empty;
        };
        if !room.is_member(&asker) || !room.joined || room.removed {
            return empty;
        }
        let have: HashMap<[u8; 32], u64> = request
            .cursors
            .iter()
            .map(|c| (c.sender.to_bytes(), c.have_through))
            .collect();
        let max = usize::from(request.max).min(MAX_GAP_FILL);
        let me = self.identity.public().to_bytes();
        let mut envelopes = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for (sender, seq, frame) in self.store.room_log(&request.room) {
            if seq <= have.get(&sender).copied().unwrap_or(0) || sender == asker.to_bytes() {
                continue;
            }
            // Our own message still waiting for its flush leaves with its publish, not before
            // (only our own are hashed to ask, and only while any wait).
            if sender == me
                && !self.rooms.not_yet_durable.is_empty()
                && self
                    .rooms
                    .not_yet_durable
                    .contains(&MessageId::of_frame(&frame))
            {
                continue;
            }
            if envelopes.len() == max
                || bytes + frame.len() > palaver_protocol::codec::MAX_FRAME_LEN / 2
            {
                more = true;
                break;
            }
            if let Ok(envelope) = Envelope::from_bytes(&frame) {
                bytes += frame.len();
                envelopes.push(envelope);
            }
        }
        PeerResponse::GapFill(GapFillResponse { envelopes, more })
    }

    pub(crate) fn on_gap_fill_response(
        &mut self,
        request: OutboundRequestId,
        response: PeerResponse,
    ) {
        let Some((room, peer)) = self
            .rooms
            .gap_fills
            .remove(&request)
            .map(|(room, peer)| (room, Some(peer)))
        else {
            return;
        };
        let PeerResponse::GapFill(GapFillResponse { envelopes, more }) = response else {
            return;
        };
        let mut progressed = false;
        for envelope in envelopes {
            let (Ok(()), Ok(frame)) = (envelope.verify(), envelope.to_bytes()) else {
                continue;
            };
            let id = envelope.id();
            if self.store.contains(&id).unwrap_or(true) {
                continue;
            }
            if let Body::Room(message) = envelope.body
                && message.room == room
            {
                progressed |= self.receive_room(id, message, frame).is_ok();
            }
        }
        // Ask again while the peer has more and we are still taking it in.
        if more
            && progressed
            && let Some(peer) = peer
        {
            self.request_gap_fill(peer, room);
        }
    }
}
