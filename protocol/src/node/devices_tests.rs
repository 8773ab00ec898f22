use rand_core::OsRng;

use super::*;
use crate::crypto::link::LinkCode;

fn list_of(account: &Identity, linked: &[&Identity]) -> DeviceList {
    let mut list = DeviceList::single(account.public());
    for (i, d) in linked.iter().enumerate() {
        let device = Device::bind(d, &account.public(), format!("d{i}"), 1);
        list = list.with(device).unwrap();
    }
    list
}

#[test]
fn a_message_is_copied_to_the_recipients_other_devices_and_to_ours() {
    let (bob, bob_laptop) = (
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
    );
    let (alice, alice_phone) = (
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
    );
    let theirs = list_of(&bob, &[&bob_laptop]);
    let mine = list_of(&alice, &[&alice_phone]);
    // From alice's first device: bob's laptop, and alice's phone.
    assert_eq!(
        copies(&bob.public(), Some(&theirs), Some(&mine), &alice.public()),
        Copies {
            for_recipient: vec![bob_laptop.public()],
            for_me: vec![alice_phone.public()],
        }
    );
    // From the phone: alice's first device gets the copy.
    assert_eq!(
        copies(
            &bob.public(),
            Some(&theirs),
            Some(&mine),
            &alice_phone.public()
        )
        .for_me,
        vec![alice.public()]
    );
    // A list pinned under a key bob no longer has: no copies for it.
    let new_bob = Identity::generate(&mut OsRng);
    assert!(
        copies(&new_bob.public(), Some(&theirs), None, &alice.public())
            .for_recipient
            .is_empty()
    );
    // Nobody with a device list: no copies, as before devices.
    assert_eq!(
        copies(&bob.public(), None, None, &alice.public()),
        Copies::default()
    );
}

fn name(n: &str) -> UserName {
    UserName::new(n).unwrap()
}

#[test]
fn device_lists_are_taken_only_newer_and_only_from_the_pinned_account() {
    let (bob, laptop) = (
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
    );
    let (mallory, me) = (
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
    );
    let nobody = |_: &VerifyingKey| None;
    let learn_bob = |pin, list: &SignedDeviceList| {
        learn(
            &name("bob"),
            &bob.public(),
            false,
            &me.public(),
            pin,
            list,
            nobody,
        )
    };
    let v1 = list_of(&bob, &[&laptop]);
    let signed_v1 = SignedDeviceList::sign(v1.clone(), &bob).unwrap();
    let Learned::Updated {
        pin,
        named,
        dropped,
        this_device_removed,
    } = learn_bob(None, &signed_v1)
    else {
        panic!()
    };
    assert_eq!((named, dropped), (vec![laptop.public()], vec![]));
    assert!(!this_device_removed);
    assert_eq!(learn_bob(Some(*pin.clone()), &signed_v1), Learned::Same);
    // A list signed by someone else, for the name pinned to bob's key: refused.
    let forged = SignedDeviceList::sign(list_of(&mallory, &[&laptop]), &mallory).unwrap();
    assert!(matches!(
        learn_bob(Some(*pin.clone()), &forged),
        Learned::Refused(_)
    ));
    // Revoked, then the old list replayed: refused.
    let v2 = v1.without(&laptop.public()).unwrap();
    let revoked = SignedDeviceList::sign(v2, &bob).unwrap();
    let was_bobs = |key: &VerifyingKey| (*key == laptop.public()).then(|| name("bob"));
    let Learned::Updated { pin, dropped, .. } = learn(
        &name("bob"),
        &bob.public(),
        false,
        &me.public(),
        Some(*pin),
        &revoked,
        was_bobs,
    ) else {
        panic!()
    };
    assert_eq!(dropped, vec![laptop.public()]);
    assert!(matches!(
        learn_bob(Some(*pin), &signed_v1),
        Learned::Refused(e) if e.contains("older")
    ));
}

#[test]
fn a_list_cannot_take_over_a_key_that_stands_for_someone_else() {
    let (mallory, bob, me) = (
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
    );
    // mallory signs a list naming bob's key, and one naming this very device.
    let claims_bob = SignedDeviceList::sign(list_of(&mallory, &[&bob]), &mallory).unwrap();
    let claims_me = SignedDeviceList::sign(list_of(&mallory, &[&me]), &mallory).unwrap();
    let owner_of = |key: &VerifyingKey| (*key == bob.public()).then(|| name("bob"));
    for list in [&claims_bob, &claims_me] {
        let learned = learn(
            &name("mallory"),
            &mallory.public(),
            false,
            &me.public(),
            None,
            list,
            owner_of,
        );
        assert!(matches!(learned, Learned::Refused(_)), "{learned:?}");
    }
    // Our own list naming this device is ours to take; dropping it from our list says so.
    let mine = list_of(&mallory, &[&me]);
    let signed = SignedDeviceList::sign(mine.clone(), &mallory).unwrap();
    let ours = |pin, list: &SignedDeviceList| {
        learn(
            &name("mallory"),
            &mallory.public(),
            true,
            &me.public(),
            pin,
            list,
            |_: &VerifyingKey| None,
        )
    };
    let Learned::Updated { pin, named, .. } = ours(None, &signed) else {
        panic!()
    };
    assert!(
        named.is_empty(),
        "this device stands for nobody in our store"
    );
    let gone = SignedDeviceList::sign(mine.without(&me.public()).unwrap(), &mallory).unwrap();
    assert!(matches!(
        ours(Some(*pin), &gone),
        Learned::Updated {
            this_device_removed: true,
            ..
        }
    ));
}

#[test]
fn a_message_is_delivered_once_any_of_the_recipients_devices_has_it() {
    use crate::delivery::DeliveryStatus;
    assert!(delivers_message(
        CopyFor::Recipient,
        &DeliveryStatus::Delivered
    ));
    assert!(!delivers_message(
        CopyFor::Recipient,
        &DeliveryStatus::Queued
    ));
    assert!(!delivers_message(CopyFor::Me, &DeliveryStatus::Delivered));
}

#[test]
fn only_our_own_other_devices_hand_us_our_lines() {
    let (alice, phone, bob) = (
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
    );
    let mine = list_of(&alice, &[&phone]);
    assert!(is_own_device(Some(&mine), &alice.public(), &phone.public()));
    assert!(is_own_device(Some(&mine), &phone.public(), &alice.public()));
    assert!(!is_own_device(Some(&mine), &alice.public(), &bob.public()));
    assert!(!is_own_device(
        Some(&mine),
        &alice.public(),
        &alice.public()
    ));
    assert!(!is_own_device(None, &alice.public(), &phone.public()));
}

fn code(secret: &LinkSecret, account: &Identity) -> LinkCode {
    LinkCode {
        secret: secret.clone(),
        account: account.public(),
        rendezvous: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
    }
}

/// The new device's side, as `init --link` runs it, for `account` (alice's in these tests).
fn request_for(secret: &LinkSecret, account: &Identity, device: &Identity, label: &str) -> Vec<u8> {
    let request = LinkRequest::new(device, label.into(), 50, &code(secret, account));
    secret.seal(
        Direction::Request,
        &codec::encode(&request).unwrap(),
        &mut OsRng,
    )
}

#[test]
fn a_link_adds_the_device_publishes_and_hands_over_a_grant_only_it_opens() {
    let alice = Identity::generate(&mut OsRng);
    let laptop = Identity::generate(&mut OsRng);
    let own = DeviceList::single(alice.public());
    let secret = LinkSecret::generate(&mut OsRng);
    let mut linker = Linker::new(secret.clone(), 1_000);
    assert_eq!(linker.poll_timeout(), Some(1_000));
    let take = linker.handle_timeout(1_000);
    assert_eq!(
        take,
        Some(LinkOutput::Take {
            slot: secret.slot(Direction::Request)
        })
    );
    // Nothing asked twice while a question is out; nothing there yet: ask again later.
    assert_eq!(linker.handle_timeout(1_100), None);
    assert_eq!(linker.taken(Ok(None), &own, &alice, 1_200), None);
    assert_eq!(linker.poll_timeout(), Some(1_200 + LINK_POLL_MS));
    assert!(linker.handle_timeout(1_200 + LINK_POLL_MS).is_some());

    // The user is asked first.
    let Some(LinkOutput::Confirm(asking)) = linker.taken(
        Ok(Some(request_for(&secret, &alice, &laptop, "laptop"))),
        &own,
        &alice,
        2_000,
    ) else {
        panic!()
    };
    assert_eq!(
        (asking.key, asking.label.as_str()),
        (laptop.public(), "laptop")
    );
    assert!(linker.is_confirming());
    let Some(LinkOutput::Publish(list)) = linker.confirmed(true) else {
        panic!()
    };
    let published = list.verify(&alice.public()).unwrap().clone();
    assert_eq!(published.version, 1);
    assert!(published.contains(&laptop.public()));
    let Some(LinkOutput::Grant {
        slot,
        device,
        list,
        history,
    }) = linker.published(Ok(()))
    else {
        panic!()
    };
    assert_eq!(history, 50);
    assert_eq!(slot, secret.slot(Direction::Grant));
    assert_eq!(device.label, "laptop");
    let grant = LinkGrant {
        name: UserName::new("alice").unwrap(),
        devices: *list,
        contacts: vec![LinkedContact {
            name: UserName::new("bob").unwrap(),
            contact: Contact::first([7; 32]),
        }],
        rooms: vec![crate::node::rooms::LinkedRoom {
            id: crate::wire::RoomId([3; 32]),
            name: crate::RoomName::new("team").unwrap(),
            membership: Some(crate::crypto::room::MembershipUpdate::sign(
                alice.signing_key(),
                [3; 32],
                1,
                1,
                vec![alice.public()],
            )),
        }],
        history: Vec::new(),
    };
    let sealed = linker.seal_grant(&grant, &mut OsRng).unwrap();
    assert_eq!(
        LinkGrant::open(&secret, &sealed, &laptop.public()),
        Ok(grant.clone())
    );
    assert!(LinkGrant::open(&secret, &sealed, &alice.public()).is_ok());
    assert!(LinkGrant::open(&secret, &sealed, &Identity::generate(&mut OsRng).public()).is_err());
    assert!(LinkGrant::open(&LinkSecret::generate(&mut OsRng), &sealed, &laptop.public()).is_err());
    // Past the code's five minutes, a link already granting is not failed by the clock.
    assert_eq!(linker.handle_timeout(LINK_CODE_TTL_MS + 5_000), None);
    assert_eq!(linker.granted(Ok(())), Some(LinkOutput::Linked(device)));
    assert!(linker.is_over());
    assert_eq!(linker.poll_timeout(), None);
}

#[test]
fn a_link_fails_on_a_bad_request_or_when_nobody_comes() {
    let alice = Identity::generate(&mut OsRng);
    let own = DeviceList::single(alice.public());
    let secret = LinkSecret::generate(&mut OsRng);

    let mut linker = Linker::new(secret.clone(), 0);
    linker.handle_timeout(0);
    let wrong = request_for(&LinkSecret::generate(&mut OsRng), &alice, &alice, "x");
    assert!(matches!(
        linker.taken(Ok(Some(wrong)), &own, &alice, 1),
        Some(LinkOutput::Failed(_))
    ));
    assert!(linker.is_over());

    // A request whose proof is for another key.
    let mut linker = Linker::new(secret.clone(), 0);
    linker.handle_timeout(0);
    let laptop = Identity::generate(&mut OsRng);
    let mut forged = LinkRequest::new(&laptop, "laptop".into(), 0, &code(&secret, &alice));
    forged.device = Identity::generate(&mut OsRng).public();
    let sealed = secret.seal(
        Direction::Request,
        &codec::encode(&forged).unwrap(),
        &mut OsRng,
    );
    assert!(matches!(
        linker.taken(Ok(Some(sealed)), &own, &alice, 1),
        Some(LinkOutput::Failed(e)) if e.contains("prove")
    ));

    // A device that bound itself to another account (a code for someone else's).
    let mut linker = Linker::new(secret.clone(), 0);
    linker.handle_timeout(0);
    let other = Identity::generate(&mut OsRng);
    assert!(matches!(
        linker.taken(Ok(Some(request_for(&secret, &other, &laptop, "laptop"))), &own, &alice, 1),
        Some(LinkOutput::Failed(e)) if e.contains("agreed")
    ));

    // A bad label.
    let mut linker = Linker::new(secret.clone(), 0);
    linker.handle_timeout(0);
    assert!(matches!(
        linker.taken(
            Ok(Some(request_for(&secret, &alice, &laptop, "a\u{7}b"))),
            &own,
            &alice,
            1
        ),
        Some(LinkOutput::Failed(_))
    ));

    // The user says no.
    let mut linker = Linker::new(secret.clone(), 0);
    linker.handle_timeout(0);
    linker.taken(
        Ok(Some(request_for(&secret, &alice, &laptop, "laptop"))),
        &own,
        &alice,
        1,
    );
    assert!(
        matches!(linker.confirmed(false), Some(LinkOutput::Failed(e)) if e.contains("did not add"))
    );
    assert!(linker.is_over());

    // Nobody answers the question within the code's five minutes.
    let mut linker = Linker::new(secret.clone(), 0);
    linker.handle_timeout(0);
    linker.taken(
        Ok(Some(request_for(&secret, &alice, &laptop, "laptop"))),
        &own,
        &alice,
        1,
    );
    assert_eq!(linker.poll_timeout(), Some(LINK_CODE_TTL_MS));
    assert!(matches!(
        linker.handle_timeout(LINK_CODE_TTL_MS),
        Some(LinkOutput::Failed(_))
    ));

    // Nobody comes.
    let mut linker = Linker::new(secret, 0);
    assert!(matches!(
        linker.handle_timeout(LINK_CODE_TTL_MS),
        Some(LinkOutput::Failed(e)) if e.contains("5 minutes")
    ));
    assert_eq!(linker.handle_timeout(LINK_CODE_TTL_MS + 1), None);
}

#[test]
fn a_grant_too_large_for_one_link_message_keeps_its_newest_lines() {
    let alice = Identity::generate(&mut OsRng);
    let line = |n: u64| LinkedLine {
        with: LinkedConversation::Contact(UserName::new("bob").unwrap()),
        id: MessageId([0; 32]),
        sender: [1; 32],
        from: "bob".into(),
        from_me: n.is_multiple_of(2),
        text: "x".repeat(1000),
        sent_at_ms: n,
        stamp: Stamp(n),
        seq: n,
        delivered: true,
    };
    let mut grant = LinkGrant {
        name: UserName::new("alice").unwrap(),
        devices: SignedDeviceList::sign(DeviceList::single(alice.public()), &alice).unwrap(),
        contacts: Vec::new(),
        rooms: Vec::new(),
        history: (0..1000).rev().map(line).collect(),
    };
    grant.fit();
    let kept = grant.history.len();
    assert!(kept > 50 && kept < 1000, "{kept}");
    assert!(codec::encode(&grant).unwrap().len() <= MAX_LINK_LEN);
    assert_eq!(
        grant.history.last().unwrap().stamp,
        Stamp(999),
        "the newest stays"
    );
    assert!(grant.history.windows(2).all(|w| w[0].stamp < w[1].stamp));
}

#[test]
fn pending_copies_are_taken_off_as_each_is_sealed() {
    let (a, b) = (
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
    );
    let job = |device: &Identity| CopyJob {
        device: device.public(),
        copy: CopyFor::Recipient,
        payload: crate::wire::Payload::Text("hi".into()),
    };
    let bob = Identity::generate(&mut OsRng);
    let pending = PendingCopies {
        of: MessageId([1; 32]),
        to: UserName::new("bob").unwrap(),
        to_key: bob.public(),
        seq: 4,
        jobs: vec![job(&a), job(&b)],
    };
    // After a restart, only the devices still on the list get theirs (and only from a list
    // of the account the message was sealed for).
    let other = Identity::generate(&mut OsRng);
    assert_eq!(
        pending
            .clone()
            .still_wanted(Some(&list_of(&other, &[&b])), None),
        None
    );
    let now = list_of(&bob, &[&b]);
    assert_eq!(
        pending.clone().still_wanted(Some(&now), None).unwrap().jobs,
        vec![job(&b)]
    );
    assert_eq!(pending.clone().still_wanted(None, None), None);
    let left = pending.sealed(&a.public()).unwrap();
    assert_eq!(left.jobs, vec![job(&b)]);
    assert_eq!(
        left.clone().sealed(&a.public()),
        Some(left.clone()),
        "sealed twice: no change"
    );
    assert_eq!(left.sealed(&b.public()), None);
}

#[test]
fn a_claim_holds_only_if_the_accounts_own_list_names_the_key() {
    let (alice, laptop, stranger) = (
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
        Identity::generate(&mut OsRng),
    );
    let list = SignedDeviceList::sign(list_of(&alice, &[&laptop]), &alice).unwrap();
    let waiting = |id: &Identity| [id.public().to_bytes()];
    assert!(claim_holds(&alice.public(), &list, &waiting(&laptop)));
    assert!(!claim_holds(&alice.public(), &list, &waiting(&stranger)));
    // Not the key the rendezvous claimed for alice: no.
    assert!(!claim_holds(&stranger.public(), &list, &waiting(&laptop)));
    // The account key itself is no linked device.
    assert!(!claim_holds(&alice.public(), &list, &waiting(&alice)));
}
