//! The wire codec on the room hot path, for a room envelope carrying 1 KiB of text: encoding,
//! bounded decoding alone, decoding with the signature check (what a receiver does with every
//! gossip frame), and the message id — from the frame, and from a decoded envelope (which encodes
//! it again).
//!
//! `cargo bench -p palaver-protocol --bench codec`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use palaver_protocol::codec;
use palaver_protocol::crypto::sender_key::SenderKeyMessage;
use palaver_protocol::wire::{Body, MAX_ENVELOPE_LEN, RoomMessage};
use palaver_protocol::{Envelope, MessageId, RoomId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// 1 KiB of text, plus the AEAD tag.
const CIPHERTEXT_LEN: usize = 1024 + 16;

fn room_envelope() -> Envelope {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let sender = SigningKey::generate(&mut rng);
    let signing = SigningKey::generate(&mut rng);
    let body = Body::Room(RoomMessage {
        room: RoomId([4; 32]),
        sender: sender.verifying_key(),
        signing_key: signing.verifying_key(),
        message: SenderKeyMessage {
            epoch: 1,
            key_id: 1,
            index: 12_345,
            ciphertext: vec![0xab; CIPHERTEXT_LEN],
        },
    });
    Envelope::sign(body, &signing).expect("the body's signer")
}

fn codec_benches(c: &mut Criterion) {
    let envelope = room_envelope();
    let frame = envelope.to_bytes().expect("encodes");
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("room envelope 1KiB: encode", |b| {
        b.iter(|| envelope.to_bytes().expect("encodes"))
    });
    group.bench_function("room envelope 1KiB: decode", |b| {
        b.iter(|| codec::decode_bounded::<Envelope>(&frame, MAX_ENVELOPE_LEN).expect("decodes"))
    });
    group.bench_function("room envelope 1KiB: decode+verify", |b| {
        b.iter(|| Envelope::from_bytes(&frame).expect("genuine"))
    });
    group.bench_function("room envelope 1KiB: id from frame", |b| {
        b.iter(|| MessageId::of_frame(&frame))
    });
    group.bench_function("room envelope 1KiB: id from envelope", |b| {
        b.iter(|| envelope.id())
    });
    group.finish();
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
