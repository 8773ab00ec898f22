//! Signed peer records, as the node writes them and as the server and other nodes read them.
//!
//! A record is libp2p's `PeerRecord` (addresses and a sequence number) in a signed envelope: the
//! peer's own key signs it, and the `PeerId` is taken from that key. The server keeps only a
//! record signed by the session that registers it; a node keeps only records whose signer is the
//! peer it asked about (or, for a room, records as what they are: signed by their own peer).

use libp2p::core::PeerRecord;
use libp2p::core::signed_envelope::SignedEnvelope;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use palaver_protocol::rendezvous::discovery::MAX_RECORD_LEN;
use palaver_protocol::wire::SignedPeerRecord;

/// Why a signed peer record is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("a peer record may be at most {MAX_RECORD_LEN} bytes, this one is {0}")]
    TooLarge(usize),
    #[error("not a signed peer record: {0}")]
    Malformed(String),
    #[error("the record is signed by {signer}, not {expected}")]
    WrongSigner {
        signer: Box<PeerId>,
        expected: Box<PeerId>,
    },
    #[error("signing the record: {0}")]
    Signing(String),
}

/// `addrs` as `keypair`'s signed peer record.
pub fn seal(keypair: &Keypair, addrs: Vec<Multiaddr>) -> Result<SignedPeerRecord, RecordError> {
    let record =
        PeerRecord::new(keypair, addrs).map_err(|e| RecordError::Signing(e.to_string()))?;
    let bytes = record.into_signed_envelope().into_protobuf_encoding();
    if bytes.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLarge(bytes.len()));
    }
    Ok(SignedPeerRecord(bytes))
}

/// The record inside `signed`, if its signature holds and its signer is `expected`.
pub fn open(signed: &SignedPeerRecord, expected: &PeerId) -> Result<PeerRecord, RecordError> {
    let record = open_any(signed)?;
    if record.peer_id() != *expected {
        return Err(RecordError::WrongSigner {
            signer: Box::new(record.peer_id()),
            expected: Box::new(*expected),
        });
    }
    Ok(record)
}

/// The record inside `signed`, if its signature holds, whoever signed it.
pub fn open_any(signed: &SignedPeerRecord) -> Result<PeerRecord, RecordError> {
    if signed.0.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLarge(signed.0.len()));
    }
    let envelope = SignedEnvelope::from_protobuf_encoding(&signed.0)
        .map_err(|e| RecordError::Malformed(e.to_string()))?;
    PeerRecord::from_signed_envelope(envelope).map_err(|e| RecordError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_opens_for_its_signer_only_and_not_once_tampered_with() {
        let alice = Keypair::generate_ed25519();
        let bob = Keypair::generate_ed25519();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let signed = seal(&alice, vec![addr.clone()]).unwrap();
        let alice_id = alice.public().to_peer_id();
        let bob_id = bob.public().to_peer_id();

        assert_eq!(open(&signed, &alice_id).unwrap().addresses(), [addr]);
        assert!(matches!(
            open(&signed, &bob_id),
            Err(RecordError::WrongSigner { signer, .. }) if *signer == alice_id
        ));
        let mut tampered = signed.clone();
        let last = tampered.0.len() - 1;
        tampered.0[last] ^= 1;
        assert!(open_any(&tampered).is_err());
        assert!(matches!(
            open_any(&SignedPeerRecord(vec![0; MAX_RECORD_LEN + 1])),
            Err(RecordError::TooLarge(_))
        ));
    }
}
