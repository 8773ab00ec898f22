//! Round trips of a 1 KiB message, mirroring the wire layer: encrypt then sign the ciphertext,
//! then verify the signature and decrypt.
//!
//! - direct: Double Ratchet session, envelope signed with the sender's ed25519 identity;
//! - room: sender key, envelope signed with the sender key's signing key.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use palaver_protocol::crypto;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crypto::ratchet::Session;
use crypto::sender_key::{ReceivedSenderKey, SenderKey};
use crypto::x3dh::{PrekeyBundle, PrekeySecrets};

const MESSAGE_LEN: usize = 1024;

fn direct_message_round_trip(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let alice_identity = SigningKey::generate(&mut rng);
    let bob_identity = SigningKey::generate(&mut rng);
    let mut prekeys = PrekeySecrets::generate(&mut rng, &bob_identity, 1);
    let upload = prekeys.upload();
    let bundle = PrekeyBundle {
        identity: upload.identity,
        signed_prekey: upload.signed_prekey,
        one_time_prekey: upload.one_time_prekeys.first().copied(),
    };
    let mut alice = Session::initiate(&mut rng, &alice_identity, &bundle).expect("bundle is valid");
    let first = alice.encrypt(&mut rng, b"hello").expect("small message");
    let (mut bob, _) = Session::respond(
        &mut rng,
        &bob_identity,
        &mut prekeys,
        &alice_identity.verifying_key(),
        &first,
    )
    .expect("genuine initiation");
    let reply = bob.encrypt(&mut rng, b"hello").expect("small message");
    alice.decrypt(&mut rng, &reply).expect("genuine reply");

    let plaintext = vec![0x42; MESSAGE_LEN];
    let alice_public = alice_identity.verifying_key();
    let mut group = c.benchmark_group("direct");
    group.throughput(Throughput::Bytes(MESSAGE_LEN as u64));
    group.bench_function("encrypt+sign+verify+decrypt 1KiB", |b| {
        b.iter(|| {
            let message = alice.encrypt(&mut rng, &plaintext).expect("1 KiB");
            let signature = alice_identity.sign(&message.ciphertext);
            alice_public
                .verify_strict(&message.ciphertext, &signature)
                .expect("genuine signature");
            bob.decrypt(&mut rng, &message).expect("genuine message")
        })
    });
    group.finish();
}

fn room_message_round_trip(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut sender = SenderKey::generate(&mut rng, 1);
    let mut receiver = ReceivedSenderKey::from_distribution(&sender.distribution());
    let associated_data = [7; 64];
    let plaintext = vec![0x42; MESSAGE_LEN];
    let mut group = c.benchmark_group("room");
    group.throughput(Throughput::Bytes(MESSAGE_LEN as u64));
    group.bench_function("encrypt+sign+verify+decrypt 1KiB", |b| {
        b.iter(|| {
            let message = sender.encrypt(&plaintext, &associated_data).expect("1 KiB");
            let signature = sender.sign(&message.ciphertext);
            receiver
                .verify(&message.ciphertext, &signature)
                .expect("genuine signature");
            receiver
                .decrypt(&message, &associated_data)
                .expect("genuine message")
        })
    });
    group.finish();
}

criterion_group!(benches, direct_message_round_trip, room_message_round_trip);
criterion_main!(benches);
