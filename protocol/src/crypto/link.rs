//! Linking a new device: the one-line code and the two sealed messages it carries.
//!
//! `palaver device link` on a device holding the account key draws a [`LinkSecret`] and shows
//! a [`LinkCode`]: the secret, the account key and the rendezvous address. The new device
//! (`init --link CODE`) leaves a sealed [`LinkRequest`] — its device key, its label, its
//! signature binding it to the account key, and one proving it holds the key for this link —
//! at the request slot of the rendezvous's link drop; the old device takes it,
//! signs a device list that adds the key, publishes it, and leaves a sealed grant (the account's
//! name, the list, and what the new device needs to start) at the grant slot.
//!
//! The slots and the sealing key are derived from the secret (HKDF-SHA256, a label each), so the
//! server, which never sees the code, can neither read the messages nor forge one: anything
//! that does not open under the secret's key is refused. Each message is ChaCha20-Poly1305
//! under its direction's key with a random nonce (a device may post the same request again).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, VerifyingKey};
use multiaddr::Multiaddr;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::primitives::{aead_open, aead_seal, hkdf};
use crate::identity::{Identity, verify};

/// How long a link code works.
pub const LINK_CODE_TTL_MS: u64 = 5 * 60 * 1000;

const CODE_PREFIX: &str = "palaver-link:";
const SALT: &[u8] = b"palaver/v1/device-link";
const PROOF_DOMAIN: &[u8] = b"palaver/v1/device-link-proof";

/// The code's secret: 128 bits, shown once, used for one link.
#[derive(Clone)]
pub struct LinkSecret(Zeroizing<[u8; 16]>);

impl fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

/// Which of the two messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// New device → old: [`LinkRequest`].
    Request,
    /// Old device → new: the grant.
    Grant,
}

impl Direction {
    fn label(self) -> &'static [u8] {
        match self {
            Direction::Request => b"request",
            Direction::Grant => b"grant",
        }
    }
}

/// A sealed link message did not open: not sealed with this code's secret, or altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the link message does not open with this code (a wrong or old code, or altered)")]
pub struct LinkOpenError;

impl LinkSecret {
    pub fn generate(rng: &mut (impl CryptoRng + RngCore)) -> Self {
        let mut secret = Zeroizing::new([0u8; 16]);
        rng.fill_bytes(secret.as_mut());
        Self(secret)
    }

    fn derive(&self, direction: Direction, what: &[u8]) -> Zeroizing<[u8; 32]> {
        hkdf::<32>(
            SALT,
            self.0.as_ref(),
            &[direction.label(), b"/", what].concat(),
        )
    }

    /// Where the rendezvous's link drop holds the message going in `direction`.
    pub fn slot(&self, direction: Direction) -> [u8; 32] {
        *self.derive(direction, b"slot")
    }

    /// Seals `plaintext` for `direction`.
    pub fn seal(
        &self,
        direction: Direction,
        plaintext: &[u8],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let key = self.derive(direction, b"key");
        // Link messages are far below ChaCha20-Poly1305's limit: sealing cannot fail.
        let sealed = aead_seal(&key, &nonce, direction.label(), plaintext).unwrap_or_default();
        [nonce.as_slice(), &sealed].concat()
    }

    /// Opens a message sealed for `direction` with this secret.
    pub fn open(&self, direction: Direction, sealed: &[u8]) -> Result<Vec<u8>, LinkOpenError> {
        if sealed.len() < 12 {
            return Err(LinkOpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| LinkOpenError)?;
        let key = self.derive(direction, b"key");
        aead_open(&key, &nonce, direction.label(), ciphertext).map_err(|_| LinkOpenError)
    }

    /// What the new device signs to show it holds its key (bound to this link).
    fn proof_message(&self, device: &VerifyingKey) -> Vec<u8> {
        [
            self.slot(Direction::Request).as_slice(),
            device.as_bytes().as_slice(),
        ]
        .concat()
    }
}

/// What the new device asks: to add its key, under its label, and the last `history` lines of
/// each conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRequest {
    pub device: VerifyingKey,
    pub label: String,
    pub history: u32,
    /// The device key's signature over the account key ([`crate::identity::devices::Device::bind`]).
    pub binding: Signature,
    /// The device key's signature over this link's request slot and the key.
    pub proof: Signature,
}

impl LinkRequest {
    /// `device`'s request to join the account of `code` as `label`, with the last `history`
    /// lines of each conversation.
    pub fn new(device: &Identity, label: String, history: u32, code: &LinkCode) -> Self {
        let secret = &code.secret;
        let proof = device.sign(PROOF_DOMAIN, &secret.proof_message(&device.public()));
        Self {
            device: device.public(),
            label,
            history,
            binding: crate::identity::devices::binding(device, &code.account),
            proof,
        }
    }

    /// The device this request asks to add (bound to the account it asked for), added now.
    pub fn device(&self, added_at_ms: u64) -> crate::identity::devices::Device {
        crate::identity::devices::Device {
            key: self.device,
            label: self.label.clone(),
            added_at_ms,
            binding: Some(self.binding),
        }
    }

    /// Whether the requester holds the key it asks to add.
    pub fn proves_key(&self, secret: &LinkSecret) -> bool {
        verify(
            &self.device,
            PROOF_DOMAIN,
            &secret.proof_message(&self.device),
            &self.proof,
        )
        .is_ok()
    }
}

/// The one-line code: `palaver-link:<secret>.<account key>@<rendezvous multiaddr>` (the
/// secret and the key in hex).
#[derive(Debug, Clone)]
pub struct LinkCode {
    pub secret: LinkSecret,
    /// The account the new device joins: it binds its key to this one.
    pub account: VerifyingKey,
    pub rendezvous: Multiaddr,
}

impl fmt::Display for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{CODE_PREFIX}{}.{}@{}",
            hex::encode(self.secret.0.as_ref()),
            hex::encode(self.account.as_bytes()),
            self.rendezvous
        )
    }
}

/// Why a link code was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a link code: {0} (it looks like {CODE_PREFIX}<32 hex digits>.<64 hex digits>@<address>, as `palaver device link` printed it)"
)]
pub struct BadLinkCode(&'static str);

impl FromStr for LinkCode {
    type Err = BadLinkCode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text
            .trim()
            .strip_prefix(CODE_PREFIX)
            .ok_or(BadLinkCode("it does not start with palaver-link:"))?;
        let (keys, address) = rest.split_once('@').ok_or(BadLinkCode("no @ address"))?;
        let (secret, account) = keys
            .split_once('.')
            .ok_or(BadLinkCode("no account key after the secret"))?;
        let mut bytes = Zeroizing::new([0u8; 16]);
        hex::decode_to_slice(secret, bytes.as_mut())
            .map_err(|_| BadLinkCode("the secret is not 32 hex digits"))?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(account, &mut key)
            .map_err(|_| BadLinkCode("the account key is not 64 hex digits"))?;
        let account = VerifyingKey::from_bytes(&key)
            .map_err(|_| BadLinkCode("the account key is not a key"))?;
        let rendezvous = address
            .parse()
            .map_err(|_| BadLinkCode("the address is not a multiaddr"))?;
        Ok(Self {
            secret: LinkSecret(bytes),
            account,
            rendezvous,
        })
    }
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;

    use super::*;

    #[test]
    fn a_code_reads_back_as_written() {
        let code = LinkCode {
            secret: LinkSecret::generate(&mut OsRng),
            account: Identity::generate(&mut OsRng).public(),
            rendezvous: "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
        };
        let text = code.to_string();
        assert!(text.starts_with("palaver-link:"));
        let back: LinkCode = text.parse().unwrap();
        assert_eq!(back.rendezvous, code.rendezvous);
        assert_eq!(back.account, code.account);
        assert_eq!(
            back.secret.slot(Direction::Grant),
            code.secret.slot(Direction::Grant)
        );
        for bad in [
            "",
            "palaver-link:",
            "palaver-link:00@/ip4/1.2.3.4/tcp/1",
            &text.replace('@', "#"),
            &text.replace("/ip4", "ip4"),
        ] {
            assert!(bad.parse::<LinkCode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_open_only_with_their_secret_and_direction() {
        let secret = LinkSecret::generate(&mut OsRng);
        let other = LinkSecret::generate(&mut OsRng);
        let sealed = secret.seal(Direction::Request, b"hello", &mut OsRng);
        assert_eq!(secret.open(Direction::Request, &sealed).unwrap(), b"hello");
        assert_eq!(other.open(Direction::Request, &sealed), Err(LinkOpenError));
        assert_eq!(secret.open(Direction::Grant, &sealed), Err(LinkOpenError));
        let mut altered = sealed.clone();
        altered[20] ^= 1;
        assert_eq!(
            secret.open(Direction::Request, &altered),
            Err(LinkOpenError)
        );
        assert_eq!(secret.open(Direction::Request, &[1, 2]), Err(LinkOpenError));
        assert_ne!(
            secret.slot(Direction::Request),
            secret.slot(Direction::Grant)
        );
        assert_ne!(secret.slot(Direction::Grant), other.slot(Direction::Grant));
    }

    #[test]
    fn a_request_proves_its_key_for_this_link_only() {
        let secret = LinkSecret::generate(&mut OsRng);
        let code = LinkCode {
            secret: secret.clone(),
            account: Identity::generate(&mut OsRng).public(),
            rendezvous: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
        };
        let device = Identity::generate(&mut OsRng);
        let request = LinkRequest::new(&device, "laptop".into(), 0, &code);
        assert!(request.proves_key(&secret));
        assert!(!request.proves_key(&LinkSecret::generate(&mut OsRng)));
        let mut claimed = request;
        claimed.device = Identity::generate(&mut OsRng).public();
        assert!(!claimed.proves_key(&secret));
    }
}
