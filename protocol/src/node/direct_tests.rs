use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::delivery::OutboxConfig;

type D = Delivery<u32>;

const T0: u64 = 1_700_000_000_000;

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(7)
}

fn peer(n: u32) -> PeerId {
    let mut seed = [1; 32];
    seed[..4].copy_from_slice(&n.to_le_bytes());
    let key = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    crate::identity::peer_id_of(&key)
}

fn planner() -> D {
    Delivery::new(peer(0), Outbox::new(OutboxConfig::default()), [], T0)
}

fn bob() -> (PeerId, UserName) {
    (peer(1), UserName::new("bob").expect("name"))
}

fn route(peer: PeerId, to: &UserName) -> Route {
    Route {
        peer,
        to: to.clone(),
        in_history: true,
    }
}

fn addr(port: u16) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr")
}

fn drain(d: &mut D) -> Vec<Output> {
    std::iter::from_fn(|| d.poll_output()).collect()
}

/// Holds `id` for `peer` and makes it durable: its first attempt starts.
fn send(d: &mut D, id: MessageId, route: Route, now: u64, rng: &mut ChaCha20Rng) -> Vec<Output> {
    d.hold(id, route, now).expect("hold");
    assert!(drain(d).is_empty(), "nothing leaves before it is durable");
    d.handle(Input::Durable(id), now, rng);
    drain(d)
}

fn statuses(outputs: &[Output]) -> Vec<&'static str> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Status { status, .. } => Some(status.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_held_message_waits_for_its_write_and_then_goes_over_the_open_connection() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::Connected(peer), T0, &mut rng);
    let id = MessageId([1; 32]);
    d.hold(id, route(peer, &name), T0).expect("hold");
    assert_eq!(d.poll_timeout(), None, "a held message is not due");
    let out = send_after_hold(&mut d, id, &mut rng);
    assert!(out.contains(&Output::Deliver { peer, id }));
    assert_eq!(statuses(&out), ["sent"]);
    d.handle(Input::DeliverySent { id, request: 9 }, T0, &mut rng);
    assert!(d.is_delivery(&9));
    d.handle(
        Input::DeliveryAnswered {
            request: 9,
            answer: Answer::Stored(id),
        },
        T0 + 5,
        &mut rng,
    );
    let out = drain(&mut d);
    assert!(out.contains(&Output::DeliveryEnded(peer)));
    assert!(out.contains(&Output::Forget(id)));
    assert_eq!(statuses(&out), ["delivered"]);
    assert!(d.is_empty());
    assert!(!d.has_pending_for(&peer));
}

fn send_after_hold(d: &mut D, id: MessageId, rng: &mut ChaCha20Rng) -> Vec<Output> {
    d.handle(Input::Durable(id), T0, rng);
    drain(d)
}

#[test]
fn a_cancelled_hold_leaves_nothing_behind() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    let id = MessageId([2; 32]);
    d.hold(id, route(peer, &name), T0).expect("hold");
    d.cancel(id);
    d.handle(Input::Durable(id), T0, &mut rng);
    assert!(drain(&mut d).is_empty());
    assert!(d.is_empty());
}

#[test]
fn an_unknown_peer_is_discovered_once_then_dialed() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::LoggedIn(true), T0, &mut rng);
    let (a, b) = (MessageId([1; 32]), MessageId([2; 32]));
    let out = send(&mut d, a, route(peer, &name), T0, &mut rng);
    assert!(out.contains(&Output::Discover(peer)));
    let out = send(&mut d, b, route(peer, &name), T0, &mut rng);
    assert!(
        !out.contains(&Output::Discover(peer)),
        "one lookup per peer at a time: {out:?}"
    );
    d.handle(
        Input::Discovered {
            peer,
            addrs: vec![addr(1)],
        },
        T0 + 10,
        &mut rng,
    );
    assert_eq!(
        drain(&mut d),
        [Output::Dial {
            peer,
            addrs: vec![addr(1)]
        }]
    );
    d.handle(Input::Connected(peer), T0 + 20, &mut rng);
    let out = drain(&mut d);
    assert!(out.contains(&Output::Deliver { peer, id: a }));
    assert!(out.contains(&Output::Deliver { peer, id: b }));
}

#[test]
fn no_record_means_the_mailbox() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::LoggedIn(true), T0, &mut rng);
    let id = MessageId([1; 32]);
    send(&mut d, id, route(peer, &name), T0, &mut rng);
    d.handle(Input::DiscoveryFailed(peer), T0 + 10, &mut rng);
    let out = drain(&mut d);
    assert!(
        out.contains(&Output::Deposit {
            id,
            to: name.clone()
        }),
        "{out:?}"
    );
    d.handle(Input::Deposited(id), T0 + 20, &mut rng);
    assert_eq!(statuses(&drain(&mut d)), ["queued"]);
    // A receipt from anyone but the recipient counts for nothing.
    d.handle(
        Input::Receipt {
            from: self::peer(7),
            id,
        },
        T0 + 25,
        &mut rng,
    );
    assert!(statuses(&drain(&mut d)).is_empty());
    // The recipient's, after mailbox delivery, ends it.
    d.handle(Input::Receipt { from: peer, id }, T0 + 30, &mut rng);
    let out = drain(&mut d);
    assert_eq!(statuses(&out), ["delivered"]);
    assert!(out.contains(&Output::Forget(id)));
}

#[test]
fn logged_out_an_attempt_fails_at_once_and_asks_no_deposit() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    let id = MessageId([1; 32]);
    let out = send(&mut d, id, route(peer, &name), T0, &mut rng);
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Deposit { .. } | Output::Discover(_) | Output::Deliver { .. }
        )),
        "{out:?}"
    );
    let retry = d.poll_timeout().expect("a retry is scheduled");
    assert!(retry > T0 + 1, "backs off");
    // Logged in (before the backoff ends), it is tried at once: discovery finds the peer.
    d.handle(Input::LoggedIn(true), T0 + 1, &mut rng);
    assert!(drain(&mut d).contains(&Output::Discover(peer)));
}

#[test]
fn logging_in_again_retries_at_once_what_the_mailbox_does_not_hold() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::LoggedIn(true), T0, &mut rng);
    let (queued, waiting) = (MessageId([1; 32]), MessageId([2; 32]));
    send(&mut d, queued, route(peer, &name), T0, &mut rng);
    d.handle(Input::DiscoveryFailed(peer), T0, &mut rng);
    d.handle(Input::Deposited(queued), T0, &mut rng);
    d.handle(Input::LoggedIn(false), T0 + 1, &mut rng);
    drain(&mut d);
    send(&mut d, waiting, route(peer, &name), T0 + 1, &mut rng);
    drain(&mut d);
    assert!(d.poll_timeout().expect("retry") > T0 + 2);
    d.handle(Input::LoggedIn(true), T0 + 2, &mut rng);
    let out = drain(&mut d);
    assert!(out.contains(&Output::Discover(peer)), "{out:?}");
    // Only the one the mailbox does not hold was tried: the lookup failing asks its deposit.
    d.handle(Input::DiscoveryFailed(peer), T0 + 3, &mut rng);
    let out = drain(&mut d);
    assert!(
        out.contains(&Output::Deposit {
            id: waiting,
            to: name.clone()
        }),
        "{out:?}"
    );
    assert!(
        !out.contains(&Output::Deposit {
            id: queued,
            to: name
        }),
        "{out:?}"
    );
}

#[test]
fn known_addresses_are_dialed_without_a_lookup_and_forgotten_when_they_fail() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::LoggedIn(true), T0, &mut rng);
    d.handle(
        Input::Discovered {
            peer,
            addrs: vec![addr(2)],
        },
        T0,
        &mut rng,
    );
    assert!(
        drain(&mut d).is_empty(),
        "not wanted, nothing waits: no dial"
    );
    let id = MessageId([1; 32]);
    let out = send(&mut d, id, route(peer, &name), T0, &mut rng);
    assert!(out.contains(&Output::Dial {
        peer,
        addrs: vec![addr(2)]
    }));
    d.handle(Input::Unreachable(peer), T0 + 10, &mut rng);
    let out = drain(&mut d);
    assert!(out.contains(&Output::Deposit { id, to: name }), "{out:?}");
    // The next attempt looks the peer up again rather than dial the dead address.
    let retry = d.poll_timeout().expect("retry");
    d.handle_timeout(retry, &mut rng);
    let out = drain(&mut d);
    assert!(out.contains(&Output::Discover(peer)), "{out:?}");
}

#[test]
fn a_rejected_or_failed_delivery_backs_off_and_a_connection_retries_at_once() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::LoggedIn(true), T0, &mut rng);
    d.handle(Input::Connected(peer), T0, &mut rng);
    let id = MessageId([1; 32]);
    send(&mut d, id, route(peer, &name), T0, &mut rng);
    d.handle(Input::DeliverySent { id, request: 1 }, T0, &mut rng);
    d.handle(
        Input::DeliveryAnswered {
            request: 1,
            answer: Answer::Rejected,
        },
        T0 + 1,
        &mut rng,
    );
    let out = drain(&mut d);
    assert!(out.contains(&Output::Deposit { id, to: name }));
    assert!(d.poll_timeout().expect("retry") > T0 + 1);
    // The peer reconnects: it is tried now, not at the backoff.
    d.handle(Input::Disconnected(peer), T0 + 2, &mut rng);
    d.handle(Input::Connected(peer), T0 + 3, &mut rng);
    assert!(drain(&mut d).contains(&Output::Deliver { peer, id }));
}

#[test]
fn a_stored_answer_for_another_id_is_a_failure() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::Connected(peer), T0, &mut rng);
    let id = MessageId([1; 32]);
    send(&mut d, id, route(peer, &name), T0, &mut rng);
    d.handle(Input::DeliverySent { id, request: 1 }, T0, &mut rng);
    let answer = Answer::Stored(MessageId([9; 32]));
    d.handle(Input::DeliveryAnswered { request: 1, answer }, T0, &mut rng);
    assert!(statuses(&drain(&mut d)).is_empty());
    assert_eq!(d.len(), 1, "still waiting for a real confirmation");
}

#[test]
fn coming_online_retries_that_users_messages_now() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::LoggedIn(true), T0, &mut rng);
    let id = MessageId([1; 32]);
    send(&mut d, id, route(peer, &name), T0, &mut rng);
    d.handle(Input::DiscoveryFailed(peer), T0, &mut rng);
    d.handle(Input::DepositFailed(id), T0, &mut rng);
    drain(&mut d);
    let retry = d.poll_timeout().expect("retry");
    let other = UserName::new("carol").expect("name");
    d.handle(Input::CameOnline(other), T0 + 2, &mut rng);
    assert!(drain(&mut d).is_empty(), "someone else came online");
    d.handle(Input::CameOnline(name), T0 + 3, &mut rng);
    assert!(T0 + 3 < retry);
    assert!(drain(&mut d).contains(&Output::Discover(peer)));
}

#[test]
fn a_wanted_peer_is_looked_up_once_while_logged_in_and_not_connected() {
    let (mut d, mut rng) = (planner(), rng());
    let (member, other) = (peer(2), peer(3));
    d.handle(Input::Want(member), T0, &mut rng);
    assert!(drain(&mut d).is_empty(), "logged out: the next login asks");
    d.handle(Input::LoggedIn(true), T0, &mut rng);
    drain(&mut d);
    d.handle(Input::Want(member), T0, &mut rng);
    assert_eq!(drain(&mut d), [Output::Discover(member)]);
    d.handle(Input::Want(member), T0, &mut rng);
    assert!(drain(&mut d).is_empty(), "asked already");
    d.handle(Input::Connected(other), T0, &mut rng);
    drain(&mut d);
    d.handle(Input::Want(other), T0, &mut rng);
    assert!(drain(&mut d).is_empty(), "connected: nothing to look up");
}

#[test]
fn wanted_peers_are_dialed_when_found_and_known_addresses_are_bounded() {
    let (mut d, mut rng) = (planner(), rng());
    let member = peer(2);
    d.handle(Input::Want(member), T0, &mut rng);
    d.handle(
        Input::Discovered {
            peer: member,
            addrs: vec![addr(3)],
        },
        T0,
        &mut rng,
    );
    assert_eq!(
        drain(&mut d),
        [Output::Dial {
            peer: member,
            addrs: vec![addr(3)]
        }]
    );
    for n in 0..MAX_KNOWN_PEERS as u32 + 10 {
        let addrs = vec![addr(4000)];
        d.handle(
            Input::Discovered {
                peer: peer(100 + n),
                addrs,
            },
            T0,
            &mut rng,
        );
    }
    assert_eq!(d.known_addrs.len(), MAX_KNOWN_PEERS);
    assert!(
        !d.known_addrs.contains_key(&member),
        "the oldest went first"
    );
}

#[test]
fn a_restart_goes_on_with_what_is_stored_and_nothing_else() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::LoggedIn(true), T0, &mut rng);
    let (kept, lost, gone) = (MessageId([1; 32]), MessageId([2; 32]), MessageId([3; 32]));
    send(&mut d, kept, route(peer, &name), T0, &mut rng);
    send(&mut d, gone, route(peer, &name), T0, &mut rng);
    // A restart: the persisted outbox comes back with the stored messages: `lost` was written
    // just before a crash (the outbox never saw it); `gone` has no stored envelope any more.
    let persisted = crate::codec::encode(d.outbox()).expect("encode");
    let outbox: Outbox = crate::codec::decode(&persisted).expect("decode");
    let stored = [(kept, route(peer, &name)), (lost, route(peer, &name))];
    let mut d: D = Delivery::new(planner().local, outbox, stored, T0 + 1);
    assert_eq!(d.len(), 2);
    d.handle(Input::LoggedIn(true), T0 + 1, &mut rng);
    let out = drain(&mut d);
    assert!(out.contains(&Output::Discover(peer)), "{out:?}");
    assert!(
        statuses(&out).iter().all(|s| *s != "delivered"),
        "nothing is confirmed by a restart: {out:?}"
    );
    d.handle(Input::Connected(peer), T0 + 2, &mut rng);
    let out = drain(&mut d);
    assert!(out.contains(&Output::Deliver { peer, id: kept }));
    assert!(out.contains(&Output::Deliver { peer, id: lost }));
    assert!(!out.contains(&Output::Deliver { peer, id: gone }));
}

/// An envelope the store cannot give back: gone or undecodable, the message fails (nothing is
/// left to send, and it is not called delivered); a read that failed this once is an attempt
/// that failed, tried again later.
#[test]
fn an_envelope_the_store_cannot_give_back_fails_or_is_tried_again() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::Connected(peer), T0, &mut rng);
    let (lost, unread) = (MessageId([1; 32]), MessageId([2; 32]));
    let out = send(&mut d, lost, route(peer, &name), T0, &mut rng);
    assert!(out.contains(&Output::Deliver { peer, id: lost }));
    d.handle(
        Input::Unsendable {
            id: lost,
            lost: true,
        },
        T0,
        &mut rng,
    );
    let out = drain(&mut d);
    assert_eq!(statuses(&out), ["failed"]);
    assert!(out.contains(&Output::Forget(lost)));

    let out = send(&mut d, unread, route(peer, &name), T0, &mut rng);
    assert!(out.contains(&Output::Deliver { peer, id: unread }));
    d.handle(
        Input::Unsendable {
            id: unread,
            lost: false,
        },
        T0,
        &mut rng,
    );
    let out = drain(&mut d);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Forget(_))),
        "{out:?}"
    );
    let retry = d.poll_timeout().expect("tried again");
    assert!(retry > T0, "after a backoff");
    d.handle_timeout(retry, &mut rng);
    assert!(drain(&mut d).contains(&Output::Deliver { peer, id: unread }));
}

/// A contact's key was replaced: what was sealed for the old key (sent or waiting in the
/// mailbox) fails, saying why, instead of waiting for a key that will not come back.
#[test]
fn messages_sealed_for_a_replaced_key_fail() {
    let (mut d, mut rng) = (planner(), rng());
    let (peer, name) = bob();
    d.handle(Input::LoggedIn(true), T0, &mut rng);
    let (waiting, other) = (MessageId([1; 32]), MessageId([2; 32]));
    send(&mut d, waiting, route(peer, &name), T0, &mut rng);
    let carol = (self::peer(3), UserName::new("carol").unwrap());
    send(&mut d, other, route(carol.0, &carol.1), T0, &mut rng);
    drain(&mut d);
    d.handle(Input::KeyReplaced(peer), T0 + 5, &mut rng);
    let out = drain(&mut d);
    assert!(out.contains(&Output::Status {
        id: waiting,
        status: DeliveryStatus::Failed {
            reason: crate::delivery::FailureReason::KeyChanged
        },
        in_history: true,
    }));
    assert!(out.contains(&Output::Forget(waiting)));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Forget(id) if *id == other))
    );
}
