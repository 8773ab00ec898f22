//! Private rooms' gossip is for members only, against a peer that does not play along: a plain
//! rust-libp2p gossipsub node built here (no Palaver code in it) that dials a member, subscribes
//! to the private room's topic it sees announced, and floods it.
//!
//! Absence is shown against a barrier rather than a clock: the outsider also subscribes to a
//! public room, which stays open to anyone, and a member publishes there *after* publishing in
//! the private room, over the same connection; once the public message has arrived, a private
//! one would have too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure here is a failed test

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identity::Keypair, noise, ping, tcp, yamux};
use palaver_tests::{Rendezvous, User, started_users, texts, wait_for};
use serde_json::Value;
use tokio::sync::mpsc;

#[derive(NetworkBehaviour)]
struct PlainPeer {
    gossipsub: gossipsub::Behaviour,
    ping: ping::Behaviour,
}

/// What the plain peer saw.
#[derive(Debug, Default)]
struct Log {
    /// Messages received: topic, data.
    received: Vec<(String, Vec<u8>)>,
    /// Topics peers announced to us: (peer, topic).
    announced: HashSet<(PeerId, String)>,
    connected: HashSet<PeerId>,
    /// Connections that closed (or were refused once established), and dials that failed.
    closed: usize,
    published: usize,
}

impl Log {
    fn received_on(&self, topic: &str) -> usize {
        self.received.iter().filter(|(t, _)| t == topic).count()
    }
}

enum Command {
    Dial(Multiaddr),
    Subscribe(String),
    Flood { topic: String, count: usize },
}

/// A gossipsub node of its own, on a runtime of its own, driven by commands.
struct Outsider {
    commands: mpsc::UnboundedSender<Command>,
    log: Arc<Mutex<Log>>,
    _runtime: tokio::runtime::Runtime,
}

impl Outsider {
    fn start(keypair: Keypair) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let log = Arc::new(Mutex::new(Log::default()));
        let (commands, mut rx) = mpsc::unbounded_channel();
        let swarm = runtime.block_on(async {
            anyhow::Ok(
                libp2p::SwarmBuilder::with_existing_identity(keypair)
                    .with_tokio()
                    .with_tcp(
                        tcp::Config::default().nodelay(true),
                        noise::Config::new,
                        yamux::Config::default,
                    )?
                    .with_behaviour(|_| {
                        // Unsigned messages, as the members' are; ids from the content.
                        let config = gossipsub::ConfigBuilder::default()
                            .validation_mode(gossipsub::ValidationMode::Anonymous)
                            .message_id_fn(|m: &gossipsub::Message| {
                                let mut hasher = DefaultHasher::new();
                                m.data.hash(&mut hasher);
                                gossipsub::MessageId::from(hasher.finish().to_be_bytes().to_vec())
                            })
                            .heartbeat_interval(Duration::from_millis(500))
                            .build()?;
                        Ok(PlainPeer {
                            gossipsub: gossipsub::Behaviour::new(
                                gossipsub::MessageAuthenticity::Anonymous,
                                config,
                            )?,
                            ping: ping::Behaviour::default(),
                        })
                    })?
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                    .build(),
            )
        })?;
        let shared = log.clone();
        runtime.spawn(async move {
            let mut swarm = swarm;
            let mut flood_serial = 0usize;
            loop {
                tokio::select! {
                    command = rx.recv() => match command {
                        None => return,
                        Some(Command::Dial(addr)) => {
                            if swarm.dial(addr).is_err() {
                                shared.lock().unwrap().closed += 1;
                            }
                        }
                        Some(Command::Subscribe(topic)) => {
                            swarm.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(topic)).unwrap();
                        }
                        Some(Command::Flood { topic, count }) => {
                            for _ in 0..count {
                                flood_serial += 1;
                                // Garbage of every size, each one different.
                                let mut junk = format!("junk {flood_serial} ").into_bytes();
                                junk.resize(16 + (flood_serial * 97) % 4000, (flood_serial % 251) as u8);
                                let sent = swarm.behaviour_mut().gossipsub.publish(IdentTopic::new(topic.clone()), junk);
                                if sent.is_ok() {
                                    shared.lock().unwrap().published += 1;
                                }
                            }
                        }
                    },
                    event = swarm.select_next_some() => {
                        let mut log = shared.lock().unwrap();
                        match event {
                            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                                log.connected.insert(peer_id);
                            }
                            SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                                log.closed += 1;
                                if num_established == 0 {
                                    log.connected.remove(&peer_id);
                                }
                            }
                            SwarmEvent::OutgoingConnectionError { .. } => log.closed += 1,
                            SwarmEvent::Behaviour(PlainPeerEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                                log.received.push((message.topic.into_string(), message.data));
                            }
                            SwarmEvent::Behaviour(PlainPeerEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic })) => {
                                log.announced.insert((peer_id, topic.into_string()));
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
        Ok(Self {
            commands,
            log,
            _runtime: runtime,
        })
    }

    fn send(&self, command: Command) {
        self.commands.send(command).expect("the plain peer runs");
    }

    fn dial(&self, addr: &str) {
        self.send(Command::Dial(addr.parse().expect("a multiaddr")));
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

fn status(user: &User) -> Value {
    user.json(&["status"]).unwrap().remove(0)
}

fn gossip_counter(user: &User, name: &str) -> u64 {
    status(user)["gossip"][name].as_u64().unwrap_or(0)
}

fn peer_id(user: &User) -> PeerId {
    status(user)["peer_id"].as_str().unwrap().parse().unwrap()
}

/// A TCP address the daemon listens on, with its peer id.
fn dial_addr(user: &User) -> String {
    let status = status(user);
    let addr = status["listen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.contains("/tcp/") && !a.contains("p2p-circuit"))
        .expect("a TCP listen address")
        .split("/p2p/")
        .next()
        .unwrap()
        .to_owned();
    format!("{addr}/p2p/{}", status["peer_id"].as_str().unwrap())
}

fn topic_of(user: &User, room: &str) -> String {
    let rooms = user.json(&["room", "list"]).unwrap();
    let id = rooms.iter().find(|r| r["room"] == room).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    format!("palaver/room/{id}")
}

/// `users` all read exactly `expected`, in order, in `room`.
fn histories_are_exactly(users: &[&User], room: &str, expected: &[&str]) -> anyhow::Result<()> {
    for user in users {
        user.wait_room_texts(room, expected)?;
        let have = texts(&user.room_history(room)?);
        let mut have_sorted = have.clone();
        have_sorted.sort();
        let mut want: Vec<String> = expected.iter().map(|t| (*t).to_owned()).collect();
        want.sort();
        assert_eq!(
            have_sorted, want,
            "{}'s history of {room} is exact",
            user.name
        );
    }
    Ok(())
}

#[test]
fn an_outsider_hears_nothing_of_a_private_room_and_its_flood_is_dropped_unchecked()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let users = started_users(dir.path(), &server.addr, &["ann", "ben"])?;
    let [ann, ben] = &users[..] else {
        unreachable!()
    };
    ann.ok(&["room", "create", "team"])?;
    ann.ok(&["room", "invite", "team", "ben"])?;
    ben.accept_invitation("team")?;
    ann.ok(&["room", "create", "lobby", "--public"])?;
    let (team, lobby) = (topic_of(ann, "team"), topic_of(ann, "lobby"));

    let outsider = Outsider::start(Keypair::generate_ed25519())?;
    outsider.dial(&dial_addr(ann));
    let ann_peer = peer_id(ann);
    // The member announces the private topic (gossipsub announces every subscription), so
    // the outsider learns it and subscribes, as the stranger in the report did.
    wait_for("ann to announce the private room's topic", || {
        outsider
            .log()
            .announced
            .contains(&(ann_peer, team.clone()))
            .then_some(())
    })?;
    outsider.send(Command::Subscribe(team.clone()));
    outsider.send(Command::Subscribe(lobby.clone()));
    wait_for("ann to refuse the subscription", || {
        (gossip_counter(ann, "outsider_subscriptions_refused") >= 1).then_some(())
    })?;

    let mut said = Vec::new();
    for (user, text) in [(ann, "a1"), (ben, "b1"), (ann, "a2"), (ben, "b2")] {
        user.ok(&["room", "send", "team", text])?;
        said.push(text);
    }
    histories_are_exactly(&[ann, ben], "team", &said)?;
    // The barrier: a public-room message from ann, after hers in the private room.
    ann.ok(&["room", "send", "lobby", "open to all"])?;
    wait_for("the outsider to read the public room", || {
        (outsider.log().received_on(&lobby) == 1).then_some(())
    })?;
    assert_eq!(
        outsider.log().received_on(&team),
        0,
        "no private message reached the outsider"
    );

    // A flood below the disconnect threshold: every message is dropped and counted, and none
    // reaches the signature and decryption checks.
    outsider.send(Command::Flood {
        topic: team.clone(),
        count: 10,
    });
    wait_for("ann to drop the ten", || {
        (gossip_counter(ann, "outsider_messages_dropped") == 10).then_some(())
    })?;
    assert_eq!(outsider.log().published, 10);
    assert_eq!(gossip_counter(ann, "rejected_after_checks"), 0);
    assert_eq!(
        gossip_counter(ben, "outsider_messages_dropped"),
        0,
        "nothing was forwarded"
    );

    // Keeping at it gets the outsider disconnected, and its new connections refused.
    outsider.send(Command::Flood {
        topic: team.clone(),
        count: 40,
    });
    wait_for("ann to disconnect the outsider", || {
        (gossip_counter(ann, "outsiders_disconnected") == 1 && outsider.log().connected.is_empty())
            .then_some(())
    })?;
    assert_eq!(gossip_counter(ann, "rejected_after_checks"), 0);
    let closed = outsider.log().closed;
    outsider.dial(&dial_addr(ann));
    wait_for("ann to refuse the outsider's new connection", || {
        let log = outsider.log();
        (log.closed > closed && log.connected.is_empty()).then_some(())
    })?;

    // The room carries on, exactly.
    for (user, text) in [(ben, "b3"), (ann, "a3")] {
        user.ok(&["room", "send", "team", text])?;
        said.push(text);
    }
    histories_are_exactly(&[ann, ben], "team", &said)?;
    assert_eq!(outsider.log().received_on(&team), 0);
    Ok(())
}

#[test]
fn a_kicked_member_that_stays_subscribed_is_pushed_out_of_the_mesh_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["ann", "ben", "cat"])?;
    {
        let [ann, ben, cat] = &users[..] else {
            unreachable!()
        };
        ann.ok(&["room", "create", "team"])?;
        ann.ok(&["room", "create", "lobby", "--public"])?;
        ben.ok(&["room", "join", "lobby", "--public"])?;
        for guest in [ben, cat] {
            ann.ok(&["room", "invite", "team", &guest.name])?;
            guest.accept_invitation("team")?;
        }
        for (user, text) in [(ann, "from ann"), (ben, "from ben"), (cat, "from cat")] {
            user.ok(&["room", "send", "team", text])?;
        }
        histories_are_exactly(
            &[ann, ben, cat],
            "team",
            &["from ann", "from ben", "from cat"],
        )?;
    }
    // cat's daemon gives way to a plain gossipsub node under cat's own key: a member whose
    // client ignores the kick and stays subscribed.
    users[2].stop()?;
    let [ann, ben, cat] = &users[..] else {
        unreachable!()
    };
    let key_file = std::fs::read(cat.home.join("identity.key"))?;
    let cat_key = palaver_protocol::identity::keyfile::open(&key_file, None, "cat's key")?;
    let (team, lobby) = (topic_of(ann, "team"), topic_of(ann, "lobby"));
    let rogue = Outsider::start(cat_key.to_libp2p_keypair())?;
    let (ann_peer, ben_peer) = (peer_id(ann), peer_id(ben));
    let connect = |rogue: &Outsider| -> anyhow::Result<()> {
        rogue.dial(&dial_addr(ann));
        rogue.dial(&dial_addr(ben));
        wait_for("cat's key to be connected to ann and ben", || {
            let log = rogue.log();
            (log.connected.contains(&ann_peer) && log.connected.contains(&ben_peer)).then_some(())
        })
    };
    connect(&rogue)?;
    rogue.send(Command::Subscribe(team.clone()));
    rogue.send(Command::Subscribe(lobby.clone()));

    // While cat is a member, the node under her key is in the mesh: it hears the room.
    wait_for("ann and ben to announce the room to cat's key", || {
        let log = rogue.log();
        (log.announced.contains(&(ann_peer, team.clone()))
            && log.announced.contains(&(ben_peer, team.clone())))
        .then_some(())
    })?;
    ann.ok(&["room", "send", "team", "cat still in"])?;
    wait_for("cat's key to hear the room while a member", || {
        (rogue.log().received_on(&team) >= 1).then_some(())
    })?;

    ann.ok(&["room", "kick", "team", "cat"])?;
    // Both members push her out as soon as they learn of the kick.
    wait_for("ann and ben to evict cat", || {
        (gossip_counter(ann, "members_evicted") >= 1 && gossip_counter(ben, "members_evicted") >= 1)
            .then_some(())
    })?;
    // She comes straight back and subscribes again (gossipsub does on every connection):
    // refused, by both.
    let refused = |user: &User| gossip_counter(user, "outsider_subscriptions_refused");
    wait_for("cat's key to be disconnected", || {
        let log = rogue.log();
        (!log.connected.contains(&ann_peer) && !log.connected.contains(&ben_peer)).then_some(())
    })?;
    connect(&rogue)?;
    wait_for("ann and ben to refuse cat's new subscription", || {
        (refused(ann) >= 1 && refused(ben) >= 1).then_some(())
    })?;

    let heard_before = rogue.log().received_on(&team);
    ann.ok(&["room", "send", "team", "after the kick"])?;
    ben.ok(&["room", "send", "team", "ben after the kick"])?;
    histories_are_exactly(
        &[ann, ben],
        "team",
        &[
            "from ann",
            "from ben",
            "from cat",
            "cat still in",
            "after the kick",
            "ben after the kick",
        ],
    )?;
    // The barrier, from both members: each publishes in the public room after the private one.
    ann.ok(&["room", "send", "lobby", "ann in the open"])?;
    ben.ok(&["room", "send", "lobby", "ben in the open"])?;
    wait_for("cat's key to read both in the public room", || {
        (rogue.log().received_on(&lobby) >= 2).then_some(())
    })?;
    assert_eq!(
        rogue.log().received_on(&team),
        heard_before,
        "nothing of the room reached the kicked member"
    );
    Ok(())
}
