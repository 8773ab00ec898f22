//! Secrets at rest: what a node stores that would let whoever copies its disk read its messages
//! (ratchet sessions, prekey secrets, room keys) sealed with ChaCha20-Poly1305 under a key derived
//! from the identity secret — which a passphrase-protected key file keeps sealed under the
//! passphrase (Argon2id). Each value is bound to the key it is stored under (associated data), so
//! values cannot be swapped between records undetected; each write draws a fresh random nonce.
//!
//! A sealed value is `SEALED`, the 12-byte nonce, then the ciphertext and tag. Plain values (a
//! codec frame, whose first byte is the wire version) never start with `SEALED`.

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::CryptoError;
use super::primitives::{aead_open, aead_seal, hkdf};
use crate::Identity;

/// The first byte of a sealed value.
pub const SEALED: u8 = 0xA5;

/// The key the store's secrets are sealed under.
pub struct SecretsKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    const INFO: &'static [u8] = b"palaver/v1/store-secrets";

    /// The one key `identity` seals its store's secrets under.
    pub fn of(identity: &Identity) -> Self {
        let secret = Zeroizing::new(identity.secret_bytes());
        Self(hkdf(Self::INFO, secret.as_slice(), Self::INFO))
    }

    /// `plain`, stored under `record`, sealed.
    pub fn seal(&self, rng: &mut impl CryptoRngCore, record: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        // Sealing with a valid key and nonce cannot fail.
        let sealed = aead_seal(&self.0, &nonce, record, plain).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + 12 + sealed.len());
        out.push(SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plain value of `stored` (which starts with [`SEALED`]), stored under `record`.
    pub fn open(&self, record: &[u8], stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let rest = stored.strip_prefix(&[SEALED]).ok_or(CryptoError::Decrypt)?;
        if rest.len() < 12 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, sealed) = rest.split_at(12);
        let nonce: &[u8; 12] = nonce.try_into().map_err(|_| CryptoError::Decrypt)?;
        aead_open(&self.0, nonce, record, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn a_sealed_value_opens_only_under_its_record_and_its_identity() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let alice = SecretsKey::of(&Identity::from_secret_bytes(&[1; 32]));
        let sealed = alice.seal(&mut rng, b"s-bob", b"ratchet state");
        assert_eq!(sealed[0], SEALED);
        assert!(!sealed.windows(13).any(|w| w == b"ratchet state"));
        assert_eq!(alice.open(b"s-bob", &sealed).unwrap(), b"ratchet state");
        assert!(
            alice.open(b"s-carol", &sealed).is_err(),
            "moved to another record"
        );
        let mallory = SecretsKey::of(&Identity::from_secret_bytes(&[2; 32]));
        assert!(mallory.open(b"s-bob", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(alice.open(b"s-bob", &flipped).is_err());
        assert!(alice.open(b"s-bob", &sealed[..10]).is_err());
        // A fresh nonce each time: the same value never seals the same way twice.
        assert_ne!(sealed, alice.seal(&mut rng, b"s-bob", b"ratchet state"));
    }
}
