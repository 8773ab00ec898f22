//! Starting real servers on 127.0.0.1 port 0 and talking to them with the light client.

use std::path::Path;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use palaver_protocol::crypto::ratchet::{Header, RatchetMessage};
use palaver_protocol::crypto::x3dh::{OneTimePrekey, PrekeyUpload};
use palaver_protocol::rendezvous::RateLimit;
use palaver_protocol::wire::{
    Body, DirectMessage, RendezvousRequest, RendezvousResponse, ServerPush,
};
use palaver_protocol::{Envelope, Identity, UserName, VerifyingKey};
use palaver_rendezvous::client::Client;
use palaver_rendezvous::{Config, Limits, Server, ServerError};
use tokio::sync::oneshot;

/// A bare rust-libp2p peer over TCP (Noise, Yamux) running `behaviour`, as anyone could build
/// one; its connections stay open until the other side closes them.
pub(crate) fn plain_swarm<B: libp2p::swarm::NetworkBehaviour>(
    keypair: libp2p::identity::Keypair,
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Limits with short timeouts so tests wait milliseconds, not minutes.
pub(crate) fn test_limits() -> Limits {
    Limits {
        login_timeout: Duration::from_secs(5),
        presence_timeout: Duration::from_secs(30),
        tick: Duration::from_millis(20),
        mail_sweep_interval: Duration::from_millis(50),
        requests: RateLimit::new(1000, 1000),
        store_cache_bytes: 4 << 20,
        ..Limits::default()
    }
}

pub(crate) fn test_config(dir: &Path) -> Config {
    let mut config = Config::new(
        vec![
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        ],
        dir,
    );
    config.limits = test_limits();
    config
}

/// A real server running in this process.
pub(crate) struct TestServer {
    pub(crate) peer_id: PeerId,
    pub(crate) addrs: Vec<Multiaddr>,
    pub(crate) metrics: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    pub(crate) async fn start(config: Config) -> TestServer {
        // A server stopped a moment ago in this process may still hold sled's lock (sled's
        // flusher thread lets go of the database just after the drop): wait for that, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let server = loop {
            match Server::bind(config.clone()).await {
                Err(err)
                    if err.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                other => break other.unwrap(),
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let peer_id = server.peer_id();
        let addrs = server.listen_addrs();
        let metrics = server.metrics_addr();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer {
            peer_id,
            addrs,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// The TCP address, with `/p2p/<id>`.
    pub(crate) fn tcp(&self) -> Multiaddr {
        self.addr_with(|p| matches!(p, Protocol::Tcp(_)))
    }

    pub(crate) fn quic(&self) -> Multiaddr {
        self.addr_with(|p| matches!(p, Protocol::QuicV1))
    }

    fn addr_with(&self, pick: impl Fn(&Protocol) -> bool) -> Multiaddr {
        self.addrs
            .iter()
            .find(|a| a.iter().any(|p| pick(&p)))
            .cloned()
            .unwrap()
    }

    /// Ends the server as a crash would: no shutdown, no goodbyes.
    pub(crate) async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Graceful shutdown; waits for the store to be flushed and closed.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

pub(crate) fn name(n: &str) -> UserName {
    UserName::new(n).unwrap()
}

pub(crate) fn identity() -> Identity {
    Identity::generate(&mut rand_core::OsRng)
}

pub(crate) async fn connect(addr: &Multiaddr, id: &Identity) -> Client {
    Client::connect(addr.clone(), id).await.unwrap()
}

pub(crate) async fn ask(client: &Client, request: RendezvousRequest) -> RendezvousResponse {
    client.request(request).await.unwrap()
}

/// Connects, registers `n` and logs in.
pub(crate) async fn session(addr: &Multiaddr, n: &str) -> (Client, Identity) {
    let id = identity();
    let client = connect(addr, &id).await;
    let registered = ask(
        &client,
        RendezvousRequest::Register {
            name: name(n),
            token: None,
        },
    )
    .await;
    assert!(
        matches!(registered, RendezvousResponse::Registered { .. }),
        "{registered:?}"
    );
    login(&client, n).await;
    (client, id)
}

pub(crate) async fn login(client: &Client, n: &str) -> RendezvousResponse {
    let response = ask(
        client,
        RendezvousRequest::Login {
            name: name(n),
            instance: 1,
        },
    )
    .await;
    assert!(
        matches!(response, RendezvousResponse::LoggedIn { .. }),
        "{response:?}"
    );
    response
}

pub(crate) fn refusal(response: RendezvousResponse) -> palaver_protocol::wire::Refusal {
    match response {
        RendezvousResponse::Refused(refusal) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Waits up to `within` for a push matching `pick`, skipping others.
pub(crate) async fn expect_push(
    client: &mut Client,
    within: Duration,
    pick: impl Fn(&ServerPush) -> bool,
) -> ServerPush {
    tokio::time::timeout(within, async {
        loop {
            let push = client.next_push().await.expect("client stopped");
            if pick(&push) {
                return push;
            }
        }
    })
    .await
    .expect("no matching push in time")
}

pub(crate) fn envelope(from: &Identity, to: &VerifyingKey, n: u32, len: usize) -> Envelope {
    let body = Body::Direct(DirectMessage {
        sender: from.public(),
        recipient: *to,
        message: RatchetMessage {
            init: None,
            header: Header {
                dh: x25519_dalek::PublicKey::from([7; 32]),
                previous_chain_len: 0,
                index: n,
            },
            ciphertext: vec![n as u8; len],
        },
    });
    Envelope::sign(body, from.signing_key()).unwrap()
}

pub(crate) fn prekeys(id: &Identity, one_time: u32) -> PrekeyUpload {
    // A genuine signed prekey (the server verifies it) with deterministic one-time keys.
    let mut upload = palaver_protocol::crypto::x3dh::PrekeySecrets::generate(
        &mut rand_core::OsRng,
        id.signing_key(),
        0,
    )
    .upload();
    upload.one_time_prekeys = (0..one_time)
        .map(|i| OneTimePrekey {
            id: i,
            key: x25519_dalek::PublicKey::from([i as u8; 32]),
        })
        .collect();
    upload
}

/// One scrape of the metrics endpoint.
pub(crate) async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// The value of one metric line (`name{labels}` exactly as printed), 0 if absent.
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
