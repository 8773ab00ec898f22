//! Garbage and oversized input leave the server running and serving others; metrics count it.

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, Codec, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use palaver_protocol::wire::{PresenceState, RendezvousRequest, RendezvousResponse};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::*;

/// Writes whatever bytes it is given as a request, unframed.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        io.take(1 << 20).read_to_end(&mut bytes).await?;
        Ok(bytes)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        // The server closing the stream without a frame is no answer.
        let bytes = self.read_request(&StreamProtocol::new("/x"), io).await?;
        if bytes.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(bytes)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        bytes: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        bytes: Vec<u8>,
    ) -> io::Result<()> {
        self.write_request(protocol, io, bytes).await
    }
}

/// A raw peer on `/palaver/rendezvous/1` (connected), and the server's id.
async fn raw_peer(
    addr: &Multiaddr,
    keypair: libp2p::identity::Keypair,
) -> (
    libp2p::Swarm<request_response::Behaviour<RawCodec>>,
    libp2p::PeerId,
) {
    let mut swarm = plain_swarm(keypair, |_| {
        request_response::Behaviour::<RawCodec>::new(
            [(
                StreamProtocol::new(palaver_protocol::wire::protocol_names::RENDEZVOUS),
                ProtocolSupport::Outbound,
            )],
            request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
        )
    });
    swarm.dial(addr.clone()).unwrap();
    let server = loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await {
            break peer_id;
        }
    };
    (swarm, server)
}

/// Registers and logs in as `name` with `id`, then sends raw `payloads` one by one; the decoded
/// answers.
pub(crate) async fn send_raw_as(
    addr: &Multiaddr,
    id: &palaver_protocol::Identity,
    name: &str,
    payloads: Vec<Vec<u8>>,
) -> Vec<RendezvousResponse> {
    let (mut swarm, server) = raw_peer(addr, id.to_libp2p_keypair()).await;
    let login = [
        RendezvousRequest::Register {
            name: crate::common::name(name),
            token: None,
        },
        RendezvousRequest::Login {
            name: crate::common::name(name),
            instance: 1,
        },
    ]
    .map(|request| palaver_protocol::codec::encode(&request).unwrap());
    let mut answers = Vec::new();
    for payload in login.into_iter().chain(payloads) {
        swarm.behaviour_mut().send_request(&server, payload);
        let answer = loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => break palaver_protocol::codec::decode(&response).unwrap(),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => panic!("no answer: {error}"),
                _ => {}
            }
        };
        answers.push(answer);
    }
    let rest = answers.split_off(2);
    assert!(
        matches!(
            answers.as_slice(),
            [
                RendezvousResponse::Registered { .. },
                RendezvousResponse::LoggedIn { .. }
            ]
        ),
        "{answers:?}"
    );
    rest
}

/// Sends raw `payloads` on `/palaver/rendezvous/1` over an authenticated connection; returns how
/// many got any response at all.
async fn send_raw(addr: &Multiaddr, payloads: Vec<Vec<u8>>) -> usize {
    let (mut swarm, server) = raw_peer(addr, libp2p::identity::Keypair::generate_ed25519()).await;
    let total = payloads.len();
    for payload in payloads {
        swarm.behaviour_mut().send_request(&server, payload);
    }
    let (mut answered, mut done) = (0, 0);
    while done < total {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message { .. }) => {
                answered += 1;
                done += 1;
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => done += 1,
            _ => {}
        }
    }
    answered
}

#[tokio::test]
async fn garbage_and_oversized_frames_leave_the_server_serving_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::start(config).await;
    let (alice, _) = session(&server.tcp(), "alice").await;

    // Garbage on the TCP port before any handshake, and on the QUIC port.
    let tcp_port = server
        .tcp()
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    for size in [1usize, 100, 70_000] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", tcp_port))
            .await
            .unwrap();
        let garbage: Vec<u8> = (0..size).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = stream.write_all(&garbage).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
    }
    let quic_port = server
        .quic()
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Udp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for len in [1usize, 1200, 1500] {
        udp.send_to(&vec![0xc3; len], ("127.0.0.1", quic_port))
            .await
            .unwrap();
    }

    // Garbage, a wrong version, an empty frame and an oversized frame inside an authenticated
    // stream: each is answered with a refusal (and counted).
    let answered = send_raw(
        &server.tcp(),
        vec![
            vec![1, 0xff, 0xff, 0xff, 0xff],
            vec![9, 0, 0],
            Vec::new(),
            vec![1; 300 * 1024],
        ],
    )
    .await;
    assert_eq!(answered, 4);

    // An oversized deposit through the regular client fails the request, not the server.
    let (big_sender, big_id) = {
        let config = palaver_rendezvous::client::ClientConfig {
            max_request_bytes: 1 << 20,
            ..Default::default()
        };
        let id = identity();
        let client = palaver_rendezvous::client::Client::connect_with(server.tcp(), &id, config)
            .await
            .unwrap();
        (client, id)
    };
    let oversized = envelope(&big_id, &big_id.public(), 1, 400 * 1024);
    let answer = big_sender
        .request(RendezvousRequest::Deposit {
            to: name("alice"),
            envelope: Box::new(oversized),
        })
        .await;
    // Refused as too large, or the stream reset while the client was still writing.
    assert!(
        matches!(
            &answer,
            Ok(RendezvousResponse::Refused(r)) if r.reason == palaver_protocol::wire::RefusalReason::TooLarge
        ) || answer.is_err(),
        "{answer:?}"
    );

    // The established session still works, and so does a newcomer.
    assert_eq!(
        ask(
            &alice,
            RendezvousRequest::Heartbeat {
                state: PresenceState::Online
            }
        )
        .await,
        RendezvousResponse::Done
    );
    let (newcomer, _) = session(&server.tcp(), "newcomer").await;
    assert!(matches!(
        ask(&newcomer, RendezvousRequest::FetchMail { max: 1 }).await,
        RendezvousResponse::Mail { .. }
    ));

    let text = scrape(server.metrics.unwrap()).await;
    assert!(
        metric(&text, "palaver_rejected_inputs_total{reason=\"handshake\"}") >= 3.0,
        "{text}"
    );
    let malformed = metric(
        &text,
        "palaver_rejected_inputs_total{reason=\"malformed_frame\"}",
    );
    assert!(malformed >= 5.0, "{malformed}\n{text}");
    assert_eq!(metric(&text, "palaver_sessions"), 2.0);
    assert!(metric(&text, "palaver_logins_total") >= 2.0);
    assert!(metric(&text, "palaver_presence_updates_total") >= 2.0);
    for series in [
        "palaver_mailbox_messages",
        "palaver_mailbox_bytes",
        "palaver_relay_reservations",
        "palaver_relay_circuits",
        "palaver_relay_bytes_total",
        "palaver_connected_peers",
    ] {
        assert!(text.contains(series), "{series} missing");
    }
    server.stop().await;
}
