//! `palaver demo`: a rendezvous and three peers in this process on 127.0.0.1, a scripted
//! conversation, printed as it happens — each step driven through the daemons' control sockets,
//! exactly as the CLI drives them.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use palaver_protocol::UserName;
use palaver_rendezvous::{Config as ServerConfig, Server};
use serde_json::{Value, json};

use crate::daemon::{self, DaemonConfig, DaemonHandle};
use crate::home::Home;
use crate::rpc::Client;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

struct Peer {
    name: &'static str,
    home: std::path::PathBuf,
    daemon: Option<DaemonHandle>,
}

impl Peer {
    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.home.join("palaver.sock")).await?)
    }

    async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let mut client = self.client().await?;
        client
            .call(method, params)
            .await
            .with_context(|| format!("{}: {method}", self.name))
    }
}

/// Runs the demo; with `interactive`, stops after the room's first messages and opens the chat
/// window as alice while bob and carol keep running (and answer her), until she quits.
pub async fn run(interactive: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    println!(
        "Palaver demo: a rendezvous and three peers on 127.0.0.1 (state in {})\n",
        dir.path().display()
    );

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
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run(async {
        let _ = server_stopped.await;
    }));
    println!("  rendezvous  {rendezvous}");

    let mut peers = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let home = dir.path().join(name);
        Home::new(&home).init(UserName::new(name)?, None, false)?;
        let mut peer = Peer {
            name,
            home,
            daemon: None,
        };
        start(&mut peer, &rendezvous).await?;
        peers.push(peer);
    }
    for peer in &peers {
        wait_logged_in(peer).await?;
        let status = peer.call("status", Value::Null).await?;
        println!(
            "  {:<6}      logged in, peer id {}",
            peer.name,
            status["peer_id"].as_str().unwrap_or("")
        );
    }
    let [alice, bob, carol] = &mut peers[..] else {
        bail!("three peers")
    };

    section("A direct message, end to end encrypted (X3DH + Double Ratchet)");
    let id = send(alice, "bob", "Hi Bob! Lunch today?").await?;
    wait_status(alice, "bob", &id, "delivered").await?;
    show(alice, "bob", &id, bob).await?;
    let id = send(bob, "alice", "Sure, noon at the usual place.").await?;
    wait_status(bob, "alice", &id, "delivered").await?;
    show(bob, "alice", &id, alice).await?;

    section("A file: offered in an encrypted message, fetched from alice in sealed chunks");
    let menu = dir.path().join("menu.txt");
    let lines = (1..=20_000).map(|n| format!("dish {n}: soup of the day\n"));
    std::fs::write(&menu, lines.collect::<String>())?;
    let path = menu.to_str().context("a path in UTF-8")?;
    let sent = alice
        .call("send_file", json!({"to": "bob", "path": path}))
        .await?;
    let file = sent["id"].as_str().context("send_file answered no id")?;
    wait_until(bob.name, "the file", || async {
        let info = bob.call("file.info", json!({"id": file})).await;
        Ok(info.is_ok_and(|info| info["status"] == "done"))
    })
    .await?;
    let info = bob.call("file.info", json!({"id": file})).await?;
    let got = std::fs::read(info["path"].as_str().context("no path")?)?;
    anyhow::ensure!(got == std::fs::read(&menu)?, "the file arrived changed");
    println!(
        "  alice → bob  {} ({} bytes), checked against its SHA-256 {}…, now in {}",
        info["name"].as_str().unwrap_or(""),
        info["size"],
        info["sha256"]
            .as_str()
            .and_then(|hash| hash.get(..16))
            .unwrap_or(""),
        info["path"].as_str().unwrap_or("")
    );

    section("A private room: alice creates #lunch and invites bob and carol");
    alice.call("room.create", json!({"room": "lunch"})).await?;
    for guest in ["bob", "carol"] {
        alice
            .call("room.invite", json!({"room": "lunch", "name": guest}))
            .await?;
    }
    for guest in [&*bob, &*carol] {
        wait_until(guest.name, "the invitation", || async {
            let rooms = guest.call("room.list", Value::Null).await?;
            Ok(rooms
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["room"] == "lunch"))
        })
        .await?;
        guest.call("room.join", json!({"room": "lunch"})).await?;
        println!("  {} joined #lunch", guest.name);
    }
    for (peer, text) in [
        (&*alice, "Welcome, both of you!"),
        (&*bob, "Thanks alice."),
        (&*carol, "Hello room!"),
    ] {
        wait_room_ready(peer, 3).await?;
        peer.call("room.send", json!({"room": "lunch", "text": text}))
            .await?;
    }
    for peer in [&*alice, &*bob, &*carol] {
        wait_room_messages(peer, "lunch", 3).await?;
    }
    print_room(alice, "lunch").await?;
    println!("  (bob and carol see the same three messages)");

    if interactive {
        let result = chat_as_alice(alice, bob, carol).await;
        for peer in peers.iter_mut() {
            stop(peer).await?;
        }
        let _ = stop_server.send(());
        server_task.await.context("rendezvous task")??;
        return result;
    }

    section("Kick: alice removes carol; every remaining member rotates its sender key");
    alice
        .call("room.kick", json!({"room": "lunch", "name": "carol"}))
        .await?;
    wait_until("carol", "being removed", || async {
        let rooms = carol.call("room.list", Value::Null).await?;
        Ok(rooms
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["room"] == "lunch" && r["state"] == "removed"))
    })
    .await?;
    wait_room_ready(alice, 2).await?;
    alice
        .call(
            "room.send",
            json!({"room": "lunch", "text": "Just the two of us now."}),
        )
        .await?;
    wait_room_messages(bob, "lunch", 4).await?;
    let carol_sees = room_texts(carol, "lunch").await?;
    println!(
        "  alice: \"Just the two of us now.\" → bob has it; carol's #lunch still ends at {:?}",
        carol_sees.last().map(String::as_str).unwrap_or("")
    );
    if carol_sees.iter().any(|t| t.contains("two of us")) {
        bail!("carol read a message sent after she was removed");
    }

    section("An offline message: carol's daemon stops, bob writes, carol comes back");
    stop(carol).await?;
    let id = send(
        bob,
        "carol",
        "Sorry about the room, carol. Coffee tomorrow?",
    )
    .await?;
    wait_status(bob, "carol", &id, "queued").await?;
    println!(
        "  bob → carol  {:<45} queued in the mailbox (carol is offline)",
        "\"Sorry about the room, carol. Coffee tomorrow?\""
    );
    start(carol, &rendezvous).await?;
    wait_status(bob, "carol", &id, "delivered").await?;
    show(bob, "carol", &id, carol).await?;

    section("Connections");
    for peer in [&*alice, &*bob, &*carol] {
        let connections = peer.call("peers", Value::Null).await?;
        let list: Vec<String> = connections
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} ({})",
                    p["name"].as_str().unwrap_or("?"),
                    p["connection"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "  {:<6} ↔ {}",
            peer.name,
            if list.is_empty() {
                "nobody right now".to_owned()
            } else {
                list.join(", ")
            }
        );
    }

    for peer in peers.iter_mut() {
        stop(peer).await?;
    }
    let _ = stop_server.send(());
    server_task.await.context("rendezvous task")??;
    println!(
        "\nDone in {:.1} s. Every message above was encrypted end to end; the rendezvous saw only ciphertext.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn start(peer: &mut Peer, rendezvous: &libp2p::Multiaddr) -> anyhow::Result<()> {
    let mut config = DaemonConfig::new(peer.home.clone(), rendezvous.clone());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    config.heartbeat = Duration::from_secs(2);
    peer.daemon = Some(
        daemon::start(config)
            .await
            .with_context(|| format!("starting {}", peer.name))?,
    );
    wait_logged_in(peer).await
}

async fn stop(peer: &mut Peer) -> anyhow::Result<()> {
    if let Some(daemon) = peer.daemon.take() {
        daemon.shutdown().await?;
    }
    Ok(())
}

fn section(title: &str) {
    println!("\n── {title}");
}

async fn wait_until<F, Fut>(who: &str, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{who}: gave up waiting for {what} after {} s",
                STEP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_logged_in(peer: &Peer) -> anyhow::Result<()> {
    wait_until(peer.name, "login at the rendezvous", || async {
        let status = peer.call("status", Value::Null).await?;
        Ok(status["rendezvous"]["logged_in"] == json!(true))
    })
    .await
}

async fn send(from: &Peer, to: &str, text: &str) -> anyhow::Result<String> {
    let sent = from.call("send", json!({"to": to, "text": text})).await?;
    Ok(sent["id"].as_str().unwrap_or_default().to_owned())
}

async fn entry(peer: &Peer, with: &str, id: &str) -> anyhow::Result<Option<Value>> {
    let history = peer
        .call("history", json!({"with": with, "limit": 1000}))
        .await?;
    Ok(history
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["id"] == id)
        .cloned())
}

async fn wait_status(peer: &Peer, with: &str, id: &str, status: &str) -> anyhow::Result<()> {
    wait_until(peer.name, &format!("status {status}"), || async {
        Ok(entry(peer, with, id)
            .await?
            .is_some_and(|e| e["status"] == status))
    })
    .await
}

/// Prints a sent message with its status, and the connection it travelled over.
async fn show(from: &Peer, to: &str, id: &str, recipient: &Peer) -> anyhow::Result<()> {
    let sent = entry(from, to, id)
        .await?
        .context("sent message not in history")?;
    let got = entry(recipient, from.name, id)
        .await?
        .context("message not in the recipient's history")?;
    let peers = from.call("peers", Value::Null).await?;
    let connection = peers
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == to)
        .and_then(|p| p["connection"].as_str())
        .unwrap_or("via the mailbox")
        .to_owned();
    println!(
        "  {} → {}  {:<45} {} ({connection}); in {}'s history as {}",
        from.name,
        to,
        format!("\"{}\"", sent["text"].as_str().unwrap_or("")),
        sent["status"].as_str().unwrap_or(""),
        recipient.name,
        got["status"].as_str().unwrap_or(""),
    );
    Ok(())
}

async fn room_texts(peer: &Peer, room: &str) -> anyhow::Result<Vec<String>> {
    let history = peer
        .call("history", json!({"room": room, "limit": 1000}))
        .await?;
    Ok(history
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["text"].as_str().unwrap_or("").to_owned())
        .collect())
}

async fn wait_room_messages(peer: &Peer, room: &str, count: usize) -> anyhow::Result<()> {
    wait_until(
        peer.name,
        &format!("{count} messages in #{room}"),
        || async { Ok(room_texts(peer, room).await?.len() >= count) },
    )
    .await
}

/// Waits until the room's other `members - 1` members are connected, so gossip reaches them.
async fn wait_room_ready(peer: &Peer, members: usize) -> anyhow::Result<()> {
    wait_until(peer.name, "the room's members to connect", || async {
        let listed = peer.call("room.members", json!({"room": "lunch"})).await?;
        let peers = peer.call("peers", Value::Null).await?;
        let connected = peers.as_array().map(Vec::len).unwrap_or(0);
        Ok(listed.as_array().map(Vec::len).unwrap_or(0) == members && connected + 1 >= members)
    })
    .await
}

async fn print_room(peer: &Peer, room: &str) -> anyhow::Result<()> {
    let history = peer
        .call("history", json!({"room": room, "limit": 1000}))
        .await?;
    for e in history.as_array().into_iter().flatten() {
        println!(
            "  #{room}  {:<6} {}",
            e["from"].as_str().unwrap_or(""),
            e["text"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `demo --interactive`: the chat window as alice, with bob and carol answering what she writes.
async fn chat_as_alice(alice: &Peer, bob: &Peer, carol: &Peer) -> anyhow::Result<()> {
    section("Your turn: the chat window opens as alice (bob and carol answer; /quit leaves)");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bots = [
        tokio::spawn(answer_alice(bob.home.clone(), bob.name, true)),
        tokio::spawn(answer_alice(carol.home.clone(), carol.name, false)),
    ];
    let result = crate::tui::run(&alice.home.join("palaver.sock"), Default::default()).await;
    for bot in bots {
        bot.abort();
    }
    result
}

/// A demo participant that replies to alice: to her direct messages, and (`in_rooms`) in rooms.
async fn answer_alice(
    home: std::path::PathBuf,
    name: &'static str,
    in_rooms: bool,
) -> anyhow::Result<()> {
    let socket = home.join("palaver.sock");
    let mut events = Client::connect(&socket).await?;
    events.subscribe().await?;
    let mut calls = Client::connect(&socket).await?;
    while let Some(event) = events.next_event().await? {
        if event["type"] != "message" || event["from"] != "alice" {
            continue;
        }
        let text = event["text"].as_str().unwrap_or("");
        let quoted: String = text.chars().take(40).collect();
        let ellipsis = if quoted.len() < text.len() { "…" } else { "" };
        let conversation = event["conversation"].as_str().unwrap_or("");
        // A moment's pause, so the delivery mark shows before the answer does.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let answer = match conversation.strip_prefix('#') {
            Some(room) if in_rooms => {
                let text = format!("{name} here: \"{quoted}{ellipsis}\" — agreed!");
                calls
                    .call("room.send", json!({"room": room, "text": text}))
                    .await
            }
            Some(_) => continue,
            None => {
                let text = format!(
                    "Hi alice, {name} (a demo bot) got \"{quoted}{ellipsis}\", end to end encrypted."
                );
                calls
                    .call("send", json!({"to": "alice", "text": text}))
                    .await
            }
        };
        if let Err(err) = answer {
            tracing::debug!("{name} could not answer: {err}");
        }
    }
    Ok(())
}
