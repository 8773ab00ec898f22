//! Linked devices at the server: the signed list, logins from listed devices, each device's own
//! prekeys and mail, and a removed device logged out.

use palaver_protocol::identity::devices::{Device, DeviceList, SignedDeviceList};
use palaver_protocol::wire::rendezvous::{AccountDevices, SealedLink};

use super::*;

/// Alice's account key is seed 1; these seeds are her linked devices.
fn devices(account: &Identity, version: u64, linked: &[&Identity]) -> SignedDeviceList {
    let mut list = DeviceList::single(account.public());
    list.version = version;
    for (i, device) in linked.iter().enumerate() {
        let device = Device::bind(device, &account.public(), format!("device {i}"), 0);
        list.devices.push(device);
    }
    SignedDeviceList::sign(list, account).unwrap()
}

fn publish(list: SignedDeviceList) -> RendezvousRequest {
    RendezvousRequest::PublishDevices(Box::new(list))
}

fn login(n: &str) -> RendezvousRequest {
    RendezvousRequest::Login {
        name: name(n),
        instance: 7,
    }
}

/// Alice on her account key, her laptop (seed 11) linked and logged in, bob watching her.
fn alice_with_laptop(h: &mut Harness) -> (Identity, PeerId, Identity, PeerId) {
    let (alice_id, alice) = h.session(1, "alice", 0);
    let (laptop_id, laptop) = user(11);
    h.service.connected(laptop, 0);
    assert_eq!(h.refusal(laptop, login("alice"), 0), RefusalReason::NotYourName);
    let reply = h.ask(alice, publish(devices(&alice_id, 1, &[&laptop_id])), 1);
    assert_eq!(reply, RendezvousResponse::Done);
    let reply = h.ask(laptop, login("alice"), 2);
    assert!(matches!(reply, RendezvousResponse::LoggedIn { .. }), "{reply:?}");
    (alice_id, alice, laptop_id, laptop)
}

#[test]
fn a_listed_device_logs_in_as_the_account_and_is_named_by_its_key() {
    let mut h = harness();
    let (alice_id, alice, laptop_id, laptop) = alice_with_laptop(&mut h);
    assert!(h.gate.allows(&laptop));
    let (_, bob) = h.session(2, "bob", 3);
    let fetch = RendezvousRequest::FetchDevices {
        names: vec![name("alice"), name("bob"), name("nobody")],
    };
    // Those that never published a list are left out.
    assert_eq!(
        h.ask(bob, fetch, 4),
        RendezvousResponse::Devices(vec![AccountDevices {
            name: name("alice"),
            list: devices(&alice_id, 1, &[&laptop_id]),
        }])
    );
    // Who is the laptop's key? Alice, under her account key.
    let RendezvousResponse::Users(users) = h.ask(
        bob,
        RendezvousRequest::WhoIs {
            keys: vec![laptop_id.public()],
        },
        5,
    ) else {
        panic!()
    };
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, name("alice"));
    assert_eq!(users[0].identity, alice_id.public());
    // The laptop's key cannot be registered as a name of its own.
    assert_eq!(
        h.refusal(
            laptop,
            RendezvousRequest::Register {
                name: name("mallory"),
                token: None
            },
            6
        ),
        RefusalReason::Invalid
    );
    let _ = alice;
}

#[test]
fn only_the_account_key_publishes_and_only_newer_lists_it_signed() {
    let mut h = harness();
    let (alice_id, alice, laptop_id, laptop) = alice_with_laptop(&mut h);
    let (phone_id, _) = user(12);
    // The laptop may not change the list, even with one alice signed.
    let newer = devices(&alice_id, 2, &[&laptop_id, &phone_id]);
    assert_eq!(h.refusal(laptop, publish(newer.clone()), 3), RefusalReason::NotAllowed);
    // A list signed by another key, an older one, a different one at the same version: refused.
    let forged = devices(&laptop_id, 2, &[]);
    assert_eq!(h.refusal(alice, publish(forged), 3), RefusalReason::Invalid);
    assert_eq!(
        h.refusal(alice, publish(devices(&alice_id, 0, &[])), 3),
        RefusalReason::Invalid
    );
    assert_eq!(
        h.refusal(alice, publish(devices(&alice_id, 1, &[&phone_id])), 3),
        RefusalReason::Invalid
    );
    // The same list again is a no-op; a newer one is taken, and alice's watchers are told.
    let same = h.ask(alice, publish(devices(&alice_id, 1, &[&laptop_id])), 3);
    assert_eq!(same, RendezvousResponse::Done);
    let (_, watcher) = h.session(3, "watcher", 3);
    h.ask(
        watcher,
        RendezvousRequest::SubscribePresence {
            names: vec![name("alice")],
        },
        3,
    );
    h.service.take_pushes();
    assert_eq!(h.ask(alice, publish(newer), 4), RendezvousResponse::Done);
    let pushes = h.service.take_pushes();
    // The watcher, and alice's own devices (the laptop among them), are told.
    for peer in [watcher, laptop] {
        assert!(
            pushes.contains(&(
                peer,
                ServerPush::DevicesChanged {
                    name: name("alice")
                }
            )),
            "{pushes:?}"
        );
    }
    // Another account's key cannot be listed as a device.
    let (bob_id, _) = h.session(2, "bob", 5);
    let stolen = devices(&alice_id, 3, &[&laptop_id, &phone_id, &bob_id]);
    assert_eq!(h.refusal(alice, publish(stolen), 6), RefusalReason::Invalid);
}

#[test]
fn each_device_has_its_own_prekeys_and_mailbox() {
    let mut h = harness();
    let (alice_id, alice, laptop_id, laptop) = alice_with_laptop(&mut h);
    let (bob_id, bob) = h.session(2, "bob", 3);
    for (id, peer) in [(&alice_id, alice), (&laptop_id, laptop)] {
        let reply = h.ask(peer, RendezvousRequest::PublishPrekeys(Box::new(upload(id, 2))), 4);
        assert_eq!(reply, RendezvousResponse::Done);
    }
    let bundle = |h: &mut Harness, device: Option<VerifyingKey>| {
        let request = match device {
            None => RendezvousRequest::FetchPrekeys { name: name("alice") },
            Some(device) => RendezvousRequest::FetchDevicePrekeys {
                name: name("alice"),
                device,
            },
        };
        match h.ask(bob, request, 5) {
            RendezvousResponse::Prekeys(bundle) => bundle.identity,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(bundle(&mut h, None), alice_id.public());
    assert_eq!(bundle(&mut h, Some(laptop_id.public())), laptop_id.public());
    assert_eq!(bundle(&mut h, Some(alice_id.public())), alice_id.public());
    assert_eq!(
        h.refusal(
            bob,
            RendezvousRequest::FetchDevicePrekeys {
                name: name("alice"),
                device: bob_id.public(),
            },
            5
        ),
        RefusalReason::UnknownUser
    );

    // A deposit goes to the device its envelope is sealed for, and only it is told.
    h.service.take_pushes();
    let for_laptop = envelope(&bob_id, &laptop_id.public(), 1);
    let reply = h.ask(
        bob,
        RendezvousRequest::Deposit {
            to: name("alice"),
            envelope: Box::new(for_laptop.clone()),
        },
        6,
    );
    assert!(matches!(reply, RendezvousResponse::Deposited { .. }), "{reply:?}");
    let pushes = h.service.take_pushes();
    assert!(
        matches!(&pushes[..], [(p, ServerPush::MailWaiting { count: 1 })] if *p == laptop),
        "{pushes:?}"
    );
    let mail = |h: &mut Harness, peer| match h.ask(peer, RendezvousRequest::FetchMail { max: 10 }, 7) {
        RendezvousResponse::Mail { items, .. } => items,
        other => panic!("{other:?}"),
    };
    assert!(mail(&mut h, alice).is_empty());
    assert_eq!(mail(&mut h, laptop)[0].envelope, for_laptop);
    // An envelope sealed for a key that is not one of alice's devices is refused.
    let stray = envelope(&bob_id, &bob_id.public(), 2);
    let reply = h.ask(
        bob,
        RendezvousRequest::Deposit {
            to: name("alice"),
            envelope: Box::new(stray),
        },
        8,
    );
    assert!(matches!(reply, RendezvousResponse::Refused(_)), "{reply:?}");
}

#[test]
fn the_user_stays_online_while_a_device_is_and_a_removed_device_is_logged_out() {
    let mut h = harness();
    let (alice_id, alice, _laptop_id, laptop) = alice_with_laptop(&mut h);
    let (_, watcher) = h.session(2, "watcher", 3);
    h.ask(
        watcher,
        RendezvousRequest::SubscribePresence {
            names: vec![name("alice")],
        },
        4,
    );
    h.service.take_pushes();
    h.service.disconnected(alice, 5);
    assert!(
        h.service.take_pushes().is_empty(),
        "the laptop is still online"
    );
    h.service.connected(alice, 6);
    let reply = h.ask(alice, login("alice"), 6);
    assert!(matches!(reply, RendezvousResponse::LoggedIn { .. }));

    // A new list: alice's other devices are told too (so they stop copying to a revoked one).
    let (phone_id, phone) = user(12);
    h.ask(alice, publish(devices(&alice_id, 2, &[&_laptop_id, &phone_id])), 7);
    h.service.connected(phone, 7);
    assert!(matches!(h.ask(phone, login("alice"), 7), RendezvousResponse::LoggedIn { .. }));
    h.service.take_pushes();
    // Alice revokes the laptop: it is logged out and disconnected at once, and may not return.
    let reply = h.ask(alice, publish(devices(&alice_id, 3, &[&phone_id])), 7);
    assert_eq!(reply, RendezvousResponse::Done);
    let told: Vec<PeerId> = h
        .service
        .take_pushes()
        .into_iter()
        .filter(|(_, push)| matches!(push, ServerPush::DevicesChanged { .. }))
        .map(|(peer, _)| peer)
        .collect();
    assert!(told.contains(&phone) && told.contains(&watcher), "{told:?}");
    assert_eq!(h.service.take_disconnects(), [laptop]);
    assert!(!h.gate.allows(&laptop));
    assert_eq!(
        h.refusal(laptop, RendezvousRequest::FetchMail { max: 1 }, 8),
        RefusalReason::NotLoggedIn
    );
    assert_eq!(h.refusal(laptop, login("alice"), 8), RefusalReason::NotYourName);
    h.service.disconnected(phone, 9);
    h.service.take_pushes();
    h.service.disconnected(alice, 9);
    let pushes = h.service.take_pushes();
    assert!(
        matches!(&pushes[..], [(w, ServerPush::Presence(r))] if *w == watcher && r.state == PresenceState::Offline),
        "{pushes:?}"
    );
}

#[test]
fn the_link_drop_holds_one_message_per_slot_for_a_while_before_login() {
    let mut h = harness();
    let (_, newcomer) = user(40);
    h.service.connected(newcomer, 0);
    let (_, alice) = h.session(1, "alice", 0);
    let post = |slot: u8, bytes: Vec<u8>| RendezvousRequest::LinkPost {
        slot: [slot; 32],
        sealed: SealedLink(bytes),
    };
    let take = |slot: u8| RendezvousRequest::LinkTake { slot: [slot; 32] };
    // A device with no session may post only where a session waits: alice asks first.
    assert_eq!(
        h.refusal(newcomer, post(1, vec![1, 2, 3]), 1),
        RefusalReason::NotAllowed
    );
    assert_eq!(h.ask(alice, take(1), 1), RendezvousResponse::Link(None));
    assert_eq!(h.ask(newcomer, post(1, vec![1, 2, 3]), 1), RendezvousResponse::Done);
    assert_eq!(
        h.ask(alice, take(1), 2),
        RendezvousResponse::Link(Some(SealedLink(vec![1, 2, 3])))
    );
    assert_eq!(h.ask(alice, take(1), 3), RendezvousResponse::Link(None));
    // A second post replaces the first; an old one is gone.
    h.ask(alice, post(2, vec![1]), 4);
    h.ask(alice, post(2, vec![2]), 5);
    assert_eq!(
        h.ask(newcomer, take(2), 6),
        RendezvousResponse::Link(Some(SealedLink(vec![2])))
    );
    h.ask(alice, post(3, vec![3]), 10);
    assert_eq!(
        h.ask(newcomer, take(3), 10 + crate::service::devices::LINK_TTL_MS),
        RendezvousResponse::Link(None)
    );
    // Too large: refused.
    let big = vec![0; palaver_protocol::wire::rendezvous::MAX_LINK_LEN + 1];
    assert_eq!(h.refusal(newcomer, post(4, big), 11), RefusalReason::TooLarge);
    // Still only the link drop before login.
    assert_eq!(
        h.refusal(newcomer, RendezvousRequest::FetchMail { max: 1 }, 12),
        RefusalReason::NotLoggedIn
    );
}
