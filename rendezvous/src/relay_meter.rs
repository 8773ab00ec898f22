//! The server's transport (TCP + Noise + Yamux, and QUIC), with a meter for relayed bytes.
//!
//! The relay behaviour copies circuit data between two streams internally and reports no byte
//! counts, so the meter sits under it, at the stream muxer: each new stream watches its first bytes
//! for the multistream-select proposal of a circuit relay protocol (read on inbound `hop` streams,
//! written on outbound `stop` streams) and, if it is one, counts what it reads from then on. Every
//! relayed byte is read exactly once — from the source on the hop stream, or from the destination
//! on the stop stream — so the counter is the relay's traffic, each byte once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{PeerId, Transport, quic, tcp};
use prometheus_client::metrics::counter::Counter;

use crate::behaviour::noise_config;
use crate::transport::{tcp_config, yamux_config};

/// The multistream-select proposal of every circuit relay v2 protocol contains this.
const RELAY_PROTOCOL: &[u8] = b"/libp2p/circuit/relay/";
/// A proposal is `len "/multistream/1.0.0\n" len "/protocol\n"`: 53 bytes for the relay's.
const SNIFF_LEN: usize = 64;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP (Noise, Yamux) or QUIC, every connection's streams metered.
pub(crate) fn transport(
    key: &Keypair,
    relay_bytes: Counter,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, BoxError> {
    let tcp = tcp::tokio::Transport::new(tcp_config())
        .upgrade(Version::V1Lazy)
        .authenticate(noise_config(key)?)
        .multiplex(yamux_config())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let quic = quic::tokio::Transport::new(quic::Config::new(key))
        .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)));
    Ok(tcp
        .or_transport(quic)
        .map(move |either, _| {
            let (peer, muxer) = either.into_inner();
            let metered = Meter {
                inner: muxer,
                relay_bytes: relay_bytes.clone(),
            };
            (peer, StreamMuxerBox::new(metered))
        })
        .boxed())
}

struct Meter {
    inner: StreamMuxerBox,
    relay_bytes: Counter,
}

impl StreamMuxer for Meter {
    type Substream = MeteredStream;
    type Error = io::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<MeteredStream, io::Error>> {
        let inner = ready!(Pin::new(&mut self.inner).poll_inbound(cx))?;
        Poll::Ready(Ok(MeteredStream::new(
            inner,
            Side::Inbound,
            self.relay_bytes.clone(),
        )))
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<MeteredStream, io::Error>> {
        let inner = ready!(Pin::new(&mut self.inner).poll_outbound(cx))?;
        Poll::Ready(Ok(MeteredStream::new(
            inner,
            Side::Outbound,
            self.relay_bytes.clone(),
        )))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<StreamMuxerEvent>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The remote proposes the protocol: watch what we read.
    Inbound,
    /// We propose it: watch what we write.
    Outbound,
}

/// Whether a stream carries a relay circuit, once its first bytes have said.
#[derive(Debug)]
enum Verdict {
    Undecided { seen: [u8; SNIFF_LEN], len: u8 },
    Relay,
    Other,
}

impl Verdict {
    /// Feeds the stream's next bytes in the watched direction.
    fn observe(&mut self, bytes: &[u8]) {
        let Verdict::Undecided { seen, len } = self else {
            return;
        };
        let start = usize::from(*len);
        let take = bytes.len().min(SNIFF_LEN - start);
        seen[start..start + take].copy_from_slice(&bytes[..take]);
        let end = start + take;
        *len = end as u8;
        if seen[..end]
            .windows(RELAY_PROTOCOL.len())
            .any(|w| w == RELAY_PROTOCOL)
        {
            *self = Verdict::Relay;
        } else if end == SNIFF_LEN || bytes.is_empty() {
            *self = Verdict::Other;
        }
    }
}

pub(crate) struct MeteredStream {
    inner: SubstreamBox,
    side: Side,
    verdict: Verdict,
    relay_bytes: Counter,
}

impl MeteredStream {
    fn new(inner: SubstreamBox, side: Side, relay_bytes: Counter) -> Self {
        Self {
            inner,
            side,
            verdict: Verdict::Undecided {
                seen: [0; SNIFF_LEN],
                len: 0,
            },
            relay_bytes,
        }
    }
}

impl AsyncRead for MeteredStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if matches!(this.verdict, Verdict::Relay) {
            this.relay_bytes.inc_by(n as u64);
        } else if this.side == Side::Inbound {
            this.verdict.observe(&buf[..n]);
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for MeteredStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if this.side == Side::Outbound {
            this.verdict.observe(&buf[..n]);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(protocol: &str) -> Vec<u8> {
        let mut bytes = vec![19];
        bytes.extend_from_slice(b"/multistream/1.0.0\n");
        bytes.push(protocol.len() as u8 + 1);
        bytes.extend_from_slice(protocol.as_bytes());
        bytes.push(b'\n');
        bytes
    }

    #[test]
    fn a_relay_proposal_is_recognised_even_when_it_arrives_in_pieces() {
        let bytes = proposal("/libp2p/circuit/relay/0.2.0/hop");
        let mut verdict = Verdict::Undecided {
            seen: [0; SNIFF_LEN],
            len: 0,
        };
        for chunk in bytes.chunks(5) {
            verdict.observe(chunk);
        }
        assert!(matches!(verdict, Verdict::Relay));
    }

    #[test]
    fn other_protocols_are_let_through_uncounted() {
        let mut verdict = Verdict::Undecided {
            seen: [0; SNIFF_LEN],
            len: 0,
        };
        verdict.observe(&proposal("/palaver/rendezvous/1"));
        verdict.observe(&[7; 100]);
        assert!(matches!(verdict, Verdict::Other));
        let mut closed = Verdict::Undecided {
            seen: [0; SNIFF_LEN],
            len: 0,
        };
        closed.observe(b"/ipfs/ping");
        closed.observe(&[]);
        assert!(matches!(closed, Verdict::Other));
    }
}
