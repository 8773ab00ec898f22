//! Two instances over one store, their notes carried by hand: presence and pushes cross.

use super::*;

/// Two instances sharing one store, both in the cluster.
fn pair() -> (Harness, Harness) {
    let mut a = harness();
    let store = a.service.store().clone();
    let gate = RelayGate::new(false);
    let metrics = Metrics::register(&mut Registry::default());
    let mut b = Harness {
        service: Service::new(store, limits(), Vec::new(), false, gate.clone(), metrics).unwrap(),
        gate,
        _dir: tempfile::tempdir().unwrap(),
    };
    a.service.join_cluster();
    b.service.join_cluster();
    (a, b)
}

/// Carries `from`'s notes to `to`.
fn carry(from: &mut Harness, from_id: &str, to: &mut Harness, now: Millis) {
    for event in from.service.take_cluster_events() {
        to.service.cluster_event(from_id.to_owned(), event, now);
    }
}

fn presence_pushed(h: &mut Harness, to: PeerId) -> Vec<PresenceState> {
    h.service
        .take_pushes()
        .into_iter()
        .filter_map(|(peer, push)| match push {
            ServerPush::Presence(record) if peer == to => Some(record.state),
            _ => None,
        })
        .collect()
}

#[test]
fn presence_crosses_instances_and_a_user_moving_between_them_stays_online() {
    let (mut a, mut b) = pair();
    let (_, carol) = a.session(1, "carol", 0);
    b.session(2, "bob", 0);
    carry(&mut b, "B", &mut a, 1);
    let reply = a.ask(
        carol,
        RendezvousRequest::SubscribePresence {
            names: vec![name("bob")],
        },
        2,
    );
    // Bob is online at B: carol, at A, sees him online.
    assert!(
        matches!(&reply, RendezvousResponse::Users(u) if u[0].presence.state == PresenceState::Online),
        "{reply:?}"
    );
    a.service.take_pushes();

    // Bob goes away at B: carol is told.
    let (_, bob) = user(2);
    b.ask(
        bob,
        RendezvousRequest::Heartbeat {
            state: PresenceState::Away,
        },
        10,
    );
    carry(&mut b, "B", &mut a, 10);
    assert_eq!(presence_pushed(&mut a, carol), [PresenceState::Away]);

    // Bob moves to A (his connection to B drops after): never shown offline meanwhile.
    a.service.connected(bob, 20);
    a.ask(bob, RendezvousRequest::Login { name: name("bob"), instance: 1 }, 20);
    b.service.disconnected(bob, 21);
    carry(&mut b, "B", &mut a, 22);
    assert!(
        !presence_pushed(&mut a, carol).contains(&PresenceState::Offline),
        "a user online at A is not shown offline because B saw him leave"
    );
    // Leaving A as well: offline.
    a.service.disconnected(bob, 30);
    assert_eq!(presence_pushed(&mut a, carol), [PresenceState::Offline]);
}

#[test]
fn a_silent_instance_is_taken_for_dead_and_its_users_shown_offline_within_the_timeout() {
    let (mut a, mut b) = pair();
    let (_, carol) = a.session(1, "carol", 0);
    b.session(2, "bob", 0);
    b.service.tick(0);
    carry(&mut b, "B", &mut a, 0);
    a.ask(
        carol,
        RendezvousRequest::SubscribePresence {
            names: vec![name("bob")],
        },
        1,
    );
    a.service.take_pushes();
    // B beats every third of the timeout while it lives...
    let timeout = 60_000;
    for now in [20_000, 40_000, 60_000] {
        b.ask(
            user(2).1,
            RendezvousRequest::Heartbeat {
                state: PresenceState::Online,
            },
            now,
        );
        b.service.tick(now);
        carry(&mut b, "B", &mut a, now);
        a.service.tick(now);
        assert!(presence_pushed(&mut a, carol).is_empty(), "alive at {now}");
    }
    // ...then dies (a kill -9 says nothing): A shows bob offline one timeout after B's last word.
    assert!(
        a.service
            .next_due()
            .is_some_and(|due| due <= 60_000 + timeout)
    );
    a.service.tick(60_000 + timeout - 1);
    assert!(presence_pushed(&mut a, carol).is_empty());
    a.service.tick(60_000 + timeout);
    assert_eq!(presence_pushed(&mut a, carol), [PresenceState::Offline]);
}

#[test]
fn mail_deposited_at_one_instance_is_announced_to_the_recipients_session_at_another() {
    let (mut a, mut b) = pair();
    let (alice_id, _) = a.session(1, "alice", 0);
    let (bob_id, bob) = b.session(2, "bob", 0);
    let letter = envelope(&alice_id, &bob_id.public(), 1);
    let reply = a.ask(
        user(1).1,
        RendezvousRequest::Deposit {
            to: name("bob"),
            envelope: Box::new(letter),
        },
        5,
    );
    assert!(
        matches!(reply, RendezvousResponse::Deposited { .. }),
        "{reply:?}"
    );
    assert!(a.service.take_pushes().iter().all(|(peer, _)| *peer != bob));
    carry(&mut a, "A", &mut b, 6);
    let pushes = b.service.take_pushes();
    assert!(
        pushes
            .iter()
            .any(|(peer, push)| *peer == bob && *push == ServerPush::MailWaiting { count: 1 }),
        "{pushes:?}"
    );
    // Alone (no cluster), nothing is queued for other instances.
    let mut alone = harness();
    alone.session(1, "alice", 0);
    assert!(alone.service.take_cluster_events().is_empty());
}

#[test]
fn a_device_revoked_at_one_instance_is_logged_out_at_the_other_and_watchers_there_are_told() {
    use palaver_protocol::identity::devices::{Device, DeviceList, SignedDeviceList};
    let (mut a, mut b) = pair();
    let (alice_id, alice) = a.session(1, "alice", 0);
    let (laptop_id, laptop) = user(11);
    let list = |devices: &[&Identity], version| {
        let mut list = DeviceList::single(alice_id.public());
        list.version = version;
        for d in devices {
            let device = Device::bind(d, &alice_id.public(), "laptop".into(), 0);
            list.devices.push(device);
        }
        RendezvousRequest::PublishDevices(Box::new(SignedDeviceList::sign(list, &alice_id).unwrap()))
    };
    assert_eq!(a.ask(alice, list(&[&laptop_id], 1), 1), RendezvousResponse::Done);
    // The laptop logs in at the other instance; a watcher there follows alice.
    b.service.connected(laptop, 2);
    let login = b.ask(laptop, RendezvousRequest::Login { name: name("alice"), instance: 3 }, 2);
    assert!(matches!(login, RendezvousResponse::LoggedIn { .. }), "{login:?}");
    let (_, watcher) = b.session(5, "watcher", 2);
    b.ask(watcher, RendezvousRequest::SubscribePresence { names: vec![name("alice")] }, 2);
    b.service.take_pushes();

    a.service.take_cluster_events();
    assert_eq!(a.ask(alice, list(&[], 2), 3), RendezvousResponse::Done);
    carry(&mut a, "A", &mut b, 4);
    assert_eq!(b.service.take_disconnects(), [laptop]);
    assert_eq!(
        b.refusal(laptop, RendezvousRequest::FetchMail { max: 1 }, 5),
        RefusalReason::NotLoggedIn
    );
    let pushes = b.service.take_pushes();
    assert!(
        pushes.iter().any(|(peer, push)| *peer == watcher
            && *push == ServerPush::DevicesChanged { name: name("alice") }),
        "{pushes:?}"
    );
}
