//! The service stepped through whole conversations with simulated time, no network.

use std::time::Duration;

use palaver_protocol::crypto::ratchet::{Header, RatchetMessage};
use palaver_protocol::crypto::x3dh::{OneTimePrekey, PrekeyUpload};
use palaver_protocol::rendezvous::RateLimit;
use palaver_protocol::rendezvous::mailbox::MailboxLimits;
use palaver_protocol::wire::DirectMessage;
use palaver_protocol::{Identity, Signature};
use prometheus_client::registry::Registry;

use super::*;

struct Harness {
    service: Service,
    gate: RelayGate,
    _dir: tempfile::TempDir,
}

fn limits() -> Limits {
    Limits {
        login_timeout: Duration::from_secs(5),
        presence_timeout: Duration::from_secs(60),
        mailbox: MailboxLimits {
            max_messages: 3,
            max_bytes: 100_000,
            ttl: Duration::from_secs(3600),
        },
        mail_sweep_interval: Duration::from_secs(10),
        requests: RateLimit::new(1000, 1000),
        prekeys_low: 2,
        ..Limits::default()
    }
}

fn harness_with(limits: Limits, tokens: Vec<String>, relay_only: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore =
        Arc::new(crate::store::sled::SledStore::open(dir.path(), 1 << 20).unwrap());
    let gate = RelayGate::new(relay_only);
    let metrics = Metrics::register(&mut Registry::default());
    let service = Service::new(store, limits, tokens, relay_only, gate.clone(), metrics).unwrap();
    Harness {
        service,
        gate,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(limits(), Vec::new(), false)
}

fn user(seed: u8) -> (Identity, PeerId) {
    let id = Identity::from_secret_bytes(&[seed; 32]);
    let peer = id.peer_id();
    (id, peer)
}

fn name(n: &str) -> UserName {
    UserName::new(n).unwrap()
}

impl Harness {
    fn ask(&mut self, peer: PeerId, request: RendezvousRequest, now: Millis) -> RendezvousResponse {
        self.service.handle(peer, request, now).response
    }

    fn refusal(&mut self, peer: PeerId, request: RendezvousRequest, now: Millis) -> RefusalReason {
        match self.ask(peer, request, now) {
            RendezvousResponse::Refused(r) => r.reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Connects, registers and logs in `n` as peer `seed`.
    fn session(&mut self, seed: u8, n: &str, now: Millis) -> (Identity, PeerId) {
        let (id, peer) = user(seed);
        self.service.connected(peer, now);
        let registered = self.ask(
            peer,
            RendezvousRequest::Register {
                name: name(n),
                token: None,
            },
            now,
        );
        assert!(
            matches!(registered, RendezvousResponse::Registered { .. }),
            "{registered:?}"
        );
        let login = self.ask(peer, RendezvousRequest::Login { name: name(n), instance: 1 }, now);
        assert!(
            matches!(login, RendezvousResponse::LoggedIn { .. }),
            "{login:?}"
        );
        (id, peer)
    }
}

fn envelope(from: &Identity, to: &VerifyingKey, n: u8) -> Envelope {
    let body = Body::Direct(DirectMessage {
        sender: from.public(),
        recipient: *to,
        message: RatchetMessage {
            init: None,
            header: Header {
                dh: x25519_dalek::PublicKey::from([n; 32]),
                previous_chain_len: 0,
                index: u32::from(n),
            },
            ciphertext: vec![n; 32],
        },
    });
    Envelope::sign(body, from.signing_key()).unwrap()
}

fn upload(id: &Identity, one_time: u32) -> PrekeyUpload {
    // A genuine signed prekey (the server verifies it) with deterministic one-time keys.
    let mut upload = palaver_protocol::crypto::x3dh::PrekeySecrets::generate(
        &mut rand_core::OsRng,
        id.signing_key(),
        0,
    )
    .upload();
    upload.one_time_prekeys = (0..one_time)
        .map(|i| OneTimePrekey {
            id: i,
            key: x25519_dalek::PublicKey::from([i as u8; 32]),
        })
        .collect();
    upload
}

#[test]
fn a_discovery_record_is_handed_out_until_its_ttl_then_swept() {
    use palaver_protocol::rendezvous::discovery::Namespace;
    let mut h = harness();
    let (alice_id, alice) = h.session(1, "alice", 0);
    let (_, bob) = h.session(2, "bob", 0);
    let record = crate::discovery::seal(
        &alice_id.to_libp2p_keypair(),
        vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
    )
    .unwrap();
    let namespace = Namespace::Peer(alice);
    let register = |ttl_secs| RendezvousRequest::RegisterDiscovery {
        namespace: namespace.clone(),
        record: record.clone(),
        ttl_secs,
    };
    assert_eq!(h.refusal(alice, register(0), 0), RefusalReason::Invalid);
    assert_eq!(h.ask(alice, register(2), 0), RendezvousResponse::Done);
    let discover = || RendezvousRequest::Discover {
        namespace: namespace.clone(),
    };
    assert_eq!(
        h.ask(bob, discover(), 1_999),
        RendezvousResponse::Discovered(vec![record.clone()])
    );
    assert_eq!(
        h.ask(bob, discover(), 2_000),
        RendezvousResponse::Discovered(Vec::new())
    );
    h.service.tick(2_000);
    assert_eq!(h.service.store().expire_records(u64::MAX, 10).unwrap(), 0);
    // Refused before login, like everything but register and login.
    let (_, stranger) = user(3);
    h.service.connected(stranger, 0);
    assert_eq!(
        h.refusal(stranger, discover(), 10),
        RefusalReason::NotLoggedIn
    );
}

#[test]
fn an_unauthenticated_peer_may_only_register_or_log_in_and_is_dropped_after_the_timeout() {
    let mut h = harness();
    let (_, peer) = user(1);
    h.service.connected(peer, 0);
    assert_eq!(
        h.refusal(peer, RendezvousRequest::FetchMail { max: 1 }, 10),
        RefusalReason::NotLoggedIn
    );
    assert_eq!(
        h.refusal(
            peer,
            RendezvousRequest::Heartbeat {
                state: PresenceState::Online
            },
            10
        ),
        RefusalReason::NotLoggedIn
    );
    assert!(!h.gate.allows(&peer));
    h.service.tick(4_999);
    assert!(h.service.take_disconnects().is_empty());
    h.service.tick(5_000);
    assert_eq!(h.service.take_disconnects(), vec![peer]);
}

#[test]
fn a_logged_in_peer_is_not_dropped_and_may_use_the_relay_until_it_leaves() {
    let mut h = harness();
    let (_, peer) = h.session(1, "alice", 0);
    assert!(h.gate.allows(&peer));
    h.service.tick(10_000);
    assert!(h.service.take_disconnects().is_empty());
    h.service.disconnected(peer, 11_000);
    assert!(!h.gate.allows(&peer));
}

#[test]
fn names_are_first_come_and_bound_to_one_key() {
    let mut h = harness();
    h.session(1, "alice", 0);
    let (_, mallory) = user(2);
    h.service.connected(mallory, 0);
    assert_eq!(
        h.refusal(
            mallory,
            RendezvousRequest::Register {
                name: name("alice"),
                token: None
            },
            1
        ),
        RefusalReason::NameTaken
    );
    assert_eq!(
        h.refusal(
            mallory,
            RendezvousRequest::Login {
                name: name("alice"),
                instance: 1,
            },
            1
        ),
        RefusalReason::NotYourName
    );
    assert_eq!(
        h.refusal(mallory, RendezvousRequest::Login { name: name("bob"), instance: 1 }, 1),
        RefusalReason::UnknownUser
    );
    // One key, one name.
    let (_, alice) = user(1);
    assert_eq!(
        h.refusal(
            alice,
            RendezvousRequest::Register {
                name: name("alice2"),
                token: None
            },
            1
        ),
        RefusalReason::Invalid
    );
}

#[test]
fn a_second_daemon_with_the_same_key_is_refused_while_the_first_is_heard_from() {
    let mut h = harness();
    // The first run logged in as instance 1 (see `Harness::session`).
    let (_, alice) = h.session(1, "alice", 0);
    let login = |instance| RendezvousRequest::Login {
        name: name("alice"),
        instance,
    };
    // A copied home: the same peer id, another run. Refused, and the session stays the first's.
    assert_eq!(h.refusal(alice, login(2), 1_000), RefusalReason::InUse);
    assert!(matches!(
        h.ask(alice, RendezvousRequest::Heartbeat { state: PresenceState::Online }, 30_000),
        RendezvousResponse::Done
    ));
    // Heard at 30 s: still refused just before the presence timeout (60 s) has passed since.
    assert_eq!(h.refusal(alice, login(2), 89_000), RefusalReason::InUse);
    // The first run logging in again (its connection dropped, say) renews its own session.
    assert!(matches!(
        h.ask(alice, login(1), 89_500),
        RendezvousResponse::LoggedIn { .. }
    ));
    // Silent for the presence timeout (a daemon gone without its connection closing): a new
    // run takes the session over, and then the old one is the one refused.
    assert!(matches!(
        h.ask(alice, login(2), 149_500),
        RendezvousResponse::LoggedIn { .. }
    ));
    assert_eq!(h.refusal(alice, login(1), 150_000), RefusalReason::InUse);
}

#[test]
fn registration_tokens_are_required_and_checked_when_configured() {
    let mut h = harness_with(limits(), vec!["s3cret".into(), "other".into()], false);
    let (_, peer) = user(1);
    h.service.connected(peer, 0);
    let register = |token: Option<&str>| RendezvousRequest::Register {
        name: name("alice"),
        token: token.map(Into::into),
    };
    assert_eq!(
        h.refusal(peer, register(None), 0),
        RefusalReason::TokenRequired
    );
    assert_eq!(
        h.refusal(peer, register(Some("s3cre")), 0),
        RefusalReason::BadToken
    );
    assert_eq!(
        h.refusal(peer, register(Some(&"x".repeat(10_000))), 0),
        RefusalReason::BadToken
    );
    let reply = h.service.handle(peer, register(Some("other")), 0);
    assert!(reply.durable);
    assert!(matches!(
        reply.response,
        RendezvousResponse::Registered { .. }
    ));
}

#[test]
fn presence_changes_reach_subscribers_and_silence_times_out() {
    let mut h = harness();
    let (_, watcher) = h.session(1, "watcher", 0);
    h.session(2, "alice", 0);
    h.service.take_pushes();
    let reply = h.ask(
        watcher,
        RendezvousRequest::SubscribePresence {
            names: vec![name("alice"), name("nobody")],
        },
        1,
    );
    let RendezvousResponse::Users(users) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(users.len(), 1, "nobody is not registered");
    assert_eq!(users[0].presence.state, PresenceState::Online);

    let (_, alice) = user(2);
    h.ask(
        alice,
        RendezvousRequest::Heartbeat {
            state: PresenceState::Away,
        },
        1_000,
    );
    let pushes = h.service.take_pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].0, watcher);
    assert!(matches!(&pushes[0].1, ServerPush::Presence(r) if r.state == PresenceState::Away));

    // The same state again pushes nothing.
    h.ask(
        alice,
        RendezvousRequest::Heartbeat {
            state: PresenceState::Away,
        },
        2_000,
    );
    assert!(h.service.take_pushes().is_empty());

    // Silence: offline 60 s after the last heartbeat, last seen at that heartbeat.
    h.service.tick(61_999);
    assert!(h.service.take_pushes().is_empty());
    h.service.tick(62_000);
    let pushes = h.service.take_pushes();
    assert!(matches!(
        &pushes[..],
        [(w, ServerPush::Presence(PresenceRecord { state: PresenceState::Offline, last_seen_ms: Some(2_000), .. }))] if *w == watcher
    ));
}

#[test]
fn a_watched_name_registered_later_is_pushed_to_its_watchers() {
    // So that a node whose contact's name was freed and taken by a new key hears of it at once.
    let mut h = harness();
    let (_, watcher) = h.session(1, "watcher", 0);
    let reply = h.ask(
        watcher,
        RendezvousRequest::SubscribePresence {
            names: vec![name("later")],
        },
        1,
    );
    assert_eq!(reply, RendezvousResponse::Users(Vec::new()));
    h.service.take_pushes();
    h.session(2, "later", 10);
    let pushes = h.service.take_pushes();
    assert!(
        pushes.iter().any(|(to, push)| *to == watcher
            && matches!(push, ServerPush::Presence(r) if r.name == name("later") && r.state == PresenceState::Online)),
        "{pushes:?}"
    );
}

#[test]
fn a_disconnect_pushes_offline_and_records_last_seen() {
    let mut h = harness();
    let (_, watcher) = h.session(1, "watcher", 0);
    let (_, alice) = h.session(2, "alice", 0);
    h.ask(
        watcher,
        RendezvousRequest::SubscribePresence {
            names: vec![name("alice")],
        },
        1,
    );
    h.service.take_pushes();
    h.service.disconnected(alice, 5_000);
    assert!(matches!(
        &h.service.take_pushes()[..],
        [(
            _,
            ServerPush::Presence(PresenceRecord {
                state: PresenceState::Offline,
                ..
            })
        )]
    ));
    let RendezvousResponse::Users(users) = h.ask(
        watcher,
        RendezvousRequest::Lookup {
            names: vec![name("alice")],
        },
        6_000,
    ) else {
        panic!()
    };
    assert_eq!(users[0].presence.last_seen_ms, Some(5_000));
    assert_eq!(users[0].identity, user(2).0.public());
    // Who is that key?
    let RendezvousResponse::Users(users) = h.ask(
        watcher,
        RendezvousRequest::WhoIs {
            keys: vec![user(2).0.public(), user(9).0.public()],
        },
        6_000,
    ) else {
        panic!()
    };
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, name("alice"));
}

#[test]
fn one_time_prekeys_are_handed_out_once_and_a_low_stock_is_signalled() {
    let mut h = harness();
    let (alice_id, alice) = h.session(1, "alice", 0);
    let (_, bob) = h.session(2, "bob", 0);
    assert_eq!(
        h.refusal(
            bob,
            RendezvousRequest::FetchPrekeys {
                name: name("alice")
            },
            1
        ),
        RefusalReason::NoPrekeys
    );
    // Someone else's key is refused.
    assert_eq!(
        h.refusal(
            bob,
            RendezvousRequest::PublishPrekeys(Box::new(upload(&alice_id, 3))),
            1
        ),
        RefusalReason::Invalid
    );
    // A signed prekey whose signature does not verify is refused.
    let mut forged = upload(&alice_id, 3);
    forged.signed_prekey.signature = Signature::from_bytes(&[0; 64]);
    assert_eq!(
        h.refusal(
            alice,
            RendezvousRequest::PublishPrekeys(Box::new(forged)),
            1
        ),
        RefusalReason::Invalid
    );
    let reply = h.service.handle(
        alice,
        RendezvousRequest::PublishPrekeys(Box::new(upload(&alice_id, 3))),
        1,
    );
    assert!(reply.durable);
    let mut handed = Vec::new();
    for _ in 0..4 {
        let RendezvousResponse::Prekeys(bundle) = h.ask(
            bob,
            RendezvousRequest::FetchPrekeys {
                name: name("alice"),
            },
            2,
        ) else {
            panic!()
        };
        assert_eq!(bundle.identity, alice_id.public());
        handed.push(bundle.one_time_prekey.map(|k| k.id));
    }
    assert_eq!(handed, vec![Some(0), Some(1), Some(2), None]);
    let low: Vec<_> = h
        .service
        .take_pushes()
        .into_iter()
        .filter(|(p, _)| *p == alice)
        .map(|(_, push)| push)
        .collect();
    assert_eq!(
        low,
        vec![
            ServerPush::PrekeysLow { remaining: 1 },
            ServerPush::PrekeysLow { remaining: 0 }
        ]
    );
    let RendezvousResponse::LoggedIn {
        one_time_prekeys_left,
        ..
    } = h.ask(
        alice,
        RendezvousRequest::Login {
            name: name("alice"),
            instance: 1,
        },
        3,
    )
    else {
        panic!()
    };
    assert_eq!(one_time_prekeys_left, 0);
}

#[test]
fn deposits_are_checked_deduplicated_held_within_quota_and_expire() {
    let mut h = harness();
    let (alice_id, alice) = h.session(1, "alice", 0);
    let (bob_id, bob) = user(2);
    h.service.connected(bob, 0);
    h.ask(
        bob,
        RendezvousRequest::Register {
            name: name("bob"),
            token: None,
        },
        0,
    );
    h.service.disconnected(bob, 0);
    let deposit = |e: Envelope| RendezvousRequest::Deposit {
        to: name("bob"),
        envelope: Box::new(e),
    };

    // Not from the depositor, not to bob, tampered, to nobody: refused.
    assert_eq!(
        h.refusal(alice, deposit(envelope(&bob_id, &bob_id.public(), 1)), 10),
        RefusalReason::Invalid
    );
    assert_eq!(
        h.refusal(
            alice,
            deposit(envelope(&alice_id, &alice_id.public(), 1)),
            10
        ),
        RefusalReason::Invalid
    );
    let mut tampered = envelope(&alice_id, &bob_id.public(), 1);
    if let Body::Direct(d) = &mut tampered.body {
        d.message.ciphertext[0] ^= 1;
    }
    assert_eq!(
        h.refusal(alice, deposit(tampered), 10),
        RefusalReason::Invalid
    );
    assert_eq!(
        h.refusal(
            alice,
            RendezvousRequest::Deposit {
                to: name("nobody"),
                envelope: Box::new(envelope(&alice_id, &bob_id.public(), 1)),
            },
            10
        ),
        RefusalReason::UnknownUser
    );

    let first = envelope(&alice_id, &bob_id.public(), 1);
    let reply = h.service.handle(alice, deposit(first.clone()), 1_000);
    assert!(reply.durable);
    assert_eq!(
        reply.response,
        RendezvousResponse::Deposited { id: first.id() }
    );
    // Same message again: the same id, held once.
    h.ask(alice, deposit(first.clone()), 1_001);
    assert_eq!(h.service.held(&name("bob")), 1);
    h.ask(
        alice,
        deposit(envelope(&alice_id, &bob_id.public(), 2)),
        2_000,
    );
    h.ask(
        alice,
        deposit(envelope(&alice_id, &bob_id.public(), 3)),
        3_000,
    );
    assert_eq!(
        h.refusal(
            alice,
            deposit(envelope(&alice_id, &bob_id.public(), 4)),
            3_000
        ),
        RefusalReason::QuotaExceeded
    );

    // An hour after the first deposit it expires; the other two stay.
    h.service.tick(1_000 + 3_600_000);
    assert_eq!(h.service.held(&name("bob")), 2);
    h.service.connected(bob, 3_601_500);
    let RendezvousResponse::LoggedIn { mail_waiting, .. } = h.ask(
        bob,
        RendezvousRequest::Login { name: name("bob"), instance: 1 },
        3_601_500,
    ) else {
        panic!()
    };
    assert_eq!(mail_waiting, 2);
    let RendezvousResponse::Mail { items, remaining } =
        h.ask(bob, RendezvousRequest::FetchMail { max: 1 }, 3_601_500)
    else {
        panic!()
    };
    assert_eq!((items.len(), remaining), (1, 1));
    assert_eq!(items[0].deposited_at_ms, 2_000);
    let ids = vec![items[0].envelope.id()];
    h.ask(bob, RendezvousRequest::AckMail { ids }, 3_601_501);
    assert_eq!(h.service.held(&name("bob")), 1);
    // A deposit while bob is online is announced to him.
    h.service.take_pushes();
    h.ask(
        alice,
        deposit(envelope(&alice_id, &bob_id.public(), 5)),
        3_601_502,
    );
    assert_eq!(
        h.service.take_pushes(),
        vec![(bob, ServerPush::MailWaiting { count: 2 })]
    );
}

#[test]
fn requests_over_the_rate_are_refused_and_batches_are_bounded() {
    let l = Limits {
        requests: RateLimit::new(5, 1),
        ..limits()
    };
    let mut h = harness_with(l, Vec::new(), false);
    let (_, peer) = h.session(1, "alice", 0);
    // Register and login took two tokens.
    for _ in 0..3 {
        assert!(matches!(
            h.ask(
                peer,
                RendezvousRequest::Heartbeat {
                    state: PresenceState::Online
                },
                0
            ),
            RendezvousResponse::Done
        ));
    }
    assert_eq!(
        h.refusal(
            peer,
            RendezvousRequest::Heartbeat {
                state: PresenceState::Online
            },
            0
        ),
        RefusalReason::RateLimited
    );
    assert_eq!(
        h.refusal(
            peer,
            RendezvousRequest::Lookup {
                names: vec![name("x"); MAX_BATCH + 1]
            },
            1_000
        ),
        RefusalReason::TooLarge
    );
}

#[test]
fn a_relay_only_server_offers_nothing_but_the_relay() {
    let mut h = harness_with(limits(), Vec::new(), true);
    let (_, peer) = user(1);
    h.service.connected(peer, 0);
    assert!(h.gate.allows(&peer));
    assert_eq!(
        h.refusal(
            peer,
            RendezvousRequest::Register {
                name: name("alice"),
                token: None
            },
            0
        ),
        RefusalReason::Unavailable
    );
    // And nobody is disconnected for not logging in.
    h.service.tick(1_000_000);
    assert!(h.service.take_disconnects().is_empty());
}

mod cluster;
mod devices;

/// One user cannot drain another's one-time prekeys: past its quota it gets bundles without one,
/// while others still get theirs; the quota comes back with the next window.
#[test]
fn a_requester_gets_only_its_quota_of_one_users_one_time_prekeys() {
    use super::prekeys::{ONE_TIME_PER_REQUESTER, WINDOW_MS};
    let mut h = harness();
    let (alice_id, alice) = h.session(1, "alice", 0);
    let (_, bob) = h.session(2, "bob", 0);
    let (_, carol) = h.session(3, "carol", 0);
    let stock = ONE_TIME_PER_REQUESTER + 4;
    let upload = upload(&alice_id, stock);
    h.service.handle(
        alice,
        RendezvousRequest::PublishPrekeys(Box::new(upload)),
        1,
    );
    let fetch = |h: &mut Harness, who, now| {
        let request = RendezvousRequest::FetchPrekeys {
            name: name("alice"),
        };
        match h.ask(who, request, now) {
            RendezvousResponse::Prekeys(bundle) => bundle.one_time_prekey.is_some(),
            other => panic!("{other:?}"),
        }
    };
    let bobs: Vec<bool> = (0..ONE_TIME_PER_REQUESTER + 2)
        .map(|_| fetch(&mut h, bob, 2))
        .collect();
    let quota = ONE_TIME_PER_REQUESTER as usize;
    assert!(bobs[..quota].iter().all(|got| *got), "{bobs:?}");
    assert!(bobs[quota..].iter().all(|got| !*got), "{bobs:?}");
    assert!(fetch(&mut h, carol, 3), "another requester still gets one");
    assert!(fetch(&mut h, bob, 2 + WINDOW_MS), "the next window");
}
