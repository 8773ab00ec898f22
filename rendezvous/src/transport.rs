//! What the peer and the server agree on below the wire types: the libp2p protocols and codecs
//! of `/palaver/rendezvous/1` (peer → server) and `/palaver/push/1` (server → peer), and the
//! transport settings (TCP with Noise and Yamux, and QUIC) both build their swarms with.

use libp2p::{StreamProtocol, tcp, yamux};
use palaver_protocol::codec::MAX_FRAME_LEN;
use palaver_protocol::wire::{
    MAX_ENVELOPE_LEN, RendezvousRequest, RendezvousResponse, ServerPush, protocol_names,
};

use crate::FrameCodec;

/// The request-response codec of `/palaver/rendezvous/1` (the peer's side).
pub type RendezvousCodec = FrameCodec<RendezvousRequest, RendezvousResponse>;
/// The request-response codec of `/palaver/push/1`.
pub type PushCodec = FrameCodec<ServerPush, ()>;

/// Largest push frame (a presence record or a count).
pub const MAX_PUSH_BYTES: usize = 4 * 1024;
/// The identify protocol version Palaver peers announce.
pub const IDENTIFY_PROTOCOL: &str = "/palaver/1.0.0";
/// Largest request a peer sends the rendezvous: a deposited envelope and its framing.
pub const MAX_RENDEZVOUS_REQUEST: usize = MAX_ENVELOPE_LEN + 4096;

pub fn rendezvous_protocol() -> StreamProtocol {
    StreamProtocol::new(protocol_names::RENDEZVOUS)
}

pub fn push_protocol() -> StreamProtocol {
    StreamProtocol::new(protocol_names::PUSH)
}

/// The peer's codec for `/palaver/rendezvous/1`: requests up to [`MAX_RENDEZVOUS_REQUEST`],
/// answers up to a frame.
pub fn rendezvous_client_codec() -> RendezvousCodec {
    FrameCodec::new(MAX_RENDEZVOUS_REQUEST, MAX_FRAME_LEN)
}

/// The codec of `/palaver/push/1`, either side (a push is answered with nothing).
pub fn push_codec() -> PushCodec {
    FrameCodec::new(MAX_PUSH_BYTES, 16)
}

pub fn tcp_config() -> tcp::Config {
    tcp::Config::default().nodelay(true)
}

pub fn yamux_config() -> yamux::Config {
    yamux::Config::default()
}
