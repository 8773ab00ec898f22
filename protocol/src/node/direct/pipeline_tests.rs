use std::collections::{HashMap, HashSet};

use ed25519_dalek::SigningKey;

use super::*;

fn key(seed: u8) -> VerifyingKey {
    SigningKey::from_bytes(&[seed; 32]).verifying_key()
}

/// A prekey bundle of the key `key(seed)`.
fn bundle(seed: u8) -> Box<PrekeyBundle> {
    use rand_core::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(seed));
    let signing = SigningKey::from_bytes(&[seed; 32]);
    let upload = crate::crypto::x3dh::PrekeySecrets::generate(&mut rng, &signing, 1).upload();
    Box::new(PrekeyBundle {
        identity: upload.identity,
        signed_prekey: upload.signed_prekey,
        one_time_prekey: upload.one_time_prekeys.first().copied(),
    })
}

fn name(n: &str) -> UserName {
    n.parse().unwrap()
}

/// What a node knows, in memory.
#[derive(Default)]
struct Known {
    contacts: HashMap<UserName, VerifyingKey>,
    refused: HashSet<UserName>,
    warn_once: HashSet<UserName>,
    sessions: HashSet<VerifyingKey>,
    /// Why the rendezvous cannot be asked now, if it cannot.
    offline: Option<String>,
    /// Linked devices of contacts.
    devices: HashMap<VerifyingKey, UserName>,
}

impl Known {
    fn learn(&mut self, who: &str, seed: u8) {
        self.contacts.insert(name(who), key(seed));
    }
}

impl Facts for Known {
    type Refusal = String;
    fn unavailable(&self) -> Option<String> {
        self.offline.clone()
    }
    fn me(&self) -> VerifyingKey {
        key(1)
    }
    fn key_to_send(
        &mut self,
        name: &UserName,
    ) -> Result<Option<(VerifyingKey, Option<String>)>, String> {
        if self.refused.contains(name) {
            return Err(format!("{name}'s safety number changed"));
        }
        let warning = self.warn_once.remove(name).then(|| "changed".to_owned());
        Ok(self.contacts.get(name).map(|k| (*k, warning)))
    }
    fn name_of(&self, key: &VerifyingKey) -> Option<UserName> {
        self.contacts
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(n, _)| n.clone())
            .or_else(|| self.devices.get(key).cloned())
    }
    fn has_session(&self, key: &VerifyingKey) -> bool {
        self.sessions.contains(key)
    }
    fn account_of(&self, name: &UserName) -> Option<VerifyingKey> {
        self.contacts.get(name).copied()
    }
}

fn outputs(p: &mut SendPipeline<&'static str>) -> Vec<Output<&'static str>> {
    std::iter::from_fn(|| p.poll_output()).collect()
}

fn send(p: &mut SendPipeline<&'static str>, known: &mut Known, job: &'static str, to: &str) {
    let to = Recipient::Name(name(to));
    p.handle(Input::Send { job, to }, 0, known);
}

#[test]
fn a_first_message_looks_the_name_up_then_starts_a_session_then_is_sealed() {
    let (mut p, mut known) = (SendPipeline::default(), Known::default());
    send(&mut p, &mut known, "hi", "bob");
    assert_eq!(
        outputs(&mut p),
        [Output::Lookup {
            call: 1,
            name: name("bob")
        }]
    );
    known.learn("bob", 2);
    p.handle(
        Input::Answered {
            call: 1,
            answer: Answer::Learned,
        },
        5,
        &mut known,
    );
    assert_eq!(
        outputs(&mut p),
        [Output::FetchPrekeys {
            call: 1,
            name: name("bob"),
            key: key(2),
            device: false,
        }]
    );
    p.handle(
        Input::Answered {
            call: 1,
            answer: Answer::Prekeys(bundle(2)),
        },
        6,
        &mut known,
    );
    assert_eq!(
        outputs(&mut p),
        [Output::StartSession {
            call: 1,
            key: key(2),
            bundle: bundle(2)
        }]
    );
    known.sessions.insert(key(2));
    p.handle(
        Input::Answered {
            call: 1,
            answer: Answer::SessionStarted,
        },
        6,
        &mut known,
    );
    assert_eq!(
        outputs(&mut p),
        [Output::Seal {
            job: "hi",
            key: key(2),
            name: name("bob"),
            warning: None
        }]
    );
    assert_eq!(p.parked(), 0);
    // The next one needs nothing.
    send(&mut p, &mut known, "again", "bob");
    assert!(matches!(
        &outputs(&mut p)[..],
        [Output::Seal { job: "again", .. }]
    ));
}

#[test]
fn a_name_the_rendezvous_does_not_know_and_a_refused_contact_fail_clearly() {
    let (mut p, mut known) = (SendPipeline::default(), Known::default());
    send(&mut p, &mut known, "hi", "nobody");
    outputs(&mut p);
    p.handle(
        Input::Answered {
            call: 1,
            answer: Answer::Learned,
        },
        5,
        &mut known,
    );
    assert_eq!(
        outputs(&mut p),
        [Output::Fail {
            job: "hi",
            error: "unknown user nobody at this rendezvous".into()
        }]
    );
    known.learn("bob", 2);
    known.refused.insert(name("bob"));
    send(&mut p, &mut known, "hi", "bob");
    assert!(
        matches!(&outputs(&mut p)[..], [Output::Fail { error, .. }] if error.contains("safety number"))
    );
    // Oneself, and a failed request.
    known.learn("me", 1);
    send(&mut p, &mut known, "hi", "me");
    assert!(matches!(&outputs(&mut p)[..], [Output::Fail { error, .. }] if error == "that is you"));
    send(&mut p, &mut known, "hi", "carol");
    outputs(&mut p);
    p.handle(
        Input::Answered {
            call: 4,
            answer: Answer::Failed("offline".into()),
        },
        5,
        &mut known,
    );
    assert!(matches!(&outputs(&mut p)[..], [Output::Fail { error, .. }] if error == "offline"));
    assert_eq!(p.parked(), 0);
}

#[test]
fn a_key_change_warning_reaches_the_seal() {
    let (mut p, mut known) = (SendPipeline::default(), Known::default());
    known.learn("bob", 2);
    known.sessions.insert(key(2));
    known.warn_once.insert(name("bob"));
    send(&mut p, &mut known, "hi", "bob");
    assert!(
        matches!(&outputs(&mut p)[..], [Output::Seal { warning: Some(w), .. }] if w == "changed")
    );
}

#[test]
fn a_send_by_key_asks_who_holds_it_for_the_mailbox_name() {
    let (mut p, mut known) = (SendPipeline::default(), Known::default());
    known.sessions.insert(key(3));
    p.handle(
        Input::Send {
            job: "receipt",
            to: Recipient::Key(key(3)),
        },
        0,
        &mut known,
    );
    assert_eq!(
        outputs(&mut p),
        [Output::WhoIs {
            call: 1,
            key: key(3)
        }]
    );
    known.learn("carol", 3);
    p.handle(
        Input::Answered {
            call: 1,
            answer: Answer::Learned,
        },
        1,
        &mut known,
    );
    assert!(
        matches!(&outputs(&mut p)[..], [Output::Seal { name, .. }] if *name == self::name("carol"))
    );
    // A key nobody holds.
    p.handle(
        Input::Send {
            job: "x",
            to: Recipient::Key(key(9)),
        },
        0,
        &mut known,
    );
    outputs(&mut p);
    p.handle(
        Input::Answered {
            call: 2,
            answer: Answer::Learned,
        },
        1,
        &mut known,
    );
    assert!(
        matches!(&outputs(&mut p)[..], [Output::Fail { error, .. }] if error.contains("not registered"))
    );
}

/// The bug behind `PREKEY_WAIT_MS`: a send right after the recipient's login, before it has
/// published prekeys, must wait for them, not fail.
#[test]
fn a_recipient_without_prekeys_yet_is_asked_again_until_the_wait_is_over() {
    let (mut p, mut known) = (SendPipeline::default(), Known::default());
    known.learn("bob", 2);
    send(&mut p, &mut known, "early", "bob");
    assert!(matches!(
        &outputs(&mut p)[..],
        [Output::FetchPrekeys { call: 1, .. }]
    ));
    let none = || Answer::NoPrekeys("bob has not published prekeys yet".into());
    p.handle(
        Input::Answered {
            call: 1,
            answer: none(),
        },
        100,
        &mut known,
    );
    assert!(outputs(&mut p).is_empty());
    assert_eq!(p.poll_timeout(), Some(100 + PREKEY_RETRY_MS));
    p.handle_timeout(100 + PREKEY_RETRY_MS - 1, &mut known);
    assert!(outputs(&mut p).is_empty(), "not yet");
    p.handle_timeout(100 + PREKEY_RETRY_MS, &mut known);
    assert!(matches!(
        &outputs(&mut p)[..],
        [Output::FetchPrekeys { call: 1, .. }]
    ));
    // Published now: the session starts and the message goes.
    known.sessions.insert(key(2));
    p.handle(
        Input::Answered {
            call: 1,
            answer: Answer::SessionStarted,
        },
        1_200,
        &mut known,
    );
    assert!(matches!(
        &outputs(&mut p)[..],
        [Output::Seal { job: "early", .. }]
    ));

    // Never published: it fails once the wait is over, saying why.
    known.sessions.clear();
    send(&mut p, &mut known, "late", "bob");
    outputs(&mut p);
    let mut now = 2_000;
    p.handle(
        Input::Answered {
            call: 2,
            answer: none(),
        },
        now,
        &mut known,
    );
    while let Some(at) = p.poll_timeout() {
        now = at;
        p.handle_timeout(now, &mut known);
        outputs(&mut p);
        p.handle(
            Input::Answered {
                call: 2,
                answer: none(),
            },
            now,
            &mut known,
        );
        let out = outputs(&mut p);
        if let [Output::Fail { error, .. }] = &out[..] {
            assert!(error.contains("has not published prekeys yet"), "{error}");
            break;
        }
        assert!(out.is_empty());
    }
    assert_eq!(now, 2_000 + PREKEY_WAIT_MS);
    assert_eq!(p.parked(), 0);
}

#[test]
fn the_waiting_sends_are_bounded() {
    let (mut p, mut known) = (SendPipeline::default(), Known::default());
    for _ in 0..MAX_PARKED {
        send(&mut p, &mut known, "x", "bob");
    }
    assert_eq!(p.parked(), MAX_PARKED);
    outputs(&mut p);
    send(&mut p, &mut known, "one too many", "bob");
    assert!(matches!(
        &outputs(&mut p)[..],
        [Output::Fail {
            job: "one too many",
            ..
        }]
    ));
    // A stray answer for a call nobody holds changes nothing.
    p.handle(
        Input::Answered {
            call: 999_999,
            answer: Answer::Learned,
        },
        0,
        &mut known,
    );
    assert!(outputs(&mut p).is_empty());
}

/// The rendezvous hands out prekeys under another key than the one pinned: that is the user's
/// key change, taken in as such, and the send (meant for the key the user knew) fails.
#[test]
fn prekeys_under_another_key_are_a_key_change_and_the_send_fails() {
    let (mut p, mut known) = (SendPipeline::default(), Known::default());
    known.learn("bob", 2);
    send(&mut p, &mut known, "hi", "bob");
    assert!(matches!(
        &outputs(&mut p)[..],
        [Output::FetchPrekeys { call: 1, .. }]
    ));
    p.handle(
        Input::Answered {
            call: 1,
            answer: Answer::Prekeys(bundle(3)),
        },
        5,
        &mut known,
    );
    let out = outputs(&mut p);
    assert_eq!(
        out[0],
        Output::KeyChanged {
            name: name("bob"),
            key: key(3)
        }
    );
    assert!(
        matches!(&out[1..], [Output::Fail { job: "hi", error }] if error.contains("key changed")),
        "{out:?}"
    );
    assert_eq!(p.parked(), 0);
}

/// Not logged in, a send that must ask the rendezvous fails at once, saying why; one that
/// knows all it needs is sealed.
#[test]
fn a_send_that_must_ask_fails_at_once_while_the_rendezvous_cannot_be_asked() {
    let (mut p, mut known) = (SendPipeline::default(), Known::default());
    known.offline = Some("the rendezvous at /ip4/127.0.0.1 is not reachable".into());
    send(&mut p, &mut known, "hi", "bob");
    assert!(
        matches!(&outputs(&mut p)[..], [Output::Fail { job: "hi", error }]
            if error == "cannot look bob up: the rendezvous at /ip4/127.0.0.1 is not reachable"),
    );
    known.learn("bob", 2);
    known.sessions.insert(key(2));
    send(&mut p, &mut known, "known", "bob");
    assert!(matches!(
        &outputs(&mut p)[..],
        [Output::Seal { job: "known", .. }]
    ));
    assert_eq!(p.parked(), 0);
}

#[test]
fn a_send_to_a_linked_device_fetches_its_own_prekeys_and_another_key_is_no_key_change() {
    let mut known = Known::default();
    known.learn("bob", 2);
    known.devices.insert(key(7), name("bob"));
    let mut p = SendPipeline::default();
    p.handle(
        Input::Send {
            job: "copy",
            to: Recipient::Key(key(7)),
        },
        0,
        &mut known,
    );
    assert_eq!(
        outputs(&mut p),
        [Output::FetchPrekeys {
            call: 1,
            name: name("bob"),
            key: key(7),
            device: true,
        }]
    );
    // A bundle under another key: the copy fails; bob's own key is not taken as changed.
    p.handle(
        Input::Answered {
            call: 1,
            answer: Answer::Prekeys(bundle(9)),
        },
        1,
        &mut known,
    );
    let out = outputs(&mut p);
    assert!(
        matches!(&out[..], [Output::Fail { job: "copy", .. }]),
        "{out:?}"
    );
}
