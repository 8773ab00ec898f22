//! Direct messages on their way to the recipient: which path each sealed message takes, and when.
//! (Before that, [`pipeline`] gathers what a message needs to be sealed: the recipient's key,
//! name and session.)
//!
//! A message is sealed and stored by the node, then handed to [`Delivery`] with its [`Route`]
//! (whom it is for). The [`Outbox`] decides when each message is tried; for every attempt the
//! planner picks the path: the open connection to the peer; else a dial at addresses learned
//! earlier; else a discovery lookup at the rendezvous, then a dial; else (not logged in, nothing
//! known, or every dial failed) the attempt fails at once and the outbox backs off, asking on the
//! first failure for one deposit in the recipient's rendezvous mailbox. The recipient's `Stored`
//! answer, or a receipt by any path, delivers the message.
//!
//! The planner is generic over the driver's request handle `R` (libp2p's `OutboundRequestId` in
//! the daemon, a plain number in a simulation). Time is wall-clock milliseconds, as the outbox's
//! persisted deadlines are.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use rand_core::RngCore;

use crate::UserName;
use crate::delivery::{Attempt, DeliveryStatus, Outbox, OutboxError};
use crate::wire::MessageId;

/// Peers whose addresses (from discovery or mDNS) are remembered; past that, the oldest go.
pub const MAX_KNOWN_PEERS: usize = 4096;
/// Peers we keep a connection to for other reasons (room members); past that, no more are added.
pub const MAX_WANTED_PEERS: usize = 4096;

/// Whom a message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub peer: PeerId,
    /// The recipient's name: the mailbox is addressed by it.
    pub to: UserName,
    /// Shown in history (text), as opposed to a control message (receipt, key, membership): only
    /// these have a status to show.
    pub in_history: bool,
}

/// How the recipient answered a direct delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It stored the envelope with this id durably.
    Stored(MessageId),
    /// It refused it (the reason is logged by the driver).
    Rejected,
    /// No answer: the stream failed or timed out.
    Failed,
}

/// What happened that the planner must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<R> {
    /// A message [`Delivery::hold`] took is durable now, with the state that sealed it.
    Durable(MessageId),
    /// We are logged in at the rendezvous (mailbox and discovery work), or no longer.
    LoggedIn(bool),
    /// A connection to `peer` is up.
    Connected(PeerId),
    /// The last connection to `peer` closed.
    Disconnected(PeerId),
    /// Every dial to `peer` failed.
    Unreachable(PeerId),
    /// Discovery (or mDNS) found addresses for `peer`.
    Discovered { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Discovery has no record for `peer`.
    DiscoveryFailed(PeerId),
    /// Keep a connection to `peer` (a room member): dial it once its addresses are found, and
    /// look it up now unless connected (while logged in: the next login's wants look it up).
    Want(PeerId),
    /// The [`Output::Deliver`] for `id` went out as `request`.
    DeliverySent { id: MessageId, request: R },
    /// `request`, a delivery, ended.
    DeliveryAnswered { request: R, answer: Answer },
    /// The rendezvous's mailbox holds `id`.
    Deposited(MessageId),
    /// The deposit of `id` was refused or failed.
    DepositFailed(MessageId),
    /// `from` confirmed `id` (a receipt, by any path); only the message's recipient can.
    Receipt { from: PeerId, id: MessageId },
    /// The envelope handed out as [`Output::Deliver`] or [`Output::Deposit`] could not be read
    /// from the store: `lost` if it is gone or undecodable (the message fails: nothing is left
    /// to send), otherwise the read failed this time (the attempt failed; it is tried again).
    Unsendable { id: MessageId, lost: bool },
    /// `name` came online: try its messages now rather than at the backoff.
    CameOnline(UserName),
    /// The key behind `peer` was replaced (its user's name now stands for another key): what
    /// was sealed for it fails, since the new key cannot read it.
    KeyReplaced(PeerId),
}

/// What the driver is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send the stored envelope `id` to `peer` over the open connection, then report
    /// [`Input::DeliverySent`].
    Deliver { peer: PeerId, id: MessageId },
    /// Dial `peer` at these addresses (through the reach planner).
    Dial { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Look `peer`'s addresses up at the rendezvous.
    Discover(PeerId),
    /// Deposit the stored envelope `id` in `to`'s mailbox, then report [`Input::Deposited`] or
    /// [`Input::DepositFailed`].
    Deposit { id: MessageId, to: UserName },
    /// A delivery on the connection to `peer` ended (the reach planner keeps a relayed
    /// connection while one is in flight).
    DeliveryEnded(PeerId),
    /// `id`'s status changed; `in_history` says whether it is shown.
    Status {
        id: MessageId,
        status: DeliveryStatus,
        in_history: bool,
    },
    /// The outbox is done with `id` (delivered or failed): its stored envelope can go.
    Forget(MessageId),
    /// The outbox changed: persist [`Delivery::outbox`].
    SaveOutbox,
}

/// The direct-delivery planner (see the module documentation).
#[derive(Debug)]
pub struct Delivery<R> {
    local: PeerId,
    outbox: Outbox,
    routes: HashMap<MessageId, Route>,
    logged_in: bool,
    connected: HashSet<PeerId>,
    /// Addresses learned through discovery or mDNS, oldest first for eviction.
    known_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    known_order: VecDeque<PeerId>,
    wanted: HashSet<PeerId>,
    /// Attempts waiting for a connection to their peer.
    awaiting_connection: HashMap<PeerId, Vec<MessageId>>,
    /// Peers being looked up for an attempt.
    awaiting_discovery: HashSet<PeerId>,
    delivering: HashMap<R, (MessageId, PeerId)>,
    outputs: VecDeque<Output>,
}

impl<R: Clone + Eq + Hash> Delivery<R> {
    /// A planner for the node `local`, going on from a persisted outbox and the messages stored
    /// for delivery (every one is due again: see [`Outbox`]). A stored message the outbox does
    /// not know (written just before a crash) is taken in; one it knows that is not stored any
    /// more is dropped, as there is nothing to send.
    pub fn new(
        local: PeerId,
        mut outbox: Outbox,
        stored: impl IntoIterator<Item = (MessageId, Route)>,
        now: u64,
    ) -> Self {
        let mut routes = HashMap::new();
        for (id, route) in stored {
            // A full outbox (its capacity lowered) leaves it stored, for the next start.
            if outbox.status(&id).is_some() || outbox.insert(id, now).is_ok() {
                routes.insert(id, route);
            }
        }
        let unsendable: Vec<MessageId> =
            outbox.ids().filter(|id| !routes.contains_key(id)).collect();
        for id in unsendable {
            outbox.remove(id);
        }
        Self {
            local,
            outbox,
            routes,
            logged_in: false,
            connected: HashSet::new(),
            known_addrs: HashMap::new(),
            known_order: VecDeque::new(),
            wanted: HashSet::new(),
            awaiting_connection: HashMap::new(),
            awaiting_discovery: HashSet::new(),
            delivering: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// Takes a message that is being stored: it is not tried before [`Input::Durable`]; the
    /// caller calls [`Delivery::cancel`] if that write fails. The outbox (written whole) need
    /// not go in the same write as the message: a stored message the persisted outbox does not
    /// know is taken in at the next start ([`Delivery::new`]), due at once, and the outbox is
    /// written at the next [`Output::SaveOutbox`].
    pub fn hold(&mut self, id: MessageId, route: Route, now: u64) -> Result<(), OutboxError> {
        self.outbox.insert_held(id, now)?;
        self.routes.insert(id, route);
        Ok(())
    }

    /// Forgets a held message whose write failed.
    pub fn cancel(&mut self, id: MessageId) {
        self.routes.remove(&id);
        self.outbox.remove(id);
    }

    pub fn handle(&mut self, input: Input<R>, now: u64, rng: &mut impl RngCore) {
        match input {
            Input::Durable(id) => {
                self.outbox.release(id);
            }
            Input::LoggedIn(logged_in) => {
                let back = logged_in && !self.logged_in;
                self.logged_in = logged_in;
                if back {
                    // What failed while we were logged out goes now (discovery, the mailbox),
                    // not at its backoff; what the mailbox holds already need not.
                    let outbox = &self.outbox;
                    let not_queued: Vec<MessageId> = self
                        .routes
                        .keys()
                        .filter(|id| outbox.status(id) != Some(DeliveryStatus::Queued))
                        .copied()
                        .collect();
                    for id in not_queued {
                        self.outbox.retry_now(id, now);
                    }
                }
            }
            Input::Connected(peer) => self.on_connected(peer, now),
            Input::Disconnected(peer) => {
                self.connected.remove(&peer);
            }
            Input::Unreachable(peer) => {
                // The addresses we had did not work: look the peer up afresh next time.
                self.forget_addrs(&peer);
                self.awaiting_discovery.remove(&peer);
                self.fail_awaiting(peer, now, rng);
            }
            Input::Discovered { peer, addrs } => self.on_discovered(peer, addrs),
            Input::DiscoveryFailed(peer) => {
                if self.awaiting_discovery.remove(&peer) {
                    self.fail_awaiting(peer, now, rng);
                }
            }
            Input::Want(peer) => {
                if peer == self.local || self.wanted.len() >= MAX_WANTED_PEERS {
                    return;
                }
                self.wanted.insert(peer);
                if !self.connected.contains(&peer)
                    && self.logged_in
                    && self.awaiting_discovery.insert(peer)
                {
                    self.outputs.push_back(Output::Discover(peer));
                }
            }
            Input::DeliverySent { id, request } => {
                if let Some(route) = self.routes.get(&id) {
                    self.delivering.insert(request, (id, route.peer));
                }
            }
            Input::DeliveryAnswered { request, answer } => {
                let Some((id, peer)) = self.delivering.remove(&request) else {
                    return;
                };
                self.outputs.push_back(Output::DeliveryEnded(peer));
                match answer {
                    Answer::Stored(stored) if stored == id => {
                        self.outbox.handle_stored(id);
                    }
                    _ => self.attempt_failed(id, now, rng),
                }
            }
            Input::Deposited(id) => {
                self.outbox.handle_queued(id);
            }
            Input::DepositFailed(id) => {
                self.outbox.handle_deposit_failed(id);
            }
            Input::Receipt { from, id } => {
                // Anyone with a session could otherwise mark our messages delivered.
                if self.routes.get(&id).is_some_and(|route| route.peer == from) {
                    self.outbox.handle_receipt(id);
                }
            }
            Input::Unsendable { id, lost: true } => {
                self.outbox
                    .give_up(id, crate::delivery::FailureReason::Lost);
            }
            Input::Unsendable { id, lost: false } => {
                // A deposit asked for is asked again at the next failure.
                self.outbox.handle_deposit_failed(id);
                self.attempt_failed(id, now, rng);
            }
            Input::CameOnline(name) => self.retry_now(now, |route| route.to == name),
            Input::KeyReplaced(peer) => {
                let sealed_for: Vec<MessageId> = (self.routes.iter())
                    .filter(|(_, route)| route.peer == peer)
                    .map(|(id, _)| *id)
                    .collect();
                for id in sealed_for {
                    self.outbox
                        .give_up(id, crate::delivery::FailureReason::KeyChanged);
                }
            }
        }
        self.drive(now, rng);
    }

    /// Tries whatever is due (call at [`Delivery::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: u64, rng: &mut impl RngCore) {
        self.drive(now, rng);
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the next attempt is due (wall-clock ms), if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.outbox.poll_timeout()
    }

    /// Whether `request` is one of our deliveries (the driver's other requests go elsewhere).
    pub fn is_delivery(&self, request: &R) -> bool {
        self.delivering.contains_key(request)
    }

    /// The outbox, to persist after [`Output::SaveOutbox`].
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Messages not yet confirmed.
    pub fn len(&self) -> usize {
        self.outbox.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    /// Whether a message for `peer` waits to be tried or is in flight (for tests: the driver
    /// needs no such question).
    #[cfg(test)]
    fn has_pending_for(&self, peer: &PeerId) -> bool {
        self.routes.values().any(|route| &route.peer == peer)
    }

    fn on_connected(&mut self, peer: PeerId, now: u64) {
        self.connected.insert(peer);
        self.awaiting_discovery.remove(&peer);
        for id in self.awaiting_connection.remove(&peer).unwrap_or_default() {
            self.deliver(id);
        }
        // Whatever else waits for this peer is tried now rather than at its backoff.
        self.retry_now(now, |route| route.peer == peer);
    }

    /// The messages whose route matches are due now rather than at their backoff.
    fn retry_now(&mut self, now: u64, matches: impl Fn(&Route) -> bool) {
        for (id, route) in &self.routes {
            if matches(route) {
                self.outbox.retry_now(*id, now);
            }
        }
    }

    fn on_discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local || addrs.is_empty() {
            return;
        }
        if self.known_addrs.insert(peer, addrs.clone()).is_none() {
            self.known_order.push_back(peer);
            while self.known_addrs.len() > MAX_KNOWN_PEERS {
                let Some(oldest) = self.known_order.pop_front() else {
                    break;
                };
                self.known_addrs.remove(&oldest);
            }
        }
        let waiting = self.awaiting_discovery.remove(&peer);
        if (waiting || self.wanted.contains(&peer)) && !self.connected.contains(&peer) {
            self.outputs.push_back(Output::Dial { peer, addrs });
        }
    }

    fn forget_addrs(&mut self, peer: &PeerId) {
        if self.known_addrs.remove(peer).is_some() {
            self.known_order.retain(|p| p != peer);
        }
    }

    /// Starts every attempt that is due, then reports what changed.
    fn drive(&mut self, now: u64, rng: &mut impl RngCore) {
        for id in self.outbox.poll_due(now) {
            self.attempt(id, now, rng);
        }
        self.settle();
    }

    /// One attempt: over the open connection, else by dialing what we know, else by discovery;
    /// failing at once when none is possible.
    fn attempt(&mut self, id: MessageId, now: u64, rng: &mut impl RngCore) {
        let Some(peer) = self.routes.get(&id).map(|route| route.peer) else {
            // Every message it hands out has a route (see `new` and `hold`).
            self.outbox.remove(id);
            return;
        };
        if self.connected.contains(&peer) {
            return self.deliver(id);
        }
        if let Some(addrs) = self.known_addrs.get(&peer) {
            self.outputs.push_back(Output::Dial {
                peer,
                addrs: addrs.clone(),
            });
        } else if !self.logged_in {
            return self.attempt_failed(id, now, rng);
        } else if self.awaiting_discovery.insert(peer) {
            self.outputs.push_back(Output::Discover(peer));
        }
        let waiting = self.awaiting_connection.entry(peer).or_default();
        if !waiting.contains(&id) {
            waiting.push(id);
        }
    }

    fn deliver(&mut self, id: MessageId) {
        if let Some(route) = self.routes.get(&id) {
            let peer = route.peer;
            self.outputs.push_back(Output::Deliver { peer, id });
        }
    }

    /// What waited for a connection to `peer` has failed this attempt.
    fn fail_awaiting(&mut self, peer: PeerId, now: u64, rng: &mut impl RngCore) {
        for id in self.awaiting_connection.remove(&peer).unwrap_or_default() {
            self.attempt_failed(id, now, rng);
        }
    }

    /// A direct attempt failed: the outbox backs off, and asks for a deposit on the first failure.
    fn attempt_failed(&mut self, id: MessageId, now: u64, rng: &mut impl RngCore) {
        if let Attempt::DepositInMailbox { .. } = self.outbox.handle_failed(id, now, rng) {
            match self.routes.get(&id) {
                Some(route) if self.logged_in => self.outputs.push_back(Output::Deposit {
                    id,
                    to: route.to.clone(),
                }),
                _ => {
                    self.outbox.handle_deposit_failed(id);
                }
            }
        }
    }

    /// Turns the outbox's status changes into outputs.
    fn settle(&mut self) {
        let mut changed = false;
        while let Some(event) = self.outbox.poll_event() {
            changed = true;
            let in_history = self
                .routes
                .get(&event.id)
                .is_some_and(|route| route.in_history);
            if event.status.is_final() {
                self.routes.remove(&event.id);
                self.outputs.push_back(Output::Forget(event.id));
            }
            if event.status != DeliveryStatus::Sending {
                self.outputs.push_back(Output::Status {
                    id: event.id,
                    status: event.status,
                    in_history,
                });
            }
        }
        if changed {
            self.outputs.push_back(Output::SaveOutbox);
        }
    }
}

pub mod keyed;
pub mod mail;
pub mod pairwise;
pub mod pipeline;

#[cfg(test)]
#[path = "direct_tests.rs"]
mod tests;
