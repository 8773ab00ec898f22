//! The reach planner: which connections to open, keep and close.
//!
//! Being reachable: for each relay (the rendezvous, and every `--relay`) connect, wait until
//! identify reports the address the relay observes us at, then reserve a slot by listening on
//! `<relay>/p2p-circuit`. The wait matters (rust-libp2p's dcutr example): DCUtR offers our
//! observed addresses as hole-punch candidates when a relayed connection opens, so they must be
//! known before anyone can dial us through the relay. At the rendezvous a slot also needs a login.
//! Once the driver reports that we are reachable from outside (AutoNAT confirmed an address) the
//! slots are given back. Local-network listen addresses are external addresses as they are (for
//! peers on the same network); others only once confirmed, which is the driver's AutoNAT's job.
//!
//! Reaching a peer: dial its direct addresses first, its circuit addresses after a short head
//! start or as soon as the direct dial fails. Over a relayed connection DCUtR punches a direct one;
//! once that is up the relayed connection is closed (when no delivery of ours is in flight on it),
//! so later traffic goes direct. When punching fails the relayed connection simply stays.
//!
//! Recovering: a failed ping closes its connection; an interface address going away (a network
//! change) closes every connection, so all of the above starts again on the new network; a relay
//! that went away is redialled and its slot reserved again once it observes us again; the
//! rendezvous is redialled every [`RENDEZVOUS_REDIAL`] while not connected.
//!
//! The planner is generic over the driver's connection and listener handles (`C`, `L`): libp2p's
//! `ConnectionId` and `ListenerId` in the daemon, plain numbers in a simulation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};

use super::addr::{
    Transport, is_circuit, is_local_network, is_loopback, is_unspecified, peer_of, relay_of,
    with_peer, without_peers,
};

/// How long direct addresses have to answer before circuit addresses are dialed too.
pub const DIRECT_HEAD_START: Duration = Duration::from_millis(500);
/// How long a relayed connection outlives a direct one to the same peer (DCUtR's own exchange
/// finishes on it).
pub const RELAYED_GRACE: Duration = Duration::from_secs(2);
/// Pause before dialing a relay again, or reserving again after a refusal.
pub const RELAY_RETRY: Duration = Duration::from_secs(5);
/// How long relays wait for our listeners to report their addresses (see [`Reach::new`]).
pub const LISTENERS_GRACE: Duration = Duration::from_secs(2);
/// How often the rendezvous is dialed while we are not connected to it.
pub const RENDEZVOUS_REDIAL: Duration = Duration::from_secs(1);
/// Relay servers remembered from circuit addresses we dialed (not ours).
const MAX_OTHER_RELAYS: usize = 256;
/// Peers whose circuit addresses wait for their direct head start; past that, circuits are dialed
/// at once alongside the direct addresses.
const MAX_FALLBACKS: usize = 4096;

mod failover;
mod io;

pub use failover::{FAILOVER_BACKOFF, MAX_FAILOVER_BACKOFF};
pub use io::{ConnectionKind, DialCondition, DialPurpose, DialRefusal, Input, Output, ReachError};

#[derive(Debug)]
struct Relay<L> {
    /// The relay's address without `/p2p-circuit` (and, for the rendezvous, maybe without its id).
    addr: Multiaddr,
    /// The rendezvous we log in at: its slot needs a login, and its peer id may come from the
    /// first connection.
    rendezvous: bool,
    /// Identify told us, on the current connection, the address this relay observes us at.
    observed: bool,
    /// The listener holding (or asking for) our slot.
    listener: Option<L>,
    /// A [`Output::ReserveSlot`] is out, its outcome not reported yet.
    asking: bool,
    reserved: bool,
    /// No dial or reservation before this.
    not_before: Instant,
}

/// The reach planner (see the module documentation).
#[derive(Debug)]
pub struct Reach<C, L> {
    /// The instance we use now (one of `instances`).
    rendezvous_addr: Multiaddr,
    instances: failover::Instances,
    /// The rendezvous's peer id: from its address, or its first connection.
    rendezvous: Option<PeerId>,
    rendezvous_dialed_at: Option<Instant>,
    /// Our dial to the rendezvous, until it resolves: the redial waits for it (libp2p cannot
    /// refuse a second dial to a peer whose id we do not know yet).
    rendezvous_dial: Option<C>,
    relays: Vec<Relay<L>>,
    /// Our listeners that have not reported a usable address yet (for a listener on every
    /// interface: one that is not loopback), and until when relays wait for them.
    listeners: Vec<(L, Multiaddr)>,
    listeners_deadline: Instant,
    listen_addrs: Vec<Multiaddr>,
    /// An address of ours is confirmed reachable from outside.
    public: bool,
    logged_in: bool,
    stopping: bool,
    /// Every open connection, per peer, with the address that describes it.
    connections: HashMap<PeerId, HashMap<C, Multiaddr>>,
    /// Our dials to peers that have not resolved yet.
    dials: HashMap<C, PeerId>,
    /// Peers dialed direct, with the circuit addresses to dial at the deadline unless connected.
    fallback: HashMap<PeerId, (Instant, Vec<Multiaddr>)>,
    /// Peers with a direct connection whose relayed connections close at the deadline…
    close_relayed: HashMap<PeerId, Instant>,
    /// …or, if a delivery was in flight then, once none is.
    close_when_idle: HashSet<PeerId>,
    /// Deliveries of ours in flight, per peer.
    in_flight: HashMap<PeerId, u32>,
    /// Relay servers we dialed peers through (not ours): connections to them are not to peers.
    other_relays: HashSet<PeerId>,
    /// The latest `now` handed in.
    now: Instant,
    outputs: VecDeque<Output<C, L>>,
}

impl<C, L> Reach<C, L>
where
    C: Copy + Eq + Hash + Debug,
    L: Copy + Eq + Debug,
{
    /// The rendezvous plus `relays`, each of which must name its peer id. Relays (the rendezvous
    /// among them) are dialed once our `listeners` have reported their addresses, or after
    /// [`LISTENERS_GRACE`]: dialed from the listening port, a connection shows the relay the
    /// address peers can punch through to, and identify can tell which of our addresses its
    /// observation belongs to.
    pub fn new(
        rendezvous: Multiaddr,
        relays: &[Multiaddr],
        listeners: Vec<(L, Multiaddr)>,
        now: Instant,
    ) -> Result<Self, ReachError> {
        Self::with_instances(vec![rendezvous], relays, listeners, now)
    }

    /// Like [`Reach::new`] with several rendezvous instances, the first preferred; when the
    /// one in use fails we move to the next (see `failover`).
    pub fn with_instances(
        instances: Vec<Multiaddr>,
        relays: &[Multiaddr],
        listeners: Vec<(L, Multiaddr)>,
        now: Instant,
    ) -> Result<Self, ReachError> {
        let Some(rendezvous) = instances.first().cloned() else {
            return Err(ReachError::NoRendezvous);
        };
        let relay = |addr: Multiaddr, rendezvous| Relay {
            addr,
            rendezvous,
            observed: false,
            listener: None,
            asking: false,
            reserved: false,
            not_before: now,
        };
        let mut all = vec![relay(rendezvous.clone(), true)];
        for addr in relays {
            if peer_of(addr).is_none() {
                return Err(ReachError::RelayWithoutPeerId(addr.clone()));
            }
            if is_circuit(addr) {
                return Err(ReachError::RelayIsCircuit(addr.clone()));
            }
            all.push(relay(addr.clone(), false));
        }
        let mut reach = Self {
            rendezvous: peer_of(&rendezvous),
            rendezvous_addr: rendezvous,
            instances: failover::Instances::new(instances),
            rendezvous_dialed_at: None,
            rendezvous_dial: None,
            relays: all,
            listeners,
            listeners_deadline: now + LISTENERS_GRACE,
            listen_addrs: Vec::new(),
            public: false,
            logged_in: false,
            stopping: false,
            connections: HashMap::new(),
            dials: HashMap::new(),
            fallback: HashMap::new(),
            close_relayed: HashMap::new(),
            close_when_idle: HashSet::new(),
            in_flight: HashMap::new(),
            other_relays: HashSet::new(),
            now,
            outputs: VecDeque::new(),
        };
        reach.dial_rendezvous(now);
        reach.dial_relays(now);
        Ok(reach)
    }

    // ---- what the driver asks ----------------------------------------------------------------

    /// The next thing to do or to know, in order.
    pub fn poll_output(&mut self) -> Option<Output<C, L>> {
        self.outputs.pop_front()
    }

    /// When [`Reach::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        self.fallback.values().for_each(|(at, _)| consider(*at));
        self.close_relayed.values().for_each(|at| consider(*at));
        if !self.listeners.is_empty() {
            consider(self.listeners_deadline);
        }
        if !self.stopping && !self.rendezvous_connected() && self.listeners_ready(self.now) {
            if let Some(at) = self.instances.waiting(self.now) {
                consider(at);
            } else if let Some(at) = self.rendezvous_dialed_at {
                consider(at + RENDEZVOUS_REDIAL);
            }
        }
        if !self.stopping {
            for relay in &self.relays {
                if relay.not_before > self.now {
                    consider(relay.not_before);
                }
            }
        }
        next
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connections.contains_key(peer)
    }

    /// Every peer with an open connection (relay servers and the rendezvous among them).
    pub fn connected_peers(&self) -> impl Iterator<Item = &PeerId> {
        self.connections.keys()
    }

    /// How `peer` is connected and over which address (`None`: not connected, or a relay server
    /// rather than a peer).
    pub fn connection_kind(&self, peer: &PeerId) -> Option<(ConnectionKind, &Multiaddr)> {
        if self.is_relay_server(peer) {
            return None;
        }
        let conns = self.connections.get(peer)?;
        match conns.values().find(|a| !is_circuit(a)) {
            Some(addr) => Some((ConnectionKind::Direct, addr)),
            None => conns.values().next().map(|a| (ConnectionKind::Relayed, a)),
        }
    }

    pub fn rendezvous_peer(&self) -> Option<PeerId> {
        self.rendezvous
    }

    /// The rendezvous instance in use (or being dialed) now.
    pub fn rendezvous_addr(&self) -> &Multiaddr {
        &self.rendezvous_addr
    }

    /// Every rendezvous instance we may use, the preferred first.
    pub fn rendezvous_instances(&self) -> &[Multiaddr] {
        self.instances.all()
    }

    pub fn is_rendezvous(&self, peer: &PeerId) -> bool {
        self.rendezvous.as_ref() == Some(peer)
    }

    /// Whether `conn` is our dial to the rendezvous, still unresolved.
    pub fn is_rendezvous_dial(&self, conn: &C) -> bool {
        self.rendezvous_dial.as_ref() == Some(conn)
    }

    pub fn rendezvous_connected(&self) -> bool {
        self.rendezvous.is_some_and(|peer| self.is_connected(&peer))
    }

    /// Whether `peer` is a relay server (ours, or one we reached a peer through) rather than a
    /// peer to talk to.
    pub fn is_relay_server(&self, peer: &PeerId) -> bool {
        self.relay_index(peer).is_some() || self.other_relays.contains(peer)
    }

    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    // ---- inputs ------------------------------------------------------------------------------

    pub fn handle(&mut self, input: Input<C, L>, now: Instant) {
        self.now = now;
        match input {
            Input::ListenAddr { listener, addr } => self.on_listen_addr(listener, addr, now),
            Input::ListenAddrExpired { addr } => self.on_listen_addr_expired(&addr),
            Input::ListenerClosed {
                listener,
                addrs,
                error,
            } => self.on_listener_closed(listener, &addrs, error.is_some(), now),
            Input::SlotListener { relay, listener } => self.on_slot_listener(relay, listener, now),
            Input::SlotReserved { relay, renewal } => {
                if let Some(i) = self.relay_index(&relay) {
                    self.relays[i].reserved = true;
                }
                if !renewal {
                    self.push_reachability();
                }
            }
            Input::DialStarted {
                purpose,
                peer,
                result,
            } => self.on_dial_started(purpose, peer, result, now),
            Input::Connected {
                peer,
                conn,
                addr,
                dialed,
            } => self.on_connected(peer, conn, addr, dialed.as_ref(), now),
            Input::Disconnected { peer, conn, broke } => {
                self.on_disconnected(peer, conn, broke, now)
            }
            Input::DialFailed { peer, conn } => {
                self.dials.remove(&conn);
                if self.rendezvous_dial == Some(conn) {
                    self.rendezvous_dial = None;
                    self.fail_over(now);
                }
                if let Some(peer) = peer
                    && !self.is_relay_server(&peer)
                {
                    self.on_peer_dial_failed(peer);
                }
            }
            Input::Identified { peer, listen_addrs } => {
                if let Some(i) = self.relay_index(&peer) {
                    self.relays[i].observed = true;
                    self.connect_every_transport(peer, &listen_addrs);
                    self.reserve_slots(now);
                }
            }
            Input::ReachableFromOutside => {
                if !self.public {
                    self.public = true;
                    self.release_slots();
                    self.push_reachability();
                }
            }
            Input::PingFailed { conn } => self.outputs.push_back(Output::Close(conn)),
            Input::LoggedIn(logged_in) => {
                self.logged_in = logged_in;
                if logged_in {
                    self.instances.succeeded();
                }
                self.reserve_slots(now);
            }
            Input::RendezvousRefused => self.fail_over(now),
            Input::DeliveryStarted(peer) => *self.in_flight.entry(peer).or_default() += 1,
            Input::DeliveryEnded(peer) => {
                if let Some(count) = self.in_flight.get_mut(&peer) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        self.in_flight.remove(&peer);
                        if self.close_when_idle.remove(&peer) {
                            self.close_relayed(peer);
                        }
                    }
                }
            }
            Input::DialPeer { peer, addrs } => self.dial_peer(peer, addrs, now),
            Input::Stopping => self.stopping = true,
        }
    }

    /// Deadlines that passed: circuit fallbacks, superseded relayed connections, the listeners'
    /// grace, redialing the rendezvous and relays, slots to ask for again.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let due: Vec<PeerId> = self
            .fallback
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if let Some((_, circuit)) = self.fallback.remove(&peer)
                && !self.is_connected(&peer)
                && !self.dial_circuit(peer, circuit)
            {
                self.on_peer_dial_failed(peer);
            }
        }
        let due: Vec<PeerId> = self
            .close_relayed
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            self.close_relayed.remove(&peer);
            self.close_relayed(peer);
        }
        if !self.listeners.is_empty() && now >= self.listeners_deadline {
            // Some listener never reported an address (no network yet?): go without it.
            self.listeners.clear();
            self.dial_rendezvous(now);
        }
        if self
            .rendezvous_dialed_at
            .is_none_or(|at| now >= at + RENDEZVOUS_REDIAL)
        {
            self.dial_rendezvous(now);
        }
        self.dial_relays(now);
        self.reserve_slots(now);
    }

    // ---- listeners ---------------------------------------------------------------------------

    fn on_listen_addr(&mut self, listener: L, addr: Multiaddr, now: Instant) {
        self.on_listener_ready(listener, Some(&addr), now);
        if is_local_network(&addr) {
            self.outputs
                .push_back(Output::AddExternalAddress(addr.clone()));
        }
        self.listen_addrs.push(addr);
        self.outputs.push_back(Output::ListenAddrsChanged);
    }

    /// An address of ours went away; unless it was loopback or a circuit, that is a network
    /// change: our connections left from it, and our NAT mapping and reachability may differ on
    /// the new network. Start over.
    fn on_listen_addr_expired(&mut self, addr: &Multiaddr) {
        self.listen_addrs.retain(|a| a != addr);
        if is_circuit(addr) {
            return;
        }
        self.outputs
            .push_back(Output::RemoveExternalAddress(addr.clone()));
        if is_loopback(addr) || self.stopping {
            return;
        }
        self.public = false;
        let all: Vec<C> = self
            .connections
            .values()
            .flat_map(|c| c.keys().copied())
            .collect();
        self.outputs.extend(all.into_iter().map(Output::Close));
    }

    /// Listener `listener` reported `address` (`None`: it closed).
    fn on_listener_ready(&mut self, listener: L, address: Option<&Multiaddr>, now: Instant) {
        if address.is_some_and(|a| !is_circuit(a) && !is_loopback(a)) {
            // A new network address, as after a network change: no need to wait for a timer,
            // nor for a dial made from the old network.
            self.rendezvous_dial = None;
            self.dial_rendezvous(now);
        }
        let before = self.listeners.len();
        self.listeners.retain(|(l, listen)| {
            let usable = address.is_none_or(|addr| {
                // TCP dials reuse the listening port only once a non-loopback address of a
                // listener on every interface is known.
                !is_unspecified(listen) || !is_loopback(addr)
            });
            *l != listener || !usable
        });
        if before > 0 && self.listeners.is_empty() {
            self.dial_rendezvous(now);
            self.dial_relays(now);
        }
    }

    fn on_listener_closed(&mut self, listener: L, addrs: &[Multiaddr], broke: bool, now: Instant) {
        self.listen_addrs.retain(|a| !addrs.contains(a));
        self.on_listener_ready(listener, None, now);
        let Some(relay) = self
            .relays
            .iter_mut()
            .find(|r| r.listener == Some(listener))
        else {
            return;
        };
        relay.listener = None;
        relay.reserved = false;
        if broke {
            relay.not_before = now + RELAY_RETRY;
        }
        self.push_reachability();
        self.reserve_slots(now);
    }

    fn listeners_ready(&self, now: Instant) -> bool {
        self.listeners.is_empty() || now >= self.listeners_deadline
    }

    // ---- the rendezvous and relays -----------------------------------------------------------

    fn dial_rendezvous(&mut self, now: Instant) {
        if self.stopping
            || self.rendezvous_connected()
            || self.instances.waiting(now).is_some()
            || !self.listeners_ready(now)
            || self.rendezvous_dialed_at == Some(now)
            || self.rendezvous_dial.is_some()
        {
            return;
        }
        self.rendezvous_dialed_at = Some(now);
        // Once its id is known (from its address or its first connection), libp2p itself keeps a
        // redial from stacking on a dial still under way.
        let peer = self.rendezvous.or_else(|| peer_of(&self.rendezvous_addr));
        self.outputs.push_back(Output::Dial {
            purpose: DialPurpose::Rendezvous,
            peer,
            addrs: vec![self.rendezvous_addr.clone()],
            condition: DialCondition::DisconnectedAndNotDialing,
        });
    }

    /// The instance in use failed (or refused us): move to the next one, if there is another.
    /// What we held at the old one goes: its connections close, its relay slot is given back,
    /// and its peer counts as a relay server (not a peer) until its connections are gone.
    fn fail_over(&mut self, now: Instant) {
        if self.stopping || !self.instances.fail(now) {
            return;
        }
        let Some(next) = self.instances.current().cloned() else {
            return;
        };
        let was_connected = self.rendezvous_connected();
        if let Some(old) = self.rendezvous.take() {
            if self.other_relays.len() < MAX_OTHER_RELAYS {
                self.other_relays.insert(old);
            }
            let conns: Vec<C> = self
                .connections
                .get(&old)
                .into_iter()
                .flat_map(|c| c.keys().copied())
                .collect();
            self.outputs.extend(conns.into_iter().map(Output::Close));
        }
        self.rendezvous = peer_of(&next);
        self.other_relays.retain(|p| Some(*p) != self.rendezvous);
        self.rendezvous_addr = next.clone();
        self.rendezvous_dial = None;
        self.rendezvous_dialed_at = None;
        let relay = &mut self.relays[0];
        relay.addr = next;
        relay.observed = false;
        relay.asking = false;
        let released = relay.listener.take();
        let was_reserved = std::mem::take(&mut relay.reserved);
        if let Some(listener) = released {
            self.outputs.push_back(Output::ReleaseSlot(listener));
        }
        if was_reserved {
            self.push_reachability();
        }
        if was_connected {
            self.logged_in = false;
            self.outputs.push_back(Output::RendezvousLost);
        }
        self.dial_rendezvous(now);
    }

    /// The peer id of relay `i`, once known.
    fn relay_peer(&self, i: usize) -> Option<PeerId> {
        let relay = &self.relays[i];
        if relay.rendezvous {
            self.rendezvous
        } else {
            peer_of(&relay.addr)
        }
    }

    fn relay_index(&self, peer: &PeerId) -> Option<usize> {
        (0..self.relays.len()).find(|&i| self.relay_peer(i).as_ref() == Some(peer))
    }

    /// Dials the extra relays we are not connected to (the rendezvous is dialed on its own).
    fn dial_relays(&mut self, now: Instant) {
        if self.stopping || !self.listeners_ready(now) {
            return;
        }
        for i in 0..self.relays.len() {
            if self.relays[i].rendezvous || now < self.relays[i].not_before {
                continue;
            }
            let Some(peer) = self.relay_peer(i).filter(|p| !self.is_connected(p)) else {
                continue;
            };
            self.relays[i].not_before = now + RELAY_RETRY;
            self.outputs.push_back(Output::Dial {
                purpose: DialPurpose::Relay,
                peer: Some(peer),
                addrs: vec![self.relays[i].addr.clone()],
                condition: DialCondition::DisconnectedAndNotDialing,
            });
        }
    }

    /// Connects to relay `peer` over each transport we listen on (TCP and QUIC), so identify
    /// observes our address on each and DCUtR can punch with either: QUIC's UDP punch gets
    /// through NATs that answer an early TCP SYN with a reset.
    fn connect_every_transport(&mut self, peer: PeerId, their_addrs: &[Multiaddr]) {
        let connected: Vec<Multiaddr> = self
            .connections
            .get(&peer)
            .map(|c| c.values().filter(|a| !is_circuit(a)).cloned().collect())
            .unwrap_or_default();
        let hosts: Vec<Protocol<'_>> = connected.iter().filter_map(|a| a.iter().next()).collect();
        for kind in [Transport::Tcp, Transport::Quic] {
            let listening = self
                .listen_addrs
                .iter()
                .any(|a| Transport::of(a) == Some(kind));
            if !listening || connected.iter().any(|a| Transport::of(a) == Some(kind)) {
                continue;
            }
            let addrs: Vec<Multiaddr> = their_addrs
                .iter()
                .filter(|a| Transport::of(a) == Some(kind))
                .filter(|a| a.iter().next().is_some_and(|host| hosts.contains(&host)))
                .cloned()
                .collect();
            if !addrs.is_empty() {
                self.outputs.push_back(Output::Dial {
                    purpose: DialPurpose::Relay,
                    peer: Some(peer),
                    addrs,
                    condition: DialCondition::Always,
                });
            }
        }
    }

    /// Asks every relay that observed us for a slot, unless we are publicly reachable.
    fn reserve_slots(&mut self, now: Instant) {
        if self.public || self.stopping {
            return;
        }
        for i in 0..self.relays.len() {
            let relay = &self.relays[i];
            if relay.listener.is_some()
                || relay.asking
                || !relay.observed
                || now < relay.not_before
                || (relay.rendezvous && !self.logged_in)
            {
                continue;
            }
            let Some(peer) = self.relay_peer(i).filter(|p| self.is_connected(p)) else {
                continue;
            };
            let circuit = with_peer(&self.relays[i].addr, peer).with(Protocol::P2pCircuit);
            self.relays[i].asking = true;
            self.outputs.push_back(Output::ReserveSlot {
                relay: peer,
                circuit,
            });
        }
    }

    fn on_slot_listener(&mut self, relay: PeerId, listener: Option<L>, now: Instant) {
        let Some(i) = self.relay_index(&relay) else {
            if let Some(listener) = listener {
                self.outputs.push_back(Output::ReleaseSlot(listener));
            }
            return;
        };
        self.relays[i].asking = false;
        match listener {
            Some(listener) if self.public || self.stopping => {
                self.outputs.push_back(Output::ReleaseSlot(listener));
            }
            Some(listener) => self.relays[i].listener = Some(listener),
            None => self.relays[i].not_before = now + RELAY_RETRY,
        }
    }

    /// Gives every slot back (we are publicly reachable).
    fn release_slots(&mut self) {
        for relay in &mut self.relays {
            if let Some(listener) = relay.listener.take() {
                relay.reserved = false;
                self.outputs.push_back(Output::ReleaseSlot(listener));
            }
        }
    }

    fn push_reachability(&mut self) {
        let relays = (0..self.relays.len())
            .filter(|&i| self.relays[i].reserved)
            .filter_map(|i| Some(with_peer(&self.relays[i].addr, self.relay_peer(i)?)))
            .collect();
        self.outputs.push_back(Output::Reachability {
            public: self.public,
            relays,
        });
    }

    // ---- connections -------------------------------------------------------------------------

    fn on_connected(
        &mut self,
        peer: PeerId,
        conn: C,
        addr: Multiaddr,
        dialed: Option<&Multiaddr>,
        now: Instant,
    ) {
        self.dials.remove(&conn);
        if self.rendezvous_dial == Some(conn) {
            self.rendezvous_dial = None;
        }
        let conns = self.connections.entry(peer).or_default();
        conns.insert(conn, addr);
        let first = conns.len() == 1;
        let rendezvous = self.is_rendezvous(&peer)
            || (self.rendezvous.is_none()
                && dialed
                    .is_some_and(|d| without_peers(d) == without_peers(&self.rendezvous_addr)));
        if rendezvous {
            self.rendezvous = Some(peer);
            if first {
                self.outputs.push_back(Output::RendezvousConnected(peer));
            }
            return;
        }
        if self.is_relay_server(&peer) {
            return;
        }
        let (direct, relayed) = self.connection_counts(&peer);
        if direct > 0 {
            self.fallback.remove(&peer);
            if relayed > 0 {
                self.close_relayed
                    .entry(peer)
                    .or_insert(now + RELAYED_GRACE);
            }
        }
        self.outputs.push_back(Output::PeerConnected(peer));
    }

    fn on_disconnected(&mut self, peer: PeerId, conn: C, broke: bool, now: Instant) {
        // Told apart before the table forgets the peer (the rendezvous is a relay server too).
        let plain_peer = !self.is_relay_server(&peer);
        let remaining = match self.connections.get_mut(&peer) {
            Some(conns) => {
                conns.remove(&conn);
                conns.len()
            }
            None => 0,
        };
        let relay = self.relay_index(&peer);
        if remaining > 0 {
            if broke && relay.is_some() {
                // One path to a relay broke: it may have restarted (its QUIC connections would
                // linger until a ping fails). Reconnect from scratch rather than wait.
                let all: Vec<C> = self.connections[&peer].keys().copied().collect();
                self.outputs.extend(all.into_iter().map(Output::Close));
            }
        } else {
            if plain_peer && self.connections.contains_key(&peer) {
                self.outputs.push_back(Output::PeerDisconnected(peer));
            }
            self.connections.remove(&peer);
            self.close_relayed.remove(&peer);
            self.close_when_idle.remove(&peer);
            if let Some(i) = relay {
                self.relays[i].observed = false;
                // Found in review: only the old 250 ms tick used to redial a relay that went
                // away; now its loss does (after the retry pause, which arms a deadline).
                self.dial_relays(now);
            }
        }
        if remaining == 0 && self.is_rendezvous(&peer) {
            self.logged_in = false;
            self.outputs.push_back(Output::RendezvousLost);
            // Back as soon as it is (a restart, a network change), or at the next instance; the
            // redial timer keeps trying after that.
            self.rendezvous_dialed_at = None;
            if peer_of(&self.rendezvous_addr).is_none() {
                // An address without an id (a load balancer's) may lead to another instance
                // next time: learn its id again from the connection.
                self.rendezvous = None;
            }
            if !self.stopping {
                self.fail_over(now);
            }
            self.dial_rendezvous(now);
        } else if !self.is_relay_server(&peer) {
            self.outputs.push_back(Output::ConnectionChanged(peer));
        }
    }

    /// (direct, relayed) open connections to `peer`.
    fn connection_counts(&self, peer: &PeerId) -> (usize, usize) {
        let conns = self.connections.get(peer);
        let relayed = conns.map_or(0, |c| c.values().filter(|a| is_circuit(a)).count());
        let all = conns.map_or(0, |c| c.len());
        (all - relayed, relayed)
    }

    /// Closes the relayed connections to `peer` if a direct one is open, once no delivery of ours
    /// to it is in flight (closing would fail it over to the mailbox).
    fn close_relayed(&mut self, peer: PeerId) {
        if self.connection_counts(&peer).0 == 0 {
            return;
        }
        if self.in_flight.contains_key(&peer) {
            self.close_when_idle.insert(peer);
            return;
        }
        let relayed: Vec<C> = self
            .connections
            .get(&peer)
            .into_iter()
            .flatten()
            .filter(|(_, addr)| is_circuit(addr))
            .map(|(conn, _)| *conn)
            .collect();
        self.outputs.extend(relayed.into_iter().map(Output::Close));
    }

    // ---- reaching a peer ---------------------------------------------------------------------

    /// Dials `peer`: direct addresses first, circuit addresses after [`DIRECT_HEAD_START`] (or at
    /// once when there is nothing direct to try).
    fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) {
        if self.is_connected(&peer) || self.stopping {
            return;
        }
        let (circuit, direct): (Vec<Multiaddr>, Vec<Multiaddr>) =
            addrs.into_iter().partition(is_circuit);
        if direct.is_empty() {
            if !self.dial_circuit(peer, circuit) {
                self.on_peer_dial_failed(peer);
            }
            return;
        }
        self.outputs.push_back(Output::Dial {
            purpose: DialPurpose::Direct,
            peer: Some(peer),
            addrs: direct,
            condition: DialCondition::DisconnectedAndNotDialing,
        });
        if circuit.is_empty() {
            return;
        }
        if self.fallback.len() >= MAX_FALLBACKS && !self.fallback.contains_key(&peer) {
            self.dial_circuit(peer, circuit);
        } else {
            self.fallback
                .entry(peer)
                .or_insert((now + DIRECT_HEAD_START, circuit));
        }
    }

    /// Dials `peer` through relays, alongside any direct dial still under way; false when there
    /// is no circuit to dial.
    fn dial_circuit(&mut self, peer: PeerId, circuit: Vec<Multiaddr>) -> bool {
        if circuit.is_empty() {
            return false;
        }
        for relay in circuit.iter().filter_map(relay_of) {
            if self.relay_index(&relay).is_none() && self.other_relays.len() < MAX_OTHER_RELAYS {
                self.other_relays.insert(relay);
            }
        }
        self.outputs.push_back(Output::Dial {
            purpose: DialPurpose::Circuit,
            peer: Some(peer),
            addrs: circuit,
            condition: DialCondition::Disconnected,
        });
        true
    }

    fn on_dial_started(
        &mut self,
        purpose: DialPurpose,
        peer: Option<PeerId>,
        result: Result<C, DialRefusal>,
        now: Instant,
    ) {
        if let (DialPurpose::Rendezvous, Ok(conn)) = (purpose, &result) {
            self.rendezvous_dial = Some(*conn);
        }
        let Some(peer) = peer else { return };
        match (purpose, result) {
            (DialPurpose::Direct | DialPurpose::Circuit, Ok(conn)) => {
                self.dials.insert(conn, peer);
            }
            // A dial is under way already (perhaps not ours, to addresses that will not answer):
            // the circuit still follows after the head start.
            (DialPurpose::Direct, Err(DialRefusal::AlreadyDialing)) => {}
            (DialPurpose::Direct | DialPurpose::Circuit, Err(_)) => self.on_peer_dial_failed(peer),
            (DialPurpose::Relay, Err(_)) => {
                if let Some(i) = self.relay_index(&peer) {
                    self.relays[i].not_before = now + RELAY_RETRY;
                }
            }
            (DialPurpose::Rendezvous, Err(DialRefusal::Failed)) => self.fail_over(now),
            (DialPurpose::Relay | DialPurpose::Rendezvous, _) => {}
        }
    }

    /// A dial to `peer` failed: try its circuit now if it was waiting for the head start; unless
    /// another attempt is under way, `peer` is unreachable for now.
    fn on_peer_dial_failed(&mut self, peer: PeerId) {
        if let Some((_, circuit)) = self.fallback.remove(&peer)
            && self.dial_circuit(peer, circuit)
        {
            return;
        }
        let dialing = self.dials.values().any(|p| *p == peer)
            || self.outputs.iter().any(|o| {
                matches!(o, Output::Dial { purpose: DialPurpose::Direct | DialPurpose::Circuit, peer: Some(p), .. } if *p == peer)
            });
        if !dialing && !self.is_connected(&peer) {
            self.outputs.push_back(Output::Unreachable(peer));
        }
    }
}

#[cfg(test)]
#[path = "reach_tests.rs"]
mod tests;
