//! The node's one libp2p behaviour and the swarm built around it.

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, autonat, dcutr, gossipsub, identify, mdns, noise, ping, relay,
    swarm::NetworkBehaviour,
};
use palaver_protocol::codec::MAX_FRAME_LEN;
use palaver_protocol::wire::{MAX_ENVELOPE_LEN, PeerRequest, PeerResponse, protocol_names};
use palaver_protocol::{Identity, MessageId};
use palaver_rendezvous::{FrameCodec, transport};

use super::gossip_gate::GossipGate;

pub(crate) type RendezvousRpc = request_response::Behaviour<transport::RendezvousCodec>;
pub(crate) type PeerRpc = request_response::Behaviour<FrameCodec<PeerRequest, PeerResponse>>;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) dcutr: dcutr::Behaviour,
    /// Tests our observed addresses through the rendezvous (its AutoNAT v2 server dials back).
    pub(crate) autonat: autonat::v2::client::Behaviour,
    /// Gossipsub behind the gate that keeps private rooms' topics to their members.
    pub(crate) gossipsub: GossipGate,
    pub(crate) rendezvous: RendezvousRpc,
    pub(crate) peer: PeerRpc,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Streams of their own: file transfers (`/palaver/file/1`, see `daemon::files`) and the
    /// rendezvous's pushes (`/palaver/push/2`, one stream per session, which it opens).
    pub(crate) stream: libp2p_stream::Behaviour,
}

/// How long a peer has to answer a request before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection whose ping goes unanswered this long is closed (see `reach`): a path that died
/// with a network change is noticed within `PING_INTERVAL + PING_TIMEOUT`.
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn build_swarm(identity: &Identity, use_mdns: bool) -> anyhow::Result<Swarm<Behaviour>> {
    let keypair = identity.to_libp2p_keypair();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            transport::tcp_config(),
            noise::Config::new,
            transport::yamux_config,
        )?
        .with_quic()
        .with_relay_client(noise::Config::new, transport::yamux_config)?
        .with_behaviour(|key, relay_client| {
            let local = key.public().to_peer_id();
            let rr_config =
                request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT);
            // Our envelopes are signed and content-addressed already: gossipsub need not sign
            // them again, and its message id is ours, so gossip and application dedup agree.
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .message_id_fn(|message: &gossipsub::Message| {
                    gossipsub::MessageId::from(MessageId::of_frame(&message.data).0.to_vec())
                })
                .validate_messages()
                .max_transmit_size(MAX_ENVELOPE_LEN)
                .heartbeat_interval(Duration::from_millis(500))
                .build()
                .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
            let gossipsub =
                gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
                    .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
            } else {
                None
            };
            Ok(Behaviour {
                relay_client,
                identify: identify::Behaviour::new(identify::Config::new(
                    transport::IDENTIFY_PROTOCOL.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(PING_INTERVAL)
                        .with_timeout(PING_TIMEOUT),
                ),
                dcutr: dcutr::Behaviour::new(local),
                autonat: autonat::v2::client::Behaviour::default(),
                gossipsub: GossipGate::new(gossipsub),
                rendezvous: request_response::Behaviour::with_codec(
                    transport::rendezvous_client_codec(),
                    [(transport::rendezvous_protocol(), ProtocolSupport::Outbound)],
                    rr_config.clone(),
                ),
                peer: request_response::Behaviour::with_codec(
                    FrameCodec::new(MAX_FRAME_LEN, MAX_FRAME_LEN),
                    [(
                        StreamProtocol::new(protocol_names::PEER),
                        ProtocolSupport::Full,
                    )],
                    rr_config,
                ),
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
            })
        })?
        .with_swarm_config(|config| {
            // A stream we open for one protocol (the last we propose) sends its first bytes
            // along with the protocol's name, rather than after the peer has echoed it
            // (multistream-select's 0-RTT variant; the wire format is V1's). Each direct
            // message's delivery opens a stream, and that echo was ~120 µs of its round trip
            // here (BENCHMARKS.md).
            config
                .with_idle_connection_timeout(Duration::from_secs(120))
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}
