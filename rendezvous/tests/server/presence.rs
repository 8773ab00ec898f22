//! Presence pushed to subscribers, and timing out.

use std::time::{Duration, Instant};

use palaver_protocol::wire::{
    PresenceRecord, PresenceState, RendezvousRequest, RendezvousResponse, ServerPush,
};

use crate::common::*;

fn is_state(state: PresenceState) -> impl Fn(&ServerPush) -> bool {
    move |p| matches!(p, ServerPush::Presence(PresenceRecord { state: s, .. }) if *s == state)
}

#[tokio::test]
async fn presence_changes_are_pushed_to_subscribers_within_a_second_and_silence_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.presence_timeout = Duration::from_millis(600);
    let server = TestServer::start(config).await;

    // Alice exists but is not connected.
    let alice_id = identity();
    {
        let alice = connect(&server.tcp(), &alice_id).await;
        ask(
            &alice,
            RendezvousRequest::Register {
                name: name("alice"),
                token: None,
            },
        )
        .await;
    }
    let (mut watcher, _) = session(&server.tcp(), "watcher").await;
    match ask(
        &watcher,
        RendezvousRequest::SubscribePresence {
            names: vec![name("alice")],
        },
    )
    .await
    {
        RendezvousResponse::Users(users) => {
            assert_eq!(users.len(), 1);
            assert_eq!(users[0].presence.state, PresenceState::Offline);
            assert_eq!(users[0].name, name("alice"));
        }
        other => panic!("{other:?}"),
    }

    // Alice comes online: the watcher hears within a second.
    let alice = connect(&server.tcp(), &alice_id).await;
    let start = Instant::now();
    login(&alice, "alice").await;
    expect_push(
        &mut watcher,
        Duration::from_secs(1),
        is_state(PresenceState::Online),
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(1));

    // Away, by heartbeat.
    let start = Instant::now();
    ask(
        &alice,
        RendezvousRequest::Heartbeat {
            state: PresenceState::Away,
        },
    )
    .await;
    expect_push(
        &mut watcher,
        Duration::from_secs(1),
        is_state(PresenceState::Away),
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(1));

    // Alice stays connected but stops heartbeating: offline after the 600 ms timeout.
    let start = Instant::now();
    let offline = expect_push(
        &mut watcher,
        Duration::from_secs(2),
        is_state(PresenceState::Offline),
    )
    .await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "too early: {waited:?}"
    );
    let ServerPush::Presence(record) = offline else {
        unreachable!()
    };
    assert!(record.last_seen_ms.is_some());
    assert!(alice.is_connected());

    // A heartbeat brings her back; leaving takes her offline again.
    ask(
        &alice,
        RendezvousRequest::Heartbeat {
            state: PresenceState::Online,
        },
    )
    .await;
    expect_push(
        &mut watcher,
        Duration::from_secs(1),
        is_state(PresenceState::Online),
    )
    .await;
    drop(alice);
    expect_push(
        &mut watcher,
        Duration::from_secs(2),
        is_state(PresenceState::Offline),
    )
    .await;
    match ask(
        &watcher,
        RendezvousRequest::Lookup {
            names: vec![name("alice")],
        },
    )
    .await
    {
        RendezvousResponse::Users(users) => {
            assert_eq!(users[0].presence.state, PresenceState::Offline);
            assert!(users[0].presence.last_seen_ms.is_some());
            assert_eq!(users[0].identity, alice_id.public());
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

/// Pushes travel on one stream per session, which the server opens on the connection the
/// session logs in on: logging in again over a second connection (as after a network change,
/// the first lingering) moves it there, and every push after arrives on the new connection.
#[tokio::test]
async fn pushes_follow_the_watcher_to_the_connection_it_logs_in_on_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let (alice, _) = session(&server.tcp(), "alice").await;
    let (mut watcher, watcher_id) = session(&server.tcp(), "watcher").await;
    let mut lingering = None;
    let subscribe = RendezvousRequest::SubscribePresence {
        names: vec![name("alice")],
    };
    assert!(matches!(
        ask(&watcher, subscribe.clone()).await,
        RendezvousResponse::Users(_)
    ));
    let flip = |round: usize| {
        if round.is_multiple_of(2) {
            PresenceState::Away
        } else {
            PresenceState::Online
        }
    };
    for again in [false, true] {
        if again {
            // The first connection stays open; only the new one is read from now on.
            let second = connect(&server.tcp(), &watcher_id).await;
            lingering = Some(std::mem::replace(&mut watcher, second));
            login(&watcher, "watcher").await;
            assert!(matches!(
                ask(&watcher, subscribe.clone()).await,
                RendezvousResponse::Users(_)
            ));
        }
        for round in 0..6 {
            let state = flip(round);
            ask(&alice, RendezvousRequest::Heartbeat { state }).await;
            expect_push(&mut watcher, Duration::from_secs(2), is_state(state)).await;
        }
    }
    assert!(lingering.is_some_and(|first| first.is_connected()));
}
