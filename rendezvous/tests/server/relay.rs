//! The circuit relay: only for logged-in peers (except on a relay-only server).

use palaver_protocol::wire::{RefusalReason, RendezvousRequest};
use palaver_rendezvous::client::ClientError;

use crate::common::*;

#[tokio::test]
async fn a_relay_reservation_is_refused_before_login_and_granted_after_and_circuits_carry_traffic()
{
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::start(config).await;

    let alice_id = identity();
    let alice = connect(&server.tcp(), &alice_id).await;
    ask(
        &alice,
        RendezvousRequest::Register {
            name: name("alice"),
            token: None,
        },
    )
    .await;
    let refused = alice.reserve_relay().await;
    assert!(
        matches!(&refused, Err(ClientError::Relay(why)) if why.contains("refused")),
        "{refused:?}"
    );
    login(&alice, "alice").await;
    let circuit = alice.reserve_relay().await.unwrap();
    assert!(circuit.to_string().contains("/p2p-circuit"), "{circuit}");

    // A peer that is not logged in cannot open a circuit; a logged-in one can.
    let stranger = connect(&server.tcp(), &identity()).await;
    assert!(stranger.dial_via_relay(alice.peer_id()).await.is_err());
    let (bob, _) = session(&server.tcp(), "bob").await;
    bob.dial_via_relay(alice.peer_id()).await.unwrap();

    let text = scrape(server.metrics.unwrap()).await;
    assert_eq!(metric(&text, "palaver_relay_reservations"), 1.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "palaver_relay_reservation_requests_total{outcome=\"denied\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "palaver_relay_circuits"), 1.0);
    assert!(
        metric(&text, "palaver_relay_bytes_total") > 0.0,
        "the Noise handshake over the circuit is relayed traffic"
    );
    assert!(
        metric(
            &text,
            "palaver_rejected_inputs_total{reason=\"relay_denied\"}"
        ) >= 2.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_relay_only_server_relays_without_accounts_and_refuses_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.relay_only = true;
    let server = TestServer::start(config).await;
    let alice = connect(&server.tcp(), &identity()).await;
    let refused = refusal(
        ask(
            &alice,
            RendezvousRequest::Register {
                name: name("alice"),
                token: None,
            },
        )
        .await,
    );
    assert_eq!(refused.reason, RefusalReason::Unavailable);
    alice.reserve_relay().await.unwrap();
    let bob = connect(&server.tcp(), &identity()).await;
    bob.dial_via_relay(alice.peer_id()).await.unwrap();
    server.stop().await;
}
