//! Gap fill's traffic: ask a member we connect to for what we missed in the rooms we share,
//! answer such requests from the room log, and take the answers in like gossip. What to ask
//! and what to answer are [`palaver_protocol::node::rooms::gap_fill`]'s.

use libp2p::request_response::OutboundRequestId;
use libp2p::{PeerId, gossipsub};
use palaver_protocol::RoomId;
use palaver_protocol::identity::identity_of;
use palaver_protocol::node::rooms::gap_fill;
use palaver_protocol::wire::{GapFillRequest, GapFillResponse, PeerRequest, PeerResponse};

use super::topic;
use crate::daemon::{Node, now_ms};

impl Node {
    pub(crate) fn on_gossip_subscribed(&mut self, peer: PeerId, topic_hash: gossipsub::TopicHash) {
        let room = self
            .state
            .rooms
            .iter()
            .find(|room| topic(&room.id).hash() == topic_hash)
            .map(|room| room.id);
        if let Some(room) = room {
            self.state.rooms.topic_peer_joined(room);
            let _ = self.drive_rooms();
            self.request_gap_fill(peer, room);
        }
    }

    pub(crate) fn on_room_peer_connected(&mut self, peer: PeerId) {
        let Some(key) = identity_of(&peer) else {
            return;
        };
        for room in self.state.rooms.shared_with(&key) {
            self.request_gap_fill(peer, room);
        }
    }

    fn request_gap_fill(&mut self, peer: PeerId, room: RoomId) {
        let Some(member) = identity_of(&peer) else {
            return;
        };
        let connected = self.swarm.is_connected(&peer);
        if self.room_io.asking.ask(room, &member, connected) {
            self.send_gap_fill(peer, room);
        }
    }

    fn send_gap_fill(&mut self, peer: PeerId, room: RoomId) {
        let request = gap_fill::request(room, self.store.room_log_index(&room));
        let id = self
            .swarm
            .behaviour_mut()
            .peer
            .send_request(&peer, PeerRequest::GapFill(request));
        self.room_io.gap_fills.insert(id, (room, peer));
    }

    pub(crate) fn answer_gap_fill(&self, peer: PeerId, request: GapFillRequest) -> PeerResponse {
        let Some(asker) = identity_of(&peer) else {
            let empty = GapFillResponse {
                envelopes: Vec::new(),
                more: false,
            };
            return PeerResponse::GapFill(empty);
        };
        let log = self.store.room_log(&request.room);
        // A store that cannot say leaves that message out of the answer.
        let text_of = |id: &_| Some(self.store.entry(id).ok()??.text);
        let answer = (self.state.rooms).answer_gap_fill(&asker, &request, log, text_of);
        PeerResponse::GapFill(answer)
    }

    pub(crate) fn on_gap_fill_response(
        &mut self,
        request: OutboundRequestId,
        response: PeerResponse,
    ) {
        let Some((room, peer)) = self.room_io.gap_fills.remove(&request) else {
            return;
        };
        let PeerResponse::GapFill(GapFillResponse { envelopes, more }) = response else {
            return self.gap_fill_ended(room, peer, false, false);
        };
        // As for gossip, a store that cannot say counts as not holding it: the machine's own
        // checks turn a message already read away.
        let store = &self.store;
        let io = &self.room_io;
        let stored = |id: &palaver_protocol::MessageId| {
            io.is_unwritten(id) || store.contains(id).unwrap_or(false)
        };
        let progressed = (self.state.rooms).take_gap_fill(room, envelopes, stored, now_ms());
        let _ = self.drive_rooms();
        self.gap_fill_ended(room, peer, more, progressed);
    }

    /// A gap fill request `request` got no answer; false if it was not one.
    pub(crate) fn on_gap_fill_failure(&mut self, request: OutboundRequestId) -> bool {
        let Some((room, peer)) = self.room_io.gap_fills.remove(&request) else {
            return false;
        };
        self.gap_fill_ended(room, peer, false, false);
        true
    }

    fn gap_fill_ended(&mut self, room: RoomId, peer: PeerId, more: bool, progressed: bool) {
        let Some(member) = identity_of(&peer) else {
            return;
        };
        let answer = gap_fill::Answered {
            more,
            progressed,
            connected: self.swarm.is_connected(&peer),
        };
        if self.room_io.asking.answered(room, &member, answer) {
            self.send_gap_fill(peer, room);
        }
    }
}
