//! The daemon: one libp2p swarm and one actor loop that owns all node state.
//!
//! Start: open the identity and the store, bind the control socket, listen, dial the rendezvous.
//! On connection: log in (registering the name the first time), publish prekeys, subscribe to the
//! presence of contacts, register for discovery, reserve a relay slot, fetch held mail. Then the
//! loop reacts to swarm events, control-socket calls and timers; `direct` and `rooms` hold the
//! message paths, `calls` the control-socket methods.

mod behaviour;
pub(crate) mod calls;
mod client_ids;
mod direct;
mod durable;
mod reach;
pub(crate) mod rooms;
mod sessions;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{ConnectionId, SwarmEvent, dial_opts::DialOpts};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, mdns, rendezvous};
use palaver_protocol::crypto::x3dh::PrekeySecrets;
use palaver_protocol::wire::{
    PresenceRecord, PresenceState, RefusalReason, RendezvousRequest, RendezvousResponse, ServerPush,
};
use palaver_protocol::{Identity, MessageId, UserName, VerifyingKey};
use rand_core::OsRng;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::home::Home;
use crate::rpc::{self, Call, RpcError};
use crate::store::{StateBatch, StateKey, Store};
use behaviour::{Behaviour, BehaviourEvent};

/// How the daemon is started.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub home: PathBuf,
    pub rendezvous: Multiaddr,
    pub listen: Vec<Multiaddr>,
    pub registration_token: Option<String>,
    pub passphrase: Option<String>,
    /// Presence heartbeat period (the server times a user out after missing a few).
    pub heartbeat: Duration,
    /// Listen only through the rendezvous relay (no direct listeners): for NAT tests.
    pub relay_only_transport: bool,
    /// Extra relays (`/…/p2p/<id>`), besides the rendezvous, to hold a slot at when behind a NAT.
    pub relays: Vec<Multiaddr>,
}

impl DaemonConfig {
    pub fn new(home: PathBuf, rendezvous: Multiaddr) -> Self {
        Self {
            home,
            rendezvous,
            listen: Vec::new(),
            registration_token: None,
            passphrase: None,
            heartbeat: Duration::from_secs(10),
            relay_only_transport: false,
            relays: Vec::new(),
        }
    }
}

/// A running daemon (for in-process use: the demo and tests).
#[derive(Debug)]
pub struct DaemonHandle {
    pub socket: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl DaemonHandle {
    /// Stops the daemon and waits for it to flush and exit.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.context("daemon task")?
    }
}

/// Starts a daemon on this runtime; returns once its control socket accepts calls.
pub async fn start(config: DaemonConfig) -> anyhow::Result<DaemonHandle> {
    let socket = config.home.join("palaver.sock");
    let (tx, rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(run_until(
        config,
        async {
            let _ = rx.await;
        },
        Some(ready_tx),
    ));
    match ready_rx.await {
        Ok(()) => Ok(DaemonHandle {
            socket,
            shutdown: Some(tx),
            task,
        }),
        Err(_) => Err(task
            .await
            .context("daemon task")?
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("daemon exited"))),
    }
}

/// Runs the daemon until `shutdown` resolves (or a `shutdown` call arrives).
pub async fn run(config: DaemonConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_until(config, shutdown, None).await
}

async fn run_until(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()>,
    ready: Option<oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let home = Home::new(&config.home);
    let (identity, name) = home.open(config.passphrase.as_deref())?;
    // Held until the daemon exits; a reader of the store that is still reading is waited for.
    let _claim = crate::access::DaemonClaim::acquire(&config.home).await?;
    let store = Store::open(&config.home.join("store"))?;
    let (calls_tx, calls) = mpsc::channel(64);
    let (events, _) = broadcast::channel(1024);
    let socket = config.home.join("palaver.sock");
    let listener = rpc::bind(&socket)?;
    let server = tokio::spawn(rpc::serve(listener, calls_tx, events.clone()));
    let mut node = Node::new(identity, name, store, &config, events)?;
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    // Several daemons may share a process (the demo, the load generator): say whose line it is.
    let span = tracing::info_span!("node", user = %node.name);
    let result = tracing::Instrument::instrument(node.run(calls, shutdown), span).await;
    // Flushed before the socket goes: a client sees the daemon gone only once its store is.
    let flushed = node.flush_before_exit();
    server.abort();
    let _ = std::fs::remove_file(&socket);
    result
        .and(flushed.map_err(|err| anyhow::anyhow!("cannot flush the store on the way out: {err}")))
}

/// What to do with a rendezvous response when it arrives.
#[derive(Debug)]
enum Pending {
    Login,
    Register,
    Publish,
    Heartbeat,
    Subscribe,
    /// Name lookups, then continue with the job.
    Lookup {
        names: Vec<UserName>,
        then: Option<direct::Job>,
    },
    WhoIs {
        then: Option<direct::Job>,
    },
    Prekeys {
        key: [u8; 32],
        then: direct::Job,
    },
    Deposit {
        id: MessageId,
    },
    FetchMail,
    AckMail,
    Presence {
        names: Vec<UserName>,
        /// Named by the caller (an unknown one is an error), not the contact list.
        explicit: bool,
        reply: oneshot::Sender<Result<Value, RpcError>>,
    },
    LookupThenInvite {
        room: palaver_protocol::RoomName,
        user: UserName,
        reply: oneshot::Sender<Result<Value, RpcError>>,
    },
    LookupThenVerify {
        name: UserName,
        reply: oneshot::Sender<Result<Value, RpcError>>,
    },
}

#[derive(Debug, Default)]
struct RendezvousLink {
    peer: Option<PeerId>,
    connected: bool,
    logged_in: bool,
    registered_once: bool,
    /// Why the rendezvous last refused our login or registration, as it said it (`status` shows
    /// it); cleared by the next successful login.
    refused: Option<palaver_protocol::wire::Refusal>,
    /// Requests waiting for one in flight to finish ([`RENDEZVOUS_IN_FLIGHT`]), in order.
    queued: std::collections::VecDeque<(RendezvousRequest, Pending)>,
}

/// Requests in flight to the rendezvous at once. The server serves 16 streams per connection and
/// drops any more, so a burst (joining a room of a dozen opens as many sessions) waits its turn.
const RENDEZVOUS_IN_FLIGHT: usize = 8;
/// Requests that may wait behind those; past that, new ones fail at once.
const RENDEZVOUS_QUEUED: usize = 1024;

/// Something finished outside the actor that the actor must act on.
#[derive(Debug)]
enum Internal {
    /// The group commit's flush is done (see [`durable`]).
    Flushed(Result<(), String>),
    /// A send keyed by the client has its answer (see [`client_ids`]).
    SendAnswered {
        client_id: String,
        result: Result<Value, RpcError>,
    },
}

pub(crate) struct Node {
    identity: Identity,
    name: UserName,
    store: Store,
    swarm: Swarm<Behaviour>,
    rendezvous_addr: Multiaddr,
    registration_token: Option<String>,
    heartbeat: Duration,
    link: RendezvousLink,
    pending: HashMap<OutboundRequestId, Pending>,
    /// Outstanding direct deliveries.
    delivering: HashMap<OutboundRequestId, MessageId>,
    /// When each pending direct message is tried, and when it goes to the mailbox.
    outbox: palaver_protocol::delivery::Outbox,
    /// Addresses learned through discovery or mDNS.
    known_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// The remote address of each open connection, per peer.
    peer_addrs: HashMap<PeerId, HashMap<ConnectionId, Multiaddr>>,
    /// Deliveries waiting for a connection to their peer.
    awaiting_connection: HashMap<PeerId, Vec<MessageId>>,
    /// Deliveries waiting for discovery of their peer's addresses.
    awaiting_discovery: HashMap<PeerId, Vec<MessageId>>,
    /// Room peers we want a connection to (for gossip).
    wanted_peers: HashSet<PeerId>,
    presence: HashMap<String, PresenceRecord>,
    prekeys: PrekeySecrets,
    listen_addrs: Vec<Multiaddr>,
    events: broadcast::Sender<Value>,
    internal_tx: mpsc::Sender<Internal>,
    internal: Option<mpsc::Receiver<Internal>>,
    commit: durable::GroupCommit<durable::AfterFlush>,
    rooms: rooms::Rooms,
    reach: reach::Reach,
    /// Message events from senders whose name we are asking the rendezvous for (bounded).
    unnamed_events: HashMap<[u8; 32], Vec<Value>>,
    /// Messages to users who have logged in but not yet published prekeys, asked again at the
    /// next retry tick (bounded: see [`direct::PREKEY_WAIT_MS`]).
    waiting_for_prekeys: Vec<direct::Job>,
    stopping: bool,
    /// Why the daemon stops on its own (a store that cannot be made durable): it then exits
    /// non-zero, so a supervisor restarts it.
    fatal: Option<String>,
    /// Sends keyed by the client that are under way (bounded: see [`client_ids`]).
    sends_in_flight: HashMap<String, client_ids::InFlight>,
}

const PREKEYS_META: &str = "prekeys";
const OUTBOX_META: &str = "outbox";
const ONE_TIME_PREKEYS: usize = 100;
/// Top up when the server says fewer than this remain.
const PREKEYS_LOW: u32 = 20;
const FETCH_MAIL_BATCH: u16 = 64;
/// How long a signed prekey is used before it is replaced.
const SIGNED_PREKEY_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;

impl Node {
    fn new(
        identity: Identity,
        name: UserName,
        store: Store,
        config: &DaemonConfig,
        events: broadcast::Sender<Value>,
    ) -> anyhow::Result<Self> {
        let use_mdns = config.listen.iter().any(|addr| !is_loopback(addr));
        let mut swarm = behaviour::build_swarm(&identity, use_mdns)?;
        let listen = if config.relay_only_transport {
            Vec::new()
        } else if config.listen.is_empty() {
            vec![
                "/ip4/0.0.0.0/tcp/0".parse()?,
                "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
            ]
        } else {
            config.listen.clone()
        };
        let mut listeners = Vec::new();
        for addr in listen {
            let id = swarm
                .listen_on(addr.clone())
                .with_context(|| format!("listening on {addr}"))?;
            listeners.push((id, addr));
        }
        let prekeys = match store.get::<PrekeySecrets>(StateKey::Meta(PREKEYS_META))? {
            Some(prekeys) => prekeys,
            None => {
                let prekeys =
                    PrekeySecrets::generate(&mut OsRng, identity.signing_key(), ONE_TIME_PREKEYS);
                store.apply(StateBatch::default().put(StateKey::Meta(PREKEYS_META), &prekeys))?;
                prekeys
            }
        };
        let rooms = rooms::Rooms::load(&store)?;
        // Deserializing counts as a restart: every pending message is due again.
        let outbox = store.get(StateKey::Meta(OUTBOX_META))?.unwrap_or_default();
        let reach = reach::Reach::new(&config.rendezvous, &config.relays, listeners)?;
        let (internal_tx, internal) = mpsc::channel(256);
        let mut node = Self {
            identity,
            name,
            store,
            swarm,
            rendezvous_addr: config.rendezvous.clone(),
            registration_token: config.registration_token.clone(),
            heartbeat: config.heartbeat,
            link: RendezvousLink::default(),
            pending: HashMap::new(),
            delivering: HashMap::new(),
            outbox,
            known_addrs: HashMap::new(),
            peer_addrs: HashMap::new(),
            awaiting_connection: HashMap::new(),
            awaiting_discovery: HashMap::new(),
            wanted_peers: HashSet::new(),
            presence: HashMap::new(),
            prekeys,
            listen_addrs: Vec::new(),
            events,
            internal_tx,
            internal: Some(internal),
            commit: durable::GroupCommit::default(),
            rooms,
            reach,
            unnamed_events: HashMap::new(),
            waiting_for_prekeys: Vec::new(),
            stopping: false,
            fatal: None,
            sends_in_flight: HashMap::new(),
        };
        node.subscribe_room_topics();
        node.dial_rendezvous();
        Ok(node)
    }

    async fn run(
        &mut self,
        mut calls: mpsc::Receiver<Call>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut internal = self.internal.take().context("actor started twice")?;
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        // The outbox's own schedule has second granularity; a one-second tick follows it closely.
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        let mut reach = tokio::time::interval(reach::TICK);
        reach.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        while !self.stopping {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(call) = calls.recv() => self.on_call(call),
                Some(done) = internal.recv() => self.on_internal(done),
                _ = heartbeat.tick() => self.on_heartbeat(),
                _ = retry.tick() => self.on_retry_tick(),
                _ = reach.tick() => self.on_reach_tick(),
                _ = &mut shutdown => break,
            }
        }
        match self.fatal.take() {
            Some(reason) => Err(anyhow::anyhow!("the daemon stopped: {reason}")),
            None => Ok(()),
        }
    }

    fn on_internal(&mut self, done: Internal) {
        match done {
            Internal::Flushed(result) => self.on_flushed(result),
            Internal::SendAnswered { client_id, result } => {
                self.on_send_answered(client_id, result)
            }
        }
    }

    /// Emits an event to `listen` subscribers (nobody listening is fine).
    fn emit(&self, event: Value) {
        let _ = self.events.send(event);
    }

    /// Emits a message event; from a sender we cannot name yet, once the rendezvous has named it
    /// (see [`Node::on_users`]), so scripts can answer by name.
    fn emit_message(&mut self, entry: &crate::store::HistoryEntry, named: bool) {
        let event = direct::message_event(entry);
        if named {
            return self.emit(event);
        }
        const MAX_SENDERS: usize = 64;
        const MAX_PER_SENDER: usize = 32;
        if self.unnamed_events.len() >= MAX_SENDERS
            && !self.unnamed_events.contains_key(&entry.sender)
        {
            return self.emit(event);
        }
        let held = self.unnamed_events.entry(entry.sender).or_default();
        if held.len() < MAX_PER_SENDER {
            held.push(event);
        }
    }

    /// Emits the held events of a sender now named `name` (or with its stand-in if unknown).
    fn release_unnamed(&mut self, key: &[u8; 32], name: Option<&str>) {
        for mut event in self.unnamed_events.remove(key).unwrap_or_default() {
            if let Some(name) = name {
                if event["conversation"] == event["from"] {
                    event["conversation"] = Value::from(name);
                }
                event["from"] = Value::from(name);
            }
            self.emit(event);
        }
    }

    // ---- the rendezvous link ---------------------------------------------------------------

    fn dial_rendezvous(&mut self) {
        if self
            .link
            .peer
            .is_some_and(|peer| self.swarm.is_connected(&peer))
            || !self.listeners_ready()
        {
            return;
        }
        let addr = self.rendezvous_addr.clone();
        let opts = match addr.iter().last() {
            Some(Protocol::P2p(peer)) => {
                self.link.peer = Some(peer);
                DialOpts::peer_id(peer).addresses(vec![addr]).build()
            }
            _ => DialOpts::unknown_peer_id().address(addr).build(),
        };
        if let Err(err) = self.swarm.dial(opts) {
            // Usually a dial already under way.
            tracing::debug!("dialing the rendezvous: {err}");
        }
    }

    fn is_rendezvous(&self, peer: &PeerId) -> bool {
        self.link.peer.as_ref() == Some(peer)
    }

    /// Sends a request to the rendezvous (or queues it behind those in flight). Whatever
    /// happens, `pending` hears of it: an answer, or [`Node::on_rendezvous_failure`].
    fn rendezvous_request(&mut self, request: RendezvousRequest, pending: Pending) {
        if !self.link.connected || self.link.peer.is_none() {
            return self.on_rendezvous_failure(pending, "not connected to the rendezvous".into());
        }
        if self.link.queued.len() >= RENDEZVOUS_QUEUED {
            return self.on_rendezvous_failure(pending, "too many requests waiting".into());
        }
        self.link.queued.push_back((request, pending));
        self.send_queued_requests();
    }

    fn send_queued_requests(&mut self) {
        let Some(peer) = self.link.peer.filter(|_| self.link.connected) else {
            return;
        };
        while self.pending.len() < RENDEZVOUS_IN_FLIGHT {
            let Some((request, pending)) = self.link.queued.pop_front() else {
                return;
            };
            let id = self
                .swarm
                .behaviour_mut()
                .rendezvous
                .send_request(&peer, request);
            self.pending.insert(id, pending);
        }
    }

    fn on_rendezvous_connected(&mut self, peer: PeerId) {
        self.link.peer = Some(peer);
        self.link.connected = true;
        let name = self.name.clone();
        self.rendezvous_request(RendezvousRequest::Login { name }, Pending::Login);
    }

    fn on_logged_in(&mut self, mail_waiting: u32, one_time_left: u32) {
        self.link.logged_in = true;
        self.link.refused = None;
        tracing::info!("logged in at the rendezvous as {}", self.name);
        self.emit(json!({"type": "rendezvous", "connected": true, "logged_in": true}));
        self.publish_prekeys(one_time_left);
        self.rendezvous_request(
            RendezvousRequest::Heartbeat {
                state: PresenceState::Online,
            },
            Pending::Heartbeat,
        );
        self.subscribe_presence();
        self.register_discovery();
        // A relay slot at the rendezvous, so peers can reach us behind a NAT (once identify has
        // told us how the rendezvous sees us: see `reach`).
        self.reserve_slots();
        if mail_waiting > 0 {
            self.fetch_mail();
        }
        self.rooms_after_login();
        self.resume_outbox();
    }

    /// Keeps our prekeys at the rendezvous fresh. One-time prekeys are published exactly once
    /// each (re-publishing one the server already handed out would let two senders use it); the
    /// signed prekey is replaced weekly, the previous one kept for messages already under way.
    fn publish_prekeys(&mut self, one_time_left: u32) {
        let now = now_ms();
        let signed_at = self
            .store
            .get::<u64>(StateKey::Meta("signed_prekey_at"))
            .ok()
            .flatten();
        let request = if !self.store_flag("prekeys_published") {
            Some(RendezvousRequest::PublishPrekeys(Box::new(
                self.prekeys.upload(),
            )))
        } else if signed_at.is_none_or(|at| now.saturating_sub(at) > SIGNED_PREKEY_LIFETIME_MS) {
            self.prekeys.end_signed_prekey_grace();
            let signed_prekey = self
                .prekeys
                .rotate_signed_prekey(&mut OsRng, self.identity.signing_key());
            let one_time_prekeys = self.prekeys.replenish(&mut OsRng, ONE_TIME_PREKEYS);
            let identity = self.identity.public();
            let upload = palaver_protocol::crypto::x3dh::PrekeyUpload {
                identity,
                signed_prekey,
                one_time_prekeys,
            };
            Some(RendezvousRequest::PublishPrekeys(Box::new(upload)))
        } else if one_time_left < PREKEYS_LOW {
            Some(RendezvousRequest::AddOneTimePrekeys(
                self.prekeys.replenish(&mut OsRng, ONE_TIME_PREKEYS),
            ))
        } else {
            None
        };
        let Some(request) = request else { return };
        // The secrets are on disk before any public half leaves.
        let mut batch = StateBatch::default();
        batch.put(StateKey::Meta(PREKEYS_META), &self.prekeys);
        if matches!(request, RendezvousRequest::PublishPrekeys(_)) {
            batch.put(StateKey::Meta("signed_prekey_at"), &now);
        }
        if let Err(err) = self.store.apply(&batch) {
            tracing::error!("cannot store prekeys, not publishing them: {err}");
            return;
        }
        self.when_durable(|node, flushed| match flushed {
            Ok(()) => {
                node.rendezvous_request(request, Pending::Publish);
            }
            Err(err) => tracing::error!("cannot store prekeys, not publishing them: {err}"),
        });
    }

    fn store_flag(&self, flag: &str) -> bool {
        self.store
            .get::<bool>(StateKey::Meta(flag))
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    fn set_store_flag(&self, flag: &str) {
        if let Err(err) = self
            .store
            .apply(StateBatch::default().put(StateKey::Meta(flag), &true))
        {
            tracing::warn!("store: {err}");
        }
    }

    fn fetch_mail(&mut self) {
        self.rendezvous_request(
            RendezvousRequest::FetchMail {
                max: FETCH_MAIL_BATCH,
            },
            Pending::FetchMail,
        );
    }

    fn subscribe_presence(&mut self) {
        let names = self.contact_names();
        if !names.is_empty() {
            self.rendezvous_request(
                RendezvousRequest::SubscribePresence { names },
                Pending::Subscribe,
            );
        }
    }

    fn contact_names(&self) -> Vec<UserName> {
        self.store
            .scan_keys(StateKey::Contact(""))
            .into_iter()
            .filter_map(|name| UserName::new(name).ok())
            .take(palaver_protocol::wire::rendezvous::MAX_BATCH)
            .collect()
    }

    /// Discovery namespace under which this node's addresses are found by peer id.
    fn peer_namespace(peer: &PeerId) -> rendezvous::Namespace {
        rendezvous::Namespace::new(format!("palaver/peer/{peer}"))
            .unwrap_or_else(|_| rendezvous::Namespace::from_static("palaver/peer"))
    }

    fn register_discovery(&mut self) {
        let Some(rendezvous) = self.link.peer else {
            return;
        };
        if !self.link.logged_in {
            return;
        }
        let namespace = Self::peer_namespace(self.swarm.local_peer_id());
        if let Err(err) = self
            .swarm
            .behaviour_mut()
            .discovery
            .register(namespace, rendezvous, None)
        {
            tracing::debug!("discovery registration: {err}");
        }
    }

    fn discover(&mut self, peer: PeerId) {
        let Some(rendezvous) = self.link.peer else {
            return;
        };
        self.swarm.behaviour_mut().discovery.discover(
            Some(Self::peer_namespace(&peer)),
            None,
            None,
            rendezvous,
        );
    }

    fn on_heartbeat(&mut self) {
        if self.link.logged_in {
            self.rendezvous_request(
                RendezvousRequest::Heartbeat {
                    state: PresenceState::Online,
                },
                Pending::Heartbeat,
            );
        } else if !self.link.connected {
            self.dial_rendezvous();
        }
    }

    fn on_rendezvous_response(&mut self, pending: Pending, response: RendezvousResponse) {
        use RendezvousResponse as R;
        match (pending, response) {
            (
                Pending::Login,
                R::LoggedIn {
                    mail_waiting,
                    one_time_prekeys_left,
                    ..
                },
            ) => self.on_logged_in(mail_waiting, one_time_prekeys_left),
            (Pending::Login, R::Refused(refusal))
                if refusal.reason == RefusalReason::UnknownUser && !self.link.registered_once =>
            {
                self.link.registered_once = true;
                let request = RendezvousRequest::Register {
                    name: self.name.clone(),
                    token: self.registration_token.clone(),
                };
                self.rendezvous_request(request, Pending::Register);
            }
            (Pending::Register, R::Registered { .. }) => {
                let name = self.name.clone();
                self.rendezvous_request(RendezvousRequest::Login { name }, Pending::Login);
            }
            (Pending::Login | Pending::Register, R::Refused(refusal)) => {
                tracing::error!("the rendezvous refused us: {refusal}");
                self.link.refused = Some(refusal.clone());
                self.emit(json!({"type": "rendezvous", "connected": true, "logged_in": false, "error": refusal.to_string()}));
            }
            (Pending::Publish, R::Done) => self.set_store_flag("prekeys_published"),
            (Pending::Lookup { names, then }, R::Users(users)) => {
                self.on_users(users, then, Some(names))
            }
            (Pending::WhoIs { then }, R::Users(users)) => {
                let named: Vec<[u8; 32]> = users.iter().map(|u| u.identity.to_bytes()).collect();
                let unknown: Vec<[u8; 32]> = self
                    .unnamed_events
                    .keys()
                    .filter(|k| !named.contains(k))
                    .copied()
                    .collect();
                self.on_users(users, then, None);
                // Asked about, but not registered here: show them with their stand-in.
                if self
                    .pending
                    .values()
                    .all(|p| !matches!(p, Pending::WhoIs { .. }))
                {
                    for key in unknown {
                        self.release_unnamed(&key, None);
                    }
                }
            }
            (Pending::Prekeys { key, then }, R::Prekeys(bundle)) => {
                self.on_prekeys(key, *bundle, then)
            }
            (Pending::Prekeys { then, .. }, R::Refused(refusal))
                if refusal.reason == RefusalReason::NoPrekeys =>
            {
                self.wait_for_prekeys(then, refusal.to_string())
            }
            (Pending::Prekeys { then, .. }, R::Refused(refusal)) => {
                then.fail(format!("cannot start a session: {refusal}"))
            }
            (
                Pending::Lookup {
                    then: Some(job), ..
                }
                | Pending::WhoIs { then: Some(job) },
                R::Refused(refusal),
            ) => job.fail(format!("lookup failed: {refusal}")),
            (Pending::Deposit { id }, R::Deposited { .. }) => self.on_deposited(id),
            (Pending::Deposit { id }, R::Refused(refusal)) => {
                self.on_deposit_refused(id, refusal.to_string())
            }
            (Pending::FetchMail, R::Mail { items, remaining }) => self.on_mail(items, remaining),
            (
                Pending::Presence {
                    names,
                    explicit,
                    reply,
                },
                R::Users(users),
            ) => {
                let _ = reply.send(self.presence_answer(&names, explicit, users));
            }
            (Pending::Presence { names, reply, .. }, R::Refused(_)) => {
                let _ = reply.send(Ok(self.last_known_presence(&names)));
            }
            (Pending::LookupThenInvite { room, user, reply }, R::Users(users)) => {
                let found = users.iter().any(|u| u.name == user);
                self.on_users(users, None, None);
                if found {
                    self.room_invite(room, user, reply);
                } else {
                    let _ = reply.send(Err(RpcError::failed(format!(
                        "unknown user {user} at this rendezvous"
                    ))));
                }
            }
            (Pending::LookupThenVerify { name, reply }, R::Users(users)) => {
                let found = users.iter().find(|u| u.name == name).map(|u| u.identity);
                self.on_users(users, None, None);
                let answer = match found {
                    Some(key) => Ok(calls::fingerprints(
                        &self.name,
                        &self.identity.public(),
                        &name,
                        &key,
                    )),
                    None => Err(RpcError::failed(format!(
                        "unknown user {name} at this rendezvous"
                    ))),
                };
                let _ = reply.send(answer);
            }
            (
                Pending::LookupThenInvite { reply, .. } | Pending::LookupThenVerify { reply, .. },
                R::Refused(refusal),
            ) => {
                let _ = reply.send(Err(RpcError::failed(refusal.to_string())));
            }
            (
                Pending::Heartbeat | Pending::Subscribe | Pending::AckMail,
                R::Done | R::Presence(_),
            ) => {}
            (Pending::Subscribe, R::Users(users)) => {
                for user in users {
                    self.remember_presence(user.presence);
                }
            }
            (_, R::Refused(refusal)) if refusal.reason == RefusalReason::NotLoggedIn => {
                self.link.logged_in = false;
                let name = self.name.clone();
                self.rendezvous_request(RendezvousRequest::Login { name }, Pending::Login);
            }
            (pending, response) => {
                tracing::debug!("unexpected rendezvous answer {response:?} to {pending:?}")
            }
        }
    }

    fn on_rendezvous_failure(&mut self, pending: Pending, error: String) {
        match pending {
            Pending::Lookup {
                then: Some(job), ..
            }
            | Pending::WhoIs { then: Some(job) }
            | Pending::Prekeys { then: job, .. } => {
                job.fail(format!("the rendezvous did not answer: {error}"))
            }
            Pending::Deposit { id } => self.on_deposit_refused(id, error),
            Pending::Presence { names, reply, .. } => {
                let _ = reply.send(Ok(self.last_known_presence(&names)));
            }
            Pending::LookupThenInvite { reply, .. } | Pending::LookupThenVerify { reply, .. } => {
                let _ = reply.send(Err(RpcError::failed(format!(
                    "the rendezvous did not answer: {error}"
                ))));
            }
            other => tracing::debug!("rendezvous request {other:?} failed: {error}"),
        }
    }

    fn on_push(&mut self, push: ServerPush) {
        match push {
            ServerPush::Presence(record) => {
                let name = record.name.to_string();
                let came_online = record.state != PresenceState::Offline
                    && self
                        .presence
                        .get(&name)
                        .is_none_or(|old| old.state == PresenceState::Offline);
                self.emit(json!({"type": "presence", "name": name, "state": state_str(record.state), "last_seen": record.last_seen_ms}));
                self.remember_presence(record);
                if came_online {
                    self.retry_outbox_for_name(&name);
                }
            }
            ServerPush::MailWaiting { .. } => self.fetch_mail(),
            ServerPush::PrekeysLow { remaining } => self.publish_prekeys(remaining),
        }
    }

    // ---- swarm events ----------------------------------------------------------------------

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!("listening on {address}");
                self.on_listener_ready(listener_id, Some(&address));
                // Local-network addresses go in our discovery record as they are, for peers on
                // the same network; any other address only once AutoNAT confirms it (`reach`).
                if reach::is_local_network(&address) {
                    self.swarm.add_external_address(address.clone());
                }
                self.listen_addrs.push(address);
                self.register_discovery();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                if !reach::is_circuit(&address) {
                    self.swarm.remove_external_address(&address);
                    if !is_loopback(&address) && !self.stopping {
                        self.on_network_change(&address);
                    }
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                self.listen_addrs.retain(|a| !addresses.contains(a));
                self.on_listener_closed(listener_id, reason.map_err(|e| e.to_string()));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.peer_addrs
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, reach::connection_addr(peer_id, &endpoint));
                self.on_reach_connected(peer_id, connection_id);
                let rendezvous = self.is_rendezvous(&peer_id)
                    || (self.link.peer.is_none()
                        && dialed_rendezvous(&endpoint, &self.rendezvous_addr));
                if rendezvous && !self.link.connected {
                    self.on_rendezvous_connected(peer_id);
                } else if !rendezvous && !self.is_relay_server(&peer_id) {
                    self.on_peer_connected(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                if let Some(conns) = self.peer_addrs.get_mut(&peer_id) {
                    conns.remove(&connection_id);
                    if conns.is_empty() {
                        self.peer_addrs.remove(&peer_id);
                    }
                }
                let broke = matches!(cause, Some(libp2p::swarm::ConnectionError::IO(_)));
                self.on_reach_disconnected(peer_id, num_established, broke);
                if num_established == 0 && self.is_rendezvous(&peer_id) {
                    self.link.connected = false;
                    self.link.logged_in = false;
                    for (_, pending) in std::mem::take(&mut self.link.queued) {
                        self.on_rendezvous_failure(pending, "lost the rendezvous".into());
                    }
                    self.emit(
                        json!({"type": "rendezvous", "connected": false, "logged_in": false}),
                    );
                    if !self.stopping {
                        // Back as soon as it is (a restart, a network change); the heartbeat
                        // and retry timers keep trying after that.
                        self.dial_rendezvous();
                    }
                } else if !self.is_relay_server(&peer_id) {
                    self.emit_connection_change(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                tracing::debug!("dial {peer_id:?} failed: {error}");
                if let Some(peer) = peer_id {
                    if self.is_rendezvous(&peer) {
                        self.link.connected = self.swarm.is_connected(&peer);
                    } else if !self.is_relay_server(&peer) {
                        self.on_dial_failed(peer, Some(connection_id));
                    }
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Rendezvous(request_response::Event::Message { message, .. }) => {
                if let request_response::Message::Response {
                    request_id,
                    response,
                } = message
                    && let Some(pending) = self.pending.remove(&request_id)
                {
                    self.on_rendezvous_response(pending, response);
                    self.send_queued_requests();
                }
            }
            BehaviourEvent::Rendezvous(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some(pending) = self.pending.remove(&request_id) {
                    self.on_rendezvous_failure(pending, error.to_string());
                    self.send_queued_requests();
                }
            }
            BehaviourEvent::Push(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => {
                let _ = self.swarm.behaviour_mut().push.send_response(channel, ());
                if self.is_rendezvous(&peer) {
                    self.on_push(request);
                }
            }
            BehaviourEvent::Peer(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => self.on_peer_request(peer, request, channel),
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => self.on_peer_response(request_id, response),
                }
            }
            BehaviourEvent::Peer(request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            }) => {
                tracing::debug!("delivery to {peer} failed: {error}");
                self.on_peer_failure(request_id);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                self.on_gossip(propagation_source, message_id, message.data);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                self.on_gossip_subscribed(peer_id, topic);
            }
            BehaviourEvent::Discovery(rendezvous::client::Event::Discovered {
                registrations,
                cookie,
                ..
            }) => {
                // Asked for one peer and it has no record (it is offline, or the rendezvous
                // restarted and lost the records): as good as a failed lookup, so its messages
                // go to the mailbox rather than wait for a record that may never come.
                let asked = cookie.namespace().and_then(peer_of_namespace);
                // A public room's members register under its namespace: those found are wanted.
                let room_members = cookie
                    .namespace()
                    .is_some_and(|ns| ns.to_string().starts_with(rooms::ROOM_NAMESPACE));
                let mut found = false;
                for registration in registrations {
                    let peer = registration.record.peer_id();
                    if room_members && peer != *self.swarm.local_peer_id() {
                        self.wanted_peers.insert(peer);
                    }
                    found |= Some(peer) == asked;
                    let addrs = registration.record.addresses().to_vec();
                    self.on_discovered(peer, addrs);
                }
                if let Some(peer) = asked.filter(|_| !found) {
                    self.on_discovery_failed(peer);
                }
            }
            BehaviourEvent::Discovery(rendezvous::client::Event::DiscoverFailed {
                namespace,
                ..
            }) => {
                if let Some(peer) = namespace.as_ref().and_then(peer_of_namespace) {
                    self.on_discovery_failed(peer);
                }
            }
            // The observed address is not confirmed as ours here: identify hands it to DCUtR and
            // AutoNAT as a candidate, and AutoNAT confirms it if the rendezvous can dial it back.
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, &info)
            }
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::Autonat(event) => self.on_autonat(event),
            BehaviourEvent::Ping(event) => self.on_ping(event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm.add_peer_address(peer, addr);
                }
            }
            BehaviourEvent::Dcutr(event) => {
                match &event.result {
                    Ok(_) => tracing::info!("hole punched to {}", event.remote_peer_id),
                    Err(err) => tracing::info!(
                        "no hole punched to {} (staying relayed): {err}",
                        event.remote_peer_id
                    ),
                }
                self.emit_connection_change(event.remote_peer_id);
            }
            _ => {}
        }
    }

    /// Whether every connection to `peer` goes through a relay (`None`: not connected, or not a
    /// peer but a relay server).
    fn connection_kind(&self, peer: &PeerId) -> Option<(&'static str, Option<Multiaddr>)> {
        if !self.swarm.is_connected(peer) || self.is_relay_server(peer) {
            return None;
        }
        let addrs = self.connected_addrs(peer);
        let direct = addrs.iter().find(|a| !reach::is_circuit(a));
        Some(match direct {
            Some(addr) => ("direct", Some(addr.clone())),
            None => ("relayed", addrs.first().cloned()),
        })
    }

    fn connected_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peer_addrs
            .get(peer)
            .map(|conns| conns.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Tells `listen` subscribers how `peer` is connected, when that changed.
    fn emit_connection_change(&mut self, peer: PeerId) {
        let kind = self
            .connection_kind(&peer)
            .map(|(kind, _)| kind)
            .unwrap_or("disconnected");
        let name = self.name_of_peer(&peer);
        if !self.connection_kind_changed(peer, kind, name.is_some()) {
            return;
        }
        self.emit(json!({"type": "connection", "peer_id": peer.to_string(), "name": name, "connection": kind}));
    }

    fn name_of_peer(&self, peer: &PeerId) -> Option<String> {
        let key = palaver_protocol::identity::identity_of(peer)?;
        self.name_of_key(&key)
    }

    fn name_of_key(&self, key: &VerifyingKey) -> Option<String> {
        if *key == self.identity.public() {
            return Some(self.name.to_string());
        }
        self.store
            .get::<String>(StateKey::Peer(key.to_bytes()))
            .ok()
            .flatten()
    }
}

/// The peer a `palaver/peer/<id>` namespace (see [`Node::peer_namespace`]) is for.
fn peer_of_namespace(namespace: &rendezvous::Namespace) -> Option<PeerId> {
    namespace
        .to_string()
        .strip_prefix("palaver/peer/")
        .and_then(|p| p.parse().ok())
}

fn dialed_rendezvous(endpoint: &ConnectedPoint, rendezvous: &Multiaddr) -> bool {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => {
            let strip = |a: &Multiaddr| {
                a.iter()
                    .filter(|p| !matches!(p, Protocol::P2p(_)))
                    .collect::<Multiaddr>()
            };
            strip(address) == strip(rendezvous)
        }
        ConnectedPoint::Listener { .. } => false,
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn state_str(state: PresenceState) -> &'static str {
    match state {
        PresenceState::Online => "online",
        PresenceState::Away => "away",
        PresenceState::Offline => "offline",
    }
}

fn presence_json(record: &PresenceRecord) -> Value {
    json!({"name": record.name.as_str(), "state": state_str(record.state), "last_seen": record.last_seen_ms})
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
