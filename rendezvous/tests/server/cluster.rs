//! Several instances over one PostgreSQL (`--store postgres://…`) serving one user population:
//! accounts, lookups, prekeys, the mailbox and discovery work whichever instance each side uses;
//! a kill -9 of an instance loses nothing; a database restart is a "try again", then service
//! resumes.
//! (Each test starts its own throw-away PostgreSQL; without one installed they say so and pass,
//! unless PALAVER_REQUIRE_POSTGRES=1.)

use std::time::Duration;

use palaver_protocol::rendezvous::discovery::Namespace;
use palaver_protocol::wire::{
    PresenceState, RefusalReason, RendezvousRequest, RendezvousResponse, ServerPush,
};
use palaver_protocol::{Envelope, Identity};
use palaver_rendezvous::StoreLocation;
use palaver_rendezvous::client::Client;
use palaver_rendezvous::testing::TestPostgres;

use crate::common::*;
use crate::process::Running;

async fn instance(postgres: &TestPostgres) -> (TestServer, tempfile::TempDir) {
    instance_with(postgres, test_limits()).await
}

async fn instance_with(
    postgres: &TestPostgres,
    limits: palaver_rendezvous::Limits,
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store = StoreLocation::Postgres(postgres.url());
    config.limits = limits;
    (TestServer::start(config).await, dir)
}

async fn register(client: &Client, n: &str) {
    let response = ask(
        client,
        RendezvousRequest::Register {
            name: name(n),
            token: None,
        },
    )
    .await;
    assert!(
        matches!(response, RendezvousResponse::Registered { .. }),
        "{response:?}"
    );
}

async fn deposit(client: &Client, to: &str, envelope: &Envelope) {
    let response = ask(
        client,
        RendezvousRequest::Deposit {
            to: name(to),
            envelope: Box::new(envelope.clone()),
        },
    )
    .await;
    assert_eq!(
        response,
        RendezvousResponse::Deposited { id: envelope.id() }
    );
}

async fn mail_waiting(client: &Client, n: &str) -> u32 {
    match login(client, n).await {
        RendezvousResponse::LoggedIn { mail_waiting, .. } => mail_waiting,
        other => panic!("{other:?}"),
    }
}

async fn fetch(client: &Client) -> Vec<Envelope> {
    match ask(client, RendezvousRequest::FetchMail { max: 100 }).await {
        RendezvousResponse::Mail { items, .. } => items.into_iter().map(|i| i.envelope).collect(),
        other => panic!("{other:?}"),
    }
}

async fn ack(client: &Client, letters: &[Envelope]) {
    let ids = letters.iter().map(Envelope::id).collect();
    assert_eq!(
        ask(client, RendezvousRequest::AckMail { ids }).await,
        RendezvousResponse::Done
    );
}

#[tokio::test]
async fn three_instances_over_one_database_serve_one_user_population() {
    let Some(postgres) = TestPostgres::start("cluster::three_instances").unwrap() else {
        return;
    };
    let (a, _a_dir) = instance(&postgres).await;
    let (b, _b_dir) = instance(&postgres).await;
    let (c, _c_dir) = instance(&postgres).await;
    assert!(
        a.peer_id != b.peer_id && b.peer_id != c.peer_id,
        "each instance has its own key"
    );

    // Alice registers and publishes prekeys at A, then goes offline.
    let alice_id = identity();
    {
        let alice = connect(&a.tcp(), &alice_id).await;
        register(&alice, "alice").await;
        login(&alice, "alice").await;
        assert_eq!(
            ask(
                &alice,
                RendezvousRequest::PublishPrekeys(Box::new(prekeys(&alice_id, 2)))
            )
            .await,
            RendezvousResponse::Done
        );
    }
    // A name taken at A is taken at B.
    let intruder = connect(&b.tcp(), &identity()).await;
    let taken = refusal(
        ask(
            &intruder,
            RendezvousRequest::Register {
                name: name("alice"),
                token: None,
            },
        )
        .await,
    );
    assert_eq!(taken.reason, RefusalReason::NameTaken);

    // Bob, at B, finds her, takes a prekey bundle and leaves her mail.
    let (bob, bob_id) = session(&b.tcp(), "bob").await;
    match ask(
        &bob,
        RendezvousRequest::Lookup {
            names: vec![name("alice")],
        },
    )
    .await
    {
        RendezvousResponse::Users(users) => {
            assert_eq!(users.len(), 1);
            assert_eq!(users[0].identity, alice_id.public());
        }
        other => panic!("{other:?}"),
    }
    match ask(
        &bob,
        RendezvousRequest::FetchPrekeys {
            name: name("alice"),
        },
    )
    .await
    {
        RendezvousResponse::Prekeys(bundle) => {
            assert_eq!(bundle.identity, alice_id.public());
            assert_eq!(bundle.one_time_prekey.map(|k| k.id), Some(0));
        }
        other => panic!("{other:?}"),
    }
    let letters = [
        envelope(&bob_id, &alice_id.public(), 1, 100),
        envelope(&bob_id, &alice_id.public(), 2, 200),
    ];
    for letter in &letters {
        deposit(&bob, "alice", letter).await;
    }
    // Carol at C takes the other one-time prekey: none is handed out twice across instances.
    let (carol, carol_id) = session(&c.tcp(), "carol").await;
    match ask(
        &carol,
        RendezvousRequest::FetchPrekeys {
            name: name("alice"),
        },
    )
    .await
    {
        RendezvousResponse::Prekeys(bundle) => {
            assert_eq!(bundle.one_time_prekey.map(|k| k.id), Some(1))
        }
        other => panic!("{other:?}"),
    }
    let from_carol = envelope(&carol_id, &alice_id.public(), 3, 50);
    deposit(&carol, "alice", &from_carol).await;

    // Discovery: Bob's record, registered at B, is found at C and at A, signed by Bob.
    let bob_addr: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/4100".parse().unwrap();
    let bob_record =
        palaver_rendezvous::discovery::seal(&bob_id.to_libp2p_keypair(), vec![bob_addr.clone()])
            .unwrap();
    let bob_namespace = Namespace::Peer(bob_id.peer_id());
    assert_eq!(
        ask(
            &bob,
            RendezvousRequest::RegisterDiscovery {
                namespace: bob_namespace.clone(),
                record: bob_record,
                ttl_secs: 60,
            },
        )
        .await,
        RendezvousResponse::Done
    );
    assert_eq!(
        crate::discovery::discover(&carol, bob_namespace.clone()).await,
        [(bob_id.peer_id(), bob_addr.clone())]
    );
    // Carol at C cannot take Bob's namespace either.
    let forged =
        palaver_rendezvous::discovery::seal(&carol_id.to_libp2p_keypair(), vec![bob_addr.clone()])
            .unwrap();
    let refused = refusal(
        ask(
            &carol,
            RendezvousRequest::RegisterDiscovery {
                namespace: bob_namespace.clone(),
                record: forged,
                ttl_secs: 60,
            },
        )
        .await,
    );
    assert_eq!(refused.reason, RefusalReason::NotAllowed);
    let (dave, _) = session(&a.tcp(), "dave").await;
    assert_eq!(
        crate::discovery::discover(&dave, bob_namespace).await,
        [(bob_id.peer_id(), bob_addr)]
    );
    drop(dave);

    // Alice comes back at C: all three are waiting, oldest first; the ack removes them once.
    let alice = connect(&c.tcp(), &alice_id).await;
    match login(&alice, "alice").await {
        RendezvousResponse::LoggedIn {
            mail_waiting,
            one_time_prekeys_left,
            ..
        } => {
            assert_eq!(mail_waiting, 3);
            assert_eq!(one_time_prekeys_left, 0);
        }
        other => panic!("{other:?}"),
    }
    let mut expected = letters.to_vec();
    expected.push(from_carol);
    assert_eq!(fetch(&alice).await, expected);
    ack(&alice, &expected).await;
    // Acked at C, gone at A and B as well.
    drop(alice);
    let alice = connect(&a.tcp(), &alice_id).await;
    assert_eq!(mail_waiting(&alice, "alice").await, 0);
    assert!(fetch(&alice).await.is_empty());
    drop((alice, bob, carol, intruder));
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_kill_9_of_the_instance_holding_pending_mail_loses_nothing_and_delivers_once() {
    let Some(postgres) = TestPostgres::start("cluster::kill_9").unwrap() else {
        return;
    };
    let url = postgres.url();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_addrs) = crate::process::spawn_with(a_dir.path(), &["--store", &url]);
    let (b, b_addrs) = crate::process::spawn_with(b_dir.path(), &["--store", &url]);
    // Killed when dropped, so a failed assertion leaves no instance behind.
    let (mut a, b) = (Running(a), Running(b));
    let (a_tcp, b_tcp) = (crate::process::tcp(&a_addrs), crate::process::tcp(&b_addrs));

    let bob_id = identity();
    register(&connect(&a_tcp, &bob_id).await, "bob").await;
    let (alice, alice_id) = session(&a_tcp, "alice").await;
    let letters: Vec<Envelope> = (1..=3)
        .map(|n| envelope(&alice_id, &bob_id.public(), n, 300))
        .collect();
    for letter in &letters {
        deposit(&alice, "bob", letter).await;
    }
    // SIGKILL right after the acknowledgements.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    drop(alice);

    let bob = connect(&b_tcp, &bob_id).await;
    assert_eq!(mail_waiting(&bob, "bob").await, 3);
    let got = fetch(&bob).await;
    assert_eq!(got, letters, "nothing lost");
    // The first fetch is not acknowledged yet (bob "crashes"): the same mail again, not more.
    assert_eq!(fetch(&bob).await, letters, "nothing twice");
    ack(&bob, &got).await;
    assert!(fetch(&bob).await.is_empty());
    drop(b);
}

#[tokio::test]
async fn a_database_restart_answers_try_again_and_then_serves_again() {
    let Some(postgres) = TestPostgres::start("cluster::database_restart").unwrap() else {
        return;
    };
    let (server, _dir) = instance(&postgres).await;
    let (alice, _) = session(&server.tcp(), "alice").await;
    let bob_id: Identity = identity();
    register(&connect(&server.tcp(), &bob_id).await, "bob").await;

    postgres.stop().unwrap();
    let refused = refusal(
        ask(
            &alice,
            RendezvousRequest::Lookup {
                names: vec![name("bob")],
            },
        )
        .await,
    );
    assert_eq!(refused.reason, RefusalReason::Unavailable);
    assert!(refused.detail.contains("try again"), "{}", refused.detail);

    postgres.start_again().unwrap();
    // The pool replaces its broken connections as they are used; the same session goes on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match ask(
            &alice,
            RendezvousRequest::Lookup {
                names: vec![name("bob")],
            },
        )
        .await
        {
            RendezvousResponse::Users(users) => {
                assert_eq!(users[0].identity, bob_id.public());
                break;
            }
            RendezvousResponse::Refused(r) if r.reason == RefusalReason::Unavailable => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never reconnected: {r:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    drop(alice);
    server.stop().await;
}

#[tokio::test]
async fn presence_and_new_mail_cross_instances_and_a_dead_instances_users_go_offline() {
    let Some(postgres) = TestPostgres::start("cluster::presence").unwrap() else {
        return;
    };
    let limits = palaver_rendezvous::Limits {
        presence_timeout: Duration::from_secs(2),
        ..test_limits()
    };
    let (a, _a_dir) = instance_with(&postgres, limits.clone()).await;
    let (b, _b_dir) = instance_with(&postgres, limits).await;
    let (mut carol, carol_id) = session(&a.tcp(), "carol").await;
    let bob_id = identity();
    register(&connect(&b.tcp(), &bob_id).await, "bob").await;
    ask(
        &carol,
        RendezvousRequest::SubscribePresence {
            names: vec![name("bob")],
        },
    )
    .await;

    // Bob logs in at B: carol, subscribed at A, is told.
    let mut bob = connect(&b.tcp(), &bob_id).await;
    login(&bob, "bob").await;
    let online = |push: &ServerPush| matches!(push, ServerPush::Presence(r) if r.name.as_str() == "bob" && r.state == PresenceState::Online);
    expect_push(&mut carol, Duration::from_secs(10), online).await;
    // Carol leaves him mail at A: his session at B hears of it.
    deposit(&carol, "bob", &envelope(&carol_id, &bob_id.public(), 1, 10)).await;
    expect_push(&mut bob, Duration::from_secs(10), |push| {
        matches!(push, ServerPush::MailWaiting { count: 1 })
    })
    .await;

    // B dies without a word: bob is shown offline at A within the presence timeout.
    b.kill().await;
    expect_push(&mut carol, Duration::from_secs(10), |push| {
        matches!(push, ServerPush::Presence(r) if r.name.as_str() == "bob" && r.state == PresenceState::Offline)
    })
    .await;
    drop((carol, bob));
    a.stop().await;
}
