//! Registration, login, tokens, the unauthenticated timeout, prekeys.

use std::time::Duration;

use palaver_protocol::wire::{RefusalReason, RendezvousRequest, RendezvousResponse, ServerPush};

use crate::common::*;

#[tokio::test]
async fn a_name_is_first_come_and_a_login_needs_the_key_it_was_registered_with() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let (alice, alice_id) = session(&server.tcp(), "alice").await;

    let mallory = connect(&server.tcp(), &identity()).await;
    let taken = refusal(
        ask(
            &mallory,
            RendezvousRequest::Register {
                name: name("alice"),
                token: None,
            },
        )
        .await,
    );
    assert_eq!(taken.reason, RefusalReason::NameTaken);
    assert!(taken.detail.contains("another key"), "{}", taken.detail);
    let stolen = refusal(
        ask(
            &mallory,
            RendezvousRequest::Login {
                name: name("alice"),
                instance: 1,
            },
        )
        .await,
    );
    assert_eq!(stolen.reason, RefusalReason::NotYourName);
    let unknown = refusal(
        ask(
            &mallory,
            RendezvousRequest::Login {
                name: name("zed"),
                instance: 1,
            },
        )
        .await,
    );
    assert_eq!(unknown.reason, RefusalReason::UnknownUser);

    // Registering again with the same key is a harmless retry.
    assert!(matches!(
        ask(
            &alice,
            RendezvousRequest::Register {
                name: name("alice"),
                token: None
            }
        )
        .await,
        RendezvousResponse::Registered { .. }
    ));
    // The same key logs in over QUIC as well.
    let over_quic = connect(&server.quic(), &alice_id).await;
    login(&over_quic, "alice").await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_with_registration_tokens_registers_only_with_a_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.registration_tokens = vec!["let-me-in".into()];
    let server = TestServer::start(config).await;
    let client = connect(&server.tcp(), &identity()).await;
    let register = |token: Option<&str>| RendezvousRequest::Register {
        name: name("alice"),
        token: token.map(Into::into),
    };
    assert_eq!(
        refusal(ask(&client, register(None)).await).reason,
        RefusalReason::TokenRequired
    );
    assert_eq!(
        refusal(ask(&client, register(Some("let-me-out"))).await).reason,
        RefusalReason::BadToken
    );
    assert!(matches!(
        ask(&client, register(Some("let-me-in"))).await,
        RendezvousResponse::Registered { .. }
    ));
    login(&client, "alice").await;
    server.stop().await;
}

#[tokio::test]
async fn an_unauthenticated_peer_may_only_register_or_log_in_and_is_disconnected_after_the_timeout()
{
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.login_timeout = Duration::from_millis(400);
    let server = TestServer::start(config).await;

    let lurker = connect(&server.tcp(), &identity()).await;
    let refused = refusal(ask(&lurker, RendezvousRequest::FetchMail { max: 10 }).await);
    assert_eq!(refused.reason, RefusalReason::NotLoggedIn);
    let (member, _) = session(&server.tcp(), "member").await;

    tokio::time::timeout(Duration::from_secs(3), lurker.disconnected())
        .await
        .expect("the unauthenticated peer was not disconnected");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(member.is_connected(), "a logged-in peer was disconnected");
    assert!(matches!(
        ask(&member, RendezvousRequest::FetchMail { max: 10 }).await,
        RendezvousResponse::Mail { .. }
    ));
    server.stop().await;
}

#[tokio::test]
async fn fetching_prekeys_consumes_one_one_time_key_each_and_warns_the_owner_when_low() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.prekeys_low = 2;
    let server = TestServer::start(config).await;
    let (mut alice, alice_id) = session(&server.tcp(), "alice").await;
    let (bob, _) = session(&server.tcp(), "bob").await;

    assert_eq!(
        refusal(
            ask(
                &bob,
                RendezvousRequest::FetchPrekeys {
                    name: name("alice")
                }
            )
            .await
        )
        .reason,
        RefusalReason::NoPrekeys
    );
    assert_eq!(
        ask(
            &alice,
            RendezvousRequest::PublishPrekeys(Box::new(prekeys(&alice_id, 3)))
        )
        .await,
        RendezvousResponse::Done
    );
    let mut handed = Vec::new();
    for _ in 0..4 {
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
                handed.push(bundle.one_time_prekey.map(|k| k.id));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(handed, vec![Some(0), Some(1), Some(2), None]);
    let low = expect_push(&mut alice, Duration::from_secs(1), |p| {
        matches!(p, ServerPush::PrekeysLow { .. })
    })
    .await;
    assert_eq!(low, ServerPush::PrekeysLow { remaining: 1 });

    // Topping up works and is counted at the next login.
    let more = prekeys(&alice_id, 5).one_time_prekeys;
    assert_eq!(
        ask(&alice, RendezvousRequest::AddOneTimePrekeys(more)).await,
        RendezvousResponse::Done
    );
    match login(&alice, "alice").await {
        RendezvousResponse::LoggedIn {
            one_time_prekeys_left,
            ..
        } => assert_eq!(one_time_prekeys_left, 5),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

/// The client session logs in as a node does: it registers the name the first time, publishes
/// prekeys (another user can start a session from them), logs in again, and a name held by
/// another key is refused with the server's reason (the login is tried before registering).
#[tokio::test]
async fn a_client_session_logs_in_as_a_node_does() {
    use palaver_rendezvous::client::session::{ClientSession, SessionError};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let id = identity();
    let client = connect(&server.tcp(), &id).await;
    let mut carol = ClientSession::log_in(client, &id, name("carol"), None)
        .await
        .expect("logs in");
    assert!(carol.prekeys_published());
    let (bob, _) = session(&server.tcp(), "bob").await;
    let bundle = ask(
        &bob,
        RendezvousRequest::FetchPrekeys {
            name: name("carol"),
        },
    )
    .await;
    let RendezvousResponse::Prekeys(bundle) = bundle else {
        panic!("no prekeys: {bundle:?}");
    };
    assert_eq!(bundle.identity, id.public());
    bundle.verify().expect("signed by carol");

    carol.log_in_again().await.expect("logs in again");
    let users = carol
        .request(RendezvousRequest::Lookup {
            names: vec![name("bob")],
        })
        .await
        .expect("answered");
    assert!(
        matches!(&users, RendezvousResponse::Users(users) if users.len() == 1),
        "{users:?}"
    );

    let mallory = identity();
    let client = connect(&server.tcp(), &mallory).await;
    let refused = ClientSession::log_in(client, &mallory, name("carol"), None).await;
    assert!(
        matches!(&refused, Err(SessionError::Refused(r)) if r.reason == RefusalReason::NotYourName),
        "{refused:?}"
    );
}
