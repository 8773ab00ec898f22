#![no_main]
//! The Double Ratchet's decrypt path, fed by an attacker who controls every byte of a message:
//! it must never panic, and a failed decrypt must change nothing — the next genuine message
//! still decrypts.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palaver_protocol::codec;
use palaver_protocol::crypto::ratchet::{RatchetMessage, Session};
use palaver_protocol::crypto::x3dh::{PrekeyBundle, PrekeySecrets};
use palaver_protocol::{Identity, SigningKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct Fixture {
    /// Bob's session after the first message, serialized so each run starts from it afresh.
    bob: Vec<u8>,
    /// Alice's next genuine message.
    next: RatchetMessage,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let alice: SigningKey = Identity::from_secret_bytes(&[1; 32]).signing_key().clone();
        let bob: SigningKey = Identity::from_secret_bytes(&[2; 32]).signing_key().clone();
        let mut prekeys = PrekeySecrets::generate(&mut rng, &bob, 4);
        let upload = prekeys.upload();
        let bundle = PrekeyBundle {
            identity: upload.identity,
            signed_prekey: upload.signed_prekey.clone(),
            one_time_prekey: upload.one_time_prekeys.first().cloned(),
        };
        let mut alice_session = Session::initiate(&mut rng, &alice, &bundle).expect("initiate");
        let first = alice_session.encrypt(&mut rng, b"first").expect("encrypt");
        let (bob_session, _) =
            Session::respond(&bob, &mut prekeys, &alice.verifying_key(), &first).expect("respond");
        let next = alice_session.encrypt(&mut rng, b"second").expect("encrypt");
        Fixture { bob: codec::encode(&bob_session).expect("encode"), next }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let mut bob: Session = codec::decode(&fixture.bob).expect("decode");
    // Either a whole attacker-built message, or the genuine one with attacker bytes XORed in.
    let attacked = match codec::decode::<RatchetMessage>(data) {
        Ok(message) => message,
        Err(_) => {
            let mut message = fixture.next.clone();
            for (byte, mask) in message.ciphertext.iter_mut().zip(data) {
                *byte ^= mask;
            }
            message
        }
    };
    let took = bob.decrypt(&attacked).is_ok();
    if !took {
        assert_eq!(bob.decrypt(&fixture.next).as_deref().ok(), Some(&b"second"[..]), "a failed decrypt changed the state");
    }
});
