//! The server's one libp2p `NetworkBehaviour` and the swarm around it.
//!
//! Transports: TCP (Noise, Yamux) and QUIC. Behaviours: identify, ping, autonat v2 (server side:
//! nodes ask it to dial them back; no node speaks v1, whose handler every connection paid
//! for), the circuit relay v2 server, and Palaver's two protocols:
//! `/palaver/rendezvous/1` (node → server, request-response) and `/palaver/push/2` (server →
//! node: one stream per session, which the server opens, see [`crate::push_stream`]).
//!
//! Everything a peer can ask of the server beyond identify, ping and autonat is gated on login.
//! Accounts, prekeys, presence, the mailbox and discovery are all requests of
//! `/palaver/rendezvous/1`, which the service answers only for sessions (see
//! [`crate::service`]); there is no libp2p rendezvous server, so no protocol here lists or
//! stores peer records for a peer that has not logged in. The relay is gated by [`LoginGate`]:
//! its reservation and circuit rate limiters consult the set of logged-in peers first, so only
//! sessions may reserve a slot or open a circuit. A peer that has not logged in within the login
//! timeout is disconnected.

use std::num::NonZeroU32;
use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, identify, identity::Keypair, noise, ping,
    relay, request_response,
};
use palaver_protocol::wire::{RendezvousRequest, RendezvousResponse};

use crate::FrameCodec;
use crate::boxed_handler::Boxed;
use crate::config::Limits;
use crate::relay_meter;
use crate::service::RelayGate;
use crate::transport::{
    IDENTIFY_PROTOCOL, RendezvousCodec, rendezvous_protocol,
};

/// A request as the server reads it: request-response drops streams whose request fails to decode
/// without telling anyone, so the server's codec turns bad frames into values instead, and the
/// actor counts, logs and answers them with the peer in hand.
#[derive(Debug)]
pub(crate) enum Inbound {
    Request(RendezvousRequest),
    /// A frame over the size limit (only its first `max + 1` bytes were read).
    TooLarge {
        limit: usize,
    },
    /// A frame that did not decode.
    Malformed(String),
}

/// The server's codec for `/palaver/rendezvous/1`: same bytes as [`RendezvousCodec`].
#[derive(Debug, Clone)]
pub(crate) struct ServerCodec {
    frames: RendezvousCodec,
    max_request: usize,
}

impl ServerCodec {
    pub(crate) fn new(max_request: usize, max_response: usize) -> Self {
        Self {
            frames: FrameCodec::new(max_request, max_response),
            max_request,
        }
    }
}

impl request_response::Codec for ServerCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound;
    type Response = RendezvousResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Inbound>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        use futures::AsyncReadExt;
        let mut frame = Vec::new();
        io.take(self.max_request as u64 + 1)
            .read_to_end(&mut frame)
            .await?;
        if frame.len() > self.max_request {
            return Ok(Inbound::TooLarge {
                limit: self.max_request,
            });
        }
        Ok(
            match palaver_protocol::codec::decode_bounded(&frame, self.max_request) {
                Ok(request) => Inbound::Request(request),
                Err(error) => Inbound::Malformed(error.to_string()),
            },
        )
    }

    async fn read_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<RendezvousResponse>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        self.frames.read_response(protocol, io).await
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        request: Inbound,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        match request {
            Inbound::Request(request) => self.frames.write_request(protocol, io, request).await,
            _ => Err(std::io::ErrorKind::InvalidInput.into()),
        }
    }

    async fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        response: RendezvousResponse,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        self.frames.write_response(protocol, io, response).await
    }
}
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) autonat: autonat::v2::server::Behaviour,
    pub(crate) relay: relay::Behaviour,
    pub(crate) palaver: request_response::Behaviour<ServerCodec>,
    pub(crate) push: crate::push_stream::PushStreams,
}

/// Admits only logged-in peers to the relay (checked before the per-peer rate limiters, so
/// refused peers spend no tokens).
struct LoginGate(RelayGate);

impl relay::RateLimiter for LoginGate {
    fn try_next(&mut self, peer: PeerId, _: &Multiaddr, _: std::time::Instant) -> bool {
        self.0.allows(&peer)
    }
}

fn relay_config(limits: &Limits, gate: &RelayGate) -> relay::Config {
    let r = &limits.relay;
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    let interval = r.interval.max(Duration::from_millis(1));
    relay::Config {
        max_reservations: r.max_reservations,
        max_reservations_per_peer: r.max_reservations_per_peer,
        reservation_duration: r.reservation_duration,
        reservation_rate_limiters: vec![Box::new(LoginGate(gate.clone()))],
        max_circuits: r.max_circuits,
        max_circuits_per_peer: r.max_circuits_per_peer,
        // The relay protocol carries the duration in a u32 of seconds.
        max_circuit_duration: r
            .max_circuit_duration
            .min(Duration::from_secs(u64::from(u32::MAX))),
        max_circuit_bytes: r.max_circuit_bytes,
        circuit_src_rate_limiters: vec![Box::new(LoginGate(gate.clone()))],
    }
    .reservation_rate_per_peer(burst, interval)
    .circuit_src_per_peer(burst, interval)
}

/// Builds the server's swarm (not yet listening).
pub(crate) fn build_swarm(
    keypair: Keypair,
    limits: &Limits,
    gate: &RelayGate,
    relay_bytes: prometheus_client::metrics::counter::Counter,
) -> Result<Swarm<Boxed<Behaviour>>, crate::ServerError> {
    let build = |e: &dyn std::fmt::Display| crate::ServerError::Swarm(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| relay_meter::transport(key, relay_bytes))
        .map_err(|e| build(&e))?
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mut relay = relay::Behaviour::new(local, relay_config(limits, gate));
            // A rendezvous is public by definition: offer the relay from the start rather than
            // waiting for autonat to confirm an external address.
            relay.set_status(Some(relay::Status::Enable));
            Boxed(Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(format!(
                            "palaver-rendezvous/{}",
                            env!("CARGO_PKG_VERSION")
                        )),
                ),
                ping: ping::Behaviour::default(),
                autonat: autonat::v2::server::Behaviour::default(),
                relay,
                palaver: request_response::Behaviour::with_codec(
                    ServerCodec::new(limits.max_request_bytes, limits.max_response_bytes),
                    [(
                        rendezvous_protocol(),
                        request_response::ProtocolSupport::Inbound,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30))
                        .with_max_concurrent_streams(16),
                ),
                push: Default::default(),
            })
        })
        .map_err(|e| build(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(limits.idle_connection_timeout))
        .build();
    Ok(swarm)
}

pub(crate) fn noise_config(key: &Keypair) -> Result<noise::Config, noise::Error> {
    noise::Config::new(key)
}
