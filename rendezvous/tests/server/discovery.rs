//! Discovery is served only to sessions, one namespace at a time, and only for records their
//! owners signed: a stock libp2p peer that never logs in learns nothing and is disconnected.

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, rendezvous};
use palaver_protocol::Identity;
use palaver_protocol::rendezvous::discovery::Namespace;
use palaver_protocol::wire::{
    RefusalReason, RendezvousRequest, RendezvousResponse, RoomId, SignedPeerRecord,
};
use palaver_rendezvous::client::Client;

use crate::common::*;

fn addr(port: u16) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
}

fn record_of(id: &Identity, port: u16) -> SignedPeerRecord {
    palaver_rendezvous::discovery::seal(&id.to_libp2p_keypair(), vec![addr(port)]).unwrap()
}

async fn register_under(
    client: &Client,
    namespace: Namespace,
    record: SignedPeerRecord,
) -> RendezvousResponse {
    ask(
        client,
        RendezvousRequest::RegisterDiscovery {
            namespace,
            record,
            ttl_secs: 60,
        },
    )
    .await
}

/// The records under `namespace`, each opened for the peer that signed it.
pub(crate) async fn discover(client: &Client, namespace: Namespace) -> Vec<(PeerId, Multiaddr)> {
    match ask(client, RendezvousRequest::Discover { namespace }).await {
        RendezvousResponse::Discovered(records) => records
            .iter()
            .flat_map(|signed| {
                let record = palaver_rendezvous::discovery::open_any(signed).unwrap();
                let peer = record.peer_id();
                record
                    .addresses()
                    .iter()
                    .map(move |a| (peer, a.clone()))
                    .collect::<Vec<_>>()
            })
            .collect(),
        other => panic!("expected records, got {other:?}"),
    }
}

/// A plain rust-libp2p peer speaking only libp2p's rendezvous protocol, as anyone could run.
fn stock_rendezvous_peer() -> libp2p::Swarm<rendezvous::client::Behaviour> {
    plain_swarm(libp2p::identity::Keypair::generate_ed25519(), |key| {
        rendezvous::client::Behaviour::new(key.clone())
    })
}

#[tokio::test]
async fn a_stock_libp2p_peer_that_never_logs_in_cannot_register_or_discover_and_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.login_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await;

    let mut stock = stock_rendezvous_peer();
    stock.add_external_address(addr(4001));
    stock.dial(server.tcp()).unwrap();
    let namespace = rendezvous::Namespace::from_static("palaver/peer/anything");
    let (mut registered, mut discovered) = (None, None);
    let mut disconnected = false;
    tokio::time::timeout(Duration::from_secs(10), async {
        while registered.is_none() || discovered.is_none() || !disconnected {
            match stock.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    stock
                        .behaviour_mut()
                        .register(namespace.clone(), peer_id, None)
                        .unwrap();
                    // No namespace: every registration the server holds.
                    stock.behaviour_mut().discover(None, None, None, peer_id);
                }
                SwarmEvent::Behaviour(rendezvous::client::Event::Registered { .. }) => {
                    registered = Some(true)
                }
                SwarmEvent::Behaviour(rendezvous::client::Event::RegisterFailed { .. }) => {
                    registered = Some(false)
                }
                SwarmEvent::Behaviour(rendezvous::client::Event::Discovered {
                    registrations,
                    ..
                }) => discovered = Some(registrations.len()),
                SwarmEvent::Behaviour(rendezvous::client::Event::DiscoverFailed { .. }) => {
                    discovered = Some(0)
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } => disconnected = true,
                _ => {}
            }
        }
    })
    .await
    .expect("the stock peer heard nothing back, or was not disconnected");
    assert_eq!(registered, Some(false), "an anonymous peer registered");
    assert_eq!(discovered, Some(0), "an anonymous peer discovered records");
    server.stop().await;
}

#[tokio::test]
async fn discovery_is_for_sessions_one_namespace_at_a_time_under_their_own_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.discovery_max_registrations_per_peer = 2;
    let server = TestServer::start(config).await;
    let (alice, alice_id) = session(&server.tcp(), "alice").await;
    let (bob, bob_id) = session(&server.tcp(), "bob").await;
    let alice_peer = alice_id.peer_id();

    assert_eq!(
        register_under(
            &alice,
            Namespace::Peer(alice_peer),
            record_of(&alice_id, 4001)
        )
        .await,
        RendezvousResponse::Done
    );
    assert_eq!(
        discover(&bob, Namespace::Peer(alice_peer)).await,
        [(alice_peer, addr(4001))]
    );

    // Before login: nothing, either way.
    let stranger_id = identity();
    let stranger = connect(&server.tcp(), &stranger_id).await;
    for request in [
        RendezvousRequest::Discover {
            namespace: Namespace::Peer(alice_peer),
        },
        RendezvousRequest::RegisterDiscovery {
            namespace: Namespace::Peer(stranger_id.peer_id()),
            record: record_of(&stranger_id, 4002),
            ttl_secs: 60,
        },
    ] {
        assert_eq!(
            refusal(ask(&stranger, request).await).reason,
            RefusalReason::NotLoggedIn
        );
    }

    // Bob cannot take Alice's namespace, with his record or with hers.
    for record in [record_of(&bob_id, 4003), record_of(&alice_id, 4003)] {
        assert_eq!(
            refusal(register_under(&bob, Namespace::Peer(alice_peer), record).await).reason,
            RefusalReason::NotAllowed
        );
    }
    // Nor put a record Alice signed under his own, or garbage.
    for record in [record_of(&alice_id, 4003), SignedPeerRecord(vec![1, 2, 3])] {
        assert_eq!(
            refusal(register_under(&bob, Namespace::Peer(bob_id.peer_id()), record).await).reason,
            RefusalReason::Invalid
        );
    }
    assert_eq!(
        discover(&bob, Namespace::Peer(alice_peer)).await,
        [(alice_peer, addr(4001))],
        "alice's record is unchanged"
    );

    // Rooms: anyone logged in registers; a room's members are shown to its registered members
    // only, all of them; two registrations per peer.
    let room = Namespace::Room(RoomId([5; 32]));
    assert_eq!(
        register_under(&alice, room.clone(), record_of(&alice_id, 4001)).await,
        RendezvousResponse::Done
    );
    let unseen = refusal(
        ask(
            &bob,
            RendezvousRequest::Discover {
                namespace: room.clone(),
            },
        )
        .await,
    );
    assert_eq!(unseen.reason, RefusalReason::NotAllowed);
    assert_eq!(
        register_under(&bob, room.clone(), record_of(&bob_id, 4004)).await,
        RendezvousResponse::Done
    );
    let mut members = discover(&alice, room.clone()).await;
    members.sort();
    let mut expected = vec![(alice_peer, addr(4001)), (bob_id.peer_id(), addr(4004))];
    expected.sort();
    assert_eq!(members, expected);
    assert_eq!(
        refusal(
            register_under(
                &alice,
                Namespace::Room(RoomId([6; 32])),
                record_of(&alice_id, 4001)
            )
            .await
        )
        .reason,
        RefusalReason::NotAllowed,
        "over the per-peer limit"
    );
    // A renewal is not a new registration; leaving frees a place.
    assert_eq!(
        register_under(&alice, room.clone(), record_of(&alice_id, 4005)).await,
        RendezvousResponse::Done
    );
    assert_eq!(
        ask(
            &alice,
            RendezvousRequest::UnregisterDiscovery {
                namespace: room.clone()
            }
        )
        .await,
        RendezvousResponse::Done
    );
    assert_eq!(
        discover(&bob, room.clone()).await,
        [(bob_id.peer_id(), addr(4004))]
    );
    assert_eq!(
        refusal(ask(&alice, RendezvousRequest::Discover { namespace: room }).await).reason,
        RefusalReason::NotAllowed,
        "alice left the room"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_discover_without_a_namespace_does_not_decode_and_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let (alice, _) = session(&server.tcp(), "alice").await;
    // A `Discover` whose namespace is cut off: the shortest frame that could ask "everything".
    let whole = palaver_protocol::codec::encode(&RendezvousRequest::Discover {
        namespace: Namespace::Room(RoomId([0; 32])),
    })
    .unwrap();
    let cut = whole[..whole.len() - 33].to_vec();
    let answers =
        crate::robustness::send_raw_as(&server.tcp(), &identity(), "carol", vec![cut]).await;
    assert!(
        matches!(
            answers.as_slice(),
            [RendezvousResponse::Refused(refused)] if refused.reason == RefusalReason::Invalid
        ),
        "{answers:?}"
    );
    assert!(alice.is_connected());
    server.stop().await;
}
