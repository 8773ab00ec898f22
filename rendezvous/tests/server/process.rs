//! The `palaver-rendezvous` binary: stdout, kill -9 durability, graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use palaver_protocol::wire::{RendezvousRequest, RendezvousResponse};

use crate::common::*;

/// Starts the binary on loopback; returns it and the addresses it printed.
fn spawn(data: &Path) -> (Child, Vec<Multiaddr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palaver-rendezvous"))
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--data",
        ])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addrs: Vec<Multiaddr> = (0..2)
        .map(|_| lines.next().unwrap().unwrap().parse().unwrap())
        .collect();
    (child, addrs)
}

fn tcp(addrs: &[Multiaddr]) -> Multiaddr {
    addrs
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn the_binary_prints_its_addresses_and_a_kill_9_loses_no_registration_or_mail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addrs) = spawn(dir.path());
    let server_id = match addrs[0].iter().last() {
        Some(Protocol::P2p(id)) => id,
        other => panic!("address without /p2p: {other:?}"),
    };
    assert!(
        addrs
            .iter()
            .all(|a| a.iter().last() == Some(Protocol::P2p(server_id)))
    );

    let bob_id = identity();
    {
        let bob = connect(&tcp(&addrs), &bob_id).await;
        assert!(matches!(
            ask(
                &bob,
                RendezvousRequest::Register {
                    name: name("bob"),
                    token: None
                }
            )
            .await,
            RendezvousResponse::Registered { .. }
        ));
    }
    let (alice, alice_id) = session(&tcp(&addrs), "alice").await;
    let letter = envelope(&alice_id, &bob_id.public(), 1, 500);
    assert!(matches!(
        ask(
            &alice,
            RendezvousRequest::Deposit {
                to: name("bob"),
                envelope: Box::new(letter.clone()),
            }
        )
        .await,
        RendezvousResponse::Deposited { .. }
    ));
    // SIGKILL right after the acknowledgement: nothing gets flushed on the way out.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(alice);

    let (mut child, addrs) = spawn(dir.path());
    assert!(addrs[0].to_string().ends_with(&server_id.to_string()));
    let bob = connect(&tcp(&addrs), &bob_id).await;
    match login(&bob, "bob").await {
        RendezvousResponse::LoggedIn { mail_waiting, .. } => assert_eq!(mail_waiting, 1),
        other => panic!("{other:?}"),
    }
    match ask(&bob, RendezvousRequest::FetchMail { max: 10 }).await {
        RendezvousResponse::Mail { items, .. } => assert_eq!(items[0].envelope, letter),
        other => panic!("{other:?}"),
    }
    let alice = connect(&tcp(&addrs), &alice_id).await;
    login(&alice, "alice").await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_shuts_the_binary_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addrs) = spawn(dir.path());
    let _ = session(&tcp(&addrs), "alice").await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    // The store was closed cleanly: a restart sees the registration.
    let (mut child, addrs) = spawn(dir.path());
    let alice = connect(&tcp(&addrs), &identity()).await;
    assert_eq!(
        refusal(
            ask(
                &alice,
                RendezvousRequest::Register {
                    name: name("alice"),
                    token: None
                }
            )
            .await
        )
        .reason,
        palaver_protocol::wire::RefusalReason::NameTaken
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
