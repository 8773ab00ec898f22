//! Who a user is: one ed25519 key pair, from which the libp2p `PeerId` is derived too, so a Noise
//! handshake already proves which identity is on the other end of a connection.
//!
//! The key lives in a key file (see [`keyfile`]) at `<home>/identity.key`, mode 0600, optionally
//! sealed with a passphrase. People compare [`Fingerprint`]s out of band to detect a server that
//! hands out the wrong key for a name.

pub mod devices;
pub mod keyfile;

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libp2p_identity::PeerId;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

/// A user's identity key pair.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl Identity {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            signing: SigningKey::generate(rng),
        }
    }

    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret),
        }
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn peer_id(&self) -> PeerId {
        peer_id_of(&self.public())
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.public())
    }

    /// The same key as a libp2p key pair, for the swarm's Noise handshakes.
    pub fn to_libp2p_keypair(&self) -> libp2p_identity::Keypair {
        let mut secret = self.signing.to_bytes();
        // Infallible: any 32 bytes are a valid ed25519 secret key; the copy is zeroized by libp2p.
        libp2p_identity::Keypair::ed25519_from_bytes(&mut secret)
            .unwrap_or_else(|_| unreachable!("32-byte ed25519 secrets are always valid"))
    }

    /// Signs `message` under a domain-separation prefix naming what kind of thing it is.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        self.signing.sign(&domain_separated(domain, message))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

/// `domain || len(message) || message`: a signature for one kind of message never verifies as another.
pub fn domain_separated(domain: &[u8], message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.len() + 9 + message.len());
    bytes.extend_from_slice(domain);
    bytes.push(0);
    bytes.extend_from_slice(&(message.len() as u64).to_be_bytes());
    bytes.extend_from_slice(message);
    bytes
}

/// Verifies a signature made by [`Identity::sign`] with the same domain.
pub fn verify(
    key: &VerifyingKey,
    domain: &[u8],
    message: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    key.verify_strict(&domain_separated(domain, message), signature)
        .map_err(|_| SignatureError)
}

/// A signature did not verify (wrong key, wrong kind of message, or altered bytes).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[error("bad signature")]
pub struct SignatureError;

/// The libp2p `PeerId` of an identity key.
pub fn peer_id_of(key: &VerifyingKey) -> PeerId {
    match libp2p_identity::ed25519::PublicKey::try_from_bytes(key.as_bytes()) {
        Ok(public) => libp2p_identity::PublicKey::from(public).to_peer_id(),
        // Every VerifyingKey is a valid compressed point, which is all libp2p checks.
        Err(_) => unreachable!("a VerifyingKey is always a valid ed25519 public key"),
    }
}

/// The identity key inside an ed25519 `PeerId` (those embed the whole public key), if it is one.
pub fn identity_of(peer: &PeerId) -> Option<VerifyingKey> {
    let multihash = peer.as_ref();
    // 0x00 is the identity multihash: the digest is the protobuf-encoded public key itself.
    if multihash.code() != 0x00 {
        return None;
    }
    let public = libp2p_identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed25519 = public.try_into_ed25519().ok()?;
    VerifyingKey::from_bytes(&ed25519.to_bytes()).ok()
}

/// A short rendering of an identity key that two people can read to each other: six groups of five
/// digits (about 100 bits of SHA-256 over the key), like Signal's safety numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u32; 6]);

impl Fingerprint {
    const DOMAIN: &'static [u8] = b"palaver/v1/fingerprint";

    pub fn of(key: &VerifyingKey) -> Self {
        let digest = Sha256::new()
            .chain_update(Self::DOMAIN)
            .chain_update(key.as_bytes())
            .finalize();
        let mut groups = [0u32; 6];
        for (group, chunk) in groups.iter_mut().zip(digest.chunks_exact(5)) {
            let mut wide = [0u8; 8];
            wide[3..].copy_from_slice(chunk);
            *group = (u64::from_be_bytes(wide) % 100_000) as u32;
        }
        Self(groups)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:05} {b:05} {c:05} {d:05} {e:05} {g:05}")
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The number two users compare to know that nobody sits between them: both fingerprints, the
/// lower first, so that both sides compute the same twelve groups of five digits whoever asks (as
/// Signal's safety numbers). It changes whenever either key does.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SafetyNumber([Fingerprint; 2]);

impl SafetyNumber {
    pub fn of(mine: &VerifyingKey, theirs: &VerifyingKey) -> Self {
        let (a, b) = (Fingerprint::of(mine), Fingerprint::of(theirs));
        Self(if a.0 <= b.0 { [a, b] } else { [b, a] })
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0[0], self.0[1])
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(seed: u8) -> Identity {
        Identity::from_secret_bytes(&[seed; 32])
    }

    #[test]
    fn the_peer_id_is_derived_from_the_identity_key_and_back() {
        let alice = fixed(1);
        let peer = alice.peer_id();
        assert_eq!(peer, alice.to_libp2p_keypair().public().to_peer_id());
        assert_eq!(identity_of(&peer), Some(alice.public()));
        assert_ne!(peer, fixed(2).peer_id());
    }

    #[test]
    fn both_sides_compute_the_same_safety_number_and_any_key_change_changes_it() {
        let (alice, bob, mallory) = (fixed(1).public(), fixed(2).public(), fixed(3).public());
        let number = SafetyNumber::of(&alice, &bob);
        assert_eq!(number, SafetyNumber::of(&bob, &alice));
        assert_ne!(number, SafetyNumber::of(&alice, &mallory));
        assert_ne!(number, SafetyNumber::of(&mallory, &bob));
        let shown = number.to_string();
        assert_eq!(shown.split(' ').count(), 12);
        assert!(
            shown
                .split(' ')
                .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
        );
        // Both fingerprints are in it, so each side can also check its own half.
        assert!(shown.contains(&Fingerprint::of(&alice).to_string()));
        assert!(shown.contains(&Fingerprint::of(&bob).to_string()));
    }

    #[test]
    fn a_signature_is_bound_to_its_domain_and_key() {
        let alice = fixed(1);
        let sig = alice.sign(b"palaver/v1/test", b"hello");
        assert_eq!(
            verify(&alice.public(), b"palaver/v1/test", b"hello", &sig),
            Ok(())
        );
        assert_eq!(
            verify(&alice.public(), b"palaver/v1/other", b"hello", &sig),
            Err(SignatureError)
        );
        assert_eq!(
            verify(&alice.public(), b"palaver/v1/test", b"hellO", &sig),
            Err(SignatureError)
        );
        assert_eq!(
            verify(&fixed(2).public(), b"palaver/v1/test", b"hello", &sig),
            Err(SignatureError)
        );
    }

    #[test]
    fn domain_separation_keeps_prefix_and_message_apart() {
        // Moving a byte between domain and message must change what is signed.
        assert_ne!(domain_separated(b"ab", b"c"), domain_separated(b"a", b"bc"));
    }

    #[test]
    fn fingerprints_are_stable_readable_and_distinct() {
        let print = fixed(1).fingerprint().to_string();
        assert_eq!(print.len(), 6 * 5 + 5);
        assert!(
            print
                .split(' ')
                .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
        );
        assert_eq!(print, fixed(1).fingerprint().to_string());
        assert_ne!(fixed(1).fingerprint(), fixed(2).fingerprint());
    }
}
