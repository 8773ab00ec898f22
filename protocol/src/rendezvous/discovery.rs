//! Discovery at the rendezvous: where a node's signed peer record is registered, who may put it
//! there, and for how long.
//!
//! A node registers its record (its addresses, signed with its own key) under its own
//! [`Namespace::Peer`], so a peer that wants to reach it looks it up by `PeerId`, and under the
//! [`Namespace::Room`] of each public room it is in, which has no member list otherwise. Only
//! logged-in sessions register or discover, always within one namespace: there is no way to ask
//! for every record. Nobody but the owner can register under a peer namespace
//! ([`may_register`]); a room's records are shown only to a peer registered in that room itself.
//! Since records are signed, neither the server nor another instance can put other addresses in
//! a peer's mouth: whoever reads a record checks the signature and that it is from the peer it
//! asked for.

use libp2p_identity::PeerId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wire::RoomId;

/// The longest a registration is kept without being renewed, whatever the node asked for.
pub const MAX_TTL_SECS: u32 = 24 * 60 * 60;
/// How long a node asks its registrations to be kept; it renews them at half that.
pub const DEFAULT_TTL_SECS: u32 = 2 * 60 * 60;
/// The largest signed peer record accepted (a dozen addresses fit in well under a kilobyte).
pub const MAX_RECORD_LEN: usize = 4 * 1024;
/// The most records one discovery answer carries (a public room's most recently renewed).
pub const MAX_DISCOVERED: usize = 64;

/// Where records are registered and looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Namespace {
    /// One peer's addresses, found by its `PeerId` (how a peer we want to reach is dialed).
    Peer(#[serde(with = "peer_id_bytes")] PeerId),
    /// The members of a public room, who announce themselves here.
    Room(RoomId),
}

/// Why a session may not register under a namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotYours {
    #[error("only {owner} registers under its own peer namespace")]
    PeerNamespace { owner: PeerId },
}

/// Whether `peer` may register under `namespace`: its own peer namespace, or any room's (public
/// rooms have no member list to check against; a room's id is what its members know).
pub fn may_register(peer: &PeerId, namespace: &Namespace) -> Result<(), NotYours> {
    match namespace {
        Namespace::Peer(owner) if owner != peer => Err(NotYours::PeerNamespace { owner: *owner }),
        Namespace::Peer(_) | Namespace::Room(_) => Ok(()),
    }
}

/// How long the server keeps a registration that asked for `ttl_secs`: at most
/// [`MAX_TTL_SECS`]; `None` for zero, which would be gone before anyone could read it.
pub fn kept_for_ms(ttl_secs: u32) -> Option<u64> {
    (ttl_secs > 0).then(|| u64::from(ttl_secs.min(MAX_TTL_SECS)) * 1000)
}

impl std::fmt::Display for Namespace {
    /// The namespace as text, also its key in the server's store.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Namespace::Peer(peer) => write!(f, "palaver/peer/{peer}"),
            Namespace::Room(room) => write!(f, "palaver/room/{}", room.to_hex()),
        }
    }
}

/// A `PeerId` as its multihash bytes (the same on every serde format, and checked on decode).
mod peer_id_bytes {
    use super::*;

    pub(super) fn serialize<S: Serializer>(peer: &PeerId, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&peer.to_bytes()).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        PeerId::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        crate::Identity::from_secret_bytes(&[seed; 32]).peer_id()
    }

    #[test]
    fn a_peer_registers_under_its_own_peer_namespace_and_any_room_only() {
        let (me, other) = (peer(1), peer(2));
        assert_eq!(may_register(&me, &Namespace::Peer(me)), Ok(()));
        assert_eq!(may_register(&me, &Namespace::Room(RoomId([7; 32]))), Ok(()));
        assert_eq!(
            may_register(&me, &Namespace::Peer(other)),
            Err(NotYours::PeerNamespace { owner: other })
        );
    }

    #[test]
    fn a_registration_is_kept_at_most_a_day_and_never_for_zero() {
        assert_eq!(kept_for_ms(0), None);
        assert_eq!(kept_for_ms(90), Some(90_000));
        assert_eq!(kept_for_ms(u32::MAX), Some(u64::from(MAX_TTL_SECS) * 1000));
    }

    #[test]
    fn namespaces_round_trip_and_name_their_kind() {
        for namespace in [Namespace::Peer(peer(3)), Namespace::Room(RoomId([7; 32]))] {
            let bytes = crate::codec::encode(&namespace).unwrap();
            assert_eq!(
                crate::codec::decode::<Namespace>(&bytes).unwrap(),
                namespace
            );
        }
        assert!(
            Namespace::Room(RoomId([7; 32]))
                .to_string()
                .starts_with("palaver/room/0707")
        );
        assert_eq!(
            Namespace::Peer(peer(3)).to_string(),
            format!("palaver/peer/{}", peer(3))
        );
    }

    #[test]
    fn a_peer_namespace_that_is_not_a_peer_id_does_not_decode() {
        let mut bytes = crate::codec::encode(&Namespace::Peer(peer(3))).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bytes.truncate(last - 3);
        assert!(crate::codec::decode::<Namespace>(&bytes).is_err());
    }
}
