//! Gossipsub with a gate in front: a private room's topic is for its members only.
//!
//! The rulebook (who is admitted, thresholds, bans, warnings, which peers to push out) is
//! [`palaver_protocol::node::gate`]; this wrapper carries its decisions out against gossipsub.
//!
//! Gossipsub decides who is in a topic's mesh, whom it forwards to and whom it gossips IHAVE to
//! from one record, the topics each peer subscribed to; it has no per-topic say over remote
//! peers (its subscription filter does not know whose subscription it filters). So every RPC a
//! connection hands up passes this gate first ([`GossipGate::on_connection_handler_event`]):
//!
//! - a subscription to a gated topic from a peer that is not a member is taken out, so the peer
//!   is never recorded in that topic: no mesh (its GRAFT finds it unsubscribed and is dropped),
//!   no forwarding, no flood publishing, no IHAVE. It is kept aside, and handed on after all if
//!   the peer becomes a member (we learnt of a join after the joiner subscribed);
//! - a message to a gated topic from a peer that is not a member is dropped before gossipsub
//!   (or our signature checks) sees it, and counted; a peer that keeps at it is disconnected and
//!   its connections refused for a while ([`BAN_MS`](palaver_protocol::node::gate::BAN_MS));
//! - a member who is removed while subscribed is disconnected at once: gossipsub has no other
//!   way to drop a peer from a topic, and when it reconnects, its subscription meets the gate.
//!
//! Public rooms' topics are not gated: anyone who knows the name may read them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::gossipsub::{self, TopicHash};
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use palaver_protocol::node::gate::{GateCounters, MembershipChange, MeshAccess};

type Inner = gossipsub::Behaviour;
/// What a gossipsub connection hands up: for a received RPC, its subscriptions, messages and
/// control messages.
type FromConnection = THandlerOutEvent<Inner>;

#[derive(Debug, thiserror::Error)]
#[error("this peer flooded a private room it is not a member of; refused for a while")]
struct Banned;

pub(crate) struct GossipGate {
    inner: Inner,
    access: MeshAccess<TopicHash>,
    /// What the gate's `now` counts from: a monotonic clock, so a ban neither ends early nor
    /// lasts longer when the wall clock is set.
    started: Instant,
    /// Per peer, its last refused subscription change per gated topic, as an RPC to hand to
    /// gossipsub if the peer becomes a member (bounded by the connected peers times our rooms).
    refused: HashMap<PeerId, HashMap<TopicHash, (ConnectionId, FromConnection)>>,
    to_close: VecDeque<PeerId>,
    waker: Option<Waker>,
}

impl GossipGate {
    pub(crate) fn new(inner: Inner) -> Self {
        Self {
            inner,
            access: MeshAccess::default(),
            started: Instant::now(),
            refused: HashMap::new(),
            to_close: VecDeque::new(),
            waker: None,
        }
    }

    /// Gates `topic` to the peers in `members`: who is let in now takes part at once (a refused
    /// subscription of theirs is taken after all); who was in and is not any more is pushed out.
    pub(crate) fn set_members(&mut self, topic: TopicHash, members: HashSet<PeerId>) {
        let subscribers = self
            .inner
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&topic))
            .map(|(peer, _)| *peer);
        let MembershipChange { admitted, evicted } =
            self.access.set_members(topic.clone(), members, subscribers);
        for peer in admitted {
            let Some((connection, rpc)) = self
                .refused
                .get_mut(&peer)
                .and_then(|topics| topics.remove(&topic))
            else {
                continue;
            };
            tracing::debug!("{peer} became a member: taking its subscription to {topic}");
            self.inner
                .on_connection_handler_event(peer, connection, rpc);
        }
        for peer in evicted {
            tracing::info!("{peer} is no longer a member of {topic}: disconnecting it");
            self.close(peer);
        }
    }

    /// Opens `topic` to anyone (a room we left).
    pub(crate) fn open(&mut self, topic: &TopicHash) {
        self.access.open(topic);
        for topics in self.refused.values_mut() {
            topics.remove(topic);
        }
    }

    pub(crate) fn counters(&self) -> GateCounters {
        self.access.counters()
    }

    /// The gate's time: ms since it was made.
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn close(&mut self, peer: PeerId) {
        self.to_close.push_back(peer);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Takes out of `event` what `peer` may not do: subscribe to, or publish into, a gated
    /// topic it is not a member of.
    fn screen(&mut self, peer: PeerId, connection: ConnectionId, event: &mut FromConnection) {
        let FromConnection::Message { rpc, .. } = event else {
            return;
        };
        let access = &self.access;
        if rpc
            .subscriptions
            .iter()
            .any(|s| !access.admits(&peer, &s.topic_hash))
        {
            // Kept, one per topic, as an RPC of that subscription alone.
            let messages = std::mem::take(&mut rpc.messages);
            let control = std::mem::take(&mut rpc.control_msgs);
            let all = std::mem::take(&mut rpc.subscriptions);
            let (admitted, refused): (Vec<_>, Vec<_>) = all
                .into_iter()
                .partition(|s| self.access.admits(&peer, &s.topic_hash));
            for subscription in refused {
                self.access.on_refused_subscription();
                tracing::debug!(
                    "refused {peer}'s subscription to {}: not a member",
                    subscription.topic_hash
                );
                let mut alone = rpc.clone();
                let topic = subscription.topic_hash.clone();
                alone.subscriptions = vec![subscription];
                let kept = FromConnection::Message {
                    rpc: alone,
                    invalid_messages: Vec::new(),
                };
                self.refused
                    .entry(peer)
                    .or_default()
                    .insert(topic, (connection, kept));
            }
            rpc.subscriptions = admitted;
            rpc.messages = messages;
            rpc.control_msgs = control;
        }
        let before = rpc.messages.len();
        let access = &self.access;
        rpc.messages.retain(|m| access.admits(&peer, &m.topic));
        let dropped = before - rpc.messages.len();
        if dropped == 0 {
            return;
        }
        let verdict = self.access.on_outsider_messages(peer, dropped, self.now());
        if let Some(dropped) = verdict.warn {
            tracing::warn!(
                "dropped {dropped} message(s) from {peer} to a private room it is not a member of"
            );
        }
        if verdict.disconnect {
            tracing::warn!("{peer} keeps publishing into a private room: disconnecting it");
            self.close(peer);
        }
    }

    fn refuse_banned(&mut self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        let now = self.now();
        if self.access.is_banned(peer, now) {
            tracing::debug!("refusing a connection from {peer}: banned for flooding");
            return Err(ConnectionDenied::new(Banned));
        }
        Ok(())
    }
}

impl std::ops::Deref for GossipGate {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for GossipGate {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl NetworkBehaviour for GossipGate {
    type ConnectionHandler = THandler<Inner>;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.refuse_banned(&peer)?;
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.refuse_banned(&peer)?;
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = &event
            && closed.remaining_established == 0
        {
            self.refused.remove(&closed.peer_id);
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        mut event: THandlerOutEvent<Self>,
    ) {
        self.screen(peer, connection, &mut event);
        self.inner
            .on_connection_handler_event(peer, connection, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(peer_id) = self.to_close.pop_front() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::All,
            });
        }
        self.waker = Some(cx.waker().clone());
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests;
