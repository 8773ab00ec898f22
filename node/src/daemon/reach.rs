//! Reachability: being reachable behind a NAT, and reaching peers that are.
//!
//! Being reachable: for each relay (the rendezvous, and every `--relay`) connect, wait until
//! identify reports the address the relay observes us at, then reserve a slot by listening on
//! `<relay>/p2p-circuit`. The wait matters (rust-libp2p's dcutr example): DCUtR offers our
//! observed addresses as hole-punch candidates when a relayed connection opens, so they must be
//! known before anyone can dial us through the relay. At the rendezvous a slot also needs a login.
//! The relay client confirms the circuit address as external, and the discovery client registers
//! our record again with it. AutoNAT v2 asks the rendezvous to dial our observed addresses back;
//! once one is confirmed we are publicly reachable, and give our slots back. Our record carries
//! local-network listen addresses as they are (for peers on the same network), other addresses
//! only once AutoNAT confirmed them, and the circuit addresses.
//!
//! Reaching a peer: dial its direct addresses first, its circuit addresses after a short head
//! start or as soon as the direct dial fails. Over a relayed connection DCUtR punches a direct one;
//! once that is up the relayed connection is closed (when no delivery of ours is in flight on it),
//! so later traffic goes direct. When punching fails the relayed connection simply stays.
//!
//! Recovering: a failed ping closes its connection; an interface address going away (a network
//! change) closes every connection, so all of the above starts again on the new network; a relay
//! that went away is redialled and its slot reserved again once it observes us again.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, autonat, identify, ping, relay};
use palaver_protocol::VerifyingKey;
use palaver_protocol::identity::peer_id_of;
use serde_json::json;

use super::Node;
use super::direct::OutboxItem;
use crate::store::StateKey;

/// How long direct addresses have to answer before circuit addresses are dialed too.
const DIRECT_HEAD_START: Duration = Duration::from_millis(500);
/// How long a relayed connection outlives a direct one to the same peer (DCUtR's own exchange
/// finishes on it).
const RELAYED_GRACE: Duration = Duration::from_secs(2);
/// Pause before dialing a relay again, or reserving again after a refusal.
const RELAY_RETRY: Duration = Duration::from_secs(5);
/// How long relays wait for our listeners to report their addresses (see [`Reach::new`]).
const LISTENERS_GRACE: Duration = Duration::from_secs(2);
/// How often [`Node::on_reach_tick`] runs.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// Reachability state: our relays and the dials under way.
#[derive(Debug)]
pub(crate) struct Reach {
    relays: Vec<Relay>,
    /// Our listeners that have not reported a usable address yet (for a listener on every
    /// interface: one that is not loopback), and until when to wait for them.
    listeners: Vec<(ListenerId, Multiaddr)>,
    listeners_deadline: Instant,
    /// AutoNAT confirmed one of our addresses reachable from outside.
    public: bool,
    /// Peers dialed direct, with the circuit addresses to dial at the deadline unless connected.
    fallback: HashMap<PeerId, (Instant, Vec<Multiaddr>)>,
    /// Our dials to peers that have not resolved yet.
    dials: HashMap<ConnectionId, PeerId>,
    /// Peers with a direct connection whose relayed connections are to close at the deadline.
    close_relayed: HashMap<PeerId, Instant>,
    /// The connection kind last announced to `listen` subscribers, per peer, and whether the
    /// announcement could name the peer.
    announced: HashMap<PeerId, (&'static str, bool)>,
    /// Relay servers we dialed peers through (not ours): connections to them are not to peers.
    other_relays: HashSet<PeerId>,
}

#[derive(Debug)]
struct Relay {
    /// The relay's address without `/p2p-circuit` (and, for the rendezvous, maybe without its id).
    addr: Multiaddr,
    /// The rendezvous we log in at: its link dials it, and its slot needs a login.
    rendezvous: bool,
    /// Identify told us, on the current connection, the address this relay observes us at.
    observed: bool,
    /// The listener holding (or asking for) our slot.
    listener: Option<ListenerId>,
    reserved: bool,
    /// No dial or reservation before this.
    not_before: Instant,
}

impl Reach {
    /// The rendezvous plus `extra` relays, each of which must name its peer id. Relays are dialed
    /// once our `listeners` have reported their addresses (or after a grace period): dialed from
    /// the listening port, a connection shows the relay the address peers can punch through to,
    /// and identify can tell which of our addresses its observation belongs to.
    pub(crate) fn new(
        rendezvous: &Multiaddr,
        extra: &[Multiaddr],
        listeners: Vec<(ListenerId, Multiaddr)>,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        let relay = |addr: Multiaddr, rendezvous| Relay {
            addr,
            rendezvous,
            observed: false,
            listener: None,
            reserved: false,
            not_before: now,
        };
        let mut relays = vec![relay(rendezvous.clone(), true)];
        for addr in extra {
            anyhow::ensure!(
                matches!(addr.iter().last(), Some(Protocol::P2p(_))),
                "--relay {addr}: the address must end in /p2p/<the relay's peer id>"
            );
            anyhow::ensure!(
                !addr.iter().any(|p| p == Protocol::P2pCircuit),
                "--relay {addr}: give the relay's own address, not a circuit through it"
            );
            relays.push(relay(addr.clone(), false));
        }
        Ok(Self {
            relays,
            listeners,
            listeners_deadline: now + LISTENERS_GRACE,
            public: false,
            fallback: HashMap::new(),
            dials: HashMap::new(),
            close_relayed: HashMap::new(),
            announced: HashMap::new(),
            other_relays: HashSet::new(),
        })
    }
}

/// Whether `addr` goes through a relay.
pub(crate) fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Whether `addr` is a direct address on a local network (loopback, private, link-local or
/// carrier-grade NAT space): worth advertising for peers on the same network, and never proof
/// of being reachable from outside.
pub(crate) fn is_local_network(addr: &Multiaddr) -> bool {
    if is_circuit(addr) {
        return false;
    }
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        Some(Protocol::Ip6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
        _ => false,
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    fn of(addr: &Multiaddr) -> Option<Self> {
        let mut kind = None;
        for protocol in addr.iter() {
            match protocol {
                Protocol::Tcp(_) => kind = Some(Self::Tcp),
                Protocol::QuicV1 => kind = Some(Self::Quic),
                Protocol::P2pCircuit => return None,
                _ => {}
            }
        }
        kind
    }
}

/// The relay of a circuit address (`…/p2p/<relay>/p2p-circuit/…`).
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => ip.is_unspecified(),
        _ => false,
    }
}

fn is_loopback_addr(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

impl Node {
    /// The peer id of relay `i`, once known.
    fn relay_peer(&self, i: usize) -> Option<PeerId> {
        let relay = &self.reach.relays[i];
        if relay.rendezvous {
            return self.link.peer;
        }
        match relay.addr.iter().last() {
            Some(Protocol::P2p(peer)) => Some(peer),
            _ => None,
        }
    }

    fn relay_index(&self, peer: &PeerId) -> Option<usize> {
        (0..self.reach.relays.len()).find(|&i| self.relay_peer(i).as_ref() == Some(peer))
    }

    pub(crate) fn is_relay(&self, peer: &PeerId) -> bool {
        self.relay_index(peer).is_some()
    }

    /// Whether `peer` is a relay server (ours, or one we reached a peer through) rather than a
    /// peer to talk to.
    pub(crate) fn is_relay_server(&self, peer: &PeerId) -> bool {
        self.is_relay(peer) || self.reach.other_relays.contains(peer)
    }

    /// Whether relays (the rendezvous among them) may be dialed: see [`Reach::new`].
    pub(crate) fn listeners_ready(&self) -> bool {
        self.reach.listeners.is_empty() || Instant::now() >= self.reach.listeners_deadline
    }

    /// Listener `id` reported `address` (`None`: it closed).
    pub(crate) fn on_listener_ready(&mut self, id: ListenerId, address: Option<&Multiaddr>) {
        if address.is_some_and(|a| !is_circuit(a) && !is_loopback_addr(a)) && !self.link.connected {
            // A new network address, as after a network change: no need to wait for a timer.
            self.dial_rendezvous();
        }
        let before = self.reach.listeners.len();
        self.reach.listeners.retain(|(l, listen)| {
            let usable = address.is_none_or(|addr| {
                // TCP dials reuse the listening port only once a non-loopback address of a
                // listener on every interface is known.
                !is_unspecified(listen) || !is_loopback_addr(addr)
            });
            *l != id || !usable
        });
        if before > 0 && self.reach.listeners.is_empty() {
            self.dial_rendezvous();
            self.dial_relays();
        }
    }

    // ---- being reachable -------------------------------------------------------------------

    /// Identify answered: once a relay has told us how it sees us, a slot there is worth having.
    pub(crate) fn on_identified(&mut self, peer: PeerId, info: &identify::Info) {
        if let Some(i) = self.relay_index(&peer) {
            tracing::debug!("relay {peer} observes us at {}", info.observed_addr);
            self.reach.relays[i].observed = true;
            self.connect_every_transport(peer, info);
            self.reserve_slots();
        }
    }

    /// Connects to relay `peer` over each transport we listen on (TCP and QUIC), so identify
    /// observes our address on each and DCUtR can punch with either: QUIC's UDP punch gets
    /// through NATs that answer an early TCP SYN with a reset.
    fn connect_every_transport(&mut self, peer: PeerId, info: &identify::Info) {
        let connected: Vec<Multiaddr> = self
            .peer_addrs
            .get(&peer)
            .map(|c| c.values().filter(|a| !is_circuit(a)).cloned().collect())
            .unwrap_or_default();
        let hosts: Vec<Protocol<'_>> = connected.iter().filter_map(|a| a.iter().next()).collect();
        for kind in [Transport::Tcp, Transport::Quic] {
            let listening = self
                .listen_addrs
                .iter()
                .any(|a| !is_circuit(a) && Transport::of(a) == Some(kind));
            if !listening || connected.iter().any(|a| Transport::of(a) == Some(kind)) {
                continue;
            }
            let addrs: Vec<Multiaddr> = info
                .listen_addrs
                .iter()
                .filter(|a| Transport::of(a) == Some(kind))
                .filter(|a| a.iter().next().is_some_and(|host| hosts.contains(&host)))
                .cloned()
                .collect();
            if addrs.is_empty() {
                continue;
            }
            tracing::debug!("connecting to relay {peer} over {kind:?} too");
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::Always)
                .build();
            if let Err(err) = self.swarm.dial(opts) {
                tracing::debug!("dialing relay {peer} over {kind:?}: {err}");
            }
        }
    }

    /// Reserves a slot at every relay that observed us, unless we are publicly reachable.
    pub(crate) fn reserve_slots(&mut self) {
        if self.reach.public || self.stopping {
            return;
        }
        let now = Instant::now();
        for i in 0..self.reach.relays.len() {
            let relay = &self.reach.relays[i];
            if relay.listener.is_some()
                || !relay.observed
                || now < relay.not_before
                || (relay.rendezvous && !self.link.logged_in)
            {
                continue;
            }
            let Some(peer) = self.relay_peer(i) else {
                continue;
            };
            if !self.swarm.is_connected(&peer) {
                continue;
            }
            let circuit = with_peer(&self.reach.relays[i].addr, peer).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!("asking {peer} for a relay slot ({circuit})");
                    self.reach.relays[i].listener = Some(id);
                }
                Err(err) => {
                    tracing::warn!("relay slot at {circuit}: {err}");
                    self.reach.relays[i].not_before = now + RELAY_RETRY;
                }
            }
        }
    }

    /// Gives every slot back (we are publicly reachable).
    fn release_slots(&mut self) {
        for i in 0..self.reach.relays.len() {
            if let Some(id) = self.reach.relays[i].listener.take() {
                self.reach.relays[i].reserved = false;
                self.swarm.remove_listener(id);
            }
        }
    }

    pub(crate) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if let Some(i) = self.relay_index(&relay_peer_id) {
                    self.reach.relays[i].reserved = true;
                }
                if !renewal {
                    tracing::info!("holding a relay slot at {relay_peer_id}");
                    self.emit_reachability();
                }
            }
            other => tracing::debug!("relay client: {other:?}"),
        }
    }

    /// A listener closed: if it held a relay slot, reserve again later.
    pub(crate) fn on_listener_closed(&mut self, id: ListenerId, reason: Result<(), String>) {
        self.on_listener_ready(id, None);
        let Some(i) =
            (0..self.reach.relays.len()).find(|&i| self.reach.relays[i].listener == Some(id))
        else {
            return;
        };
        let relay = &mut self.reach.relays[i];
        relay.listener = None;
        relay.reserved = false;
        if let Err(reason) = reason {
            tracing::warn!("relay slot at {} lost: {reason}", relay.addr);
            relay.not_before = Instant::now() + RELAY_RETRY;
        }
        self.emit_reachability();
    }

    pub(crate) fn on_autonat(&mut self, event: autonat::v2::client::Event) {
        match event.result {
            Ok(()) => {
                tracing::info!("reachable from outside at {}", event.tested_addr);
                if !self.reach.public {
                    self.reach.public = true;
                    self.release_slots();
                    self.emit_reachability();
                }
            }
            Err(err) => tracing::debug!("not reachable at {}: {err}", event.tested_addr),
        }
    }

    fn emit_reachability(&self) {
        let relays: Vec<String> = (0..self.reach.relays.len())
            .filter(|&i| self.reach.relays[i].reserved)
            .filter_map(|i| {
                let peer = self.relay_peer(i)?;
                Some(with_peer(&self.reach.relays[i].addr, peer).to_string())
            })
            .collect();
        self.emit(json!({"type": "reachability", "public": self.reach.public, "relays": relays}));
    }

    /// Dials the extra relays we are not connected to (the rendezvous link redials its own).
    fn dial_relays(&mut self) {
        if !self.listeners_ready() {
            return;
        }
        let now = Instant::now();
        for i in 0..self.reach.relays.len() {
            if self.reach.relays[i].rendezvous || now < self.reach.relays[i].not_before {
                continue;
            }
            let Some(peer) = self.relay_peer(i) else {
                continue;
            };
            if self.swarm.is_connected(&peer) {
                continue;
            }
            self.reach.relays[i].not_before = now + RELAY_RETRY;
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![self.reach.relays[i].addr.clone()])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(err) = self.swarm.dial(opts) {
                tracing::debug!("dialing relay {peer}: {err}");
            }
        }
    }

    // ---- connections -----------------------------------------------------------------------

    /// A connection opened (any peer).
    pub(crate) fn on_reach_connected(&mut self, peer: PeerId, connection: ConnectionId) {
        self.reach.dials.remove(&connection);
        if self.is_rendezvous(&peer) || self.is_relay_server(&peer) {
            return;
        }
        let (direct, relayed) = self.connection_counts(&peer);
        if direct > 0 {
            self.reach.fallback.remove(&peer);
            if relayed > 0 {
                self.reach
                    .close_relayed
                    .entry(peer)
                    .or_insert_with(|| Instant::now() + RELAYED_GRACE);
            }
        }
    }

    /// A connection closed (any peer; `broke`: with an error); `remaining` connections to it are
    /// left.
    pub(crate) fn on_reach_disconnected(&mut self, peer: PeerId, remaining: u32, broke: bool) {
        if remaining > 0 {
            if broke && self.is_relay(&peer) {
                // One path to a relay broke: it may have restarted (its QUIC connections would
                // linger until a ping fails). Reconnect from scratch rather than wait.
                tracing::info!("a connection to relay {peer} broke: reconnecting");
                let conns: Vec<ConnectionId> = self
                    .peer_addrs
                    .get(&peer)
                    .map(|c| c.keys().copied().collect())
                    .unwrap_or_default();
                for connection in conns {
                    self.swarm.close_connection(connection);
                }
            }
            return;
        }
        self.reach.close_relayed.remove(&peer);
        if let Some(i) = self.relay_index(&peer) {
            self.reach.relays[i].observed = false;
        }
    }

    /// (direct, relayed) open connections to `peer`.
    fn connection_counts(&self, peer: &PeerId) -> (usize, usize) {
        let conns = self.peer_addrs.get(peer);
        let relayed = conns.map_or(0, |c| c.values().filter(|a| is_circuit(a)).count());
        let all = conns.map_or(0, |c| c.len());
        (all - relayed, relayed)
    }

    /// A ping failed: the path is dead (a NAT forgot us, the network changed), so close it rather
    /// than wait for TCP to notice.
    pub(crate) fn on_ping(&mut self, event: ping::Event) {
        if let Err(err) = event.result {
            tracing::info!("ping to {} failed ({err}); closing", event.peer);
            self.swarm.close_connection(event.connection);
        }
    }

    /// One of our interface addresses went away: our connections left from it, and our NAT
    /// mapping and reachability may differ on the new network. Start over.
    pub(crate) fn on_network_change(&mut self, gone: &Multiaddr) {
        tracing::info!("address {gone} went away: reconnecting everything");
        self.reach.public = false;
        let conns: Vec<ConnectionId> = self
            .peer_addrs
            .values()
            .flat_map(|c| c.keys().copied())
            .collect();
        for connection in conns {
            self.swarm.close_connection(connection);
        }
    }

    /// Periodic work: circuit fallbacks, closing superseded relayed connections, relays.
    pub(crate) fn on_reach_tick(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .reach
            .fallback
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if let Some((_, circuit)) = self.reach.fallback.remove(&peer)
                && !self.swarm.is_connected(&peer)
                && !self.dial_circuit(peer, circuit)
            {
                self.on_dial_failed(peer, None);
            }
        }
        let due: Vec<PeerId> = self
            .reach
            .close_relayed
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            self.close_relayed(peer, now);
        }
        if !self.reach.listeners.is_empty() && self.listeners_ready() {
            // Some listener never reported an address (no network yet?): go without it.
            self.reach.listeners.clear();
            self.dial_rendezvous();
        }
        self.dial_relays();
        self.reserve_slots();
    }

    /// Closes the relayed connections to `peer` if a direct one is open, once no delivery of ours
    /// to it is in flight (closing would fail it over to the mailbox).
    fn close_relayed(&mut self, peer: PeerId, now: Instant) {
        if self.connection_counts(&peer).0 == 0 {
            self.reach.close_relayed.remove(&peer);
            return;
        }
        if self.delivery_in_flight_to(&peer) {
            self.reach.close_relayed.insert(peer, now + TICK * 2);
            return;
        }
        self.reach.close_relayed.remove(&peer);
        let relayed: Vec<ConnectionId> = self
            .peer_addrs
            .get(&peer)
            .into_iter()
            .flatten()
            .filter(|(_, addr)| is_circuit(addr))
            .map(|(id, _)| *id)
            .collect();
        for connection in relayed {
            tracing::info!("direct connection to {peer} is up: closing the relayed one");
            self.swarm.close_connection(connection);
        }
    }

    fn delivery_in_flight_to(&self, peer: &PeerId) -> bool {
        self.delivering.values().any(|id| {
            self.store
                .get::<OutboxItem>(StateKey::Outbox(*id))
                .ok()
                .flatten()
                .and_then(|item| VerifyingKey::from_bytes(&item.to_key).ok())
                .is_some_and(|key| peer_id_of(&key) == *peer)
        })
    }

    // ---- reaching a peer -------------------------------------------------------------------

    /// Dials `peer`: direct addresses first, circuit addresses after [`DIRECT_HEAD_START`] (or at
    /// once when there is nothing direct to try). False when no dial could be started.
    pub(crate) fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> bool {
        if self.swarm.is_connected(&peer) {
            return true;
        }
        let (circuit, direct): (Vec<Multiaddr>, Vec<Multiaddr>) =
            addrs.into_iter().partition(is_circuit);
        if direct.is_empty() {
            return self.dial_circuit(peer, circuit);
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(direct)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.reach.dials.insert(id, peer);
                if !circuit.is_empty() {
                    self.reach
                        .fallback
                        .insert(peer, (Instant::now() + DIRECT_HEAD_START, circuit));
                }
                true
            }
            // A dial is under way already (perhaps not ours, to addresses that will not answer):
            // the circuit still follows after the head start.
            Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                if !circuit.is_empty() {
                    self.reach
                        .fallback
                        .entry(peer)
                        .or_insert_with(|| (Instant::now() + DIRECT_HEAD_START, circuit));
                }
                true
            }
            Err(err) => {
                tracing::debug!("dial {peer}: {err}");
                self.dial_circuit(peer, circuit)
            }
        }
    }

    /// Dials `peer` through relays, alongside any direct dial still under way.
    fn dial_circuit(&mut self, peer: PeerId, circuit: Vec<Multiaddr>) -> bool {
        if circuit.is_empty() {
            return false;
        }
        const MAX_OTHER_RELAYS: usize = 256;
        for relay in circuit.iter().filter_map(relay_of) {
            if !self.is_relay(&relay) && self.reach.other_relays.len() < MAX_OTHER_RELAYS {
                self.reach.other_relays.insert(relay);
            }
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(circuit)
            .condition(PeerCondition::Disconnected)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.reach.dials.insert(id, peer);
                true
            }
            Err(err) => {
                tracing::debug!("dial {peer} through a relay: {err}");
                false
            }
        }
    }

    /// After a dial to `peer` failed: true when it was the direct attempt and the circuit is now
    /// being tried, or another attempt is still under way — no verdict yet.
    pub(crate) fn dial_continues(&mut self, peer: PeerId, dial: Option<ConnectionId>) -> bool {
        if let Some(id) = dial {
            self.reach.dials.remove(&id);
        }
        if let Some((_, circuit)) = self.reach.fallback.remove(&peer)
            && self.dial_circuit(peer, circuit)
        {
            return true;
        }
        self.reach.dials.values().any(|p| *p == peer)
    }

    /// Whether the connection kind of `peer` changed since last announced, or it was announced
    /// without a name and now has one (and remembers what is announced now).
    pub(crate) fn connection_kind_changed(
        &mut self,
        peer: PeerId,
        kind: &'static str,
        named: bool,
    ) -> bool {
        if kind == "disconnected" {
            return self.reach.announced.remove(&peer).is_some();
        }
        match self.reach.announced.get(&peer).copied() {
            Some((old, was_named)) if old == kind && (was_named || !named) => false,
            _ => {
                self.reach.announced.insert(peer, (kind, named));
                true
            }
        }
    }
}
