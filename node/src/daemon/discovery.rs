//! Discovery at the rendezvous, as requests of Palaver's own protocol (only for a logged-in
//! session): our signed peer record goes under our own peer namespace and each public room's,
//! and we look up one namespace at a time — a room's once our own registration there is kept
//! (the server shows a room's members only to its registered members).
//!
//! The record holds our external addresses, signed with our key; it is registered at each
//! login, whenever those addresses change, and again at half its TTL. An answer is believed only
//! as far as its signatures go: for a peer, only a record that peer signed; for a room, each
//! record for the peer that signed it. So neither the server nor another instance can send us to
//! addresses a peer did not publish.

use libp2p::{Multiaddr, PeerId};
use palaver_protocol::node::direct::Input;
use palaver_protocol::rendezvous::discovery::{DEFAULT_TTL_SECS, Namespace};
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

/// Registrations are renewed at half their TTL, so they never lapse while we are logged in.
const RENEW_MS: u64 = DEFAULT_TTL_SECS as u64 * 1000 / 2;

/// What our registrations say, to notice when they need saying again.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// The external addresses in our last record, sorted.
    addrs: Vec<Multiaddr>,
    /// When to renew it (ms since the epoch).
    renew_at: Option<u64>,
    /// The public rooms it went to with those addresses (so a login's room lookups do not
    /// register there twice).
    rooms: std::collections::BTreeSet<RoomId>,
}

fn external_addrs(node: &Node) -> Vec<Multiaddr> {
    let mut addrs: Vec<Multiaddr> = node.swarm.external_addresses().cloned().collect();
    addrs.sort();
    addrs
}

impl Node {
    /// Discovery is served to logged-in sessions only.
    fn may_ask_discovery(&self) -> bool {
        self.rendezvous_peer().is_some() && self.state.session.is_logged_in()
    }

    /// Registers our signed record — our external addresses now — under our own peer namespace
    /// and each public room we are in. Without external addresses yet there is nothing to tell:
    /// the change that brings one registers again.
    pub(crate) fn register_discovery(&mut self) {
        if !self.may_ask_discovery() {
            return;
        }
        let addrs = external_addrs(self);
        self.discovery.addrs = addrs.clone();
        self.discovery.rooms.clear();
        if addrs.is_empty() {
            tracing::debug!("no external address to register for discovery yet");
            return;
        }
        let Some(record) = self.our_record(addrs) else {
            return;
        };
        self.discovery.renew_at = Some(now_ms().saturating_add(RENEW_MS));
        let rooms = self.state.rooms.public_joined();
        self.discovery.rooms.extend(rooms.iter().copied());
        let own = Namespace::Peer(*self.swarm.local_peer_id());
        for namespace in std::iter::once(own).chain(rooms.into_iter().map(Namespace::Room)) {
            self.register_under(namespace, record.clone());
        }
    }

    /// Registers our record under a public room's namespace (just joined, or after login),
    /// unless it is there already with our current addresses. Even without an address yet: a
    /// member that cannot be dialed is still one to be dialed by.
    pub(crate) fn register_in_room(&mut self, room: RoomId) {
        if !self.may_ask_discovery() {
            return;
        }
        let addrs = external_addrs(self);
        if self.discovery.rooms.contains(&room) && addrs == self.discovery.addrs {
            return;
        }
        if let Some(record) = self.our_record(addrs) {
            self.discovery.rooms.insert(room);
            self.register_under(Namespace::Room(room), record);
        }
    }

    /// Takes our record out of a public room's namespace (we left it).
    pub(crate) fn unregister_from_room(&mut self, room: RoomId) {
        self.discovery.rooms.remove(&room);
        if self.may_ask_discovery() {
            self.rendezvous_request(
                RendezvousRequest::UnregisterDiscovery {
                    namespace: Namespace::Room(room),
                },
                Pending::Discovery(Asked::Unregister),
            );
        }
    }

    /// Registers again (from the retry tick) when our registrations are half-way to expiring,
    /// or our external addresses are not the ones in them (an address confirmed by AutoNAT, a
    /// relay slot given back): the record follows the addresses, as libp2p's own client does.
    pub(crate) fn renew_discovery(&mut self) {
        if !self.state.session.is_logged_in() {
            return;
        }
        let due = self.discovery.renew_at.is_some_and(|at| now_ms() >= at);
        if due || external_addrs(self) != self.discovery.addrs {
            self.register_discovery();
        }
    }

    /// Asks the rendezvous for `peer`'s record; false when we cannot ask now (not connected,
    /// or not logged in: the lookup then waits for the next login).
    pub(crate) fn discover(&mut self, peer: PeerId) -> bool {
        self.discover_namespace(Namespace::Peer(peer))
    }

    /// Asks the rendezvous who has registered under a public room's namespace (once we have).
    fn discover_room(&mut self, room: RoomId) {
        self.discover_namespace(Namespace::Room(room));
    }

    fn discover_namespace(&mut self, namespace: Namespace) -> bool {
        if !self.may_ask_discovery() {
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

    fn register_under(&mut self, namespace: Namespace, record: SignedPeerRecord) {
        self.rendezvous_request(
            RendezvousRequest::RegisterDiscovery {
                namespace: namespace.clone(),
                record,
                ttl_secs: DEFAULT_TTL_SECS,
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
                // As good as no record: its messages go to the mailbox rather than wait.
                if let Namespace::Peer(peer) = namespace {
                    self.delivery_input(Input::DiscoveryFailed(peer));
                }
            }
            // The server shows a room's members to those registered there: now we are.
            (Asked::Register(Namespace::Room(room)), Ok(RendezvousResponse::Done)) => {
                self.discover_room(room)
            }
            (Asked::Register(_), Ok(RendezvousResponse::Done)) | (Asked::Unregister, _) => {}
            (Asked::Register(namespace), Err(error)) => {
                tracing::debug!("registering under {namespace} failed: {error}")
            }
            (Asked::Register(namespace), other) => {
                tracing::warn!(
                    "the rendezvous did not keep our record under {namespace}: {other:?}"
                )
            }
        }
    }

    fn on_records(&mut self, namespace: Namespace, records: Vec<SignedPeerRecord>) {
        match namespace {
            // Asked for one peer: only a record it signed counts, the newest if several. None
            // (it is offline, or never registered here) is as good as a failed lookup.
            Namespace::Peer(peer) => {
                let newest = records
                    .iter()
                    .filter_map(|signed| match open(signed, &peer) {
                        Ok(record) => Some(record),
                        Err(err) => {
                            tracing::warn!("discarded a discovery record for {peer}: {err}");
                            None
                        }
                    })
                    .max_by_key(|record| record.seq());
                match newest {
                    Some(record) => self.on_discovered(peer, record.addresses().to_vec()),
                    None => self.delivery_input(Input::DiscoveryFailed(peer)),
                }
            }
            // A public room's members registered here: each one found is wanted.
            Namespace::Room(_) => {
                let me = *self.swarm.local_peer_id();
                for signed in &records {
                    let record = match open_any(signed) {
                        Ok(record) => record,
                        Err(err) => {
                            tracing::warn!("discarded a room's discovery record: {err}");
                            continue;
                        }
                    };
                    let peer = record.peer_id();
                    if peer != me {
                        self.delivery_input(Input::Want(peer));
                    }
                    self.on_discovered(peer, record.addresses().to_vec());
                }
            }
        }
    }
}
