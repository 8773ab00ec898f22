//! The Palaver side: a rendezvous and `peers` daemons in this process on 127.0.0.1, driven through
//! their control sockets as the CLI drives them; all in one private room. Each daemon's `message`
//! events are read on a subscribed control connection and handed to the round's tracker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use palaver_node::daemon::{self, DaemonConfig, DaemonHandle};
use palaver_node::home::Home;
use palaver_node::rpc::Client;
use palaver_protocol::UserName;
use palaver_rendezvous::{Config as ServerConfig, Server};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::room::{Delivery, Publisher, parse_payload};

pub(crate) const ROOM: &str = "bench";
/// The daemon that listens only through the rendezvous relay (the relayed DM's far end).
pub(crate) const RELAYED: &str = "relayed";
const SETUP_LIMIT: Duration = Duration::from_secs(60);

pub(crate) struct Palaver {
    _dir: tempfile::TempDir,
    stop_server: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    daemons: Vec<DaemonHandle>,
    /// Control sockets of the room's members (`p0`…), then of the relayed daemon, if any.
    pub(crate) sockets: Vec<PathBuf>,
    pub(crate) names: Vec<String>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Palaver {
    pub(crate) async fn start(
        peers: usize,
        with_relayed: bool,
        deliveries: mpsc::Sender<Delivery>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let server = Server::bind(ServerConfig::new(
            vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            dir.path().join("rendezvous"),
        ))
        .await?;
        let rendezvous = server
            .listen_addrs()
            .into_iter()
            .next()
            .context("the rendezvous has no address")?;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            if let Err(err) = server
                .run(async {
                    let _ = stopped.await;
                })
                .await
            {
                eprintln!("rendezvous: {err}");
            }
        });
        let mut names: Vec<String> = (0..peers).map(|i| format!("p{i}")).collect();
        if with_relayed {
            names.push(RELAYED.to_owned());
        }
        let mut palaver = Self {
            _dir: dir,
            stop_server,
            server,
            daemons: Vec::new(),
            sockets: Vec::new(),
            names: names.clone(),
            listeners: Vec::new(),
        };
        for name in &names {
            let home = palaver._dir.path().join(name);
            Home::new(&home).init(UserName::new(name)?, None, false)?;
            let mut config = DaemonConfig::new(home.clone(), rendezvous.clone());
            config.heartbeat = Duration::from_secs(2);
            if name == RELAYED {
                config.relay_only_transport = true;
            } else {
                config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
            }
            let handle = daemon::start(config)
                .await
                .with_context(|| format!("starting {name}"))?;
            palaver.sockets.push(handle.socket.clone());
            palaver.daemons.push(handle);
        }
        for (name, socket) in names.iter().zip(&palaver.sockets) {
            wait_until(name, "login", || async {
                let status = call(socket, "status", Value::Null).await?;
                Ok(status["rendezvous"]["logged_in"] == json!(true))
            })
            .await?;
        }
        if let Err(err) = palaver.make_room(peers).await {
            for (name, socket) in palaver.names.iter().zip(&palaver.sockets) {
                let members = call(socket, "room.members", json!({"room": ROOM})).await;
                let connected = call(socket, "peers", Value::Null).await;
                let count = |v: &anyhow::Result<Value>| {
                    v.as_ref().ok().and_then(Value::as_array).map(Vec::len)
                };
                eprintln!(
                    "{name}: {:?} members listed, {:?} peers connected",
                    count(&members),
                    count(&connected)
                );
            }
            palaver.stop().await;
            return Err(err);
        }
        for (index, socket) in palaver.sockets[..peers].iter().enumerate() {
            let mut events = Client::connect(socket).await?;
            events.subscribe().await?;
            let deliveries = deliveries.clone();
            palaver.listeners.push(tokio::spawn(async move {
                let mut lagged = 0u64;
                while let Ok(Some(event)) = events.next_event().await {
                    match event["type"].as_str() {
                        Some("message") => {
                            let at = Instant::now();
                            let text = event["text"].as_str().unwrap_or("");
                            if let Some((round, seq, sender)) = parse_payload(text.as_bytes())
                                && usize::from(sender) != index
                            {
                                let _ = deliveries.try_send(Delivery {
                                    round,
                                    seq,
                                    receiver: index as u16,
                                    at,
                                });
                            }
                        }
                        Some("lagged") => {
                            lagged += event["missed"].as_u64().unwrap_or(0);
                            eprintln!("p{index}: the event stream lagged ({lagged} events missed)");
                        }
                        _ => {}
                    }
                }
            }));
        }
        Ok(palaver)
    }

    /// `p0` creates the room and invites everyone; each joins; then every member waits until
    /// it sees all the others as members and is connected to them.
    async fn make_room(&self, peers: usize) -> anyhow::Result<()> {
        let owner = &self.sockets[0];
        call(owner, "room.create", json!({"room": ROOM})).await?;
        for name in &self.names[1..peers] {
            // Each invitation looks its user up at the rendezvous, which asks a burst to slow
            // down (it says so): then again a moment later, as a script would.
            loop {
                match call(owner, "room.invite", json!({"room": ROOM, "name": name})).await {
                    Err(err) if err.to_string().contains("rate limited") => {
                        tokio::time::sleep(Duration::from_millis(500)).await
                    }
                    result => break result.map(drop)?,
                }
            }
        }
        for (name, socket) in self.names[1..peers].iter().zip(&self.sockets[1..peers]) {
            wait_until(name, "the invitation", || async {
                let rooms = call(socket, "room.list", Value::Null).await?;
                Ok(rooms
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["room"] == ROOM))
            })
            .await?;
            call(socket, "room.join", json!({"room": ROOM})).await?;
        }
        let members: Vec<&String> = self.names[..peers].iter().collect();
        for (name, socket) in self.names[..peers].iter().zip(&self.sockets[..peers]) {
            wait_until(name, "the room's members to connect", || async {
                let listed = call(socket, "room.members", json!({"room": ROOM})).await?;
                let connected = call(socket, "peers", Value::Null).await?;
                let connected = connected
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| members.iter().any(|m| p["name"] == m.as_str()))
                    .count();
                Ok(listed.as_array().map(Vec::len).unwrap_or(0) == peers && connected + 1 >= peers)
            })
            .await?;
        }
        Ok(())
    }

    /// `callers` control connections per room member, for `room.send`.
    pub(crate) async fn publishers(&self, callers: usize) -> anyhow::Result<Vec<Vec<Publisher>>> {
        let mut publishers = Vec::new();
        for socket in &self.sockets[..self.listeners.len()] {
            let mut peer = Vec::new();
            for _ in 0..callers.max(1) {
                peer.push(Publisher::Rpc(Client::connect(socket).await?));
            }
            publishers.push(peer);
        }
        Ok(publishers)
    }

    pub(crate) async fn stop(self) {
        for listener in self.listeners {
            listener.abort();
        }
        for daemon in self.daemons {
            let _ = tokio::time::timeout(Duration::from_secs(5), daemon.shutdown()).await;
        }
        let _ = self.stop_server.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}

pub(crate) async fn call(socket: &Path, method: &str, params: Value) -> anyhow::Result<Value> {
    let mut client = Client::connect(socket).await?;
    Ok(client.call(method, params).await?)
}

pub(crate) async fn wait_until<F, Fut>(who: &str, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + SETUP_LIMIT;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{who}: gave up waiting for {what} after {SETUP_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
