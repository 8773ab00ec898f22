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
mod devices;
mod direct;
mod discovery;
mod durable;
mod files;
mod gossip_gate;
mod link;
mod reach;
mod replies;
pub(crate) mod rooms;
mod trust;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures::{FutureExt as _, StreamExt};
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, mdns, ping, relay};
use palaver_protocol::node::announce::{Connections, Unnamed};
use palaver_protocol::node::session::{RequestKey, SessionConfig};
use palaver_protocol::node::state::NodeState;
use palaver_protocol::wire::RendezvousRequest;
use palaver_protocol::{Identity, UserName, VerifyingKey};
use rand_core::{OsRng, RngCore as _};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::home::Home;
use crate::rpc::{self, Call};
use crate::store::{HistoryEntry, StateKey, Store};
use behaviour::{Behaviour, BehaviourEvent};
use link::Pending;

pub use files::FileConfig;

/// How the daemon is started.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub home: PathBuf,
    /// Where received files go, and the sizes taken.
    pub files: FileConfig,
    pub rendezvous: Multiaddr,
    /// Further rendezvous instances (of one cluster, or independent servers) to fail over to,
    /// in order, when the one in use dies or refuses us (a refusal because our key is in use
    /// by another daemon stops this one instead).
    pub more_rendezvous: Vec<Multiaddr>,
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
            files: FileConfig::default(),
            rendezvous,
            more_rendezvous: Vec::new(),
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
    let store = if home.is_sealed() {
        let secrets = palaver_protocol::crypto::at_rest::SecretsKey::of(&identity);
        Store::open_sealed(&config.home.join("store"), secrets)?
    } else {
        Store::open(&config.home.join("store"))?
    };
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

/// Something finished outside the actor that the actor must act on.
#[derive(Debug)]
enum Internal {
    /// The group commit's flush is done (see [`durable`]).
    Flushed(durable::Flushed),
    /// A send keyed by the client has its answer (see [`client_ids`]).
    SendAnswered {
        client_id: String,
        result: Result<Value, rpc::RpcError>,
    },
    /// A file transfer's I/O finished a step (see [`files`]).
    File(files::FileDone),
}

pub(crate) struct Node {
    identity: Identity,
    name: UserName,
    store: Store,
    swarm: Swarm<Behaviour>,
    /// The session, the delivery planner and its outbox, the send pipeline, the rooms, the
    /// discovery publisher.
    state: NodeState<link::Pending, OutboundRequestId, direct::Job>,
    /// The session's request each request to the rendezvous carries.
    rendezvous_requests: HashMap<OutboundRequestId, RequestKey>,
    /// What we last heard of other users' presence.
    presence: palaver_protocol::node::presence::Presence,
    events: broadcast::Sender<rpc::Event>,
    internal_tx: mpsc::Sender<Internal>,
    flusher: durable::Flusher,
    internal: Option<mpsc::Receiver<Internal>>,
    /// What servers pushed us, with who pushed it (only the rendezvous's are taken).
    pushes: Option<mpsc::Receiver<(PeerId, palaver_protocol::wire::ServerPush)>>,
    /// The rendezvous in use, whose push streams are taken (any other peer's are dropped).
    push_server: watch::Sender<Option<PeerId>>,
    commit: palaver_protocol::node::commit::GroupCommit<durable::AfterFlush>,
    room_io: rooms::RoomIo,
    /// Calls waiting for a rendezvous answer, by the token their request carries.
    replies: replies::Replies,
    reach: reach::Reach,
    /// A rendezvous outage was logged (lost or unreachable): one line for it, one when it ends.
    rendezvous_outage_logged: bool,
    /// How each peer's connection was last told to `listen` subscribers.
    announced: Connections<PeerId, &'static str>,
    /// Message events from senders whose name we are asking the rendezvous for.
    unnamed: Unnamed<rpc::Event>,
    stopping: bool,
    /// Why the daemon stops on its own: a store that cannot be made durable (it exits non-zero,
    /// so a supervisor restarts it), or its key in use by another running daemon (a copied
    /// home: a restart is refused again until that one stops).
    fatal: Option<String>,
    /// Sends keyed by the client that are under way, and who waits for each.
    keyed_sends: palaver_protocol::node::direct::keyed::KeyedSends<replies::ReplyToken>,
    file_io: files::FileIo,
    /// Calls waiting for the link under way to end (`device.link_wait`).
    link_waiters: Vec<rpc::Reply>,
    /// The link under way asks the user before adding the device; what it asks, once a device
    /// is waiting.
    link_asks: bool,
    link_question: Option<serde_json::Value>,
    /// Copies for other devices fed to the send pipeline and not sealed or failed yet, by the
    /// message and the device (so that a login resuming the owed ones sends none twice).
    copies_in_flight: std::collections::HashSet<(palaver_protocol::MessageId, [u8; 32])>,
    /// Our account's device list as pinned (kept here too: every send and every copy reads it).
    own_list: Option<palaver_protocol::identity::devices::DeviceList>,
    /// By peer, the message numbers that the durable copy of our sessions with it reserves: a
    /// direct message they cover goes out before its own flush (see
    /// [`palaver_protocol::crypto::ratchet::SendAhead`]). Empty at start: the first message to
    /// each peer waits for its flush, which makes its reservation durable.
    sends_ahead: HashMap<[u8; 32], palaver_protocol::crypto::ratchet::SendAhead>,
}

const OUTBOX_META: &str = "outbox";

/// Swarm events taken in one wake-up of the actor, at most (the rest wait for the next, after
/// the calls, timers and flushes that are due have had their turn).
const MAX_EVENTS_A_WAKE_UP: usize = 64;

impl Node {
    fn new(
        identity: Identity,
        name: UserName,
        store: Store,
        config: &DaemonConfig,
        events: broadcast::Sender<rpc::Event>,
    ) -> anyhow::Result<Self> {
        let use_mdns = config
            .listen
            .iter()
            .any(|addr| !palaver_protocol::node::addr::is_loopback(addr));
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
            palaver_rendezvous::listen_check::ensure_tcp_port_free(&addr)
                .with_context(|| format!("cannot listen on {addr}"))?;
            let id = swarm
                .listen_on(addr.clone())
                .with_context(|| format!("listening on {addr}"))?;
            listeners.push((id, addr));
        }
        let session = link::Session::new(
            SessionConfig {
                name: name.clone(),
                registration_token: config.registration_token.clone(),
                heartbeat_ms: u64::try_from(config.heartbeat.as_millis()).unwrap_or(u64::MAX),
                instance: OsRng.next_u64(),
            },
            identity.signing_key().clone(),
            link::load_prekeys(&store, &identity)?,
        );
        let rooms = rooms::load(&store, &identity)?;
        // Before anything seals: message numbers a crash may have used ahead of the disk are
        // skipped.
        let resumed = store.resume_sessions()?;
        if resumed > 0 {
            tracing::debug!(
                "ratchet sessions with {resumed} peers skipped past what they reserved"
            );
        }
        let own_list = store
            .get::<palaver_protocol::identity::devices::DevicePin>(StateKey::Devices(
                name.as_str(),
            ))?
            .map(|pin| pin.list().clone());
        // Deserializing counts as a restart: every pending message is due again.
        let outbox = store.get(StateKey::Meta(OUTBOX_META))?.unwrap_or_default();
        let reach = reach::Reach::with_instances(
            std::iter::once(config.rendezvous.clone())
                .chain(config.more_rendezvous.iter().cloned())
                .collect(),
            &config.relays,
            listeners,
            std::time::Instant::now(),
        )?;
        let (internal_tx, internal) = mpsc::channel(256);
        let flusher = durable::Flusher::start(store.clone(), internal_tx.clone())?;
        let delivery = palaver_protocol::node::direct::Delivery::new(
            *swarm.local_peer_id(),
            outbox,
            Self::stored_routes(&store)?,
            now_ms(),
        );
        let local_peer = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        let file_io =
            files::FileIo::new(&config.home, &config.files, control, internal_tx.clone())?;
        // The push streams the rendezvous opens to us (one per session).
        let (push_tx, pushes) = mpsc::channel(64);
        let incoming_pushes = (swarm.behaviour().stream.new_control())
            .accept(palaver_rendezvous::transport::push_protocol())
            .map_err(|_| anyhow::anyhow!("the push protocol is accepted twice"))?;
        let (push_server, from) = watch::channel(None);
        tokio::spawn(palaver_rendezvous::transport::accept_pushes(
            incoming_pushes,
            from,
            push_tx,
        ));
        let transfers = palaver_protocol::node::files::Transfers::new(
            config.files.limits,
            files::under_way(&store),
            file_io.free_space(),
        );
        let mut node = Self {
            identity,
            name,
            store,
            swarm,
            state: NodeState {
                session,
                delivery,
                sends: Default::default(),
                rooms,
                discovery: palaver_protocol::node::discovery::Publisher::new(local_peer),
                files: transfers,
                link: None,
            },
            rendezvous_requests: HashMap::new(),
            presence: Default::default(),
            events,
            flusher,
            internal_tx,
            internal: Some(internal),
            pushes: Some(pushes),
            push_server,
            commit: Default::default(),
            room_io: rooms::RoomIo::default(),
            replies: replies::Replies::default(),
            reach,
            rendezvous_outage_logged: false,
            announced: Connections::default(),
            unnamed: Unnamed::default(),
            stopping: false,
            fatal: None,
            keyed_sends: Default::default(),
            file_io,
            link_waiters: Vec::new(),
            link_asks: false,
            link_question: None,
            copies_in_flight: Default::default(),
            own_list,
            sends_ahead: HashMap::new(),
        };
        node.subscribe_room_topics();
        node.drive_files();
        node.drive_reach();
        Ok(node)
    }

    async fn run(
        &mut self,
        mut calls: mpsc::Receiver<Call>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut internal = self.internal.take().context("actor started twice")?;
        let mut pushes = self.pushes.take().context("actor started twice")?;
        let mut shutdown = std::pin::pin!(shutdown);
        while !self.stopping {
            let reach_due = self.reach.poll_timeout();
            // The other machines' deadlines are wall-clock ms (the session persists the signed
            // prekey's age).
            let state_due = self.state.poll_timeout().map(instant_of);
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    self.on_swarm_event(event);
                    // What else the swarm has ready is taken in this wake-up too, so that the
                    // room messages among it share one write.
                    for _ in 1..MAX_EVENTS_A_WAKE_UP {
                        match self.swarm.select_next_some().now_or_never() {
                            Some(event) => self.on_swarm_event(event),
                            None => break,
                        }
                    }
                }
                Some(call) = calls.recv() => self.on_call(call),
                Some(done) = internal.recv() => self.on_internal(done),
                Some((from, push)) = pushes.recv() => {
                    if self.is_rendezvous(&from) {
                        self.session_input(palaver_protocol::node::session::Input::Push(push));
                    }
                }
                _ = sleep_until(state_due) => self.on_state_timeout(),
                _ = sleep_until(reach_due) => self.on_reach_timeout(),
                _ = &mut shutdown => break,
            }
            self.write_room_reads();
        }
        self.write_room_reads();
        // Whatever the way out still runs (flush waiters) dials nothing new.
        self.reach(reach::ReachInput::Stopping);
        match self.fatal.take() {
            Some(reason) => Err(anyhow::anyhow!("the daemon stopped: {reason}")),
            None => Ok(()),
        }
    }

    /// A machine's deadline came (or a minute passed): wake them, carry out what they decided.
    fn on_state_timeout(&mut self) {
        let unavailable = self.rendezvous_unavailable();
        let account = self.account_key();
        let mut facts = trust::StoreFacts::new(
            &self.store,
            self.identity.public(),
            &self.name,
            account,
            unavailable,
        );
        self.state.handle_timeout(now_ms(), &mut OsRng, &mut facts);
        self.drive_session();
        self.drive_delivery();
        self.drive_pipeline();
        let _ = self.drive_rooms();
        self.drive_discovery();
        self.drive_files();
        self.drive_link();
    }

    fn on_internal(&mut self, done: Internal) {
        match done {
            Internal::Flushed(result) => self.on_flushed(result),
            Internal::SendAnswered { client_id, result } => {
                self.on_send_answered(client_id, result)
            }
            Internal::File(done) => self.on_file_done(done),
        }
    }

    /// Emits an event to `listen` subscribers (nobody listening is fine).
    fn emit(&self, event: rpc::Event) {
        // The reference (docs/REFERENCE.md) lists every event from this table: keep them one.
        #[cfg(debug_assertions)]
        if let Err(err) = crate::rpc::methods::check_event(&event.to_json()) {
            panic!("{err}: add it to EVENTS in node/src/rpc/methods.rs: {event:?}");
        }
        let _ = self.events.send(event);
    }

    /// Emits a message event (`None`: a control message, nothing to tell); from a sender we
    /// cannot name yet, once the rendezvous has named it (see [`Node::on_users`]), so scripts
    /// can answer by name.
    fn emit_message(&mut self, sender: &VerifyingKey, entry: Option<&HistoryEntry>, named: bool) {
        let event = entry.map(rpc::Event::message);
        if named {
            return event.into_iter().for_each(|event| self.emit(event));
        }
        let stranger = self.unnamed.heard(sender.to_bytes(), event);
        if stranger.ask {
            let keys = vec![*sender];
            let pending = Pending::WhoIs {
                keys: vec![sender.to_bytes()],
                call: None,
            };
            self.rendezvous_request(RendezvousRequest::WhoIs { keys }, pending);
        }
        if let Some(event) = stranger.emit {
            self.emit(event);
        }
    }

    /// Emits the held events of a sender now named `name` (or with its stand-in if unknown).
    fn release_unnamed(&mut self, key: &[u8; 32], name: Option<&str>) {
        for mut event in self.unnamed.release(key) {
            if let (
                Some(name),
                rpc::Event::Message {
                    conversation, from, ..
                },
            ) = (name, &mut event)
            {
                if conversation == from {
                    *conversation = name.to_string();
                }
                *from = name.to_string();
            }
            self.emit(event);
        }
    }

    // ---- swarm events ----------------------------------------------------------------------

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        use reach::ReachInput as Input;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!("listening on {address}");
                self.reach(Input::ListenAddr {
                    listener: listener_id,
                    addr: address,
                });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!("address {address} went away");
                self.reach(Input::ListenAddrExpired { addr: address });
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                let error = reason.err().map(|e| e.to_string());
                if let Some(error) = &error {
                    tracing::warn!("listener on {addresses:?} closed: {error}");
                }
                self.reach(Input::ListenerClosed {
                    listener: listener_id,
                    addrs: addresses,
                    error,
                });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let dialed = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => Some(address.clone()),
                    ConnectedPoint::Listener { .. } => None,
                };
                self.reach(Input::Connected {
                    peer: peer_id,
                    conn: connection_id,
                    addr: reach::connection_addr(peer_id, &endpoint),
                    dialed,
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                let broke = matches!(cause, Some(libp2p::swarm::ConnectionError::IO(_)));
                self.reach(Input::Disconnected {
                    peer: peer_id,
                    conn: connection_id,
                    broke,
                });
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                tracing::debug!("dial {peer_id:?} failed: {error}");
                if self.reach.is_rendezvous_dial(&connection_id) && !self.rendezvous_outage_logged {
                    // Once per outage: the retries that follow would say the same.
                    tracing::warn!(
                        "cannot reach the rendezvous at {}: {error}; retrying",
                        self.reach.rendezvous_addr()
                    );
                    self.rendezvous_outage_logged = true;
                }
                self.reach(Input::DialFailed {
                    peer: peer_id,
                    conn: connection_id,
                });
            }
            SwarmEvent::ExternalAddrConfirmed { .. } | SwarmEvent::ExternalAddrExpired { .. } => {
                self.on_external_addresses()
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Rendezvous(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => self.on_rendezvous_answer(request_id, Ok(response)),
            BehaviourEvent::Rendezvous(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => self.on_rendezvous_answer(request_id, Err(error.to_string())),
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
            // The observed address is not confirmed as ours here: identify hands it to DCUtR and
            // AutoNAT as a candidate, and AutoNAT confirms it if the rendezvous can dial it back.
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                tracing::debug!("{peer_id} observes us at {}", info.observed_addr);
                self.reach(reach::ReachInput::Identified {
                    peer: peer_id,
                    listen_addrs: info.listen_addrs,
                });
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    tracing::info!("holding a relay slot at {relay_peer_id}");
                }
                self.reach(reach::ReachInput::SlotReserved {
                    relay: relay_peer_id,
                    renewal,
                });
            }
            BehaviourEvent::RelayClient(other) => tracing::debug!("relay client: {other:?}"),
            BehaviourEvent::Autonat(event) => match event.result {
                Ok(()) => {
                    tracing::info!("reachable from outside at {}", event.tested_addr);
                    self.reach(reach::ReachInput::ReachableFromOutside);
                }
                Err(err) => tracing::debug!("not reachable at {}: {err}", event.tested_addr),
            },
            // A failed ping means a dead path (a NAT forgot us, the network changed): closed
            // rather than left for TCP to notice.
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(err),
            }) => {
                tracing::info!("ping to {peer} failed ({err}); closing");
                self.reach(reach::ReachInput::PingFailed { conn: connection });
            }
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

    /// How `peer` is connected, and over which address (`None`: not connected, or not a peer
    /// but a relay server).
    fn connection_kind(&self, peer: &PeerId) -> Option<(&'static str, Multiaddr)> {
        self.reach
            .connection_kind(peer)
            .map(|(kind, addr)| (kind.as_str(), addr.clone()))
    }

    /// Tells `listen` subscribers how `peer` is connected, when that changed, or when it can now
    /// be named and could not before.
    fn emit_connection_change(&mut self, peer: PeerId) {
        let kind = self
            .connection_kind(&peer)
            .map(|(kind, _)| kind)
            .unwrap_or("disconnected");
        let name = self.name_of_peer(&peer);
        let connected = Some(kind).filter(|kind| *kind != "disconnected");
        if self.announced.changed(peer, connected, name.is_some()) {
            self.emit(rpc::Event::Connection {
                peer_id: peer.to_string(),
                name,
                connection: kind,
            });
        }
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

/// Sleeps until a state machine's next deadline (forever without one).
async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// When a wall-clock deadline (ms) comes, on the monotonic clock the actor sleeps on; at most a
/// minute ahead, so a wall clock stepped back cannot make a machine oversleep.
fn instant_of(at_ms: u64) -> std::time::Instant {
    let wait = Duration::from_millis(at_ms.saturating_sub(now_ms())).min(Duration::from_secs(60));
    std::time::Instant::now() + wait
}

pub(crate) use palaver_rendezvous::clock::now_ms;
