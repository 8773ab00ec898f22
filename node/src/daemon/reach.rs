//! Carries out the reach planner's decisions ([`palaver_protocol::node::reach`]) against the
//! swarm: swarm events become planner inputs, planner outputs become dials, listeners, closed
//! connections and calls into the rest of the node. Nothing is decided here.

use std::time::Instant;

use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError};
use libp2p::{Multiaddr, PeerId};
use palaver_protocol::node::reach::{self as plan, DialCondition, DialRefusal, Input, Output};

use super::Node;

/// The planner over libp2p's connection and listener handles.
pub(crate) type Reach = plan::Reach<ConnectionId, ListenerId>;
pub(crate) type ReachInput = Input<ConnectionId, ListenerId>;

/// The address that describes a connection: the remote address, or for a connection that came
/// in through a relay (whose remote address is just `/p2p/<peer>`), the circuit it came over.
pub(crate) fn connection_addr(peer: PeerId, endpoint: &ConnectedPoint) -> Multiaddr {
    match endpoint {
        ConnectedPoint::Listener { local_addr, .. } if endpoint.is_relayed() => {
            local_addr.clone().with(Protocol::P2p(peer))
        }
        _ => endpoint.get_remote_address().clone(),
    }
}

impl Node {
    /// Hands the planner `input` and carries out what follows from it.
    pub(crate) fn reach(&mut self, input: ReachInput) {
        self.reach.handle(input, Instant::now());
        self.drive_reach();
    }

    pub(crate) fn on_reach_timeout(&mut self) {
        self.reach.handle_timeout(Instant::now());
        self.drive_reach();
    }

    /// Carries out the planner's outputs, in order (some feed it an input back, or call into the
    /// node, which may feed it more).
    pub(crate) fn drive_reach(&mut self) {
        while let Some(output) = self.reach.poll_output() {
            match output {
                Output::Dial {
                    purpose,
                    peer,
                    addrs,
                    condition,
                } => {
                    let result = self.dial(peer, addrs, condition);
                    self.reach.handle(
                        Input::DialStarted {
                            purpose,
                            peer,
                            result,
                        },
                        Instant::now(),
                    );
                }
                Output::ReserveSlot { relay, circuit } => {
                    let listener = match self.swarm.listen_on(circuit.clone()) {
                        Ok(listener) => {
                            tracing::info!("asking {relay} for a relay slot ({circuit})");
                            Some(listener)
                        }
                        Err(err) => {
                            tracing::warn!("relay slot at {circuit}: {err}");
                            None
                        }
                    };
                    let input = Input::SlotListener { relay, listener };
                    self.reach.handle(input, Instant::now());
                }
                Output::ReleaseSlot(listener) => {
                    self.swarm.remove_listener(listener);
                }
                Output::Close(connection) => {
                    tracing::debug!("closing connection {connection}");
                    self.swarm.close_connection(connection);
                }
                // The swarm tells no event of these: our record follows them here.
                Output::AddExternalAddress(addr) => {
                    self.swarm.add_external_address(addr);
                    self.on_external_addresses();
                }
                Output::RemoveExternalAddress(addr) => {
                    self.swarm.remove_external_address(&addr);
                    self.on_external_addresses();
                }
                Output::ListenAddrsChanged => self.register_discovery(),
                Output::RendezvousConnected(peer) => self.on_rendezvous_connected(peer),
                Output::RendezvousLost => self.on_rendezvous_lost(),
                Output::PeerConnected(peer) => self.on_peer_connected(peer),
                Output::ConnectionChanged(peer) => self.emit_connection_change(peer),
                Output::Unreachable(peer) => {
                    self.delivery_input(palaver_protocol::node::direct::Input::Unreachable(peer))
                }
                Output::PeerDisconnected(peer) => {
                    self.delivery_input(palaver_protocol::node::direct::Input::Disconnected(peer))
                }
                Output::Reachability { public, relays } => {
                    let relays: Vec<String> = relays.iter().map(ToString::to_string).collect();
                    tracing::info!("reachability: public {public}, relay slots {relays:?}");
                    self.emit(crate::rpc::Event::Reachability { public, relays });
                }
            }
        }
    }

    fn dial(
        &mut self,
        peer: Option<PeerId>,
        addrs: Vec<Multiaddr>,
        condition: DialCondition,
    ) -> Result<ConnectionId, DialRefusal> {
        let opts = match peer {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(match condition {
                    DialCondition::Always => PeerCondition::Always,
                    DialCondition::Disconnected => PeerCondition::Disconnected,
                    DialCondition::DisconnectedAndNotDialing => {
                        PeerCondition::DisconnectedAndNotDialing
                    }
                })
                .build(),
            None => match addrs.into_iter().next() {
                Some(addr) => DialOpts::unknown_peer_id().address(addr).build(),
                None => return Err(DialRefusal::Failed),
            },
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => Ok(id),
            Err(DialError::DialPeerConditionFalse(_)) => Err(DialRefusal::AlreadyDialing),
            Err(err) => {
                tracing::debug!("dial {peer:?}: {err}");
                Err(DialRefusal::Failed)
            }
        }
    }
}
