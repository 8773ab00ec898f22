//! The mailbox: deposit, survive a restart, deliver on login, delete on ack; quota and TTL.

use std::time::Duration;

use palaver_protocol::wire::{RefusalReason, RendezvousRequest, RendezvousResponse, ServerPush};
use palaver_protocol::{Envelope, Identity};
use palaver_rendezvous::client::Client;

use crate::common::*;

/// Registers `n` and disconnects: a registered user who is offline.
async fn offline_user(server: &TestServer, n: &str) -> Identity {
    let id = identity();
    let client = connect(&server.tcp(), &id).await;
    assert!(matches!(
        ask(
            &client,
            RendezvousRequest::Register {
                name: name(n),
                token: None
            }
        )
        .await,
        RendezvousResponse::Registered { .. }
    ));
    id
}

async fn deposit(client: &Client, to: &str, envelope: &Envelope) -> RendezvousResponse {
    ask(
        client,
        RendezvousRequest::Deposit {
            to: name(to),
            envelope: Box::new(envelope.clone()),
        },
    )
    .await
}

#[tokio::test]
async fn mail_survives_a_restart_is_delivered_on_login_and_is_gone_once_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let first_peer_id = server.peer_id;
    let bob_id = offline_user(&server, "bob").await;
    let (alice, alice_id) = session(&server.tcp(), "alice").await;
    let letters = [
        envelope(&alice_id, &bob_id.public(), 1, 100),
        envelope(&alice_id, &bob_id.public(), 2, 200),
    ];
    for letter in &letters {
        assert_eq!(
            deposit(&alice, "bob", letter).await,
            RendezvousResponse::Deposited { id: letter.id() }
        );
    }
    // The same envelope again is accepted once (dedup by message id).
    assert_eq!(
        deposit(&alice, "bob", &letters[0]).await,
        RendezvousResponse::Deposited {
            id: letters[0].id()
        }
    );
    drop(alice);
    server.stop().await;

    let server = TestServer::start(test_config(dir.path())).await;
    assert_eq!(
        server.peer_id, first_peer_id,
        "the server key must survive a restart"
    );
    let bob = connect(&server.tcp(), &bob_id).await;
    match login(&bob, "bob").await {
        RendezvousResponse::LoggedIn { mail_waiting, .. } => assert_eq!(mail_waiting, 2),
        other => panic!("{other:?}"),
    }
    let items = match ask(&bob, RendezvousRequest::FetchMail { max: 10 }).await {
        RendezvousResponse::Mail { items, remaining } => {
            assert_eq!(remaining, 0);
            items
        }
        other => panic!("{other:?}"),
    };
    let got: Vec<_> = items.iter().map(|i| i.envelope.clone()).collect();
    assert_eq!(got, letters.to_vec(), "oldest first, byte for byte");

    // Fetching again without an ack delivers the same mail again.
    match ask(&bob, RendezvousRequest::FetchMail { max: 10 }).await {
        RendezvousResponse::Mail { items, .. } => assert_eq!(items.len(), 2),
        other => panic!("{other:?}"),
    }
    let ids = letters.iter().map(Envelope::id).collect();
    assert_eq!(
        ask(&bob, RendezvousRequest::AckMail { ids }).await,
        RendezvousResponse::Done
    );
    match ask(&bob, RendezvousRequest::FetchMail { max: 10 }).await {
        RendezvousResponse::Mail { items, remaining } => {
            assert!(items.is_empty());
            assert_eq!(remaining, 0);
        }
        other => panic!("{other:?}"),
    }
    drop(bob);
    server.stop().await;

    // Still gone after another restart.
    let server = TestServer::start(test_config(dir.path())).await;
    let bob = connect(&server.tcp(), &bob_id).await;
    match login(&bob, "bob").await {
        RendezvousResponse::LoggedIn { mail_waiting, .. } => assert_eq!(mail_waiting, 0),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_full_mailbox_refuses_with_a_clear_reason_and_an_online_recipient_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.mailbox.max_messages = 2;
    config.limits.mailbox.max_bytes = 4_000;
    let server = TestServer::start(config).await;
    let bob_id = offline_user(&server, "bob").await;
    let carol_id = offline_user(&server, "carol").await;
    let (alice, alice_id) = session(&server.tcp(), "alice").await;

    for n in 0..2 {
        let letter = envelope(&alice_id, &bob_id.public(), n, 10);
        assert!(matches!(
            deposit(&alice, "bob", &letter).await,
            RendezvousResponse::Deposited { .. }
        ));
    }
    let full = refusal(deposit(&alice, "bob", &envelope(&alice_id, &bob_id.public(), 9, 10)).await);
    assert_eq!(full.reason, RefusalReason::QuotaExceeded);
    assert!(full.detail.contains("full"), "{}", full.detail);

    // The byte quota: one large letter fits, a second does not.
    let big = |n| envelope(&alice_id, &carol_id.public(), n, 3_000);
    assert!(matches!(
        deposit(&alice, "carol", &big(1)).await,
        RendezvousResponse::Deposited { .. }
    ));
    let over = refusal(deposit(&alice, "carol", &big(2)).await);
    assert_eq!(over.reason, RefusalReason::QuotaExceeded);
    assert!(over.detail.contains("bytes"), "{}", over.detail);

    // Bob comes online, collects one, and a new deposit is announced to him.
    let mut bob = connect(&server.tcp(), &bob_id).await;
    login(&bob, "bob").await;
    let items = match ask(&bob, RendezvousRequest::FetchMail { max: 1 }).await {
        RendezvousResponse::Mail { items, remaining } => {
            assert_eq!(remaining, 1);
            items
        }
        other => panic!("{other:?}"),
    };
    ask(
        &bob,
        RendezvousRequest::AckMail {
            ids: vec![items[0].envelope.id()],
        },
    )
    .await;
    assert!(matches!(
        deposit(&alice, "bob", &envelope(&alice_id, &bob_id.public(), 9, 10)).await,
        RendezvousResponse::Deposited { .. }
    ));
    let waiting = expect_push(&mut bob, Duration::from_secs(1), |p| {
        matches!(p, ServerPush::MailWaiting { .. })
    })
    .await;
    assert_eq!(waiting, ServerPush::MailWaiting { count: 2 });
    server.stop().await;
}

#[tokio::test]
async fn mail_expires_after_its_ttl_unread() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.mailbox.ttl = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let bob_id = offline_user(&server, "bob").await;
    let (alice, alice_id) = session(&server.tcp(), "alice").await;
    let letter = envelope(&alice_id, &bob_id.public(), 1, 10);
    assert!(matches!(
        deposit(&alice, "bob", &letter).await,
        RendezvousResponse::Deposited { .. }
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let bob = connect(&server.tcp(), &bob_id).await;
    match login(&bob, "bob").await {
        RendezvousResponse::LoggedIn { mail_waiting, .. } => assert_eq!(mail_waiting, 0),
        other => panic!("{other:?}"),
    }
    match ask(&bob, RendezvousRequest::FetchMail { max: 10 }).await {
        RendezvousResponse::Mail { items, .. } => assert!(items.is_empty()),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn deposits_must_be_signed_direct_envelopes_from_the_depositor_to_the_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let bob_id = offline_user(&server, "bob").await;
    let (alice, alice_id) = session(&server.tcp(), "alice").await;
    let mallory = Identity::from_secret_bytes(&[9; 32]);

    let forged = envelope(&mallory, &bob_id.public(), 1, 10);
    assert_eq!(
        refusal(deposit(&alice, "bob", &forged).await).reason,
        RefusalReason::Invalid
    );
    let misaddressed = envelope(&alice_id, &alice_id.public(), 1, 10);
    assert_eq!(
        refusal(deposit(&alice, "bob", &misaddressed).await).reason,
        RefusalReason::Invalid
    );
    let mut tampered = envelope(&alice_id, &bob_id.public(), 1, 10);
    tampered.signature = palaver_protocol::Signature::from_bytes(&[1; 64]);
    assert_eq!(
        refusal(deposit(&alice, "bob", &tampered).await).reason,
        RefusalReason::Invalid
    );
    assert_eq!(
        refusal(
            deposit(
                &alice,
                "nobody",
                &envelope(&alice_id, &bob_id.public(), 1, 10)
            )
            .await
        )
        .reason,
        RefusalReason::UnknownUser
    );
    server.stop().await;
}
