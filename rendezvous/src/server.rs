//! The server: [`Server::bind`] opens the store, loads (or creates) the server's key, builds the
//! swarm and starts listening; [`Server::run`] is the actor loop that owns the swarm and the
//! [`Service`] until the shutdown future completes.
//!
//! One loop, four inputs: swarm events (requests, connections, relay events), completed store
//! flushes (a durable reply is sent only once its write is on disk), the timer tick (login
//! timeouts, presence expiry, mail sweep), and shutdown. After each input the service's pushes and
//! disconnects are carried out.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, relay};
use palaver_protocol::Identity;
use palaver_protocol::identity::keyfile::{self, KeyFileError};
use palaver_protocol::rendezvous::Millis;
use palaver_protocol::wire::{Refusal, RefusalReason, RendezvousResponse, ServerPush};
use prometheus_client::registry::Registry;
use rand_core::OsRng;
use futures::channel::mpsc;

use crate::behaviour::{self, Behaviour, BehaviourEvent, Inbound};
use crate::boxed_handler::Boxed;
use crate::clock::now_ms;
use crate::cluster::{ClusterBus, ClusterNote, PgBus};
use crate::config::{Config, Limits};
use crate::metrics::{self, Metrics, Rejection};
use crate::service::{RelayGate, Service, Source};
use crate::store::{SharedStore, StoreError, StoreLocation};

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("server key: {0}")]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building the libp2p swarm: {0}")]
    Swarm(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("no listen address given")]
    NoListenAddress,
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The file in `--data` holding the server's identity key.
pub const KEY_FILE: &str = "server.key";

/// How long [`Server::bind`] waits for its listeners to report addresses.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = (ResponseChannel<RendezvousResponse>, RendezvousResponse);

/// Group commit: a durable reply waits for a flush that starts after its write, and one flush runs
/// at a time, so a burst of writes shares one fsync. (It also keeps sled 0.34 out of a deadlock:
/// concurrent flushes on its own thread pool can starve the log write they wait for.)
#[derive(Default)]
struct GroupCommit {
    flushing: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
    riding: Vec<Pending>,
    waiting: Vec<Pending>,
}

impl GroupCommit {
    fn push(&mut self, pending: Pending, store: &SharedStore) {
        self.waiting.push(pending);
        self.start(store);
    }

    fn start(&mut self, store: &SharedStore) {
        if self.flushing.is_none() && !self.waiting.is_empty() {
            let store = store.clone();
            self.flushing = Some(tokio::task::spawn_blocking(move || store.flush_blocking()));
            self.riding = std::mem::take(&mut self.waiting);
        }
    }
}

async fn flushed(
    flushing: &mut Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
) -> Result<(), StoreError> {
    match flushing {
        Some(handle) => match handle.await {
            Ok(result) => result,
            Err(join) => Err(StoreError::Database(format!(
                "the flush task failed: {join}"
            ))),
        },
        None => std::future::pending().await,
    }
}

async fn next_note(
    cluster: &mut Option<(
        Box<dyn ClusterBus>,
        tokio::sync::mpsc::Receiver<ClusterNote>,
    )>,
) -> Option<ClusterNote> {
    match cluster {
        Some((_, incoming)) => incoming.recv().await,
        None => std::future::pending().await,
    }
}

/// A bound, listening rendezvous server.
pub struct Server {
    swarm: Swarm<Boxed<Behaviour>>,
    service: Service,
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    limits: Limits,
    metrics: Metrics,
    libp2p_metrics: libp2p::metrics::Metrics,
    metrics_endpoint: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// Listen addresses announced as external until the admin names the real ones.
    auto_external: Vec<Multiaddr>,
    explicit_external: bool,
    /// Each session's push stream: the queue its writer task reads (opened as the session logs
    /// in, or at a push when it has none; the queue holds what comes before the stream is open).
    push_streams: HashMap<PeerId, PushQueue>,
    reservations: HashSet<PeerId>,
    /// Events that arrived while `bind` waited for listen addresses.
    early_events: Vec<SwarmEvent<BehaviourEvent>>,
    /// With a shared store: the other instances' notes, and the bus to send ours.
    cluster: Option<(
        Box<dyn ClusterBus>,
        tokio::sync::mpsc::Receiver<ClusterNote>,
    )>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.listen_addrs)
            .finish_non_exhaustive()
    }
}

/// Loads the server's key from `dir`, creating it on first start.
fn load_or_create_key(dir: &Path) -> Result<Identity, ServerError> {
    let path = dir.join(KEY_FILE);
    if path.exists() {
        return Ok(keyfile::read(&path, None)?);
    }
    let identity = Identity::generate(&mut OsRng);
    keyfile::write(&path, &keyfile::seal(&identity, None, &mut OsRng)?)?;
    tracing::info!(path = %path.display(), peer = %identity.peer_id(), "created the server key");
    Ok(identity)
}

fn with_peer_id(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

impl Server {
    /// Opens the store, loads or creates the key, builds the swarm and listens; returns once every
    /// listener has reported its address.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        if config.listen.is_empty() {
            return Err(ServerError::NoListenAddress);
        }
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let identity = load_or_create_key(dir)?;
        let peer_id = identity.peer_id();
        let store = config.store.open(dir, config.limits.store_cache_bytes)?;
        let users = store.user_count()?;

        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let libp2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
        let gate = RelayGate::new(config.relay_only);
        let mut service = Service::new(
            store,
            config.limits.clone(),
            config.registration_tokens.clone(),
            config.relay_only,
            gate.clone(),
            metrics.clone(),
        )?;
        let cluster = match &config.store {
            StoreLocation::Postgres(url) if !config.relay_only => {
                let (bus, incoming) = PgBus::start(url)?;
                service.join_cluster();
                Some((Box::new(bus) as Box<dyn ClusterBus>, incoming))
            }
            _ => None,
        };
        let swarm = behaviour::build_swarm(
            identity.to_libp2p_keypair(),
            &config.limits,
            &gate,
            metrics.relay_bytes.clone(),
        )?;

        let metrics_endpoint = match config.metrics {
            Some(addr) => {
                let listener = metrics::bind(addr)
                    .await
                    .map_err(|source| ServerError::Metrics { addr, source })?;
                let local = listener
                    .local_addr()
                    .map_err(|source| ServerError::Metrics { addr, source })?;
                let task = tokio::spawn(metrics::serve(listener, Arc::new(registry)));
                Some((local, task))
            }
            None => None,
        };

        let mut server = Server {
            swarm,
            service,
            peer_id,
            listen_addrs: Vec::new(),
            limits: config.limits,
            metrics,
            libp2p_metrics,
            metrics_endpoint,
            auto_external: Vec::new(),
            explicit_external: false,
            push_streams: HashMap::new(),
            reservations: HashSet::new(),
            early_events: Vec::new(),
            cluster,
        };
        server.listen(&config.listen).await?;
        tracing::info!(
            peer = %peer_id,
            relay_only = config.relay_only,
            users,
            store = %config.store,
            "rendezvous server listening"
        );
        Ok(server)
    }

    async fn listen(&mut self, addrs: &[Multiaddr]) -> Result<(), ServerError> {
        let mut waiting: HashMap<ListenerId, Multiaddr> = HashMap::new();
        for addr in addrs {
            crate::listen_check::ensure_tcp_port_free(addr).map_err(|e| ServerError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
            let id = self
                .swarm
                .listen_on(addr.clone())
                .map_err(|e| ServerError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            waiting.insert(id, addr.clone());
        }
        let deadline = tokio::time::Instant::now() + BIND_TIMEOUT;
        while !waiting.is_empty() {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| ServerError::Listen {
                    addr: waiting
                        .values()
                        .next()
                        .cloned()
                        .unwrap_or_else(Multiaddr::empty),
                    reason: "no address reported in time".into(),
                })?;
            match event {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    waiting.remove(&listener_id);
                    self.new_listen_addr(address);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } if waiting.contains_key(&listener_id) => {
                    return Err(ServerError::Listen {
                        addr: waiting
                            .remove(&listener_id)
                            .unwrap_or_else(Multiaddr::empty),
                        reason: match reason {
                            Ok(()) => "listener closed".into(),
                            Err(e) => e.to_string(),
                        },
                    });
                }
                SwarmEvent::ListenerError { listener_id, error }
                    if waiting.contains_key(&listener_id) =>
                {
                    return Err(ServerError::Listen {
                        addr: waiting
                            .remove(&listener_id)
                            .unwrap_or_else(Multiaddr::empty),
                        reason: error.to_string(),
                    });
                }
                other => self.early_events.push(other),
            }
        }
        // A wildcard listener reports one address per interface, in a quick burst.
        while let Ok(event) =
            tokio::time::timeout(Duration::from_millis(20), self.swarm.select_next_some()).await
        {
            match event {
                SwarmEvent::NewListenAddr { address, .. } => self.new_listen_addr(address),
                other => self.early_events.push(other),
            }
        }
        Ok(())
    }

    fn new_listen_addr(&mut self, address: Multiaddr) {
        let full = with_peer_id(&address, self.peer_id);
        tracing::info!(%full, "listening");
        if !self.listen_addrs.contains(&full) {
            self.listen_addrs.push(full);
        }
        if !self.explicit_external {
            self.swarm.add_external_address(address.clone());
            self.auto_external.push(address);
        }
    }

    /// The server's `PeerId`, stable across restarts (its key lives in the data directory).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Where the server listens, each address ending in `/p2p/<id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.clone()
    }

    /// Where the metrics endpoint actually listens (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().map(|(addr, _)| *addr)
    }

    /// Announces `addr` as where peers reach this server (in relay reservations and identify),
    /// replacing the listen addresses announced by default — for a server behind NAT or a
    /// load balancer.
    pub fn add_external_address(&mut self, addr: Multiaddr) {
        if !self.explicit_external {
            self.explicit_external = true;
            for auto in self.auto_external.drain(..) {
                self.swarm.remove_external_address(&auto);
            }
        }
        self.swarm.add_external_address(addr);
    }

    /// Serves until `shutdown` completes, then flushes the store and closes every connection.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let mut shutdown = pin!(shutdown);
        let mut commit = GroupCommit::default();
        let mut tick = tokio::time::interval(self.limits.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for event in std::mem::take(&mut self.early_events) {
            self.on_swarm_event(event, &mut commit);
        }
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event, &mut commit),
                result = flushed(&mut commit.flushing), if commit.flushing.is_some() => {
                    commit.flushing = None;
                    let failed = result.err().map(Refusal::from);
                    for (channel, response) in std::mem::take(&mut commit.riding) {
                        let response = match &failed {
                            None => response,
                            Some(refusal) => RendezvousResponse::Refused(refusal.clone()),
                        };
                        let _ = self.swarm.behaviour_mut().palaver.send_response(channel, response);
                    }
                    commit.start(self.service.store());
                }
                note = next_note(&mut self.cluster) => match note {
                    Some(note) => {
                        if note.from != self.peer_id.to_string() {
                            self.service.cluster_event(note.from, note.event, now_ms());
                        }
                    }
                    None => {
                        tracing::error!("the cluster bus stopped; presence no longer crosses instances");
                        self.cluster = None;
                    }
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    if self.service.next_due().is_some_and(|due| due <= now) {
                        self.service.tick(now);
                    }
                }
                () = &mut shutdown => break,
            }
            self.carry_out();
        }
        tracing::info!("shutting down");
        self.service.shutdown(now_ms());
        // Replies still waiting for their flush are covered by this one; their peers are being
        // disconnected and will retry.
        if let Some(flushing) = commit.flushing.take() {
            let _ = flushing.await;
        }
        let store = self.service.store().clone();
        tokio::task::spawn_blocking(move || store.flush_blocking())
            .await
            .map_err(|e| StoreError::Database(format!("the flush task failed: {e}")))??;
        if let Some((_, task)) = self.metrics_endpoint.take() {
            task.abort();
        }
        drop(commit);
        drop(self.swarm);
        tracing::info!("stopped");
        Ok(())
    }

    /// Sends the service's pushes and carries out its disconnects.
    fn carry_out(&mut self) {
        for (peer, push) in self.service.take_pushes() {
            let counter = match self.push_to(peer, push) {
                Ok(()) => &self.metrics.pushes_sent,
                // Behind by a full queue: it re-asks what it missed when it next looks.
                Err(full) if full.is_full() => &self.metrics.pushes_dropped,
                Err(_) => {
                    self.push_streams.remove(&peer);
                    &self.metrics.pushes_dropped
                }
            };
            counter.inc();
        }
        for peer in self.service.take_disconnects() {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let events = self.service.take_cluster_events();
        if let Some((bus, _)) = &self.cluster {
            let from = self.peer_id.to_string();
            for event in events {
                bus.publish(ClusterNote {
                    from: from.clone(),
                    event,
                });
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>, commit: &mut GroupCommit) {
        self.libp2p_metrics.record(&event);
        let now = now_ms();
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Palaver(event)) => {
                self.on_request_event(event, commit, now)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                self.libp2p_metrics.record(&event);
                self.on_relay_event(event, now);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Push(opened)) => self.on_push_stream(opened),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => {
                self.libp2p_metrics.record(&event)
            }
            SwarmEvent::Behaviour(_) => {}
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => self.service.connected(peer_id, now),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.service.disconnected(peer_id, now);
                self.push_streams.remove(&peer_id);
                if self.reservations.remove(&peer_id) {
                    self.metrics
                        .relay_reservations
                        .set(self.reservations.len() as i64);
                }
            }
            // One of a peer's connections closed, others stay: if its push stream was on that
            // one, the session gets a new one on another.
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } if self.push_streams.get(&peer_id).and_then(|q| q.connection)
                == Some(connection_id) =>
            {
                self.open_push_stream(peer_id, None);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let source = send_back_addr
                    .iter()
                    .find_map(|p| match p {
                        Protocol::Ip4(ip) => Some(Source::Ip(ip.into())),
                        Protocol::Ip6(ip) => Some(Source::Ip(ip.into())),
                        _ => None,
                    })
                    .unwrap_or(Source::Unknown);
                self.service
                    .reject(source, Rejection::Handshake, &error, now);
            }
            SwarmEvent::NewListenAddr { address, .. } => self.new_listen_addr(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                if let Some(i) = self.auto_external.iter().position(|a| *a == address) {
                    self.auto_external.remove(i);
                    self.swarm.remove_external_address(&address);
                }
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            _ => {}
        }
    }

    fn on_request_event(
        &mut self,
        event: request_response::Event<Inbound, RendezvousResponse>,
        commit: &mut GroupCommit,
        now: Millis,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            } => {
                let reply = match request {
                    Inbound::Request(request) => self.service.handle(peer, request, now),
                    Inbound::TooLarge { limit } => self.service.malformed(
                        peer,
                        RefusalReason::TooLarge,
                        format!("a request may be at most {limit} bytes"),
                        now,
                    ),
                    Inbound::Malformed(error) => self.service.malformed(
                        peer,
                        RefusalReason::Invalid,
                        format!("the request did not decode: {error}"),
                        now,
                    ),
                };
                // A session's push stream opens as it starts, so its first push waits for no
                // stream negotiation.
                if matches!(reply.response, RendezvousResponse::LoggedIn { .. }) {
                    self.logged_in(peer, connection_id);
                }
                if reply.durable {
                    commit.push((channel, reply.response), self.service.store());
                } else {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .palaver
                        .send_response(channel, reply.response);
                }
            }
            // Bad frames arrive as `Inbound` values above; what is left here is the connection
            // going away mid-request, or a response the peer did not wait for.
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::Message {
                message: request_response::Message::Response { .. },
                ..
            }
            | request_response::Event::OutboundFailure { .. }
            | request_response::Event::ResponseSent { .. } => {}
        }
    }


    /// Queues `push` for `peer`'s push stream, opened now if it has none (or its last one
    /// broke).
    fn push_to(
        &mut self,
        peer: PeerId,
        push: ServerPush,
    ) -> Result<(), mpsc::TrySendError<ServerPush>> {
        match self.push_streams.get_mut(&peer) {
            Some(q) if !q.queue.is_closed() => q.queue.try_send(push),
            Some(q) => {
                let connection = q.connection;
                self.open_push_stream(peer, connection).queue.try_send(push)
            }
            None => self.open_push_stream(peer, None).queue.try_send(push),
        }
    }

    /// `peer` logged in on `connection`: its push stream is opened there, unless it has one on
    /// that connection already (a connection it logged in on before may be one that lingers,
    /// dead, after a network change).
    fn logged_in(&mut self, peer: PeerId, connection: ConnectionId) {
        let current = self.push_streams.get(&peer);
        if !current.is_some_and(|q| q.connection == Some(connection) && !q.queue.is_closed()) {
            self.open_push_stream(peer, Some(connection));
        }
    }

    /// Opens a new push stream to `peer` (on `connection`, or any of its connections),
    /// replacing its last, whose writer then ends: what is pushed meanwhile waits in the queue.
    fn open_push_stream(
        &mut self,
        peer: PeerId,
        connection: Option<ConnectionId>,
    ) -> &mut PushQueue {
        // A channel that allocates as pushes come (tokio's takes a block of 32 at once, 1.6 KiB a
        // session here); it holds its buffer and one more per sender, so `max` in all.
        let max = self.limits.max_pushes_in_flight.max(1);
        let (queue, waiting) = mpsc::channel(max - 1);
        let waiting = Some(waiting);
        let entry = PushQueue {
            queue,
            waiting,
            connection,
        };
        self.swarm.behaviour_mut().push.open(peer, connection);
        self.push_streams.entry(peer).insert_entry(entry).into_mut()
    }

    /// A push stream opened (or not): its writer starts on the queue that waits for it. A
    /// stream no queue waits for (one opened again since, or on another connection) is dropped.
    /// One that could not be opened closes the queue: the next push opens another.
    fn on_push_stream(&mut self, opened: crate::push_stream::Opened) {
        let peer = opened.peer;
        let Some(entry) = self.push_streams.get_mut(&peer) else {
            return;
        };
        if entry.connection.is_some_and(|c| c != opened.connection) {
            return;
        }
        let Some(waiting) = entry.waiting.take() else {
            return;
        };
        match opened.stream {
            Ok(stream) => {
                entry.connection = Some(opened.connection);
                tokio::spawn(write_pushes(peer, stream, waiting));
            }
            Err(error) => tracing::debug!(%peer, %error, "cannot open a push stream"),
        }
    }

    fn on_relay_event(&mut self, event: relay::Event, now: Millis) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                self.metrics.relay_reservation("accepted");
                self.reservations.insert(src_peer_id);
            }
            relay::Event::ReservationReqDenied { src_peer_id, .. } => {
                self.metrics.relay_reservation("denied");
                self.service.reject(
                    Source::Peer(src_peer_id),
                    Rejection::RelayDenied,
                    &"reservation denied (not logged in, or over a limit)",
                    now,
                );
            }
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => {
                self.reservations.remove(&src_peer_id);
            }
            relay::Event::CircuitReqAccepted { .. } => {
                self.metrics.relay_circuit("accepted");
                self.metrics.relay_circuits.inc();
            }
            relay::Event::CircuitReqDenied { src_peer_id, .. } => {
                self.metrics.relay_circuit("denied");
                self.service.reject(
                    Source::Peer(src_peer_id),
                    Rejection::RelayDenied,
                    &"circuit denied (not logged in, no reservation, or over a limit)",
                    now,
                );
            }
            relay::Event::CircuitClosed { .. } => {
                self.metrics.relay_circuits.dec();
            }
            _ => {}
        }
        self.metrics
            .relay_reservations
            .set(self.reservations.len() as i64);
    }
}

/// A session's push queue: the sender the server pushes into, and the receiver that waits for
/// the stream to open (then its writer's).
struct PushQueue {
    queue: mpsc::Sender<ServerPush>,
    waiting: Option<mpsc::Receiver<ServerPush>>,
    /// The connection it is (to be) on, once known.
    connection: Option<ConnectionId>,
}

/// Writes `peer`'s pushes to its push stream, in a task of its own (a slow reader holds up no
/// one else), until the queue closes or the stream breaks. The stream does not count for
/// keeping the connection open: the session's own requests do.
async fn write_pushes(peer: PeerId, mut stream: libp2p::Stream, mut queued: mpsc::Receiver<ServerPush>) {
    stream.ignore_for_keep_alive();
    while let Some(push) = queued.next().await {
        if let Err(error) = crate::transport::write_push(&mut stream, &push).await {
            return tracing::debug!(%peer, %error, "a push stream closed");
        }
    }
}
