use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;

const T0: u64 = 1_700_000_000_000;

struct Pair {
    rng: ChaCha20Rng,
    alice: SigningKey,
    bob: SigningKey,
    bob_prekeys: PrekeySecrets,
    alice_clock: HybridClock,
    bob_clock: HybridClock,
}

fn pair() -> Pair {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let alice = SigningKey::from_bytes(&[1; 32]);
    let bob = SigningKey::from_bytes(&[2; 32]);
    let bob_prekeys = PrekeySecrets::generate(&mut rng, &bob, 4);
    Pair {
        rng,
        alice,
        bob,
        bob_prekeys,
        alice_clock: HybridClock::new(),
        bob_clock: HybridClock::new(),
    }
}

fn bundle(prekeys: &mut PrekeySecrets) -> PrekeyBundle {
    let upload = prekeys.upload();
    PrekeyBundle {
        identity: upload.identity,
        signed_prekey: upload.signed_prekey,
        one_time_prekey: upload.one_time_prekeys.first().copied(),
    }
}

/// Alice's first message to Bob (seq 1), opening a session from his prekeys.
fn first_message(p: &mut Pair, payload: Payload) -> Sealed {
    let bundle = bundle(&mut p.bob_prekeys);
    let mut sessions = start_session(&mut p.rng, &p.alice, &bundle, None).expect("session");
    let bob = p.bob.verifying_key();
    seal(
        &mut p.rng,
        &p.alice,
        bob,
        &mut sessions,
        &mut p.alice_clock,
        1,
        payload,
        T0,
    )
    .expect("seal")
}

fn direct_of(sealed: &Sealed) -> DirectMessage {
    match Envelope::from_bytes(&sealed.frame).expect("frame").body {
        Body::Direct(direct) => direct,
        other => panic!("not direct: {other:?}"),
    }
}

#[test]
fn a_sealed_message_opens_once_with_its_stamp_and_seq() {
    let mut p = pair();
    let text = Payload::Text("hello".into());
    let sealed = first_message(&mut p, text.clone());
    assert_eq!(sealed.stamp, p.alice_clock.current(), "the clock moved");
    let envelope = Envelope::from_bytes(&sealed.frame).expect("frame");
    envelope.verify().expect("signed by alice");
    assert_eq!(envelope.id(), sealed.id);
    let direct = direct_of(&sealed);

    let opened = open(
        &p.bob,
        None,
        &p.bob_prekeys,
        &mut p.bob_clock,
        &direct,
        T0 + 5,
    )
    .expect("open");
    let after = opened
        .prekeys_after
        .clone()
        .expect("the first message answers the initiation");
    assert_eq!(opened.sender, p.alice.verifying_key());
    assert_eq!((opened.seq, opened.payload), (1, text));
    assert!(
        p.bob_clock.current() >= opened.stamp,
        "bob's clock moved past it"
    );

    // Bob's prekeys are untouched until he commits: had storing the message failed, the same
    // message (sent again) would still open.
    let mut bob_clock = p.bob_clock;
    open(
        &p.bob,
        None,
        &p.bob_prekeys,
        &mut bob_clock,
        &direct,
        T0 + 6,
    )
    .expect("opens again with the uncommitted prekeys");
    // Once committed, the one-time prekey is gone: the same message is a replay, refused both
    // by the session it advanced and as a new initiation.
    p.bob_prekeys = after;
    let again = open(
        &p.bob,
        Some(opened.sessions),
        &p.bob_prekeys,
        &mut p.bob_clock,
        &direct,
        T0 + 6,
    );
    assert!(again.is_err());
    let fresh = open(
        &p.bob,
        None,
        &p.bob_prekeys,
        &mut p.bob_clock,
        &direct,
        T0 + 7,
    );
    assert!(fresh.is_err(), "the one-time prekey was used up");
}

#[test]
fn a_failed_open_consumes_nothing() {
    let mut p = pair();
    let sealed = first_message(&mut p, Payload::Text("x".into()));
    let mut direct = direct_of(&sealed);
    let good = direct.clone();
    direct.message.ciphertext[0] ^= 1;
    let clock = p.bob_clock;
    let err = open(&p.bob, None, &p.bob_prekeys, &mut p.bob_clock, &direct, T0);
    assert!(matches!(err, Err(OpenError::Session(_))), "{:?}", err.err());
    assert_eq!(p.bob_clock, clock);
    // The untampered message still opens: the prekey it names was not used up.
    open(&p.bob, None, &p.bob_prekeys, &mut p.bob_clock, &good, T0).expect("open");
}

#[test]
fn a_message_for_someone_else_is_refused() {
    let mut p = pair();
    let sealed = first_message(&mut p, Payload::Text("x".into()));
    let carol = SigningKey::from_bytes(&[3; 32]);
    let err = open(
        &carol,
        None,
        &p.bob_prekeys,
        &mut p.bob_clock,
        &direct_of(&sealed),
        T0,
    );
    assert_eq!(err.err(), Some(OpenError::NotForMe));
}

#[test]
fn only_signed_direct_envelopes_not_stored_yet_are_opened() {
    let mut p = pair();
    let sealed = first_message(&mut p, Payload::Text("x".into()));
    let envelope = || Envelope::from_bytes(&sealed.frame).expect("frame");
    assert_eq!(admit(envelope(), false).unwrap(), Some(direct_of(&sealed)));
    assert_eq!(
        admit(envelope(), true).unwrap(),
        None,
        "stored: acknowledged again"
    );
    let mut forged = envelope();
    forged.signature = ed25519_dalek::Signature::from_bytes(&[0; 64]);
    assert!(matches!(admit(forged, true), Err(NotOpened::Invalid(_))));
}

#[test]
fn an_opened_message_becomes_a_line_a_file_offer_or_a_control_payload() {
    use crate::crypto::file::FileKey;
    use crate::wire::TransferId;
    let text = Payload::Text("hi".into());
    assert_eq!(
        received(text, false),
        Received::Entry {
            text: "hi".into(),
            offer: None,
            whole: None
        }
    );
    let bytes = b"hello".to_vec();
    let offer = FileOffer {
        transfer: TransferId([1; 16]),
        name: "note.txt".into(),
        size: 5,
        mime: "text/plain".into(),
        sha256: <sha2::Sha256 as sha2::Digest>::digest(&bytes).into(),
        key: FileKey::random(&mut ChaCha20Rng::seed_from_u64(1)),
    };
    let whole = Payload::FileWhole {
        offer: offer.clone(),
        bytes: bytes.clone(),
    };
    assert!(matches!(
        received(whole, false),
        Received::Entry { offer: Some(o), whole: Some(b), .. } if o == offer && b == bytes
    ));
    let receipt = Payload::Receipt(vec![MessageId([3; 32])]);
    assert_eq!(
        received(receipt.clone(), false),
        Received::Control(Box::new(receipt))
    );
    // A line we sent from another device: ours only from our own devices.
    let sent = Payload::Sent {
        to: crate::UserName::new("bob").unwrap(),
        to_key: crate::Identity::from_secret_bytes(&[2; 32]).public(),
        id: MessageId([4; 32]),
        text: "hi bob".into(),
        sent_at_ms: 5,
    };
    assert!(matches!(
        received(sent.clone(), true),
        Received::Sent { text, .. } if text == "hi bob"
    ));
    assert_eq!(
        received(sent.clone(), false),
        Received::Control(Box::new(sent))
    );
}

#[test]
fn a_file_offer_a_receiver_cannot_take_is_refused_when_opened() {
    use crate::crypto::file::FileKey;
    use crate::wire::TransferId;
    let mut p = pair();
    let offer = FileOffer {
        transfer: TransferId([1; 16]),
        name: "../../.bashrc".into(),
        size: 5,
        mime: "text/plain".into(),
        sha256: [0; 32],
        key: FileKey::random(&mut ChaCha20Rng::seed_from_u64(1)),
    };
    let sealed = first_message(&mut p, Payload::File(offer));
    let err = open(
        &p.bob,
        None,
        &p.bob_prekeys,
        &mut p.bob_clock,
        &direct_of(&sealed),
        T0,
    );
    assert!(
        matches!(err, Err(OpenError::BadContent(_))),
        "{:?}",
        err.err()
    );
}
