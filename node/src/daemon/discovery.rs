//! Discovery at the rendezvous, as requests of Palaver's own protocol (only for a logged-in
//! session). Where and when our signed peer record is registered, and whose signatures make
//! a record found believable, is [`palaver_protocol::node::discovery`]'s to decide; this seals
//! the record, sends the requests, checks the signatures, and looks up one namespace at a time.

use libp2p::{Multiaddr, PeerId};
use palaver_protocol::node::direct::Input;
use palaver_protocol::node::discovery::{Found, Opened, Output, Signer, signer};
use palaver_protocol::rendezvous::discovery::Namespace;
use palaver_protocol::wire::{RendezvousRequest, RendezvousResponse, RoomId, SignedPeerRecord};
use palaver_rendezvous::discovery::{open, open_any};

use super::link::Pending;
use super::{Node, now_ms};

/// What a discovery request was for, so its answer can be acted on.
#[derive(Debug)]
pub(crate) enum Asked {
    /// Our record under this namespace (nothing waits on it; a refusal is logged).
    Register(Namespace),
    /// Our record out of a room we left.
    Unregister,
    /// The records under this namespace.
    Discover(Namespace),
}

fn external_addrs(node: &Node) -> Vec<Multiaddr> {
    node.swarm.external_addresses().cloned().collect()
}

impl Node {
    /// When our listen addresses changed: our record, everywhere it goes (at login,
    /// [`palaver_protocol::node::state::NodeState::logged_in`] does it).
    pub(crate) fn register_discovery(&mut self) {
        let (addrs, rooms) = (external_addrs(self), self.state.rooms.public_joined());
        self.state.discovery.register_all(now_ms(), addrs, &rooms);
        self.drive_discovery();
    }

    /// Registers our record under a public room's namespace (just joined, or after login).
    pub(crate) fn register_in_room(&mut self, room: RoomId) {
        let addrs = external_addrs(self);
        self.state.discovery.register_in_room(room, addrs);
        self.drive_discovery();
    }

    /// Takes our record out of a public room's namespace (we left it).
    pub(crate) fn unregister_from_room(&mut self, room: RoomId) {
        self.state.discovery.leave_room(room);
        self.drive_discovery();
    }

    /// Our external addresses may have changed: the publisher says whether our record is to
    /// be said again.
    pub(crate) fn on_external_addresses(&mut self) {
        let (addrs, rooms) = (external_addrs(self), self.state.rooms.public_joined());
        self.state.discovery.addresses(now_ms(), addrs, &rooms);
        self.drive_discovery();
    }

    /// Carries out the publisher's requests (logged out, it asks nothing:
    /// [`palaver_protocol::node::discovery::Publisher::logged_out`]).
    pub(crate) fn drive_discovery(&mut self) {
        while let Some(output) = self.state.discovery.poll_output() {
            match output {
                Output::Register {
                    namespaces,
                    addrs,
                    ttl_secs,
                } => {
                    if addrs.is_empty() {
                        tracing::debug!("registering for discovery without an address yet");
                    }
                    let Some(record) = self.our_record(addrs) else {
                        // Tried again like a registration the rendezvous refused.
                        for namespace in &namespaces {
                            self.state.discovery.registered(namespace, false, now_ms());
                        }
                        continue;
                    };
                    for namespace in namespaces {
                        self.register_under(namespace, record.clone(), ttl_secs);
                    }
                }
                Output::Unregister(namespace) => self.rendezvous_request(
                    RendezvousRequest::UnregisterDiscovery { namespace },
                    Pending::Discovery(Asked::Unregister),
                ),
                Output::Discover(namespace) => {
                    self.discover_namespace(namespace);
                }
            }
        }
    }

    /// Asks the rendezvous for `peer`'s record; false when we cannot ask now (not connected,
    /// or not logged in: the lookup then waits for the next login).
    pub(crate) fn discover(&mut self, peer: PeerId) -> bool {
        self.discover_namespace(Namespace::Peer(peer))
    }

    fn discover_namespace(&mut self, namespace: Namespace) -> bool {
        if !self.state.session.is_logged_in() {
            return false;
        }
        self.rendezvous_request(
            RendezvousRequest::Discover {
                namespace: namespace.clone(),
            },
            Pending::Discovery(Asked::Discover(namespace)),
        );
        true
    }

    fn our_record(&self, addrs: Vec<Multiaddr>) -> Option<SignedPeerRecord> {
        match palaver_rendezvous::discovery::seal(&self.identity.to_libp2p_keypair(), addrs) {
            Ok(record) => Some(record),
            Err(err) => {
                tracing::warn!("cannot make our discovery record: {err}");
                None
            }
        }
    }

    fn register_under(&mut self, namespace: Namespace, record: SignedPeerRecord, ttl_secs: u32) {
        self.rendezvous_request(
            RendezvousRequest::RegisterDiscovery {
                namespace: namespace.clone(),
                record,
                ttl_secs,
            },
            Pending::Discovery(Asked::Register(namespace)),
        );
    }

    /// The rendezvous's answer to a discovery request (or why there is none).
    pub(crate) fn on_discovery_answer(
        &mut self,
        asked: Asked,
        answer: Result<RendezvousResponse, String>,
    ) {
        match (asked, answer) {
            (Asked::Discover(namespace), Ok(RendezvousResponse::Discovered(records))) => {
                self.on_records(namespace, records)
            }
            (Asked::Discover(namespace), other) => {
                tracing::debug!("discovery of {namespace} failed: {other:?}");
                let found = self.state.discovery.found(namespace, None);
                self.on_found(found);
            }
            (Asked::Unregister, _) => {}
            (Asked::Register(namespace), answer) => {
                let kept = matches!(answer, Ok(RendezvousResponse::Done));
                match answer {
                    Ok(RendezvousResponse::Done) => {}
                    Err(error) => tracing::debug!("registering under {namespace} failed: {error}"),
                    Ok(other) => tracing::warn!(
                        "the rendezvous did not keep our record under {namespace}: {other:?}"
                    ),
                }
                self.state.discovery.registered(&namespace, kept, now_ms());
                self.drive_discovery();
            }
        }
    }

    fn on_records(&mut self, namespace: Namespace, records: Vec<SignedPeerRecord>) {
        let signer = signer(&namespace);
        let opened = records
            .iter()
            .filter_map(|signed| {
                let record = match &signer {
                    Signer::Exactly(peer) => open(signed, peer),
                    Signer::Any => open_any(signed),
                };
                record
                    .inspect_err(|err| tracing::warn!("discarded a discovery record: {err}"))
                    .ok()
            })
            .map(|record| Opened {
                peer: record.peer_id(),
                seq: record.seq(),
                addrs: record.addresses().to_vec(),
            })
            .collect();
        let found = self.state.discovery.found(namespace, Some(opened));
        self.on_found(found);
    }

    /// What a lookup found goes to the delivery planner.
    fn on_found(&mut self, found: Vec<Found>) {
        for found in found {
            match found {
                Found::At { peer, addrs } => self.on_discovered(peer, addrs),
                Found::Member(peer) => self.delivery_input(Input::Want(peer)),
                Found::NotFound(peer) => self.delivery_input(Input::DiscoveryFailed(peer)),
            }
        }
    }
}
