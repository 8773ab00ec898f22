//! What the peer and the server agree on below the wire types: the libp2p protocols and codecs
//! of `/palaver/rendezvous/1` (peer → server, request-response) and `/palaver/push/2` (server →
//! peer: one long-lived stream per session, opened by the server, carrying push frames; no
//! stream, negotiation, timer or answer per push), and the transport settings (TCP with Noise and
//! Yamux, and QUIC) both build their swarms with.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol, tcp, yamux};
use palaver_protocol::codec::MAX_FRAME_LEN;
use palaver_protocol::wire::{
    MAX_ENVELOPE_LEN, RendezvousRequest, RendezvousResponse, ServerPush, protocol_names,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, watch};

use crate::FrameCodec;

/// The request-response codec of `/palaver/rendezvous/1` (the peer's side).
pub type RendezvousCodec = FrameCodec<RendezvousRequest, RendezvousResponse>;

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

/// `value` as a length-prefixed frame: its 4-byte big-endian length, then the [`codec`] frame
/// (at most `max` bytes), in one buffer (written in one write: one muxer frame, not two). The
/// framing of the push stream, and of the node's file stream.
///
/// [`codec`]: palaver_protocol::codec
pub fn length_prefixed<T: Serialize>(value: &T, max: usize) -> std::io::Result<Vec<u8>> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let body = palaver_protocol::codec::encode(value).map_err(|e| invalid(e.to_string()))?;
    if body.len() > max {
        let len = body.len();
        return Err(invalid(format!(
            "a frame of {len} bytes is over the {max}-byte limit"
        )));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reads one [`length_prefixed`] frame; `None` at a clean end between frames. A frame over
/// `max` is refused before it is read; that and one that does not decode are `InvalidData`.
pub async fn read_length_prefixed<T: DeserializeOwned>(
    io: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    if len > max {
        return Err(invalid(format!(
            "a frame of {len} bytes is over the {max}-byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    palaver_protocol::codec::decode_bounded(&body, max)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// Writes one push frame to a push stream (and flushes it).
pub async fn write_push(
    io: &mut (impl AsyncWrite + Unpin),
    push: &ServerPush,
) -> std::io::Result<()> {
    io.write_all(&length_prefixed(push, MAX_PUSH_BYTES)?)
        .await?;
    io.flush().await
}

/// Takes the push streams opened to us (`incoming`, accepted for [`push_protocol`]) by the
/// server `from` names (any other's are dropped at once) and hands on every push, with the
/// server that sent it, until `pushes` closes. A reader slower than the pushes holds up only its
/// stream (the server's queue for it then drops). The streams do not keep a connection open.
pub async fn accept_pushes(
    mut incoming: libp2p_stream::IncomingStreams,
    from: watch::Receiver<Option<PeerId>>,
    pushes: mpsc::Sender<(PeerId, ServerPush)>,
) {
    while let Some((server, mut stream)) = incoming.next().await {
        if pushes.is_closed() {
            return;
        }
        if *from.borrow() != Some(server) {
            continue;
        }
        stream.ignore_for_keep_alive();
        let pushes = pushes.clone();
        tokio::spawn(async move {
            loop {
                match read_push(&mut stream).await {
                    Ok(Some(push)) => {
                        if pushes.send((server, push)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(error) => return tracing::debug!(%server, %error, "a push stream failed"),
                }
            }
        });
    }
}

/// Reads the next push frame from a push stream; `None` once the server closed it between
/// frames.
pub async fn read_push(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<ServerPush>> {
    read_length_prefixed(io, MAX_PUSH_BYTES).await
}

pub fn tcp_config() -> tcp::Config {
    tcp::Config::default().nodelay(true)
}

pub fn yamux_config() -> yamux::Config {
    yamux::Config::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_round_trip_in_order_and_an_oversized_frame_is_refused() {
        futures::executor::block_on(async {
            let pushes = [
                ServerPush::MailWaiting { count: 3 },
                ServerPush::PrekeysLow { remaining: 7 },
            ];
            let mut wire = futures::io::Cursor::new(Vec::new());
            for push in &pushes {
                write_push(&mut wire, push).await.unwrap();
            }
            let mut read = futures::io::Cursor::new(wire.into_inner());
            assert_eq!(read_push(&mut read).await.unwrap(), Some(pushes[0].clone()));
            assert_eq!(read_push(&mut read).await.unwrap(), Some(pushes[1].clone()));
            assert_eq!(
                read_push(&mut read).await.unwrap(),
                None,
                "closed between frames"
            );

            let mut huge = (MAX_PUSH_BYTES as u32 + 1).to_be_bytes().to_vec();
            huge.extend_from_slice(&[0; 16]);
            let err = read_push(&mut futures::io::Cursor::new(huge))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
            // Cut inside a frame: an error, not a clean end.
            let mut cut = futures::io::Cursor::new(vec![0, 0, 0, 9, 1, 2]);
            assert!(read_push(&mut cut).await.is_err());
        });
    }
}
