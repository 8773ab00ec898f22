//! X3DH session setup (Signal's X3DH spec), with ed25519 identity keys.
//!
//! 1. Bob: [`PrekeySecrets::generate`], then publish [`PrekeySecrets::upload`]. Later publish
//!    [`PrekeySecrets::replenish`] as the server runs out of one-time prekeys, and
//!    [`PrekeySecrets::rotate_signed_prekey`] on a schedule of his choosing.
//! 2. Alice: fetch a [`PrekeyBundle`], verify it, and derive the shared secret; her messages name
//!    the prekeys she used in a [`SessionInit`].
//! 3. Bob: derive the same secret from the [`SessionInit`] and his [`PrekeySecrets`]. The
//!    one-time prekey secret is deleted once the first message has decrypted, so that prekey
//!    starts exactly one session.
//!
//! Applications reach this through `Session::initiate` and `Session::respond` in the ratchet
//! module; this module only holds the prekeys and the key agreement itself:
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
//! SK  = HKDF-SHA256(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4], info = "palaver/v1/x3dh")
//! AD  = IK_A || IK_B   (the 32-byte ed25519 encodings)
//! ```
//!
//! IK are ed25519 identity keys; for DH1 and DH2 they are converted to X25519 the libsodium way
//! (`SigningKey::to_scalar_bytes` and `VerifyingKey::to_montgomery`). The signed prekey is signed
//! directly with ed25519, so no XEdDSA is needed.

use std::collections::VecDeque;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::CryptoError;
use super::primitives::{SecretKey, dh, hkdf, identity_dh_public, identity_dh_secret};

/// How many one-time prekey secrets [`PrekeySecrets`] keeps. Past this the oldest are dropped,
/// and initiations that name them fail with [`CryptoError::MissingPrekey`]; keep fewer than this
/// many published.
pub const MAX_ONE_TIME_PREKEYS: usize = 500;

const SIGNED_PREKEY_DOMAIN: &[u8] = b"palaver/v1/signed-prekey";
const X3DH_INFO: &[u8] = b"palaver/v1/x3dh";

/// A medium-term prekey, signed by its owner's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekey {
    pub id: u32,
    pub key: PublicKey,
    /// The identity's signature over `"palaver/v1/signed-prekey" || id (big-endian) || key`.
    pub signature: Signature,
}

impl SignedPrekey {
    fn sign(identity: &SigningKey, id: u32, key: PublicKey) -> Self {
        let signature = identity.sign(&Self::signed_bytes(id, &key));
        Self { id, key, signature }
    }

    /// Checks that `identity` signed this prekey.
    pub fn verify(&self, identity: &VerifyingKey) -> Result<(), CryptoError> {
        identity
            .verify_strict(&Self::signed_bytes(self.id, &self.key), &self.signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    fn signed_bytes(id: u32, key: &PublicKey) -> Vec<u8> {
        [SIGNED_PREKEY_DOMAIN, &id.to_be_bytes(), key.as_bytes()].concat()
    }
}

/// A single-use prekey. The server hands each one out once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePrekey {
    pub id: u32,
    pub key: PublicKey,
}

/// What an initiator fetches from the server to start a session with the owner of `identity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyBundle {
    pub identity: VerifyingKey,
    pub signed_prekey: SignedPrekey,
    /// Absent when the server has run out; the session then lacks DH4, so a replayed first
    /// message can start a second session (X3DH spec §4.2).
    pub one_time_prekey: Option<OneTimePrekey>,
}

impl PrekeyBundle {
    /// Checks the signed prekey's signature by the bundle's identity.
    pub fn verify(&self) -> Result<(), CryptoError> {
        self.signed_prekey.verify(&self.identity)
    }
}

/// What a node publishes to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyUpload {
    pub identity: VerifyingKey,
    pub signed_prekey: SignedPrekey,
    pub one_time_prekeys: Vec<OneTimePrekey>,
}

impl PrekeyUpload {
    /// Checks the signed prekey's signature, for servers that refuse bad uploads.
    pub fn verify(&self) -> Result<(), CryptoError> {
        self.signed_prekey.verify(&self.identity)
    }
}

/// Names the prekeys an initiator used, so the responder can repeat the key agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInit {
    pub ephemeral: PublicKey,
    pub signed_prekey_id: u32,
    pub one_time_prekey_id: Option<u32>,
}

impl SessionInit {
    /// Fixed-length encoding for associated data: ephemeral || signed id || presence || one-time id.
    pub(super) fn encode(&self) -> [u8; 41] {
        let mut out = [0; 41];
        out[..32].copy_from_slice(self.ephemeral.as_bytes());
        out[32..36].copy_from_slice(&self.signed_prekey_id.to_be_bytes());
        if let Some(id) = self.one_time_prekey_id {
            out[36] = 1;
            out[37..].copy_from_slice(&id.to_be_bytes());
        }
        out
    }
}

/// The prekey owner's secret side: the current signed prekey, the one before it (for a grace
/// period after rotation), and the unused one-time prekeys. All secrets are wiped on drop (copies
/// too: a copy is how a change is staged until the store has it).
#[derive(Clone, Serialize, Deserialize)]
pub struct PrekeySecrets {
    identity: VerifyingKey,
    signed: SignedPrekeySecret,
    /// The signed prekey before the last rotation. Initiations made from a bundle fetched before
    /// the rotation still name it; it is dropped at the next rotation or by
    /// [`PrekeySecrets::end_signed_prekey_grace`].
    previous_signed: Option<SignedPrekeySecret>,
    /// Oldest first, so the bound drops the ones most likely already handed out.
    one_time: VecDeque<OneTimePrekeySecret>,
    next_one_time_id: u32,
}

#[derive(Clone, Serialize, Deserialize)]
struct SignedPrekeySecret {
    public: SignedPrekey,
    secret: StaticSecret,
}

#[derive(Clone, Serialize, Deserialize)]
struct OneTimePrekeySecret {
    public: OneTimePrekey,
    secret: StaticSecret,
}

impl PrekeySecrets {
    /// Fresh prekeys for `identity`: a signed prekey and `one_time_count` one-time prekeys (at
    /// most [`MAX_ONE_TIME_PREKEYS`]).
    pub fn generate(
        rng: &mut (impl CryptoRng + RngCore),
        identity: &SigningKey,
        one_time_count: usize,
    ) -> Self {
        // Random starting ids keep a reinstalled node's new prekeys from colliding with stale
        // ones the server may still hand out.
        let signed_id = rng.next_u32();
        let mut prekeys = Self {
            identity: identity.verifying_key(),
            signed: SignedPrekeySecret::generate(rng, identity, signed_id),
            previous_signed: None,
            one_time: VecDeque::new(),
            next_one_time_id: rng.next_u32(),
        };
        prekeys.replenish(rng, one_time_count);
        prekeys
    }

    /// Everything to publish: identity, signed prekey and every one-time prekey held.
    pub fn upload(&self) -> PrekeyUpload {
        PrekeyUpload {
            identity: self.identity,
            signed_prekey: self.signed.public.clone(),
            one_time_prekeys: self.one_time.iter().map(|prekey| prekey.public).collect(),
        }
    }

    /// Makes `n` new one-time prekeys (at most [`MAX_ONE_TIME_PREKEYS`]) and returns their public
    /// halves to publish. If that takes the store over its bound, the oldest secrets are dropped.
    pub fn replenish(
        &mut self,
        rng: &mut (impl CryptoRng + RngCore),
        n: usize,
    ) -> Vec<OneTimePrekey> {
        let fresh: Vec<OneTimePrekey> = (0..n.min(MAX_ONE_TIME_PREKEYS))
            .map(|_| {
                let secret = StaticSecret::random_from_rng(&mut *rng);
                let public = OneTimePrekey {
                    id: self.next_one_time_id,
                    key: PublicKey::from(&secret),
                };
                self.next_one_time_id = self.next_one_time_id.wrapping_add(1);
                self.one_time
                    .push_back(OneTimePrekeySecret { public, secret });
                public
            })
            .collect();
        while self.one_time.len() > MAX_ONE_TIME_PREKEYS {
            self.one_time.pop_front();
        }
        fresh
    }

    /// Replaces the signed prekey and returns the new one to publish. The previous secret stays
    /// usable until the next rotation (or [`Self::end_signed_prekey_grace`]), so initiations
    /// already in flight still work. `identity` must be the one these prekeys were generated for.
    pub fn rotate_signed_prekey(
        &mut self,
        rng: &mut (impl CryptoRng + RngCore),
        identity: &SigningKey,
    ) -> SignedPrekey {
        let id = self.signed.public.id.wrapping_add(1);
        let previous = std::mem::replace(
            &mut self.signed,
            SignedPrekeySecret::generate(rng, identity, id),
        );
        self.previous_signed = Some(previous);
        self.signed.public.clone()
    }

    /// Ends the grace period early: forget the signed prekey from before the last rotation.
    pub fn end_signed_prekey_grace(&mut self) {
        self.previous_signed = None;
    }

    /// The identity these prekeys belong to.
    pub fn identity(&self) -> &VerifyingKey {
        &self.identity
    }

    /// The current signed prekey.
    pub fn signed_prekey(&self) -> &SignedPrekey {
        &self.signed.public
    }

    /// How many one-time prekey secrets are held (published and not yet used).
    pub fn one_time_count(&self) -> usize {
        self.one_time.len()
    }

    fn signed_secret(&self, id: u32) -> Option<&SignedPrekeySecret> {
        std::iter::once(&self.signed)
            .chain(self.previous_signed.as_ref())
            .find(|prekey| prekey.public.id == id)
    }

    fn one_time_secret(&self, id: u32) -> Option<&StaticSecret> {
        self.one_time
            .iter()
            .find(|prekey| prekey.public.id == id)
            .map(|prekey| &prekey.secret)
    }

    /// Deletes a one-time prekey secret: it has started its one session.
    pub(super) fn consume_one_time(&mut self, id: u32) {
        self.one_time.retain(|prekey| prekey.public.id != id);
    }
}

impl SignedPrekeySecret {
    fn generate(rng: &mut (impl CryptoRng + RngCore), identity: &SigningKey, id: u32) -> Self {
        let secret = StaticSecret::random_from_rng(&mut *rng);
        Self {
            public: SignedPrekey::sign(identity, id, PublicKey::from(&secret)),
            secret,
        }
    }
}

impl std::fmt::Debug for PrekeySecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrekeySecrets")
            .field("identity", &self.identity)
            .field("signed_prekey_id", &self.signed.public.id)
            .field(
                "previous_signed_prekey_id",
                &self.previous_signed.as_ref().map(|p| p.public.id),
            )
            .field("one_time_prekeys", &self.one_time.len())
            .finish_non_exhaustive()
    }
}

/// Alice's side: verifies the bundle and returns the shared secret and the [`SessionInit`] that
/// lets Bob derive it too.
pub(super) fn initiate(
    rng: &mut (impl CryptoRng + RngCore),
    ours: &SigningKey,
    bundle: &PrekeyBundle,
) -> Result<(SecretKey, SessionInit), CryptoError> {
    bundle.verify()?;
    let ephemeral = StaticSecret::random_from_rng(&mut *rng);
    let their_identity = identity_dh_public(&bundle.identity);
    let signed_prekey = &bundle.signed_prekey.key;
    let dh1 = dh(&identity_dh_secret(ours), signed_prekey)?;
    let dh2 = dh(&ephemeral, &their_identity)?;
    let dh3 = dh(&ephemeral, signed_prekey)?;
    let dh4 = bundle
        .one_time_prekey
        .map(|prekey| dh(&ephemeral, &prekey.key))
        .transpose()?;
    let init = SessionInit {
        ephemeral: PublicKey::from(&ephemeral),
        signed_prekey_id: bundle.signed_prekey.id,
        one_time_prekey_id: bundle.one_time_prekey.map(|prekey| prekey.id),
    };
    Ok((shared_secret(&dh1, &dh2, &dh3, dh4.as_deref()), init))
}

/// Bob's side: derives the shared secret for `init`. Returns it with the signed prekey secret,
/// which becomes Bob's first ratchet key. Consumes nothing: the caller deletes the one-time prekey
/// once the first message has authenticated.
pub(super) fn respond(
    ours: &SigningKey,
    prekeys: &PrekeySecrets,
    their_identity: &VerifyingKey,
    init: &SessionInit,
) -> Result<(SecretKey, StaticSecret), CryptoError> {
    let signed = prekeys
        .signed_secret(init.signed_prekey_id)
        .ok_or(CryptoError::MissingPrekey)?;
    let one_time = init
        .one_time_prekey_id
        .map(|id| {
            prekeys
                .one_time_secret(id)
                .ok_or(CryptoError::MissingPrekey)
        })
        .transpose()?;
    let dh1 = dh(&signed.secret, &identity_dh_public(their_identity))?;
    let dh2 = dh(&identity_dh_secret(ours), &init.ephemeral)?;
    let dh3 = dh(&signed.secret, &init.ephemeral)?;
    let dh4 = one_time
        .map(|secret| dh(secret, &init.ephemeral))
        .transpose()?;
    Ok((
        shared_secret(&dh1, &dh2, &dh3, dh4.as_deref()),
        signed.secret.clone(),
    ))
}

/// SK = HKDF(F || DH1 || DH2 || DH3 [|| DH4]). The 32 0xFF bytes of F keep the input from ever
/// being a valid X25519 scalar-multiplication input in another protocol (X3DH spec §2.2).
fn shared_secret(
    dh1: &[u8; 32],
    dh2: &[u8; 32],
    dh3: &[u8; 32],
    dh4: Option<&[u8; 32]>,
) -> SecretKey {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 5));
    ikm.extend_from_slice(&[0xFF; 32]);
    for dh in [Some(dh1), Some(dh2), Some(dh3), dh4].into_iter().flatten() {
        ikm.extend_from_slice(dh);
    }
    SecretKey::from_bytes(&hkdf::<32>(&[0; 32], &ikm, X3DH_INFO))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn bundle_from(upload: &mut PrekeyUpload) -> PrekeyBundle {
        PrekeyBundle {
            identity: upload.identity,
            signed_prekey: upload.signed_prekey.clone(),
            one_time_prekey: upload.one_time_prekeys.pop(),
        }
    }

    #[test]
    fn both_sides_derive_the_same_secret_with_and_without_a_one_time_prekey() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let alice = SigningKey::generate(&mut rng);
        let bob = SigningKey::generate(&mut rng);
        let prekeys = PrekeySecrets::generate(&mut rng, &bob, 1);
        let mut upload = prekeys.upload();
        for bundle in [bundle_from(&mut upload), bundle_from(&mut upload)] {
            let (alice_secret, init) = initiate(&mut rng, &alice, &bundle).unwrap();
            assert_eq!(
                init.one_time_prekey_id.is_some(),
                bundle.one_time_prekey.is_some()
            );
            let (bob_secret, bob_ratchet) =
                respond(&bob, &prekeys, &alice.verifying_key(), &init).unwrap();
            assert_eq!(alice_secret.as_bytes(), bob_secret.as_bytes());
            assert_eq!(PublicKey::from(&bob_ratchet), bundle.signed_prekey.key);
        }
    }

    #[test]
    fn a_different_identity_derives_a_different_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let alice = SigningKey::generate(&mut rng);
        let mallory = SigningKey::generate(&mut rng);
        let bob = SigningKey::generate(&mut rng);
        let prekeys = PrekeySecrets::generate(&mut rng, &bob, 1);
        let bundle = bundle_from(&mut prekeys.upload());
        let (alice_secret, init) = initiate(&mut rng, &alice, &bundle).unwrap();
        let (bob_secret, _) = respond(&bob, &prekeys, &mallory.verifying_key(), &init).unwrap();
        assert_ne!(alice_secret.as_bytes(), bob_secret.as_bytes());
    }

    #[test]
    fn one_time_prekey_store_is_bounded_and_drops_the_oldest() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let bob = SigningKey::generate(&mut rng);
        let mut prekeys = PrekeySecrets::generate(&mut rng, &bob, MAX_ONE_TIME_PREKEYS);
        let first_id = prekeys.upload().one_time_prekeys[0].id;
        let fresh = prekeys.replenish(&mut rng, 10);
        assert_eq!(fresh.len(), 10);
        assert_eq!(prekeys.one_time_count(), MAX_ONE_TIME_PREKEYS);
        assert!(prekeys.one_time_secret(first_id).is_none());
        assert!(
            fresh
                .iter()
                .all(|prekey| prekeys.one_time_secret(prekey.id).is_some())
        );
        assert_eq!(
            prekeys.replenish(&mut rng, usize::MAX).len(),
            MAX_ONE_TIME_PREKEYS
        );
    }

    #[test]
    fn uploads_verify_and_carry_every_one_time_prekey() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let bob = SigningKey::generate(&mut rng);
        let prekeys = PrekeySecrets::generate(&mut rng, &bob, 7);
        let upload = prekeys.upload();
        assert_eq!(upload.verify(), Ok(()));
        assert_eq!(upload.one_time_prekeys.len(), 7);
        let mut forged = upload.clone();
        forged.signed_prekey.id ^= 1;
        assert_eq!(forged.verify(), Err(CryptoError::BadSignature));
    }
}
