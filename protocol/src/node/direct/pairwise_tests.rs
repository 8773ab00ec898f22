use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, SeedableRng};

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
        &mut OsRng,
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
        &mut OsRng,
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
        &mut OsRng,
        &p.bob,
        Some(opened.sessions),
        &p.bob_prekeys,
        &mut p.bob_clock,
        &direct,
        T0 + 6,
    );
    assert!(again.is_err());
    let fresh = open(
        &mut OsRng,
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
    let err = open(
        &mut OsRng,
        &p.bob,
        None,
        &p.bob_prekeys,
        &mut p.bob_clock,
        &direct,
        T0,
    );
    assert!(matches!(err, Err(OpenError::Session(_))), "{:?}", err.err());
    assert_eq!(p.bob_clock, clock);
    // The untampered message still opens: the prekey it names was not used up.
    open(
        &mut OsRng,
        &p.bob,
        None,
        &p.bob_prekeys,
        &mut p.bob_clock,
        &good,
        T0,
    )
    .expect("open");
}

#[test]
fn a_message_for_someone_else_is_refused() {
    let mut p = pair();
    let sealed = first_message(&mut p, Payload::Text("x".into()));
    let carol = SigningKey::from_bytes(&[3; 32]);
    let err = open(
        &mut OsRng,
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
        &mut OsRng,
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

/// Alice's and Bob's sessions after one message each way, as the layout before [`SendAhead`]
/// stored them (`codec::encode` of `PeerSessions` at 9bdcd14; from `pair()`'s keys).
const PINNED_ALICE: &str = "01208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b39400002af3417024c94071af52372ba17c193387006b42953ce8e9abdeea5c526106b7e702765ebdfb3bb98ed65925be941c2abbcf0cfd8ec127ef6f20a9e7e8505a950ba2d5a295675748aaeb6296c156e103b1972a74db5d52fbe556685ceec1bf0dabff79d107ab3de3551e7f5b24ff4d4a732a56071cf68aaf741bdd7ca647770900015affd7bf360a077dee624c9a065fa79d0e9357e80e43a374b04fa0e89bf1bc490101000000";
const PINNED_BOB: &str = "01208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c013ca65843f74a8be6f01ea053a141644dce82ccb0ae848a61b69da1d380a6806bfcff333f9f01fc5ed7eaf72af3417024c94071af52372ba17c193387006b42953ce8e9abdeea5c526106b76a9f63f644e1fab7d66f27ad74a70e9a6a8bda555511447c3e3f3ce9189537e8abff79d107ab3de3551e7f5b24ff4d4a732a56071cf68aaf741bdd7ca64777090ba2d5a295675748aaeb6296c156e103b1972a74db5d52fbe556685ceec1bf0d015affd7bf360a077dee624c9a065fa79d0e9357e80e43a374b04fa0e89bf1bc4901013adc9a719c09afab918b37097049f98d8aab1f5694cb78dbf7e5b155a86d1ff90100000000";

/// One side of a conversation: its key, prekeys, clock and sessions with the other.
struct Side {
    key: SigningKey,
    prekeys: PrekeySecrets,
    clock: HybridClock,
    sessions: Option<PeerSessions>,
}

/// Sessions as they read back once stored.
fn stored_again(sessions: &PeerSessions) -> PeerSessions {
    PeerSessions::from_stored(&codec::encode(sessions).unwrap()).unwrap()
}

/// `from` seals `text` for `to`, which opens it; each side's sessions go through their stored
/// form on the way.
fn pass(rng: &mut ChaCha20Rng, from: &mut Side, to: &mut Side, seq: u64, text: &str) {
    let mut sessions = from.sessions.take().unwrap();
    let payload = Payload::Text(text.into());
    let (to_key, clock) = (to.key.verifying_key(), &mut from.clock);
    let sealed = seal(
        rng,
        &from.key,
        to_key,
        &mut sessions,
        clock,
        seq,
        payload,
        T0,
    )
    .unwrap();
    from.sessions = Some(stored_again(&sessions));
    let direct = direct_of(&sealed);
    let existing = to.sessions.take();
    let opened = open(
        &mut OsRng,
        &to.key,
        existing,
        &to.prekeys,
        &mut to.clock,
        &direct,
        T0,
    )
    .expect("opens");
    assert_eq!(opened.payload, Payload::Text(text.into()));
    to.sessions = Some(stored_again(&opened.sessions));
}

#[test]
fn sessions_stored_before_send_ahead_read_back_and_go_on_both_ways() {
    let mut p = pair();
    let old = |pinned: &str| hex::decode(pinned).unwrap();
    // The old layout never reads as the new one, nor the new as the old.
    assert!(codec::decode::<PeerSessions>(&old(PINNED_ALICE)).is_err());
    let mut alice_sessions = PeerSessions::from_stored(&old(PINNED_ALICE)).expect("old layout");
    let mut bob_sessions = PeerSessions::from_stored(&old(PINNED_BOB)).expect("old layout");
    assert!(
        alice_sessions.send_ahead().is_none(),
        "nothing was reserved then"
    );
    assert!(!alice_sessions.resume() && !bob_sessions.resume());
    let mut alice = Side {
        key: p.alice.clone(),
        prekeys: PrekeySecrets::generate(&mut p.rng, &p.alice, 1),
        clock: p.alice_clock,
        sessions: Some(alice_sessions),
    };
    let mut bob = Side {
        key: p.bob.clone(),
        prekeys: p.bob_prekeys.clone(),
        clock: p.bob_clock,
        sessions: Some(bob_sessions),
    };
    for round in 0..3 {
        pass(
            &mut p.rng,
            &mut alice,
            &mut bob,
            2 + round,
            &format!("alice {round}"),
        );
        pass(
            &mut p.rng,
            &mut bob,
            &mut alice,
            2 + round,
            &format!("bob {round}"),
        );
    }
    assert!(alice.sessions.unwrap().send_ahead().is_some());
}
