//! One suite, both back-ends: every test runs against sled and against a throw-away PostgreSQL
//! (skipped loudly where PostgreSQL is not installed, unless `PALAVER_REQUIRE_POSTGRES=1`).
//! "Reopen" is a restart for sled and a second instance on the same database for PostgreSQL.

#![allow(clippy::unwrap_used)]

use libp2p::PeerId;
use palaver_protocol::Identity;
use palaver_protocol::identity::devices::{Device, DeviceList, SignedDeviceList};
use palaver_protocol::crypto::ratchet::{Header, RatchetMessage};
use palaver_protocol::wire::{Body, DirectMessage, SignedPeerRecord};

use super::postgres::PgStore;
use super::sled::SledStore;
use super::*;
use crate::testing::TestPostgres;

fn name(n: &str) -> UserName {
    UserName::new(n).unwrap()
}

fn key_of(seed: u8) -> VerifyingKey {
    Identity::from_secret_bytes(&[seed; 32]).public()
}

/// A store and a way to open it again.
trait Backend {
    fn open(&self) -> Box<dyn Storage>;
}

struct Sled(tempfile::TempDir);

impl Backend for Sled {
    fn open(&self) -> Box<dyn Storage> {
        // sled's lock is let go just after the previous handle's drop: wait for that, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(self.0.path(), 1 << 20) {
                Ok(store) => return Box::new(store),
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("lock"), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

struct Postgres(TestPostgres);

impl Backend for Postgres {
    fn open(&self) -> Box<dyn Storage> {
        Box::new(PgStore::open(&self.0.url()).unwrap())
    }
}

/// Runs `suite` against sled, then PostgreSQL.
fn on_both(test: &str, suite: impl Fn(&dyn Backend)) {
    suite(&Sled(tempfile::tempdir().unwrap()));
    if let Some(cluster) = TestPostgres::start(test).unwrap() {
        suite(&Postgres(cluster));
    }
}

fn item(t: u64, n: u8, to: &VerifyingKey) -> MailItem {
    let sender = Identity::from_secret_bytes(&[n; 32]);
    let body = Body::Direct(DirectMessage {
        sender: sender.public(),
        recipient: *to,
        message: RatchetMessage {
            init: None,
            header: Header {
                dh: x25519_dalek::PublicKey::from([n; 32]),
                previous_chain_len: 0,
                index: 0,
            },
            ciphertext: vec![n; 100],
        },
    });
    let envelope = palaver_protocol::Envelope::sign(body, sender.signing_key()).unwrap();
    MailItem {
        envelope,
        deposited_at_ms: t,
    }
}

fn one_time(id: u32, fill: u8) -> OneTimePrekey {
    OneTimePrekey {
        id,
        key: x25519_dalek::PublicKey::from([fill; 32]),
    }
}

fn upload(seed: u8, ids: &[u32]) -> PrekeyUpload {
    let identity = Identity::from_secret_bytes(&[seed; 32]);
    let mut upload = palaver_protocol::crypto::x3dh::PrekeySecrets::generate(
        &mut rand_core::OsRng,
        identity.signing_key(),
        0,
    )
    .upload();
    upload.one_time_prekeys = ids.iter().map(|&id| one_time(id, id as u8)).collect();
    upload
}

#[test]
fn a_name_binds_to_one_key_and_a_key_to_one_name_across_reopen() {
    on_both("store::a_name_binds_to_one_key", |backend| {
        let alice = name("alice");
        {
            let store = backend.open();
            assert_eq!(
                store.register(&alice, &key_of(1), 5).unwrap(),
                Registration::New
            );
            assert_eq!(
                store.register(&alice, &key_of(1), 6).unwrap(),
                Registration::AlreadyYours
            );
            assert_eq!(
                store.register(&alice, &key_of(2), 7).unwrap(),
                Registration::Taken
            );
            assert_eq!(
                store.register(&name("alice2"), &key_of(1), 8).unwrap(),
                Registration::KeyHasName(alice.clone())
            );
            store.set_last_seen(&alice, 99).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = backend.open();
        let user = store.user(&alice).unwrap().unwrap();
        assert_eq!(user.identity, key_of(1));
        assert_eq!(user.registered_at_ms, 5);
        assert_eq!(user.last_seen_ms, Some(99));
        assert_eq!(store.name_of(&key_of(1)).unwrap(), Some(alice.clone()));
        assert_eq!(store.name_of(&key_of(2)).unwrap(), None);
        assert_eq!(store.user(&name("alice2")).unwrap(), None);
        assert_eq!(store.user_count().unwrap(), 1);
    });
}

#[test]
fn one_time_prekeys_are_replaced_added_and_handed_out_lowest_first_once() {
    on_both("store::one_time_prekeys", |backend| {
        let store = backend.open();
        let bob = name("bob");
        store.register(&bob, &key_of(3), 1).unwrap();
        assert!(!store.has_signed_prekey(&Holder::account(&bob)).unwrap());
        assert_eq!(store.take_bundle(&Holder::account(&bob), true).unwrap(), None);
        store.publish_prekeys(&Holder::account(&bob), &upload(3, &[5, 1, 9])).unwrap();
        // Publishing again replaces every one-time prekey.
        let published = upload(3, &[7, 2]);
        store.publish_prekeys(&Holder::account(&bob), &published).unwrap();
        assert!(store.has_signed_prekey(&Holder::account(&bob)).unwrap());
        assert_eq!(store.one_time_count(&Holder::account(&bob)).unwrap(), 2);
        // A repeated id replaces the key held under it; the last of a repeat wins.
        store
            .add_one_time_prekeys(&Holder::account(&bob), &[one_time(2, 200), one_time(4, 4), one_time(4, 44)])
            .unwrap();
        assert_eq!(store.one_time_count(&Holder::account(&bob)).unwrap(), 3);
        drop(store);
        let store = backend.open();
        let mut handed = Vec::new();
        for _ in 0..3 {
            let bundle = store.take_bundle(&Holder::account(&bob), true).unwrap().unwrap();
            assert_eq!(bundle.identity, published.identity);
            assert_eq!(bundle.signed_prekey, published.signed_prekey);
            handed.push(bundle.one_time_prekey.unwrap());
        }
        assert_eq!(handed, [one_time(2, 200), one_time(4, 44), one_time(7, 7)]);
        assert_eq!(store.one_time_count(&Holder::account(&bob)).unwrap(), 0);
        // Out of one-time prekeys: the signed prekey alone.
        let last = store.take_bundle(&Holder::account(&bob), true).unwrap().unwrap();
        assert_eq!(last.one_time_prekey, None);
    });
}

#[test]
fn a_removed_user_leaves_nothing_behind_and_the_name_can_be_registered_again() {
    on_both("store::remove_user", |backend| {
        let store = backend.open();
        let (bob, carol) = (name("bob"), name("carol"));
        store.register(&bob, &key_of(3), 1).unwrap();
        store.register(&carol, &key_of(5), 1).unwrap();
        store.publish_prekeys(&Holder::account(&bob), &upload(3, &[1, 2])).unwrap();
        store.publish_prekeys(&Holder::account(&carol), &upload(5, &[1])).unwrap();
        for n in 1..=3 {
            let mail = item(100 * u64::from(n), n, &key_of(3));
            store.deposit(&Holder::account(&bob), &mail.envelope.id(), &mail).unwrap();
        }
        let for_carol = item(50, 9, &key_of(5));
        store
            .deposit(&Holder::account(&carol), &for_carol.envelope.id(), &for_carol)
            .unwrap();
        assert!(store.remove_user(&bob).unwrap());
        assert!(!store.remove_user(&bob).unwrap(), "removed once");
        store.flush_blocking().unwrap();
        drop(store);
        let store = backend.open();
        assert_eq!(store.user(&bob).unwrap(), None);
        assert_eq!(store.name_of(&key_of(3)).unwrap(), None);
        assert_eq!(store.usage(&Holder::account(&bob)).unwrap(), Usage::default());
        assert_eq!(store.one_time_count(&Holder::account(&bob)).unwrap(), 0);
        assert!(!store.has_signed_prekey(&Holder::account(&bob)).unwrap());
        // The name is free for another key; the new bob starts with an empty mailbox.
        assert_eq!(
            store.register(&bob, &key_of(7), 9).unwrap(),
            Registration::New
        );
        assert!(store.fetch(&Holder::account(&bob), 10, u64::MAX, 0).unwrap().is_empty());
        assert_eq!(store.take_bundle(&Holder::account(&bob), true).unwrap(), None);
        // Others are untouched.
        assert_eq!(store.usage(&Holder::account(&carol)).unwrap().messages, 1);
        assert_eq!(store.one_time_count(&Holder::account(&carol)).unwrap(), 1);
        assert_eq!(store.mailbox_totals().unwrap().messages, 1);
    });
}

/// Alice's account key (seed 3) with the linked devices of these seeds, at `version`.
fn alice_devices(version: u64, linked: &[u8]) -> SignedDeviceList {
    let account = Identity::from_secret_bytes(&[3; 32]);
    let mut list = DeviceList::single(account.public());
    list.version = version;
    for &seed in linked {
        list.devices.push(Device::bind(
            &Identity::from_secret_bytes(&[seed; 32]),
            &account.public(),
            format!("device {seed}"),
            u64::from(seed),
        ));
    }
    SignedDeviceList::sign(list, &account).unwrap()
}

#[test]
fn linked_devices_have_their_own_prekeys_and_mail_and_leave_nothing_when_removed() {
    on_both("store::devices", |backend| {
        let store = backend.open();
        let alice = name("alice");
        store.register(&alice, &key_of(3), 1).unwrap();
        assert_eq!(store.devices(&alice).unwrap(), None);
        let (own, laptop, phone) = (
            Holder::account(&alice),
            Holder::device(&alice, &key_of(11)),
            Holder::device(&alice, &key_of(12)),
        );
        store.put_devices(&alice, &alice_devices(1, &[11, 12])).unwrap();
        assert_eq!(store.device_owner(&key_of(11)).unwrap(), Some(alice.clone()));
        assert_eq!(store.device_owner(&key_of(3)).unwrap(), None, "the account key is not linked");
        for (holder, seed) in [(&own, 3), (&laptop, 11), (&phone, 12)] {
            store.publish_prekeys(holder, &upload(seed, &[1, 2])).unwrap();
            let mail = item(u64::from(seed), seed, &key_of(seed));
            store.deposit(holder, &mail.envelope.id(), &mail).unwrap();
        }
        // Each device reads its own mail and takes its own prekeys.
        let bundle = store.take_bundle(&laptop, true).unwrap().unwrap();
        assert_eq!(bundle.identity, key_of(11));
        assert_eq!(store.one_time_count(&laptop).unwrap(), 1);
        assert_eq!(store.one_time_count(&own).unwrap(), 2);
        let mail = store.fetch(&phone, 10, u64::MAX, 0).unwrap();
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].deposited_at_ms, 12);
        assert_eq!(store.mailbox_totals().unwrap().messages, 3);

        // Dropping the phone drops what was filed for it, and only that.
        let removed = store.put_devices(&alice, &alice_devices(2, &[11])).unwrap();
        assert_eq!(removed.len(), 1, "the phone's one held message");
        assert_eq!(removed[0].recipient, phone);
        store.flush_blocking().unwrap();
        drop(store);
        let store = backend.open();
        assert_eq!(store.devices(&alice).unwrap(), Some(alice_devices(2, &[11])));
        assert_eq!(store.device_owner(&key_of(12)).unwrap(), None);
        assert!(!store.has_signed_prekey(&phone).unwrap());
        assert_eq!(store.usage(&phone).unwrap(), Usage::default());
        assert!(store.has_signed_prekey(&laptop).unwrap());
        assert_eq!(store.usage(&laptop).unwrap().messages, 1);
        assert_eq!(store.mailbox_totals().unwrap().messages, 2);
        // Expiry reads the holder back out of the store's keys.
        let expired = store.expire(u64::MAX, 10).unwrap();
        let mut holders: Vec<_> = expired.iter().map(|r| r.recipient.clone()).collect();
        holders.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(holders, [own.clone(), laptop.clone()]);

        // Another account cannot list alice's laptop.
        let carol = name("carol");
        store.register(&carol, &key_of(4), 1).unwrap();
        let carols = {
            let account = Identity::from_secret_bytes(&[4; 32]);
            let mut list = DeviceList::single(account.public());
            // (The laptop even bound itself to carol: the store still refuses.)
            let laptop = Identity::from_secret_bytes(&[11; 32]);
            list.devices.push(Device::bind(&laptop, &account.public(), "stolen".into(), 0));
            SignedDeviceList::sign(list, &account).unwrap()
        };
        assert!(store.put_devices(&carol, &carols).is_err());
        assert_eq!(store.device_owner(&key_of(11)).unwrap(), Some(alice.clone()));
        assert_eq!(store.devices(&carol).unwrap(), None);

        // Removing the user removes its devices too.
        store.publish_prekeys(&laptop, &upload(11, &[7])).unwrap();
        assert!(store.remove_user(&alice).unwrap());
        assert_eq!(store.devices(&alice).unwrap(), None);
        assert_eq!(store.device_owner(&key_of(11)).unwrap(), None);
        assert!(!store.has_signed_prekey(&laptop).unwrap());
    });
}

#[test]
fn a_holder_reads_back_as_written_and_refuses_what_it_did_not_write() {
    let alice = name("alice");
    for holder in [Holder::account(&alice), Holder::device(&alice, &key_of(9))] {
        assert_eq!(Holder::from_bytes(holder.as_str().as_bytes()).unwrap(), holder);
        assert_eq!(holder.name(), &alice);
    }
    for bad in ["alice/", "alice/zz", "Alice", "alice/00", &format!("alice/{}", "g".repeat(64))] {
        assert!(Holder::from_bytes(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn mail_is_held_in_order_within_a_budget_and_removed_once_by_ack_or_expiry() {
    on_both("store::mail", |backend| {
        let store = backend.open();
        let bob = name("bob");
        let bob_key = key_of(4);
        store.register(&bob, &bob_key, 1).unwrap();
        store.register(&name("carol"), &key_of(5), 1).unwrap();
        let (a, b, c) = (
            item(100, 1, &bob_key),
            item(200, 2, &bob_key),
            item(300, 3, &bob_key),
        );
        let (ida, idb, idc) = (a.envelope.id(), b.envelope.id(), c.envelope.id());
        let (la, lb, lc) = (
            encoded_len(&a).unwrap(),
            encoded_len(&b).unwrap(),
            encoded_len(&c).unwrap(),
        );
        // Deposited out of order; held oldest first.
        assert_eq!(store.deposit(&Holder::account(&bob), &idc, &c).unwrap(), Deposit::Stored(lc));
        assert_eq!(store.deposit(&Holder::account(&bob), &ida, &a).unwrap(), Deposit::Stored(la));
        assert_eq!(store.deposit(&Holder::account(&bob), &ida, &a).unwrap(), Deposit::Duplicate);
        assert_eq!(store.deposit(&Holder::account(&bob), &idb, &b).unwrap(), Deposit::Stored(lb));
        let carol_item = item(150, 6, &key_of(5));
        let carol_id = carol_item.envelope.id();
        store
            .deposit(&Holder::account(&name("carol")), &carol_id, &carol_item)
            .unwrap();
        store.flush_blocking().unwrap();
        drop(store);
        let store = backend.open();
        assert!(store.holds(&Holder::account(&bob), &ida).unwrap());
        assert!(!store.holds(&Holder::account(&bob), &carol_id).unwrap());
        assert_eq!(
            store.usage(&Holder::account(&bob)).unwrap(),
            Usage {
                messages: 3,
                bytes: la + lb + lc
            }
        );
        assert_eq!(store.mailbox_totals().unwrap().messages, 4);
        let all = store.fetch(&Holder::account(&bob), 10, 1 << 20, 0).unwrap();
        assert_eq!(all, [a.clone(), b.clone(), c.clone()]);
        assert_eq!(
            store.fetch(&Holder::account(&bob), 2, 1 << 20, 0).unwrap(),
            [a.clone(), b.clone()]
        );
        // The byte budget stops the batch, but one message always comes.
        assert_eq!(
            store.fetch(&Holder::account(&bob), 10, la + lb - 1, 0).unwrap(),
            std::slice::from_ref(&a)
        );
        assert_eq!(
            store.fetch(&Holder::account(&bob), 10, 1, 0).unwrap(),
            std::slice::from_ref(&a)
        );
        // Expired but not yet swept: not handed out.
        assert_eq!(
            store.fetch(&Holder::account(&bob), 10, 1 << 20, 150).unwrap(),
            [b.clone(), c.clone()]
        );

        // The sweep removes only what is older than the cutoff, each message once.
        let expired = store.expire(160, 100).unwrap();
        let mut recipients: Vec<_> = expired
            .iter()
            .map(|r| r.recipient.as_str().to_owned())
            .collect();
        recipients.sort();
        assert_eq!(recipients, ["bob", "carol"]);
        assert!(store.expire(160, 100).unwrap().is_empty());
        assert!(!store.holds(&Holder::account(&bob), &ida).unwrap());

        // An ack removes each message once; unknown ids are ignored.
        let removed = store.ack(&Holder::account(&bob), &[idb, ida, idb]).unwrap();
        assert_eq!(
            removed,
            [Removed {
                recipient: Holder::account(&bob),
                bytes: lb
            }]
        );
        assert!(store.ack(&Holder::account(&bob), &[idb]).unwrap().is_empty());
        assert_eq!(
            store.fetch(&Holder::account(&bob), 10, 1 << 20, 0).unwrap(),
            std::slice::from_ref(&c)
        );
        assert_eq!(store.usage(&Holder::account(&bob)).unwrap().messages, 1);
        assert_eq!(store.ack(&Holder::account(&bob), &[idc]).unwrap().len(), 1);
        assert!(store.fetch(&Holder::account(&bob), 10, 1 << 20, 0).unwrap().is_empty());
        assert_eq!(store.usage(&Holder::account(&bob)).unwrap(), Usage::default());
        assert_eq!(store.mailbox_totals().unwrap(), Usage::default());
    });
}

#[test]
fn two_instances_on_one_database_see_each_others_writes_and_never_hand_out_a_prekey_twice() {
    let Some(cluster) = TestPostgres::start("store::two_instances").unwrap() else {
        return;
    };
    let (a, b) = (
        PgStore::open(&cluster.url()).unwrap(),
        PgStore::open(&cluster.url()).unwrap(),
    );
    let bob = name("bob");
    assert_eq!(a.register(&bob, &key_of(7), 1).unwrap(), Registration::New);
    assert_eq!(
        b.register(&bob, &key_of(8), 2).unwrap(),
        Registration::Taken
    );
    let ids: Vec<u32> = (0..40).collect();
    a.publish_prekeys(&Holder::account(&bob), &upload(7, &ids)).unwrap();
    let (a, b, bob) = (&a, &b, &bob);
    let taken: Vec<u32> = std::thread::scope(|scope| {
        let takers: Vec<_> = [a, b, a, b]
            .into_iter()
            .map(|store| {
                scope.spawn(move || {
                    (0..10)
                        .map(|_| {
                            store
                                .take_bundle(&Holder::account(bob), true)
                                .unwrap()
                                .unwrap()
                                .one_time_prekey
                                .unwrap()
                                .id
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        takers.into_iter().flat_map(|t| t.join().unwrap()).collect()
    });
    let mut sorted = taken.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "each one-time prekey handed out exactly once");

    let mail = item(10, 9, &key_of(7));
    let id = mail.envelope.id();
    a.deposit(&Holder::account(bob), &id, &mail).unwrap();
    assert_eq!(b.deposit(&Holder::account(bob), &id, &mail).unwrap(), Deposit::Duplicate);
    assert_eq!(b.fetch(&Holder::account(bob), 10, 1 << 20, 0).unwrap(), [mail]);
    let (first, second) = std::thread::scope(|scope| {
        let one = scope.spawn(|| a.ack(&Holder::account(bob), &[id]).unwrap().len());
        let two = scope.spawn(|| b.ack(&Holder::account(bob), &[id]).unwrap().len());
        (one.join().unwrap(), two.join().unwrap())
    });
    assert_eq!(
        first + second,
        1,
        "an ack at two instances removes the message once"
    );
}

#[test]
fn a_database_restart_is_a_try_again_error_then_the_store_reconnects() {
    let Some(cluster) = TestPostgres::start("store::database_restart").unwrap() else {
        return;
    };
    let store = PgStore::open(&cluster.url()).unwrap();
    store.register(&name("dave"), &key_of(10), 1).unwrap();
    cluster.stop().unwrap();
    match store.user(&name("dave")) {
        Err(StoreError::Unavailable(detail)) => {
            let text = StoreError::Unavailable(detail).to_string();
            assert!(text.contains("try again"), "{text}");
        }
        other => panic!("expected a try-again error, got {other:?}"),
    }
    // Opening while the database is down is a clear error, not a hang.
    let error = PgStore::open(&cluster.url()).unwrap_err().to_string();
    assert!(error.contains("127.0.0.1"), "{error}");
    cluster.start_again().unwrap();
    // Broken connections are noticed on use and replaced: within a few calls it answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let user = loop {
        match store.user(&name("dave")) {
            Ok(user) => break user,
            Err(StoreError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(user.unwrap().identity, key_of(10));
}

fn peer(seed: u8) -> PeerId {
    Identity::from_secret_bytes(&[seed; 32]).peer_id()
}

fn signed(byte: u8) -> SignedPeerRecord {
    SignedPeerRecord(vec![byte; 40])
}

#[test]
fn discovery_records_are_kept_per_namespace_within_limits_until_they_expire() {
    use palaver_protocol::rendezvous::discovery::Namespace;
    use palaver_protocol::wire::RoomId;
    on_both("store::discovery", |backend| {
        let limits = RecordLimits {
            per_peer: 2,
            total: 3,
        };
        let (one, two, three) = (peer(1), peer(2), peer(3));
        let ns = Namespace::Peer(one);
        let room = Namespace::Room(RoomId([4; 32]));
        {
            let store = backend.open();
            let put = |namespace: &Namespace, peer: &PeerId, byte: u8, expires: u64| {
                store
                    .put_record(namespace, peer, &signed(byte), expires, limits)
                    .unwrap()
            };
            assert_eq!(put(&room, &one, 1, 100), PutRecord::Stored);
            assert_eq!(put(&room, &two, 2, 200), PutRecord::Stored);
            assert_eq!(put(&ns, &one, 3, 150), PutRecord::Stored);
            // The latest to expire first; no more than asked for.
            assert_eq!(
                store.records(&room, 50, 10).unwrap(),
                [signed(2), signed(1)]
            );
            assert_eq!(store.records(&room, 50, 1).unwrap(), [signed(2)]);
            assert_eq!(store.records(&ns, 50, 10).unwrap(), [signed(3)]);
            assert!(store.holds_record(&room, &one, 99).unwrap());
            assert!(!store.holds_record(&room, &one, 100).unwrap(), "expired");
            assert!(!store.holds_record(&ns, &two, 0).unwrap());
            // A renewal replaces the record; a third namespace for one peer, or a fourth
            // record in all, is refused and changes nothing.
            assert_eq!(put(&room, &one, 5, 300), PutRecord::Stored);
            assert_eq!(
                put(&Namespace::Room(RoomId([9; 32])), &one, 6, 300),
                PutRecord::PeerFull
            );
            assert_eq!(
                put(&Namespace::Peer(three), &three, 7, 300),
                PutRecord::Full
            );
            assert_eq!(
                store.records(&room, 50, 10).unwrap(),
                [signed(5), signed(2)]
            );
            assert!(
                store
                    .records(&Namespace::Peer(three), 50, 10)
                    .unwrap()
                    .is_empty()
            );
            store.flush_blocking().unwrap();
        }
        // Another instance (or a restart) sees them; expired records are not handed out, then
        // swept, which makes room.
        let store = backend.open();
        assert_eq!(store.records(&room, 250, 10).unwrap(), [signed(5)]);
        assert_eq!(store.expire_records(200, 10).unwrap(), 2);
        assert_eq!(store.expire_records(200, 10).unwrap(), 0);
        assert_eq!(store.records(&room, 0, 10).unwrap(), [signed(5)]);
        assert!(store.records(&ns, 0, 10).unwrap().is_empty());
        assert_eq!(
            store
                .put_record(&Namespace::Peer(three), &three, &signed(7), 300, limits)
                .unwrap(),
            PutRecord::Stored
        );
        assert!(
            store.holds_record(&room, &one, 250).unwrap(),
            "renewed to 300"
        );
        store.remove_record(&room, &one).unwrap();
        store.remove_record(&room, &one).unwrap();
        assert!(!store.holds_record(&room, &one, 0).unwrap());
        assert!(store.records(&room, 0, 10).unwrap().is_empty());
        // The peer's place is free again.
        assert_eq!(
            store
                .put_record(
                    &Namespace::Room(RoomId([9; 32])),
                    &one,
                    &signed(8),
                    400,
                    limits
                )
                .unwrap(),
            PutRecord::Stored
        );
        assert_eq!(store.expire_records(u64::MAX, 1).unwrap(), 1);
        assert_eq!(store.expire_records(u64::MAX, 10).unwrap(), 1);
    });
}

#[test]
fn migrations_run_once_and_a_newer_schema_is_refused() {
    let Some(cluster) = TestPostgres::start("store::migrations").unwrap() else {
        return;
    };
    let url = cluster.url();
    // Instances starting together migrate one at a time.
    std::thread::scope(|scope| {
        let starts: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| PgStore::open(&url)))
            .collect();
        for start in starts {
            start.join().unwrap().unwrap();
        }
    });
    let store = PgStore::open(&url).unwrap();
    store
        .call("bump", async {
            let client = store.pool.get().await?;
            client
                .execute("INSERT INTO palaver_schema (version) VALUES (99)", &[])
                .await?;
            Ok(())
        })
        .unwrap();
    let error = PgStore::open(&url).unwrap_err().to_string();
    assert!(error.contains("version 99"), "{error}");
}

#[test]
fn a_store_location_is_sled_or_a_postgres_url_and_passwords_stay_out_of_logs() {
    assert_eq!(StoreLocation::parse("sled"), Ok(StoreLocation::Sled));
    let url = "postgres://palaver:secret@db.example:5432/palaver";
    let location = StoreLocation::parse(url).unwrap();
    assert_eq!(
        location.to_string(),
        "postgres://palaver:…@db.example:5432/palaver"
    );
    assert!(StoreLocation::parse("postgresql://db/palaver").is_ok());
    let error = StoreLocation::parse("mysql://root:pw@db/x").unwrap_err();
    assert!(error.contains("postgres://USER@HOST:PORT/DB"), "{error}");
    assert!(!error.contains("pw"), "{error}");
}

#[test]
fn sled_keeps_its_mail_indexes_consistent_through_ack_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let bob = name("bob");
    let (a, b) = (item(100, 1, &key_of(9)), item(200, 2, &key_of(9)));
    let (ida, idb) = (a.envelope.id(), b.envelope.id());
    store.deposit(&Holder::account(&bob), &ida, &a).unwrap();
    store.deposit(&Holder::account(&bob), &idb, &b).unwrap();
    assert_eq!(store.expire(150, 100).unwrap().len(), 1);
    assert_eq!(store.ack(&Holder::account(&bob), &[idb, ida]).unwrap().len(), 1);
    assert_eq!(
        store.mail_records(),
        0,
        "no item, id index or expiry entry left behind"
    );
}
