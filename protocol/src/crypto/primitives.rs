//! The primitives everything else is built from, each wired in exactly one place so that the
//! known-answer tests at the bottom pin that wiring:
//!
//! - X25519 Diffie-Hellman ([`dh`]), refusing small-order peer keys;
//! - HKDF-SHA256 ([`hkdf()`]) and HMAC-SHA256 ([`hmac()`]);
//! - ChaCha20-Poly1305 ([`aead_seal`], [`aead_open`]) and its use with one-use message keys
//!   ([`seal`], [`open`]);
//! - the symmetric KDF chain shared by the Double Ratchet and sender keys ([`Chain`]);
//! - the libsodium-style ed25519 → X25519 identity conversion.

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hkdf::hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::CryptoError;

/// A 32-byte symmetric secret (root, chain or message key), wiped when dropped.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(super) struct SecretKey([u8; 32]);

impl SecretKey {
    pub(super) fn random(rng: &mut (impl CryptoRng + RngCore)) -> Self {
        let mut key = Self([0; 32]);
        rng.fill_bytes(&mut key.0);
        key
    }

    pub(super) fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(*bytes)
    }

    pub(super) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// X25519 with a peer's public key. A small-order peer key would make the output independent of
/// our secret (all zeros), so it is refused rather than fed into a KDF.
pub(super) fn dh(
    ours: &StaticSecret,
    theirs: &PublicKey,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let shared = ours.diffie_hellman(theirs);
    if !shared.was_contributory() {
        return Err(CryptoError::InvalidPublicKey);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// HKDF-SHA256 (RFC 5869), extract then expand to `N` bytes.
pub(super) fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; N]> {
    const { assert!(N <= 255 * 32, "HKDF-SHA256 yields at most 255 hash lengths") };
    let mut okm = Zeroizing::new([0; N]);
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut okm[..])
        .expect("output length is checked at compile time");
    okm
}

/// HMAC-SHA256 (RFC 2104).
pub(super) fn hmac(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// Splits 64 bytes of KDF output into two keys.
pub(super) fn split_keys(okm: &[u8; 64]) -> (SecretKey, SecretKey) {
    let first = SecretKey(std::array::from_fn(|i| okm[i]));
    let second = SecretKey(std::array::from_fn(|i| okm[32 + i]));
    (first, second)
}

/// ChaCha20-Poly1305 (RFC 8439). The only failure is a plaintext over the 256 GiB limit.
pub(super) fn aead_seal(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    ChaCha20Poly1305::new(key.into())
        .encrypt(
            nonce.into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::MessageTooLarge)
}

pub(super) fn aead_open(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    ChaCha20Poly1305::new(key.into())
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

/// Encrypts under a one-use message key. The message key is the AEAD key and the nonce is fixed:
/// each message key encrypts exactly one message, so a constant nonce never repeats under a key
/// (Double Ratchet spec §5.2 lists this option). Deriving a nonce from the message key instead
/// would buy nothing: a reused message key would repeat that nonce just the same.
pub(super) fn seal(
    message_key: &SecretKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    aead_seal(message_key.as_bytes(), &ONE_USE_KEY_NONCE, aad, plaintext)
}

pub(super) fn open(
    message_key: &SecretKey,
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    aead_open(message_key.as_bytes(), &ONE_USE_KEY_NONCE, aad, ciphertext)
}

const ONE_USE_KEY_NONCE: [u8; 12] = [0; 12];

/// A symmetric KDF chain (Double Ratchet spec §2.2, also Signal's sender-key chain): each step
/// turns the chain key into one message key (HMAC with 0x01) and the next chain key (HMAC with
/// 0x02). The old chain key is overwritten, so past message keys cannot be recomputed.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Chain {
    key: SecretKey,
    /// Index of the next message key this chain yields.
    index: u32,
}

/// Where [`Chain::advance_to`] lands: the chain after the target message, the key for the target
/// message, and the keys of the messages stepped over on the way, to keep for when they arrive.
pub(super) struct Advanced {
    pub(super) chain: Chain,
    pub(super) message_key: SecretKey,
    pub(super) skipped: Vec<(u32, SecretKey)>,
}

impl Chain {
    pub(super) fn new(key: SecretKey) -> Self {
        Self { key, index: 0 }
    }

    pub(super) fn starting_at(key: SecretKey, index: u32) -> Self {
        Self { key, index }
    }

    pub(super) fn key(&self) -> &SecretKey {
        &self.key
    }

    pub(super) fn index(&self) -> u32 {
        self.index
    }

    /// True once all 2^32 - 1 usable keys are spent: the index is a u32 and must still name the
    /// *next* key after the last one is handed out.
    pub(super) fn is_exhausted(&self) -> bool {
        self.index == u32::MAX
    }

    /// The message key at the current index, stepping the chain past it.
    pub(super) fn next_message_key(&mut self) -> Result<(u32, SecretKey), CryptoError> {
        let index = self.index;
        let next_index = index.checked_add(1).filter(|_| !self.is_exhausted());
        let Some(next_index) = next_index else {
            return Err(CryptoError::ChainExhausted);
        };
        let message_key = SecretKey(*hmac(self.key.as_bytes(), &[0x01]));
        self.key = SecretKey(*hmac(self.key.as_bytes(), &[0x02]));
        self.index = next_index;
        Ok((index, message_key))
    }

    /// Steps a copy of the chain up to (not including) `until`, collecting the message keys
    /// stepped over. A chain already at or past `until` returns no keys.
    pub(super) fn skip_to(
        &self,
        until: u32,
        max_skip: u32,
    ) -> Result<(Chain, Vec<(u32, SecretKey)>), CryptoError> {
        if until.saturating_sub(self.index) > max_skip {
            return Err(CryptoError::TooManySkipped);
        }
        let mut chain = self.clone();
        let mut skipped = Vec::new();
        while chain.index < until {
            skipped.push(chain.next_message_key()?);
        }
        Ok((chain, skipped))
    }

    /// Steps a copy of the chain to the message at `index` (which must not be behind the chain),
    /// returning that message's key and the keys stepped over.
    pub(super) fn advance_to(&self, index: u32, max_skip: u32) -> Result<Advanced, CryptoError> {
        debug_assert!(
            index >= self.index,
            "callers handle messages behind the chain"
        );
        let (mut chain, skipped) = self.skip_to(index, max_skip)?;
        let (_, message_key) = chain.next_message_key()?;
        Ok(Advanced {
            chain,
            message_key,
            skipped,
        })
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// The X25519 secret for an ed25519 identity, as libsodium's `crypto_sign_ed25519_sk_to_curve25519`:
/// the first half of SHA-512(seed), which x25519-dalek clamps when it is used.
pub(super) fn identity_dh_secret(identity: &SigningKey) -> StaticSecret {
    let mut scalar = identity.to_scalar_bytes();
    let secret = StaticSecret::from(scalar);
    scalar.zeroize();
    secret
}

/// The X25519 public key for an ed25519 identity, as libsodium's `crypto_sign_ed25519_pk_to_curve25519`:
/// the Edwards point's Montgomery u-coordinate.
pub(super) fn identity_dh_public(identity: &VerifyingKey) -> PublicKey {
    PublicKey::from(identity.to_montgomery().to_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Known-answer tests: published vectors run through our own wrappers, proving the wiring
    //! (argument order, salt/info placement, nonce and tag layout), not the libraries.

    use super::*;

    fn hex<const N: usize>(text: &str) -> [u8; N] {
        assert_eq!(text.len(), 2 * N, "expected {N} bytes of hex");
        std::array::from_fn(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
    }

    #[test]
    fn x25519_matches_rfc7748_section_6_1() {
        let alice = StaticSecret::from(hex::<32>(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = StaticSecret::from(hex::<32>(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        let alice_public = PublicKey::from(&alice);
        let bob_public = PublicKey::from(&bob);
        assert_eq!(
            alice_public.as_bytes(),
            &hex::<32>("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob_public.as_bytes(),
            &hex::<32>("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = hex::<32>("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*dh(&alice, &bob_public).unwrap(), shared);
        assert_eq!(*dh(&bob, &alice_public).unwrap(), shared);
    }

    #[test]
    fn x25519_refuses_small_order_peer_keys() {
        let ours = StaticSecret::from([7; 32]);
        for small_order in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            assert!(matches!(
                dh(&ours, &PublicKey::from(small_order)),
                Err(CryptoError::InvalidPublicKey)
            ));
        }
    }

    #[test]
    fn chacha20poly1305_matches_rfc8439_section_2_8_2() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = hex::<12>("070000004041424344454647");
        let aad = hex::<12>("50515253c0c1c2c3c4c5c6c7");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let expected = hex::<130>(concat!(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6",
            "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36",
            "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc",
            "3ff4def08e4b7a9de576d26586cec64b6116",
            "1ae10b594f09e26a7e902ecbd0600691",
        ));
        let sealed = aead_seal(&key, &nonce, &aad, plaintext).unwrap();
        assert_eq!(sealed, expected);
        assert_eq!(
            aead_open(&key, &nonce, &aad, &sealed).ok().as_deref(),
            Some(&plaintext[..])
        );
        let mut tampered = sealed;
        tampered[0] ^= 1;
        assert_eq!(
            aead_open(&key, &nonce, &aad, &tampered),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn hkdf_sha256_matches_rfc5869_test_case_1() {
        let ikm = [0x0b; 22];
        let salt = hex::<13>("000102030405060708090a0b0c");
        let info = hex::<10>("f0f1f2f3f4f5f6f7f8f9");
        let okm = hkdf::<42>(&salt, &ikm, &info);
        assert_eq!(
            *okm,
            hex::<42>(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
            )
        );
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_test_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            *mac,
            hex::<32>("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn identity_conversion_matches_libsodium_ed25519_convert_vector() {
        // libsodium test/default/ed25519_convert: seed → crypto_sign_ed25519_{pk,sk}_to_curve25519.
        let identity = SigningKey::from_bytes(&hex::<32>(
            "421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee",
        ));
        let public = identity_dh_public(&identity.verifying_key());
        assert_eq!(
            public.as_bytes(),
            &hex::<32>("f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50")
        );
        // libsodium returns the clamped scalar; x25519-dalek stores it unclamped and clamps on use.
        let mut scalar = identity_dh_secret(&identity).to_bytes();
        scalar[0] &= 248;
        scalar[31] &= 127;
        scalar[31] |= 64;
        assert_eq!(
            scalar,
            hex::<32>("8052030376d47112be7f73ed7a019293dd12ad910b654455798b4667d73de166")
        );
        assert_eq!(PublicKey::from(&identity_dh_secret(&identity)), public);
    }

    #[test]
    fn chain_yields_hmac_0x01_message_keys_and_hmac_0x02_chain_keys() {
        let start = [9u8; 32];
        let mut chain = Chain::new(SecretKey::from_bytes(&start));
        let (index, message_key) = chain.next_message_key().unwrap();
        assert_eq!(index, 0);
        assert_eq!(message_key.as_bytes(), &*hmac(&start, &[0x01]));
        assert_eq!(chain.key().as_bytes(), &*hmac(&start, &[0x02]));
        assert_eq!(chain.index(), 1);
    }

    #[test]
    fn chain_refuses_to_step_past_its_last_index() {
        let mut chain = Chain::starting_at(SecretKey::from_bytes(&[1; 32]), u32::MAX - 1);
        assert!(chain.next_message_key().is_ok());
        assert!(chain.is_exhausted());
        assert!(matches!(
            chain.next_message_key(),
            Err(CryptoError::ChainExhausted)
        ));
        let near_end = Chain::starting_at(SecretKey::from_bytes(&[1; 32]), u32::MAX - 1);
        assert!(matches!(
            near_end.advance_to(u32::MAX, 10),
            Err(CryptoError::ChainExhausted)
        ));
        assert!(near_end.advance_to(u32::MAX - 1, 10).is_ok());
        let fresh = Chain::new(SecretKey::from_bytes(&[1; 32]));
        assert!(matches!(
            fresh.advance_to(11, 10),
            Err(CryptoError::TooManySkipped)
        ));
        assert_eq!(
            fresh
                .advance_to(10, 10)
                .map(|advanced| advanced.skipped.len())
                .ok(),
            Some(10)
        );
    }

    #[test]
    fn message_keys_seal_and_open_with_associated_data_bound() {
        let message_key = SecretKey::from_bytes(&[3; 32]);
        let sealed = seal(&message_key, b"ad", b"hello").unwrap();
        assert_eq!(
            open(&message_key, b"ad", &sealed).ok().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            open(&message_key, b"other ad", &sealed),
            Err(CryptoError::Decrypt)
        );
    }
}
