//! Who may be in each room's gossip mesh, told to the gossip gate ([`super::super::gossip_gate`])
//! whenever a room's membership changes: a private room's members, by the peer id their
//! identity key gives them (an invitation not yet accepted admits the members it names, so they
//! are in the mesh the moment we join); a public room is open to anyone.

use super::*;

impl Node {
    /// Tells the gate who may now be in room `id`'s topic (a room we no longer hold: anyone).
    pub(crate) fn gate_room(&mut self, id: &RoomId) {
        let topic = topic(id).hash();
        let members = match self.rooms.by_id.get(id).map(|room| (room, &room.keys)) {
            Some((room, RoomCrypto::Private(keys))) => {
                let mut members: HashSet<VerifyingKey> = keys.members().iter().copied().collect();
                if !room.joined
                    && let Some(invitation) = &room.invitation
                {
                    members.extend(invitation.members.iter().copied());
                }
                members
            }
            Some((_, RoomCrypto::Public { .. })) | None => {
                return self.swarm.behaviour_mut().gossipsub.open(&topic);
            }
        };
        let me = self.identity.public();
        let peers = members
            .iter()
            .filter(|member| **member != me)
            .map(peer_id_of)
            .collect();
        self.swarm
            .behaviour_mut()
            .gossipsub
            .set_members(topic, peers);
    }

    /// What the gate and the room checks turned away, for `status`.
    pub(crate) fn gossip_status(&self) -> Value {
        let counters = self.swarm.behaviour().gossipsub.counters();
        let mut status = serde_json::to_value(counters).unwrap_or_else(|_| json!({}));
        if let Some(fields) = status.as_object_mut() {
            // Messages that reached the signature and decryption checks and failed them: an
            // outsider's never get this far.
            fields.insert(
                "rejected_after_checks".into(),
                json!(self.rooms.rejected_gossip),
            );
        }
        status
    }
}
