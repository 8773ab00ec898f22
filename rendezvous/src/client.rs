//! A lightweight client of the rendezvous: one small swarm (TCP or QUIC, Noise, Yamux; the
//! rendezvous protocol outbound, the push stream, the relay client) driven by its own task, with
//! async methods in front of it. Tests, tools and the load generator use it; a session
//! costs one swarm with one connection.
//!
//! ```no_run
//! # async fn demo(addr: libp2p::Multiaddr) -> Result<(), Box<dyn std::error::Error>> {
//! use palaver_protocol::{Identity, UserName, wire::RendezvousRequest};
//! use palaver_rendezvous::client::Client;
//!
//! let me = Identity::generate(&mut rand_core::OsRng);
//! let mut client = Client::connect(addr, &me).await?;
//! let name = UserName::new("alice")?;
//! client.request(RendezvousRequest::Register { name: name.clone(), token: None }).await?;
//! client.request(RendezvousRequest::Login { name, instance: 1 }).await?;
//! while let Some(push) = client.next_push().await {
//!     println!("{push:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! Pushes arrive over the push stream the server opens to a session, onto a bounded channel
//! ([`ClientConfig::push_buffer`]); a reader that falls behind holds up only that stream (the
//! server then drops pushes for it), never the connection.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, dial_opts::DialOpts};
use libp2p::{Multiaddr, PeerId, Swarm, noise, relay};
use palaver_protocol::Identity;
use palaver_protocol::wire::{RendezvousRequest, RendezvousResponse, ServerPush};
use tokio::sync::{mpsc, oneshot, watch};

pub mod session;

use crate::FrameCodec;
use crate::transport::{
    RendezvousCodec, accept_pushes, push_protocol, rendezvous_protocol, tcp_config, yamux_config,
};

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long to wait for the connection, and for each response.
    pub timeout: Duration,
    /// Pushes held for the reader; beyond this the push stream waits (and the server drops).
    pub push_buffer: usize,
    /// Largest response accepted.
    pub max_response_bytes: usize,
    /// Largest request sent (the server enforces its own limit too).
    pub max_request_bytes: usize,
    /// Keep the connection this long without streams.
    pub idle_connection_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            push_buffer: 256,
            max_response_bytes: palaver_protocol::codec::MAX_FRAME_LEN,
            max_request_bytes: 128 * 1024,
            idle_connection_timeout: Duration::from_secs(3600),
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("building the client: {0}")]
    Build(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: Multiaddr, reason: String },
    #[error("the connection to the server is closed")]
    Disconnected,
    #[error("request failed: {0}")]
    Request(String),
    #[error("relay: {0}")]
    Relay(String),
    #[error("timed out")]
    Timeout,
}

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    relay: relay::client::Behaviour,
    palaver: request_response::Behaviour<RendezvousCodec>,
    push: libp2p_stream::Behaviour,
}

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

enum Command {
    Request(RendezvousRequest, Reply<RendezvousResponse>),
    Reserve(Reply<Multiaddr>),
    Dial(Multiaddr, PeerId, Reply<()>),
}

/// Hands `make`'s command to the client's task and waits (at most `timeout`) for its answer.
async fn call<T>(
    commands: mpsc::Sender<Command>,
    timeout: Duration,
    make: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, ClientError> {
    let (tx, rx) = oneshot::channel();
    commands
        .send(make(tx))
        .await
        .map_err(|_| ClientError::Disconnected)?;
    tokio::time::timeout(timeout, rx)
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|_| ClientError::Disconnected)?
}

/// A connection to a rendezvous server.
#[derive(Debug)]
pub struct Client {
    peer_id: PeerId,
    server: PeerId,
    server_addr: Multiaddr,
    timeout: Duration,
    commands: mpsc::Sender<Command>,
    /// The server's pushes (with its peer id: `accept_pushes` takes no one else's).
    pushes: mpsc::Receiver<(PeerId, ServerPush)>,
    connected: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    push_task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
        self.push_task.abort();
    }
}

impl Client {
    /// Connects to the server at `addr` as `identity` with the default configuration.
    pub async fn connect(addr: Multiaddr, identity: &Identity) -> Result<Client, ClientError> {
        Self::connect_with(addr, identity, ClientConfig::default()).await
    }

    /// Connects to the server at `addr` (with or without `/p2p/<id>`) as `identity`.
    pub async fn connect_with(
        addr: Multiaddr,
        identity: &Identity,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let mut swarm = build_swarm(identity, &config)?;
        let connect_error = |reason: String| ClientError::Connect {
            addr: addr.clone(),
            reason,
        };
        let opts = match addr.iter().last() {
            Some(Protocol::P2p(peer)) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .build(),
            _ => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let dial_id = opts.connection_id();
        swarm.dial(opts).map_err(|e| connect_error(e.to_string()))?;
        let server = tokio::time::timeout(config.timeout, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished {
                        peer_id,
                        connection_id,
                        ..
                    } if connection_id == dial_id => return Ok(peer_id),
                    SwarmEvent::OutgoingConnectionError {
                        connection_id,
                        error,
                        ..
                    } if connection_id == dial_id => return Err(connect_error(error.to_string())),
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout)??;
        let server_addr = match addr.iter().last() {
            Some(Protocol::P2p(_)) => addr.clone(),
            _ => addr.clone().with(Protocol::P2p(server)),
        };
        let (commands, command_rx) = mpsc::channel(64);
        let (push_tx, pushes) = mpsc::channel(config.push_buffer.max(1));
        let (connected_tx, connected) = watch::channel(true);
        let peer_id = *swarm.local_peer_id();
        let incoming = (swarm.behaviour().push.new_control())
            .accept(push_protocol())
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let (_, from) = watch::channel(Some(server));
        let push_task = tokio::spawn(accept_pushes(incoming, from, push_tx));
        let task = tokio::spawn(
            Driver {
                swarm,
                server,
                server_addr: server_addr.clone(),
                pending: HashMap::new(),
                reservation: None,
                dials: HashMap::new(),
                connected: connected_tx,
            }
            .run(command_rx),
        );
        Ok(Client {
            peer_id,
            server,
            server_addr,
            timeout: config.timeout,
            commands,
            pushes,
            connected,
            task,
            push_task,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The server's `PeerId`, as authenticated by the handshake.
    pub fn server(&self) -> PeerId {
        self.server
    }

    /// Whether the connection to the server is still open.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Resolves once the server has closed the connection.
    pub async fn disconnected(&self) {
        let mut connected = self.connected.clone();
        let _ = connected.wait_for(|c| !*c).await;
    }

    async fn command<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ClientError> {
        call(self.commands.clone(), self.timeout, make).await
    }

    /// Sends one request and waits for its response.
    pub async fn request(
        &self,
        request: RendezvousRequest,
    ) -> Result<RendezvousResponse, ClientError> {
        self.command(|tx| Command::Request(request, tx)).await
    }

    /// [`Client::request`], as a future that does not borrow the client (several in flight
    /// at once, as [`session::ClientSession`] keeps them).
    pub fn request_owned(
        &self,
        request: RendezvousRequest,
    ) -> impl Future<Output = Result<RendezvousResponse, ClientError>> + Send + 'static {
        let make = |tx| Command::Request(request, tx);
        call(self.commands.clone(), self.timeout, make)
    }

    /// The next push from the server; `None` once the client has stopped.
    pub async fn next_push(&mut self) -> Option<ServerPush> {
        self.pushes.recv().await.map(|(_, push)| push)
    }

    /// A push already received, without waiting.
    pub fn try_next_push(&mut self) -> Option<ServerPush> {
        self.pushes.try_recv().ok().map(|(_, push)| push)
    }

    /// Reserves a relay slot at the server; returns our circuit address.
    pub async fn reserve_relay(&self) -> Result<Multiaddr, ClientError> {
        self.command(Command::Reserve).await
    }

    /// Connects to `peer` through a circuit at the server (the peer must hold a reservation).
    pub async fn dial_via_relay(&self, peer: PeerId) -> Result<(), ClientError> {
        let addr = self
            .server_addr
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(peer));
        self.command(|tx| Command::Dial(addr, peer, tx)).await
    }
}

fn build_swarm(
    identity: &Identity,
    config: &ClientConfig,
) -> Result<Swarm<ClientBehaviour>, ClientError> {
    let build = |e: &dyn std::fmt::Display| ClientError::Build(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(identity.to_libp2p_keypair())
        .with_tokio()
        .with_tcp(tcp_config(), noise::Config::new, yamux_config)
        .map_err(|e| build(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux_config)
        .map_err(|e| build(&e))?
        .with_behaviour(|_, relay| ClientBehaviour {
            relay,
            palaver: request_response::Behaviour::with_codec(
                FrameCodec::new(config.max_request_bytes, config.max_response_bytes),
                [(rendezvous_protocol(), ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(config.timeout),
            ),
            push: libp2p_stream::Behaviour::new(),
        })
        .map_err(|e| build(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();
    Ok(swarm)
}

struct Driver {
    swarm: Swarm<ClientBehaviour>,
    server: PeerId,
    server_addr: Multiaddr,
    pending: HashMap<OutboundRequestId, Reply<RendezvousResponse>>,
    reservation: Option<(ListenerId, Reply<Multiaddr>)>,
    dials: HashMap<PeerId, Vec<Reply<()>>>,
    connected: watch::Sender<bool>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request(request, reply) => {
                if !*self.connected.borrow() {
                    let _ = reply.send(Err(ClientError::Disconnected));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .palaver
                    .send_request(&self.server, request);
                self.pending.insert(id, reply);
            }
            Command::Reserve(reply) => {
                let addr = self.server_addr.clone().with(Protocol::P2pCircuit);
                match self.swarm.listen_on(addr) {
                    Ok(id) => {
                        if let Some((_, old)) = self.reservation.replace((id, reply)) {
                            let _ = old.send(Err(ClientError::Relay("superseded".into())));
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ClientError::Relay(e.to_string())));
                    }
                }
            }
            Command::Dial(addr, peer, reply) => match self.swarm.dial(addr) {
                Ok(()) => self.dials.entry(peer).or_default().push(reply),
                Err(e) => {
                    let _ = reply.send(Err(ClientError::Relay(e.to_string())));
                }
            },
        }
    }

    fn is_reservation(&self, listener: ListenerId) -> bool {
        self.reservation
            .as_ref()
            .is_some_and(|(id, _)| *id == listener)
    }

    fn on_event(&mut self, event: SwarmEvent<ClientBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(ClientBehaviourEvent::Palaver(event)) => match event {
                request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Err(ClientError::Request(error.to_string())));
                    }
                }
                _ => {}
            },
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } if self.is_reservation(listener_id) => {
                if let Some((_, reply)) = self.reservation.take() {
                    let _ = reply.send(Ok(address));
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if self.is_reservation(listener_id) => {
                if let Some((_, reply)) = self.reservation.take() {
                    let why = match reason {
                        Ok(()) => "reservation closed".to_string(),
                        Err(e) => format!("reservation refused: {e}"),
                    };
                    let _ = reply.send(Err(ClientError::Relay(why)));
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                for reply in self.dials.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                for reply in self.dials.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(ClientError::Relay(error.to_string())));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if peer_id == self.server => {
                self.connected.send_replace(false);
                for (_, reply) in self.pending.drain() {
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
            }
            _ => {}
        }
    }
}
