//! What the reach planner takes in and hands out.

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

/// A `--relay` address that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReachError {
    #[error("--relay {0}: the address must end in /p2p/<the relay's peer id>")]
    RelayWithoutPeerId(Multiaddr),
    #[error("--relay {0}: give the relay's own address, not a circuit through it")]
    RelayIsCircuit(Multiaddr),
    #[error("no rendezvous address: give at least one --rendezvous")]
    NoRendezvous,
}

/// How a peer is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// At least one connection does not go through a relay.
    Direct,
    /// Every connection goes through a relay.
    Relayed,
}

impl ConnectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
        }
    }
}

/// What a dial is for; the driver reports its start back under the same purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialPurpose {
    Rendezvous,
    /// One of our relays (also: a second transport to it).
    Relay,
    /// A peer's direct addresses.
    Direct,
    /// A peer's circuit addresses.
    Circuit,
}

/// When a dial goes ahead (libp2p's `PeerCondition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialCondition {
    Always,
    Disconnected,
    DisconnectedAndNotDialing,
}

/// Why a dial did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialRefusal {
    /// Another dial to the peer is under way (perhaps not ours).
    AlreadyDialing,
    /// Anything else (no usable address, a local error).
    Failed,
}

/// What the driver tells the planner.
#[derive(Debug, Clone)]
pub enum Input<C, L> {
    /// A listener reported an address.
    ListenAddr {
        listener: L,
        addr: Multiaddr,
    },
    /// An address of ours went away.
    ListenAddrExpired {
        addr: Multiaddr,
    },
    /// A listener closed (`error`: not on our request).
    ListenerClosed {
        listener: L,
        addrs: Vec<Multiaddr>,
        error: Option<String>,
    },
    /// The outcome of [`Output::ReserveSlot`]: the listener asking for the slot, or `None`
    /// if the listen failed (the driver says why; it is tried again a while later).
    SlotListener {
        relay: PeerId,
        listener: Option<L>,
    },
    /// A relay granted (or renewed) our slot.
    SlotReserved {
        relay: PeerId,
        renewal: bool,
    },
    /// The outcome of [`Output::Dial`]: the connection it will report under, or why not.
    DialStarted {
        purpose: DialPurpose,
        peer: Option<PeerId>,
        result: Result<C, DialRefusal>,
    },
    /// A connection opened. `addr` describes it (for one that came in through a relay: the
    /// circuit); `dialed` is the address we dialed, if we did.
    Connected {
        peer: PeerId,
        conn: C,
        addr: Multiaddr,
        dialed: Option<Multiaddr>,
    },
    /// A connection closed (`broke`: with an IO error).
    Disconnected {
        peer: PeerId,
        conn: C,
        broke: bool,
    },
    /// A dial failed.
    DialFailed {
        peer: Option<PeerId>,
        conn: C,
    },
    /// Identify told us the addresses `peer` listens on (and the one it observes us at).
    Identified {
        peer: PeerId,
        listen_addrs: Vec<Multiaddr>,
    },
    /// One of our addresses was confirmed reachable from outside.
    ReachableFromOutside,
    /// A ping on `conn` failed.
    PingFailed {
        conn: C,
    },
    /// Whether we are logged in at the rendezvous.
    LoggedIn(bool),
    /// The rendezvous in use refused our login: with several instances, move to the next.
    RendezvousRefused,
    /// A delivery of ours to `peer` started / ended (relayed connections are not closed under
    /// one).
    DeliveryStarted(PeerId),
    DeliveryEnded(PeerId),
    /// Connect to `peer` at these addresses.
    DialPeer {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// The node is shutting down: no more dials or slots.
    Stopping,
}

/// What the planner asks of the driver, and tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<C, L> {
    /// Dial (`peer: None`: a rendezvous address without a peer id). Report the outcome with
    /// [`Input::DialStarted`].
    Dial {
        purpose: DialPurpose,
        peer: Option<PeerId>,
        addrs: Vec<Multiaddr>,
        condition: DialCondition,
    },
    /// Listen on `circuit` to hold a slot at `relay`; report with [`Input::SlotListener`].
    ReserveSlot {
        relay: PeerId,
        circuit: Multiaddr,
    },
    /// Give a slot back: remove its listener.
    ReleaseSlot(L),
    Close(C),
    AddExternalAddress(Multiaddr),
    RemoveExternalAddress(Multiaddr),
    /// Our listen addresses changed (our discovery record should say so).
    ListenAddrsChanged,
    /// The first connection to the rendezvous opened: log in.
    RendezvousConnected(PeerId),
    /// The last connection to the rendezvous closed.
    RendezvousLost,
    /// A connection to a peer (not a relay server) opened; maybe not its first.
    PeerConnected(PeerId),
    /// The last connection to a peer (not a relay server) closed.
    PeerDisconnected(PeerId),
    /// A peer's connections changed: how it is connected may have.
    ConnectionChanged(PeerId),
    /// Every attempt to reach `peer` failed and it is not connected.
    Unreachable(PeerId),
    /// Reachability changed: publicly reachable, and the relays holding a slot for us.
    Reachability {
        public: bool,
        relays: Vec<Multiaddr>,
    },
}
