//! Palaver's protocol core: everything that can be decided without a socket or a clock.
//!
//! - [`identity`]: ed25519 identity ↔ libp2p `PeerId`, key files, fingerprints.
//! - [`name`]: user and room names.
//! - [`codec`]: the one bounded, versioned encoding (bincode 2) for the wire and the disk.
//! - [`wire`]: the envelope and the rendezvous and peer protocols' messages.
//! - [`crypto`]: X3DH, the Double Ratchet, sender keys.
//!
//! The node and the rendezvous server feed these types and state machines events and carry out
//! what they ask; nothing here does IO except reading and writing the key file.

pub mod codec;
pub mod crypto;
pub mod delivery;
pub mod identity;
pub mod name;
pub mod node;
pub mod rendezvous;
pub mod wire;

pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
pub use identity::{Fingerprint, Identity, SafetyNumber};
pub use libp2p_identity::PeerId;
pub use name::{RoomName, UserName};
pub use wire::{Envelope, MessageId, RoomId};
