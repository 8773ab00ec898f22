//! The baseline: plain rust-libp2p gossipsub, nothing of Palaver's. One swarm per peer in this
//! process on 127.0.0.1 — TCP (nodelay, as the daemon), Noise, Yamux, gossipsub with its default
//! config and signed messages — fully connected, one topic. A received message is handed to the
//! application (the round's tracker) straight from the swarm's event.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, gossipsub, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

use crate::room::{Delivery, Publisher, parse_payload};

const TOPIC: &str = "loadgen-baseline";

enum Command {
    Dial(Multiaddr),
    /// How many peers we know to be subscribed to the topic, and how many are in our mesh.
    Peers(oneshot::Sender<(usize, usize)>),
}

/// The running swarms.
pub(crate) struct Baseline {
    commands: Vec<mpsc::Sender<Command>>,
    publish: Vec<mpsc::Sender<(Vec<u8>, oneshot::Sender<()>)>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Baseline {
    /// Starts `peers` swarms, connects every pair and waits until each sees all others on the
    /// topic (and a first mesh has formed).
    pub(crate) async fn start(
        peers: usize,
        deliveries: mpsc::Sender<Delivery>,
    ) -> anyhow::Result<Self> {
        let mut commands = Vec::new();
        let mut publish = Vec::new();
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        for index in 0..peers {
            let (command_tx, command_rx) = mpsc::channel(16);
            let (publish_tx, publish_rx) = mpsc::channel(64);
            let (addr_tx, addr_rx) = oneshot::channel();
            let swarm = build()?;
            tasks.push(tokio::spawn(drive(
                swarm,
                index as u16,
                command_rx,
                publish_rx,
                deliveries.clone(),
                addr_tx,
            )));
            addrs.push(addr_rx.await.context("baseline swarm listen address")?);
            commands.push(command_tx);
            publish.push(publish_tx);
        }
        for (i, command) in commands.iter().enumerate() {
            for addr in &addrs[..i] {
                command.send(Command::Dial(addr.clone())).await?;
            }
        }
        let baseline = Self {
            commands,
            publish,
            tasks,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let want_mesh = (peers - 1).min(gossipsub::Config::default().mesh_n_low());
        loop {
            let mut ready = true;
            for command in &baseline.commands {
                let (tx, rx) = oneshot::channel();
                command.send(Command::Peers(tx)).await?;
                let (subscribed, mesh) = rx.await?;
                ready &= subscribed + 1 >= peers && mesh >= want_mesh;
            }
            if ready {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "baseline swarms did not connect in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(baseline)
    }

    /// `callers` publishers per swarm (each answered once its publish has returned).
    pub(crate) fn publishers(&self, callers: usize) -> Vec<Vec<Publisher>> {
        (self.publish.iter())
            .map(|tx| {
                (0..callers.max(1))
                    .map(|_| Publisher::Gossip(tx.clone()))
                    .collect()
            })
            .collect()
    }

    pub(crate) fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

type Swarm = libp2p::Swarm<gossipsub::Behaviour>;

fn build() -> anyhow::Result<Swarm> {
    plain_swarm(|key| {
        gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub::Config::default(),
        )
        .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
    })
}

/// A plain rust-libp2p swarm on TCP (nodelay, as the daemon), Noise and Yamux with their
/// default configs, running `behaviour`.
pub(crate) fn plain_swarm<B: libp2p::swarm::NetworkBehaviour>(
    behaviour: impl FnOnce(
        &libp2p::identity::Keypair,
    ) -> Result<B, Box<dyn std::error::Error + Send + Sync>>,
) -> anyhow::Result<libp2p::Swarm<B>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build())
}

/// Two plain swarms speaking `libp2p-stream` (see [`plain_swarm`]), the sender connected to the
/// receiver, each driven by a task of its own (in `tasks`).
pub(crate) struct StreamPair {
    /// Opens streams from the sender.
    pub(crate) control: libp2p_stream::Control,
    pub(crate) receiver: libp2p::PeerId,
    /// The streams of the protocol asked for, as the receiver accepts them.
    pub(crate) incoming: libp2p_stream::IncomingStreams,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) async fn stream_pair(protocol: libp2p::StreamProtocol) -> anyhow::Result<StreamPair> {
    let stream_swarm = || plain_swarm(|_| Ok(libp2p_stream::Behaviour::new()));
    let mut receiver = stream_swarm()?;
    receiver.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = receiver.select_next_some().await {
            break address;
        }
    };
    let receiver_id = *receiver.local_peer_id();
    let incoming = (receiver.behaviour().new_control())
        .accept(protocol)
        .map_err(|_| anyhow::anyhow!("accepting twice"))?;
    let mut sender = stream_swarm()?;
    sender.dial(addr)?;
    let connected = async {
        loop {
            tokio::select! {
                event = sender.select_next_some() => {
                    if let SwarmEvent::ConnectionEstablished { .. } = event {
                        break;
                    }
                }
                _ = receiver.select_next_some() => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .context("the baseline swarms did not connect")?;
    let control = sender.behaviour().new_control();
    let tasks = [sender, receiver]
        .into_iter()
        .map(|mut swarm| {
            tokio::spawn(async move {
                loop {
                    swarm.select_next_some().await;
                }
            })
        })
        .collect();
    Ok(StreamPair {
        control,
        receiver: receiver_id,
        incoming,
        tasks,
    })
}

async fn drive(
    mut swarm: Swarm,
    index: u16,
    mut commands: mpsc::Receiver<Command>,
    mut publish: mpsc::Receiver<(Vec<u8>, oneshot::Sender<()>)>,
    deliveries: mpsc::Sender<Delivery>,
    addr: oneshot::Sender<Multiaddr>,
) {
    let topic = gossipsub::IdentTopic::new(TOPIC);
    let hash = topic.hash();
    if swarm.behaviour_mut().subscribe(&topic).is_err()
        || swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr"))
            .is_err()
    {
        return;
    }
    let mut addr = Some(addr);
    let mut publish_errors = 0u64;
    loop {
        tokio::select! {
            data = publish.recv() => match data {
                Some((data, done)) => {
                    if let Err(err) = swarm.behaviour_mut().publish(topic.clone(), data) {
                        publish_errors += 1;
                        if publish_errors == 1 {
                            eprintln!("baseline peer {index}: publish failed: {err}");
                        }
                    }
                    let _ = done.send(());
                }
                None => return,
            },
            command = commands.recv() => match command {
                Some(Command::Dial(to)) => {
                    let _ = swarm.dial(to);
                }
                Some(Command::Peers(reply)) => {
                    let subscribed = swarm
                        .behaviour()
                        .all_peers()
                        .filter(|(_, topics)| topics.contains(&&hash))
                        .count();
                    let mesh = swarm.behaviour().mesh_peers(&hash).count();
                    let _ = reply.send((subscribed, mesh));
                }
                None => return,
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) => {
                    let at = Instant::now();
                    if let Some((round, seq, sender)) = parse_payload(&message.data)
                        && sender != index
                    {
                        let _ = deliveries.try_send(Delivery { round, seq, receiver: index, at });
                    }
                }
                SwarmEvent::NewListenAddr { address, .. } => {
                    if let Some(tx) = addr.take() {
                        let _ = tx.send(address);
                    }
                }
                _ => {}
            },
        }
    }
}
