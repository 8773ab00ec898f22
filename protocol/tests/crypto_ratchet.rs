//! Pairwise sessions: X3DH setup and the Double Ratchet, tested by the property each test proves.
#![allow(clippy::unwrap_used)]

use palaver_protocol::crypto;

use crypto::CryptoError;
use crypto::ratchet::{MAX_SKIP, MAX_SKIPPED_KEYS, RatchetMessage, SEND_AHEAD, Session};
use crypto::x3dh::{PrekeyBundle, PrekeySecrets, PrekeyUpload};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng};
use serde::Serialize;
use serde::de::DeserializeOwned;
use x25519_dalek::{PublicKey, StaticSecret};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> T {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .unwrap()
        .0
}

/// A copy of a session, made the way an attacker who steals the device would: from its bytes.
fn copy(session: &Session) -> Session {
    decode(&encode(session))
}

/// What a server does: hand out the signed prekey and one not-yet-used one-time prekey.
fn take_bundle(upload: &mut PrekeyUpload) -> PrekeyBundle {
    PrekeyBundle {
        identity: upload.identity,
        signed_prekey: upload.signed_prekey.clone(),
        one_time_prekey: upload.one_time_prekeys.pop(),
    }
}

struct Bob {
    identity: SigningKey,
    prekeys: PrekeySecrets,
    upload: PrekeyUpload,
}

fn bob(rng: &mut ChaCha20Rng) -> Bob {
    let identity = SigningKey::generate(rng);
    let prekeys = PrekeySecrets::generate(rng, &identity, 5);
    let upload = prekeys.upload();
    Bob {
        identity,
        prekeys,
        upload,
    }
}

/// Alice initiates, Bob responds, Bob replies and Alice reads it: both sides are established.
fn established(seed: u64) -> (ChaCha20Rng, Session, Session) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let alice_identity = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let mut alice =
        Session::initiate(&mut rng, &alice_identity, &take_bundle(&mut bob.upload)).unwrap();
    let first = alice.encrypt(&mut rng, b"hello bob").unwrap();
    let (mut bob_session, plaintext) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice_identity.verifying_key(),
        &first,
    )
    .unwrap();
    assert_eq!(plaintext, b"hello bob");
    let reply = bob_session.encrypt(&mut rng, b"hello alice").unwrap();
    assert_eq!(alice.decrypt(&mut OsRng, &reply).unwrap(), b"hello alice");
    (rng, alice, bob_session)
}

fn send(rng: &mut ChaCha20Rng, from: &mut Session, text: &str) -> RatchetMessage {
    from.encrypt(rng, text.as_bytes()).unwrap()
}

fn receive(to: &mut Session, message: &RatchetMessage) -> String {
    String::from_utf8(to.decrypt(&mut OsRng, message).unwrap()).unwrap()
}

/// Asserts that decrypting fails with `expected` and leaves the session byte-for-byte unchanged.
fn assert_rejected(session: &mut Session, message: &RatchetMessage, expected: CryptoError) {
    let before = encode(session);
    assert_eq!(session.decrypt(&mut OsRng, message), Err(expected));
    assert_eq!(
        encode(session),
        before,
        "a failed decrypt changed the session"
    );
}

fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_flow_both_ways_after_x3dh() {
    let (mut rng, mut alice, mut bob) = established(1);
    for turn in 0..5 {
        let to_bob = send(&mut rng, &mut alice, &format!("a{turn}"));
        assert_eq!(receive(&mut bob, &to_bob), format!("a{turn}"));
        let to_alice = send(&mut rng, &mut bob, &format!("b{turn}"));
        assert_eq!(receive(&mut alice, &to_alice), format!("b{turn}"));
    }
}

#[test]
fn each_side_knows_the_others_identity() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let alice_identity = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let mut alice =
        Session::initiate(&mut rng, &alice_identity, &take_bundle(&mut bob.upload)).unwrap();
    let first = alice.encrypt(&mut rng, b"hi").unwrap();
    let (bob_session, _) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice_identity.verifying_key(),
        &first,
    )
    .unwrap();
    assert_eq!(alice.their_identity(), &bob.identity.verifying_key());
    assert_eq!(
        bob_session.their_identity(),
        &alice_identity.verifying_key()
    );
}

#[test]
fn bundle_with_a_bad_signature_is_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let alice = SigningKey::generate(&mut rng);
    let mallory = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let good = take_bundle(&mut bob.upload);
    assert!(good.verify().is_ok());

    let mut swapped_key = good.clone();
    swapped_key.signed_prekey.key = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    let mut changed_id = good.clone();
    changed_id.signed_prekey.id ^= 1;
    let mut other_identity = good.clone();
    other_identity.identity = mallory.verifying_key();
    let mut flipped_signature = good.clone();
    let mut signature = flipped_signature.signed_prekey.signature.to_bytes();
    signature[10] ^= 1;
    flipped_signature.signed_prekey.signature = ed25519_dalek::Signature::from_bytes(&signature);

    for forged in [swapped_key, changed_id, other_identity, flipped_signature] {
        assert_eq!(forged.verify(), Err(CryptoError::BadSignature));
        assert_eq!(
            Session::initiate(&mut rng, &alice, &forged).unwrap_err(),
            CryptoError::BadSignature
        );
    }
}

#[test]
fn one_time_prekey_starts_only_one_session() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let alice = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let bundle = take_bundle(&mut bob.upload);
    let held_before = bob.prekeys.one_time_count();

    let mut first_session = Session::initiate(&mut rng, &alice, &bundle).unwrap();
    let first = first_session.encrypt(&mut rng, b"one").unwrap();
    Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice.verifying_key(),
        &first,
    )
    .unwrap();
    assert_eq!(bob.prekeys.one_time_count(), held_before - 1);

    // The same bundle used again (a misbehaving server, or a replayed first message).
    let mut second_session = Session::initiate(&mut rng, &alice, &bundle).unwrap();
    let second = second_session.encrypt(&mut rng, b"two").unwrap();
    let before = encode(&bob.prekeys);
    let again = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice.verifying_key(),
        &second,
    );
    assert_eq!(again.unwrap_err(), CryptoError::MissingPrekey);
    let replayed = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice.verifying_key(),
        &first,
    );
    assert_eq!(replayed.unwrap_err(), CryptoError::MissingPrekey);
    assert_eq!(encode(&bob.prekeys), before);
}

#[test]
fn sessions_start_without_a_one_time_prekey_when_the_server_ran_out() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let alice = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    bob.upload.one_time_prekeys.clear();
    let bundle = take_bundle(&mut bob.upload);
    assert!(bundle.one_time_prekey.is_none());
    let mut alice_session = Session::initiate(&mut rng, &alice, &bundle).unwrap();
    let first = alice_session.encrypt(&mut rng, b"no opk").unwrap();
    assert_eq!(first.init.unwrap().one_time_prekey_id, None);
    let (_, plaintext) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice.verifying_key(),
        &first,
    )
    .unwrap();
    assert_eq!(plaintext, b"no opk");
}

#[test]
fn respond_requires_a_session_init() {
    let (mut rng, mut alice, _) = established(6);
    let mut bob = bob(&mut rng);
    let plain = send(&mut rng, &mut alice, "no init");
    assert!(plain.init.is_none());
    let result = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        alice.their_identity(),
        &plain,
    );
    assert_eq!(result.unwrap_err(), CryptoError::MissingSessionInit);
}

#[test]
fn respond_with_the_wrong_initiator_identity_fails_and_consumes_nothing() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let alice = SigningKey::generate(&mut rng);
    let mallory = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let mut alice_session =
        Session::initiate(&mut rng, &alice, &take_bundle(&mut bob.upload)).unwrap();
    let first = alice_session.encrypt(&mut rng, b"hi").unwrap();
    let before = encode(&bob.prekeys);
    let result = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &mallory.verifying_key(),
        &first,
    );
    assert_eq!(result.unwrap_err(), CryptoError::Decrypt);
    assert_eq!(encode(&bob.prekeys), before);
    assert!(
        Session::respond(
            &mut OsRng,
            &bob.identity,
            &mut bob.prekeys,
            &alice.verifying_key(),
            &first
        )
        .is_ok()
    );
}

#[test]
fn signed_prekey_rotation_keeps_the_previous_key_for_a_grace_period() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let alice = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let old_bundle = take_bundle(&mut bob.upload);
    let new_signed = bob.prekeys.rotate_signed_prekey(&mut rng, &bob.identity);
    assert_ne!(new_signed.id, old_bundle.signed_prekey.id);
    assert!(new_signed.verify(&bob.identity.verifying_key()).is_ok());
    assert_eq!(bob.prekeys.upload().signed_prekey, new_signed);

    // An initiation made from the pre-rotation bundle, in flight during the rotation.
    let mut in_flight = Session::initiate(&mut rng, &alice, &old_bundle).unwrap();
    let first = in_flight
        .encrypt(&mut rng, b"sent before the rotation")
        .unwrap();
    let (_, plaintext) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice.verifying_key(),
        &first,
    )
    .unwrap();
    assert_eq!(plaintext, b"sent before the rotation");

    // After the grace period ends, the old signed prekey is gone.
    bob.prekeys.end_signed_prekey_grace();
    let mut late = Session::initiate(
        &mut rng,
        &alice,
        &PrekeyBundle {
            one_time_prekey: None,
            ..old_bundle.clone()
        },
    )
    .unwrap();
    let late_first = late.encrypt(&mut rng, b"too late").unwrap();
    let result = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice.verifying_key(),
        &late_first,
    );
    assert_eq!(result.unwrap_err(), CryptoError::MissingPrekey);

    // A second rotation also ends the first one's grace period.
    bob.prekeys.rotate_signed_prekey(&mut rng, &bob.identity);
    bob.prekeys.rotate_signed_prekey(&mut rng, &bob.identity);
    let bundle_two_rotations_old = PrekeyBundle {
        signed_prekey: new_signed,
        one_time_prekey: None,
        ..old_bundle
    };
    let mut stale = Session::initiate(&mut rng, &alice, &bundle_two_rotations_old).unwrap();
    let stale_first = stale.encrypt(&mut rng, b"stale").unwrap();
    let result = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice.verifying_key(),
        &stale_first,
    );
    assert_eq!(result.unwrap_err(), CryptoError::MissingPrekey);
}

// ---------------------------------------------------------------------------------------------
// Session start-up under loss and restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn initiation_rides_on_every_message_until_the_first_reply() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let alice_identity = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let mut alice =
        Session::initiate(&mut rng, &alice_identity, &take_bundle(&mut bob.upload)).unwrap();
    let early: Vec<RatchetMessage> = (0..3)
        .map(|i| send(&mut rng, &mut alice, &format!("m{i}")))
        .collect();
    assert!(
        early
            .iter()
            .all(|message| message.init == early[0].init && message.init.is_some())
    );

    let (mut bob_session, _) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice_identity.verifying_key(),
        &early[0],
    )
    .unwrap();
    // Bob has the session, but Alice does not know yet: still attached.
    assert!(send(&mut rng, &mut alice, "m3").init.is_some());
    let reply = send(&mut rng, &mut bob_session, "got it");
    assert!(reply.init.is_none());
    receive(&mut alice, &reply);
    assert!(send(&mut rng, &mut alice, "m4").init.is_none());
}

#[test]
fn lost_first_message_does_not_lose_the_session() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let alice_identity = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let mut alice =
        Session::initiate(&mut rng, &alice_identity, &take_bundle(&mut bob.upload)).unwrap();
    let m0 = send(&mut rng, &mut alice, "m0 (delayed)");
    let m1 = send(&mut rng, &mut alice, "m1");
    let m2 = send(&mut rng, &mut alice, "m2");

    // m0 is lost for now: Bob starts the session from m1.
    let (mut bob_session, plaintext) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice_identity.verifying_key(),
        &m1,
    )
    .unwrap();
    assert_eq!(plaintext, b"m1");
    assert_eq!(receive(&mut bob_session, &m2), "m2");
    let reply = send(&mut rng, &mut bob_session, "reply");
    assert_eq!(receive(&mut alice, &reply), "reply");
    assert_eq!(
        receive(&mut bob_session, &send(&mut rng, &mut alice, "m3")),
        "m3"
    );

    // The straggler turns up: it belongs to the existing session, not a new one.
    assert_eq!(receive(&mut bob_session, &m0), "m0 (delayed)");
    assert_rejected(&mut bob_session, &m0, CryptoError::DuplicateMessage);
}

/// A receiver stores a message before the ratchet step that opened it (the node's plain writes,
/// `Store::record_received`), so a crash can leave its session one message behind, or, for the
/// first message, no session and the one-time prekey unused. What follows must still open, from
/// that state, without a message from it lost: the stored message is known and never opened
/// again.
#[test]
fn a_receiver_whose_last_step_was_lost_opens_what_follows() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let alice_identity = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let mut alice =
        Session::initiate(&mut rng, &alice_identity, &take_bundle(&mut bob.upload)).unwrap();
    let first = send(&mut rng, &mut alice, "first");
    let second = send(&mut rng, &mut alice, "second");

    let respond = |prekeys: &mut PrekeySecrets, message: &RatchetMessage| {
        Session::respond(
            &mut OsRng,
            &bob.identity,
            prekeys,
            &alice_identity.verifying_key(),
            message,
        )
    };

    // The first message stored, then the crash: neither its session nor its used-up prekey
    // written. The next message carries the same initiation and starts the session again.
    let mut used_up = bob.prekeys.clone();
    respond(&mut used_up, &first).unwrap();
    // The wrong order, the prekey used up and the session lost, would lose the session.
    assert!(matches!(
        respond(&mut used_up, &second),
        Err(CryptoError::MissingPrekey)
    ));
    let (mut bob_session, plaintext) = respond(&mut bob.prekeys.clone(), &second).unwrap();
    assert_eq!(plaintext, b"second");

    // Established; then Alice takes a DH step, and Bob's session loses the step that opened
    // "new chain", the first message under her new ratchet key.
    let reply = send(&mut rng, &mut bob_session, "reply");
    assert_eq!(receive(&mut alice, &reply), "reply");
    let stepped = send(&mut rng, &mut alice, "new chain");
    let behind = copy(&bob_session);
    assert_eq!(receive(&mut bob_session, &stepped), "new chain");
    let mut bob_session = behind;
    // What Bob sends from the state it kept, Alice still reads; what she sends next, he reads.
    let from_behind = send(&mut rng, &mut bob_session, "from behind");
    assert_eq!(receive(&mut alice, &from_behind), "from behind");
    for n in 0..3 {
        let text = format!("after {n}");
        assert_eq!(
            receive(&mut bob_session, &send(&mut rng, &mut alice, &text)),
            text
        );
        let back = format!("back {n}");
        assert_eq!(
            receive(&mut alice, &send(&mut rng, &mut bob_session, &back)),
            back
        );
    }
}

#[test]
fn a_new_initiation_from_the_peer_is_reported_as_session_mismatch() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let alice_identity = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let mut alice =
        Session::initiate(&mut rng, &alice_identity, &take_bundle(&mut bob.upload)).unwrap();
    let first = send(&mut rng, &mut alice, "first session");
    let (mut bob_session, _) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice_identity.verifying_key(),
        &first,
    )
    .unwrap();

    // Alice loses her state (a reinstall) and starts over with a fresh bundle.
    let mut alice_again =
        Session::initiate(&mut rng, &alice_identity, &take_bundle(&mut bob.upload)).unwrap();
    let restart = send(&mut rng, &mut alice_again, "second session");
    assert_rejected(&mut bob_session, &restart, CryptoError::SessionMismatch);
    let (_, plaintext) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice_identity.verifying_key(),
        &restart,
    )
    .unwrap();
    assert_eq!(plaintext, b"second session");

    // An initiator never accepts an initiation on its own session either.
    assert_rejected(&mut alice, &restart, CryptoError::SessionMismatch);
}

#[test]
fn session_survives_bincode_round_trip_mid_conversation() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let alice_identity = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let mut alice =
        Session::initiate(&mut rng, &alice_identity, &take_bundle(&mut bob.upload)).unwrap();
    // Persist Alice while her initiation is still unacknowledged.
    alice = copy(&alice);
    let a0 = send(&mut rng, &mut alice, "a0");
    let a1 = send(&mut rng, &mut alice, "a1 (late)");
    let a2 = send(&mut rng, &mut alice, "a2");
    let (mut bob_session, _) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice_identity.verifying_key(),
        &a0,
    )
    .unwrap();
    assert_eq!(receive(&mut bob_session, &a2), "a2");

    // Persist Bob while he holds a skipped key, and check the encoding is stable.
    let bytes = encode(&bob_session);
    bob_session = decode(&bytes);
    assert_eq!(encode(&bob_session), bytes);
    let b0 = send(&mut rng, &mut bob_session, "b0");
    alice = copy(&alice);
    assert_eq!(receive(&mut alice, &b0), "b0");
    bob_session = copy(&bob_session);
    assert_eq!(receive(&mut bob_session, &a1), "a1 (late)");
    for turn in 0..4 {
        alice = copy(&alice);
        let message = send(&mut rng, &mut alice, &format!("a{turn}"));
        bob_session = copy(&bob_session);
        assert_eq!(receive(&mut bob_session, &message), format!("a{turn}"));
        let message = send(&mut rng, &mut bob_session, &format!("b{turn}"));
        assert_eq!(receive(&mut alice, &message), format!("b{turn}"));
    }
}

#[test]
fn ratchet_message_round_trips_through_bincode() {
    let (mut rng, mut alice, mut bob) = established(13);
    let message = send(&mut rng, &mut alice, "on the wire");
    let bytes = encode(&message);
    let back: RatchetMessage = decode(&bytes);
    assert_eq!(back, message);
    assert_eq!(receive(&mut bob, &back), "on the wire");
}

// ---------------------------------------------------------------------------------------------
// Replay, reordering, tampering
// ---------------------------------------------------------------------------------------------

#[test]
fn replayed_message_is_rejected_and_changes_nothing() {
    let (mut rng, mut alice, mut bob) = established(14);
    let in_order = send(&mut rng, &mut alice, "once");
    let skipped = send(&mut rng, &mut alice, "skipped then read");
    let ahead = send(&mut rng, &mut alice, "ahead");
    receive(&mut bob, &in_order);
    receive(&mut bob, &ahead);
    receive(&mut bob, &skipped);
    for replay in [&in_order, &skipped, &ahead] {
        assert_rejected(&mut bob, replay, CryptoError::DuplicateMessage);
    }
    // Still a duplicate after the conversation has moved on a few turns.
    for _ in 0..3 {
        receive(&mut alice, &send(&mut rng, &mut bob, "turn"));
        receive(&mut bob, &send(&mut rng, &mut alice, "turn"));
    }
    assert_rejected(&mut bob, &in_order, CryptoError::DuplicateMessage);
}

#[test]
fn replay_from_a_long_retired_chain_is_still_rejected() {
    let (mut rng, mut alice, mut bob) = established(15);
    let old = send(&mut rng, &mut alice, "old");
    receive(&mut bob, &old);
    for _ in 0..40 {
        receive(&mut alice, &send(&mut rng, &mut bob, "turn"));
        receive(&mut bob, &send(&mut rng, &mut alice, "turn"));
    }
    // Past the remembered ratchet keys the replay looks like a new ratchet step, which fails to
    // authenticate: still rejected, still nothing changed.
    let before = encode(&bob);
    assert!(bob.decrypt(&mut OsRng, &old).is_err());
    assert_eq!(encode(&bob), before);
}

#[test]
fn tampering_with_any_field_is_rejected_and_leaves_state_unchanged() {
    let (mut rng, mut alice, mut bob) = established(16);
    receive(&mut bob, &send(&mut rng, &mut alice, "warm up"));
    let genuine = send(&mut rng, &mut alice, "genuine");

    let mut other_dh = genuine.clone();
    other_dh.header.dh = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    assert_rejected(&mut bob, &other_dh, CryptoError::Decrypt);

    let mut small_order_dh = genuine.clone();
    small_order_dh.header.dh = PublicKey::from([0; 32]);
    assert_rejected(&mut bob, &small_order_dh, CryptoError::InvalidPublicKey);

    let mut previous_chain_len = genuine.clone();
    previous_chain_len.header.previous_chain_len += 1;
    assert_rejected(&mut bob, &previous_chain_len, CryptoError::Decrypt);

    let mut index = genuine.clone();
    index.header.index += 1;
    assert_rejected(&mut bob, &index, CryptoError::Decrypt);

    for position in [
        0,
        genuine.ciphertext.len() / 2,
        genuine.ciphertext.len() - 1,
    ] {
        let mut ciphertext = genuine.clone();
        ciphertext.ciphertext[position] ^= 0x80;
        assert_rejected(&mut bob, &ciphertext, CryptoError::Decrypt);
    }
    let mut truncated = genuine.clone();
    truncated.ciphertext.truncate(10);
    assert_rejected(&mut bob, &truncated, CryptoError::Decrypt);
    let mut emptied = genuine.clone();
    emptied.ciphertext.clear();
    assert_rejected(&mut bob, &emptied, CryptoError::Decrypt);

    assert_eq!(receive(&mut bob, &genuine), "genuine");
}

#[test]
fn tampering_with_the_initiation_is_rejected_and_consumes_nothing() {
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    let alice_identity = SigningKey::generate(&mut rng);
    let mut bob = bob(&mut rng);
    let spare_one_time = bob.upload.one_time_prekeys[0].id;
    let mut alice =
        Session::initiate(&mut rng, &alice_identity, &take_bundle(&mut bob.upload)).unwrap();
    let first = send(&mut rng, &mut alice, "first");
    let second = send(&mut rng, &mut alice, "second");
    let init = first.init.unwrap();

    let mut forgeries = Vec::new();
    let mut ephemeral = first.clone();
    ephemeral.init = Some(crypto::x3dh::SessionInit {
        ephemeral: PublicKey::from(&StaticSecret::random_from_rng(&mut rng)),
        ..init
    });
    forgeries.push((ephemeral, CryptoError::Decrypt));
    let mut small_order_ephemeral = first.clone();
    small_order_ephemeral.init = Some(crypto::x3dh::SessionInit {
        ephemeral: PublicKey::from([0; 32]),
        ..init
    });
    forgeries.push((small_order_ephemeral, CryptoError::InvalidPublicKey));
    let mut unknown_signed = first.clone();
    unknown_signed.init = Some(crypto::x3dh::SessionInit {
        signed_prekey_id: init.signed_prekey_id ^ 1,
        ..init
    });
    forgeries.push((unknown_signed, CryptoError::MissingPrekey));
    let mut dropped_one_time = first.clone();
    dropped_one_time.init = Some(crypto::x3dh::SessionInit {
        one_time_prekey_id: None,
        ..init
    });
    forgeries.push((dropped_one_time, CryptoError::Decrypt));
    let mut other_one_time = first.clone();
    other_one_time.init = Some(crypto::x3dh::SessionInit {
        one_time_prekey_id: Some(spare_one_time),
        ..init
    });
    forgeries.push((other_one_time, CryptoError::Decrypt));
    let mut unknown_one_time = first.clone();
    unknown_one_time.init = Some(crypto::x3dh::SessionInit {
        one_time_prekey_id: Some(u32::MAX),
        ..init
    });
    forgeries.push((unknown_one_time, CryptoError::MissingPrekey));

    let prekeys_before = encode(&bob.prekeys);
    for (forged, expected) in &forgeries {
        let result = Session::respond(
            &mut OsRng,
            &bob.identity,
            &mut bob.prekeys,
            &alice_identity.verifying_key(),
            forged,
        );
        assert_eq!(result.unwrap_err(), *expected);
        assert_eq!(
            encode(&bob.prekeys),
            prekeys_before,
            "a forged initiation consumed a prekey"
        );
    }

    let (mut bob_session, plaintext) = Session::respond(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice_identity.verifying_key(),
        &first,
    )
    .unwrap();
    assert_eq!(plaintext, b"first");

    // On the established session, a retransmission with an altered or stripped init is refused.
    for (forged, _) in &forgeries {
        let mut forged_second = second.clone();
        forged_second.init = forged.init;
        assert_rejected(
            &mut bob_session,
            &forged_second,
            CryptoError::SessionMismatch,
        );
    }
    let mut stripped = second.clone();
    stripped.init = None;
    assert_rejected(&mut bob_session, &stripped, CryptoError::Decrypt);
    assert_eq!(receive(&mut bob_session, &second), "second");
}

#[test]
fn message_too_far_ahead_is_rejected_without_changing_state() {
    let (mut rng, mut alice, mut bob) = established(18);
    let messages: Vec<RatchetMessage> = (0..MAX_SKIP + 2)
        .map(|i| send(&mut rng, &mut alice, &i.to_string()))
        .collect();
    let too_far = &messages[MAX_SKIP as usize + 1];
    assert_rejected(&mut bob, too_far, CryptoError::TooManySkipped);
    // Exactly MAX_SKIP skipped is allowed, and the skipped ones stay readable.
    assert_eq!(
        receive(&mut bob, &messages[MAX_SKIP as usize]),
        MAX_SKIP.to_string()
    );
    assert_eq!(receive(&mut bob, too_far), (MAX_SKIP + 1).to_string());
    assert_eq!(receive(&mut bob, &messages[7]), "7");
}

#[test]
fn previous_chain_length_beyond_the_skip_window_is_rejected() {
    let (mut rng, mut alice, mut bob) = established(19);
    receive(
        &mut bob,
        &send(&mut rng, &mut alice, "bob's receiving chain exists"),
    );
    let mut lying = send(&mut rng, &mut bob, "turn");
    receive(&mut alice, &lying);
    lying = send(&mut rng, &mut alice, "new chain");
    let mut forged = lying.clone();
    forged.header.previous_chain_len = MAX_SKIP + 10;
    assert_rejected(&mut bob, &forged, CryptoError::TooManySkipped);
    assert_eq!(receive(&mut bob, &lying), "new chain");
}

#[test]
fn skipped_key_store_is_bounded_and_evicts_the_oldest() {
    let (mut rng, mut alice, mut bob) = established(20);
    let mut first_skipped = None;
    let mut last_skipped = None;
    // Three turns, each skipping MAX_SKIP messages: more than MAX_SKIPPED_KEYS in total.
    for turn in 0..3 {
        let messages: Vec<RatchetMessage> = (0..=MAX_SKIP)
            .map(|i| send(&mut rng, &mut alice, &format!("{turn}/{i}")))
            .collect();
        first_skipped.get_or_insert_with(|| messages[0].clone());
        last_skipped = Some(messages[MAX_SKIP as usize - 1].clone());
        receive(&mut bob, &messages[MAX_SKIP as usize]);
        receive(&mut alice, &send(&mut rng, &mut bob, "turn"));
    }
    assert!(3 * MAX_SKIP as usize > MAX_SKIPPED_KEYS);
    assert_rejected(
        &mut bob,
        &first_skipped.unwrap(),
        CryptoError::DuplicateMessage,
    );
    assert_eq!(
        receive(&mut bob, &last_skipped.unwrap()),
        format!("2/{}", MAX_SKIP - 1)
    );
}

// ---------------------------------------------------------------------------------------------
// Sending ahead of the disk
// ---------------------------------------------------------------------------------------------

/// Whether `durable` (a copy of the session as it is on disk) lets `message`, just encrypted by
/// `live`, leave before `live` itself is on disk.
fn covered(durable: &Session, live: &Session, message: &RatchetMessage) -> bool {
    durable
        .send_ahead()
        .is_some_and(|ahead| ahead.covers(&live.place_of(&message.header)))
}

#[test]
fn within_a_chain_each_message_is_covered_by_the_state_of_the_one_before() {
    let (mut rng, mut alice, _bob) = established(40);
    let first = send(&mut rng, &mut alice, "first of a turn");
    let mut durable = copy(&alice);
    for i in 0..(4 * SEND_AHEAD) {
        let message = send(&mut rng, &mut alice, &format!("{i}"));
        assert!(
            covered(&durable, &alice, &message),
            "message {i} of the chain is not covered by the state before it"
        );
        assert_eq!(message.header.dh, first.header.dh);
        durable = copy(&alice);
    }
    // Whenever the state is stored, it covers at least the next half window.
    let durable = copy(&alice);
    for i in 0..SEND_AHEAD / 2 {
        let message = send(&mut rng, &mut alice, &format!("{i} more"));
        assert!(covered(&durable, &alice, &message), "{i} more");
    }
}

#[test]
fn a_turn_is_reserved_when_the_peer_s_turn_arrives() {
    let (mut rng, mut alice, mut bob) = established(41);
    let alices_chain = send(&mut rng, &mut alice, "alice's chain");
    receive(&mut bob, &alices_chain);
    let reply = send(&mut rng, &mut bob, "bob's turn");
    let before_the_reply = copy(&alice);
    receive(&mut alice, &reply);
    // Stored with the reply it read, Alice's state covers the first message of her next turn.
    let with_the_reply = copy(&alice);
    let next_turn = send(&mut rng, &mut alice, "alice's new turn");
    assert_ne!(
        next_turn.header.dh, alices_chain.header.dh,
        "a new ratchet key"
    );
    assert!(covered(&with_the_reply, &alice, &next_turn));
    assert!(!covered(&before_the_reply, &alice, &next_turn));
    assert_eq!(receive(&mut bob, &next_turn), "alice's new turn");
    // A session straight from the initiation reserves nothing yet.
    let mut fresh_rng = ChaCha20Rng::seed_from_u64(42);
    let identity = SigningKey::generate(&mut fresh_rng);
    let mut keys = crate::bob(&mut fresh_rng);
    let mut fresh =
        Session::initiate(&mut fresh_rng, &identity, &take_bundle(&mut keys.upload)).unwrap();
    let durable = copy(&fresh);
    let first = send(&mut fresh_rng, &mut fresh, "first");
    assert!(!covered(&durable, &fresh, &first));
}

#[test]
fn a_crash_after_a_turn_began_ahead_of_the_disk_takes_the_same_step_again() {
    let (mut rng, mut alice, mut bob) = established(45);
    receive(&mut bob, &send(&mut rng, &mut alice, "alice"));
    receive(&mut alice, &send(&mut rng, &mut bob, "bob"));
    let durable = copy(&alice);
    let ahead: Vec<RatchetMessage> = (0..3)
        .map(|i| {
            let message = send(&mut rng, &mut alice, &format!("ahead {i}"));
            assert!(covered(&durable, &alice, &message));
            message
        })
        .collect();
    assert_eq!(receive(&mut bob, &ahead[1]), "ahead 1");
    let mut restarted = copy(&durable);
    assert!(restarted.resume());
    assert!(!restarted.resume());
    let after = send(&mut rng, &mut restarted, "after");
    assert_eq!(
        after.header.dh, ahead[0].header.dh,
        "the same step, taken again"
    );
    assert!(after.header.index >= SEND_AHEAD);
    assert_eq!(receive(&mut bob, &after), "after");
    assert_eq!(receive(&mut bob, &ahead[0]), "ahead 0");
    assert_eq!(receive(&mut bob, &ahead[2]), "ahead 2");
    let reply = send(&mut rng, &mut bob, "reply");
    assert_eq!(receive(&mut restarted, &reply), "reply");
}

#[test]
fn a_crash_after_sending_ahead_never_encrypts_twice_under_one_key() {
    let (mut rng, mut alice, mut bob) = established(43);
    receive(&mut bob, &send(&mut rng, &mut alice, "on disk"));
    let durable = copy(&alice);
    // Sent ahead, and then lost from Alice's state with the crash.
    let ahead: Vec<RatchetMessage> = (0..5)
        .map(|i| {
            let message = send(&mut rng, &mut alice, &format!("ahead {i}"));
            assert!(covered(&durable, &alice, &message));
            message
        })
        .collect();
    for message in &ahead[..3] {
        receive(&mut bob, message);
    }
    let mut restarted = copy(&durable);
    assert!(restarted.resume(), "the reservation is skipped past");
    assert!(!restarted.resume(), "and only once");
    let after: Vec<RatchetMessage> = (0..3)
        .map(|i| send(&mut rng, &mut restarted, &format!("after {i}")))
        .collect();
    for message in &after {
        assert!(
            ahead.iter().all(|a| (a.header.dh, a.header.index)
                != (message.header.dh, message.header.index)),
            "a number used ahead was used again"
        );
        assert!(message.header.index >= SEND_AHEAD);
    }
    // Bob reads what came before the crash and after it, in any order.
    assert_eq!(receive(&mut bob, &after[1]), "after 1");
    assert_eq!(receive(&mut bob, &ahead[4]), "ahead 4");
    assert_eq!(receive(&mut bob, &after[0]), "after 0");
    assert_eq!(receive(&mut bob, &after[2]), "after 2");
    assert_eq!(receive(&mut bob, &ahead[3]), "ahead 3");
    // And the conversation goes on both ways.
    let reply = send(&mut rng, &mut bob, "reply");
    assert_eq!(receive(&mut restarted, &reply), "reply");
    let next = send(&mut rng, &mut restarted, "next turn");
    assert_eq!(receive(&mut bob, &next), "next turn");
}

#[test]
fn resume_skips_once_and_a_fresh_session_has_nothing_to_skip() {
    let mut rng = ChaCha20Rng::seed_from_u64(44);
    let identity = SigningKey::generate(&mut rng);
    let mut keys = crate::bob(&mut rng);
    let mut fresh = Session::initiate(&mut rng, &identity, &take_bundle(&mut keys.upload)).unwrap();
    let before = encode(&fresh);
    assert!(!fresh.resume());
    assert_eq!(encode(&fresh), before);

    // Bob has read Alice's new chain: his turn is reserved, so a restart takes its step.
    let (mut rng, mut alice, mut bob) = established(46);
    receive(&mut bob, &send(&mut rng, &mut alice, "alice"));
    assert!(bob.resume());
    let once = encode(&bob);
    assert!(!bob.resume());
    assert_eq!(encode(&bob), once);
    let reply = send(&mut rng, &mut bob, "reply");
    assert!(reply.header.index >= SEND_AHEAD);
    assert_eq!(receive(&mut alice, &reply), "reply");
    assert_eq!(receive(&mut bob, &send(&mut rng, &mut alice, "on")), "on");
}

/// Random sends, flushes, deliveries and crashes on Alice's side: a message leaves at once
/// only if the copy on disk covers it, else at the next flush (or never, if a crash comes
/// first); Bob's turns reach her disk at her next flush too (he sends them again after a crash,
/// unanswered). Every message that left opens at Bob, and no two share a chain number.
#[test]
fn sends_ahead_with_random_crashes_lose_nothing_that_left_and_reuse_no_key() {
    for seed in 0..8 {
        let (mut rng, mut alice, mut bob) = established(100 + seed);
        let mut disk = copy(&alice);
        let mut waiting: Vec<(RatchetMessage, String)> = Vec::new();
        let mut wire: Vec<(RatchetMessage, String)> = Vec::new();
        let mut used = std::collections::HashSet::new();
        let mut unacknowledged: Vec<(RatchetMessage, String)> = Vec::new();
        let mut crashes = 0;
        for step in 0..600 {
            match below(&mut rng, 100) {
                0..=59 => {
                    let text = format!("{seed}/{step}");
                    let message = send(&mut rng, &mut alice, &text);
                    assert!(
                        used.insert((*message.header.dh.as_bytes(), message.header.index)),
                        "seed {seed}: chain number used twice"
                    );
                    if covered(&disk, &alice, &message) {
                        wire.push((message, text));
                    } else {
                        waiting.push((message, text));
                    }
                }
                60..=79 => {
                    disk = copy(&alice);
                    wire.append(&mut waiting);
                    unacknowledged.clear();
                }
                80..=84 => {
                    // What waited never left: its numbers may be used again, harmlessly.
                    crashes += 1;
                    for (message, _) in waiting.drain(..) {
                        used.remove(&(*message.header.dh.as_bytes(), message.header.index));
                    }
                    alice = copy(&disk);
                    alice.resume();
                    for (reply, text) in &unacknowledged {
                        assert_eq!(receive(&mut alice, reply), *text, "seed {seed}");
                    }
                }
                85..=89 => {
                    // Bob takes a turn, and Alice reads it.
                    let text = format!("bob {seed}/{step}");
                    let reply = send(&mut rng, &mut bob, &text);
                    assert_eq!(receive(&mut alice, &reply), text);
                    unacknowledged.push((reply, text));
                }
                _ => {
                    if !wire.is_empty() {
                        let (message, text) = wire.remove(below(&mut rng, wire.len()));
                        assert_eq!(receive(&mut bob, &message), text, "seed {seed}");
                    }
                }
            }
        }
        for (message, text) in wire.drain(..) {
            assert_eq!(receive(&mut bob, &message), text, "seed {seed}");
        }
        assert!(crashes > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Forward secrecy and post-compromise security
// ---------------------------------------------------------------------------------------------

#[test]
fn forward_secrecy_state_after_message_n_cannot_decrypt_earlier_messages() {
    let (mut rng, mut alice, mut bob) = established(21);
    let mut earlier = Vec::new();
    for turn in 0..4 {
        for i in 0..3 {
            let message = send(&mut rng, &mut alice, &format!("{turn}/{i}"));
            receive(&mut bob, &message);
            earlier.push(message);
        }
        receive(&mut alice, &send(&mut rng, &mut bob, "turn"));
    }
    // The device is stolen now: its state cannot open anything already read.
    let stolen = encode(&bob);
    for message in &earlier {
        let mut thief: Session = decode(&stolen);
        assert!(thief.decrypt(&mut OsRng, message).is_err());
    }
    // ... while it does read what is sent next (the theft is real).
    let next = send(&mut rng, &mut alice, "after the theft");
    let mut thief: Session = decode(&stolen);
    assert_eq!(receive(&mut thief, &next), "after the theft");
}

#[test]
fn post_compromise_stolen_state_stops_decrypting_once_both_sides_step() {
    let (mut rng, mut alice, mut bob) = established(22);
    receive(&mut bob, &send(&mut rng, &mut alice, "before"));
    let mut thief = copy(&bob);
    // Compromised: the thief reads Alice's messages on the current chain.
    let still_exposed = send(&mut rng, &mut alice, "exposed");
    assert_eq!(receive(&mut thief, &still_exposed), "exposed");
    receive(&mut bob, &still_exposed);

    // Bob takes a DH step (fresh randomness the thief lacks), then Alice does.
    receive(&mut alice, &send(&mut rng, &mut bob, "bob steps"));
    let healed: Vec<RatchetMessage> = (0..3)
        .map(|i| send(&mut rng, &mut alice, &format!("healed {i}")))
        .collect();
    for message in &healed {
        assert_eq!(receive(&mut bob, message), message_text(message, &healed));
    }
    for message in &healed {
        let mut attempt = copy(&thief);
        assert!(
            attempt.decrypt(&mut OsRng, message).is_err(),
            "the thief still reads after both sides stepped"
        );
    }
    // Even following along with everything the network shows, the thief stays locked out.
    let later = send(&mut rng, &mut alice, "later");
    assert!(thief.decrypt(&mut OsRng, &later).is_err());
}

fn message_text(message: &RatchetMessage, healed: &[RatchetMessage]) -> String {
    let index = healed.iter().position(|m| m == message).unwrap();
    format!("healed {index}")
}

// ---------------------------------------------------------------------------------------------
// Simulation: a long conversation over a bad network
// ---------------------------------------------------------------------------------------------

struct InFlight {
    message: RatchetMessage,
    plaintext: Vec<u8>,
}

#[derive(Default)]
struct Tally {
    sent: usize,
    delivered: usize,
    lost: usize,
    duplicates_rejected: usize,
}

/// Random sends from both sides; each delivery picks a random message in flight (reordering),
/// some are dropped (loss) and recently delivered ones are delivered again (duplication).
#[test]
fn long_conversation_survives_interleaving_reordering_duplication_and_loss() {
    for seed in 0..4 {
        simulate(seed, 1500);
    }
}

fn simulate(seed: u64, steps: usize) {
    let mut rng = ChaCha20Rng::seed_from_u64(1000 + seed);
    let alice_identity = SigningKey::generate(&mut rng);
    let mut bob_keys = bob(&mut rng);
    let mut alice = Session::initiate(
        &mut rng,
        &alice_identity,
        &take_bundle(&mut bob_keys.upload),
    )
    .unwrap();
    let mut bob: Option<Session> = None;
    let mut to_bob: Vec<InFlight> = Vec::new();
    let mut to_alice: Vec<InFlight> = Vec::new();
    let mut delivered_to_bob: Vec<RatchetMessage> = Vec::new();
    let mut delivered_to_alice: Vec<RatchetMessage> = Vec::new();
    let mut tally = Tally::default();

    for step in 0..steps {
        match below(&mut rng, 100) {
            0..=29 => {
                let plaintext =
                    format!("alice {step} {}", "x".repeat(below(&mut rng, 64))).into_bytes();
                let message = alice.encrypt(&mut rng, &plaintext).unwrap();
                to_bob.push(InFlight { message, plaintext });
                tally.sent += 1;
            }
            30..=54 => {
                if let Some(bob) = bob.as_mut() {
                    let plaintext = format!("bob {step}").into_bytes();
                    let message = bob.encrypt(&mut rng, &plaintext).unwrap();
                    to_alice.push(InFlight { message, plaintext });
                    tally.sent += 1;
                }
            }
            55..=89 => {
                let towards_bob = below(&mut rng, 2) == 0;
                let queue = if towards_bob {
                    &mut to_bob
                } else {
                    &mut to_alice
                };
                if queue.is_empty() {
                    continue;
                }
                let InFlight { message, plaintext } =
                    queue.swap_remove(below(&mut rng, queue.len()));
                if below(&mut rng, 100) < 7 {
                    tally.lost += 1;
                    continue;
                }
                let decrypted = if towards_bob {
                    delivered_to_bob.push(message.clone());
                    match bob.as_mut() {
                        Some(bob) => bob.decrypt(&mut OsRng, &message).unwrap(),
                        None => {
                            let (session, plaintext) = Session::respond(
                                &mut OsRng,
                                &bob_keys.identity,
                                &mut bob_keys.prekeys,
                                &alice_identity.verifying_key(),
                                &message,
                            )
                            .unwrap();
                            bob = Some(session);
                            plaintext
                        }
                    }
                } else {
                    delivered_to_alice.push(message.clone());
                    alice.decrypt(&mut OsRng, &message).unwrap()
                };
                assert_eq!(decrypted, plaintext);
                tally.delivered += 1;
            }
            _ => {
                // Network duplication: one of the last few deliveries arrives again.
                let towards_bob = below(&mut rng, 2) == 0;
                let (delivered, session) = if towards_bob {
                    (&delivered_to_bob, bob.as_mut())
                } else {
                    (&delivered_to_alice, Some(&mut alice))
                };
                let (Some(session), false) = (session, delivered.is_empty()) else {
                    continue;
                };
                let recent = delivered.len().saturating_sub(8);
                let duplicate = &delivered[recent + below(&mut rng, delivered.len() - recent)];
                assert_rejected(session, duplicate, CryptoError::DuplicateMessage);
                tally.duplicates_rejected += 1;
            }
        }
    }

    // Drain what is still in flight, in random order.
    while !to_bob.is_empty() || !to_alice.is_empty() {
        let towards_bob = !to_bob.is_empty() && (to_alice.is_empty() || below(&mut rng, 2) == 0);
        let queue = if towards_bob {
            &mut to_bob
        } else {
            &mut to_alice
        };
        let InFlight { message, plaintext } = queue.swap_remove(below(&mut rng, queue.len()));
        let session = if towards_bob {
            bob.as_mut().unwrap()
        } else {
            &mut alice
        };
        assert_eq!(session.decrypt(&mut OsRng, &message).unwrap(), plaintext);
        tally.delivered += 1;
    }

    assert_eq!(tally.sent, tally.delivered + tally.lost);
    assert!(tally.sent > steps / 3 && tally.lost > 0 && tally.duplicates_rejected > 0);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// Alice's messages over three of her turns, and a delivery order for them.
fn three_turns_of_messages(seed: u64, per_turn: usize) -> (Session, Vec<(RatchetMessage, String)>) {
    let (mut rng, mut alice, mut bob) = established(seed);
    let mut messages = Vec::new();
    for turn in 0..3 {
        for i in 0..per_turn {
            let text = format!("{turn}/{i}");
            messages.push((send(&mut rng, &mut alice, &text), text));
        }
        // Bob replies without having read anything, so Alice's next turn is a new chain.
        receive(&mut alice, &send(&mut rng, &mut bob, "turn"));
    }
    (bob, messages)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_order_decrypts_every_message_exactly_once(
        seed in any::<u64>(),
        order in Just((0..24usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let (mut bob, messages) = three_turns_of_messages(seed, 8);
        for &i in &order {
            let (message, text) = &messages[i];
            prop_assert_eq!(bob.decrypt(&mut OsRng, message).unwrap(), text.as_bytes());
        }
        for &i in order.iter().take(4) {
            prop_assert_eq!(bob.decrypt(&mut OsRng, &messages[i].0), Err(CryptoError::DuplicateMessage));
        }
    }

    #[test]
    fn arbitrary_messages_are_rejected_without_panic_or_state_change(
        seed in any::<u64>(),
        dh in any::<[u8; 32]>(),
        previous_chain_len in prop_oneof![0..4u32, any::<u32>()],
        index in prop_oneof![0..4u32, any::<u32>()],
        ciphertext in proptest::collection::vec(any::<u8>(), 0..80),
        use_current_dh in any::<bool>(),
    ) {
        let (mut rng, mut alice, mut bob) = established(seed);
        let genuine = send(&mut rng, &mut alice, "genuine");
        let header_dh = if use_current_dh { genuine.header.dh } else { PublicKey::from(dh) };
        let forged = RatchetMessage {
            init: None,
            header: crypto::ratchet::Header { dh: header_dh, previous_chain_len, index },
            ciphertext,
        };
        let before = encode(&bob);
        prop_assert!(bob.decrypt(&mut OsRng, &forged).is_err());
        prop_assert_eq!(encode(&bob), before);
        prop_assert_eq!(bob.decrypt(&mut OsRng, &genuine).unwrap(), b"genuine");
    }
}
