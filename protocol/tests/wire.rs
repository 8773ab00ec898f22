//! The wire format: every type round-trips, the bytes are pinned, and bad input is an error value.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

mod common;

use common::*;
use palaver_protocol::codec::{self, DecodeError, MAX_FRAME_LEN, WIRE_VERSION};
use palaver_protocol::wire::*;
use palaver_protocol::{Envelope, SigningKey};
use proptest::prelude::*;
use serde::{Serialize, de::DeserializeOwned};

fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let frame = codec::encode(value).unwrap();
    assert_eq!(&codec::decode::<T>(&frame).unwrap(), value);
    // One value, one encoding: decoding then encoding again gives the same bytes.
    assert_eq!(
        codec::encode(&codec::decode::<T>(&frame).unwrap()).unwrap(),
        frame
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn envelopes_round_trip_and_keep_their_id(envelope in any_envelope()) {
        round_trips(&envelope);
        let decoded = Envelope::from_bytes(&envelope.to_bytes().unwrap()).unwrap();
        prop_assert_eq!(decoded.id(), envelope.id());
    }

    #[test]
    fn contents_round_trip(content in any_content()) { round_trips(&content); }

    #[test]
    fn rendezvous_requests_round_trip(request in any_rendezvous_request()) { round_trips(&request); }

    #[test]
    fn rendezvous_responses_round_trip(response in any_rendezvous_response()) { round_trips(&response); }

    #[test]
    fn server_pushes_round_trip(push in any_server_push()) { round_trips(&push); }

    #[test]
    fn peer_requests_round_trip(request in any_peer_request()) { round_trips(&request); }

    #[test]
    fn peer_responses_round_trip(response in any_peer_response()) { round_trips(&response); }

    #[test]
    fn user_names_round_trip(name in any_user()) { round_trips(&name); }

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut frame = vec![WIRE_VERSION];
        frame.extend(&bytes);
        let _ = Envelope::from_bytes(&frame);
        let _ = codec::decode::<Content>(&frame);
        let _ = codec::decode::<RendezvousRequest>(&frame);
        let _ = codec::decode::<RendezvousResponse>(&frame);
        let _ = codec::decode::<ServerPush>(&frame);
        let _ = codec::decode::<PeerRequest>(&frame);
        let _ = codec::decode::<PeerResponse>(&frame);
        let _ = codec::decode::<FileFetch>(&frame);
        let _ = codec::decode::<FileFrame>(&frame);
    }

    #[test]
    fn any_flipped_bit_in_an_envelope_is_rejected(envelope in any_envelope(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut frame = envelope.to_bytes().unwrap();
        let i = 1 + at.index(frame.len() - 1);
        frame[i] ^= 1 << bit;
        prop_assert!(Envelope::from_bytes(&frame).is_err());
    }
}

/// The encoding is pinned byte for byte: a change to the wire format must show up here as a diff
/// to `tests/snapshots/*.hex`. Regenerate deliberately with `UPDATE_SNAPSHOTS=1`.
#[test]
fn encodings_match_the_checked_in_snapshots() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut mismatched = Vec::new();
    for (name, frame) in fixed_frames() {
        let path = dir.join(format!("{name}.hex"));
        let actual = hex::encode(&frame);
        if update {
            std::fs::write(&path, format!("{actual}\n")).unwrap();
            continue;
        }
        let expected =
            std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing snapshot {path:?}"));
        if expected.trim() != actual {
            mismatched.push(name);
        }
    }
    assert!(
        mismatched.is_empty(),
        "wire encoding changed for {mismatched:?}; if deliberate, UPDATE_SNAPSHOTS=1"
    );
}

#[test]
fn the_snapshot_bytes_decode_to_the_fixed_values() {
    // Guards the snapshots themselves: each pinned frame is a valid frame of its type.
    let frames = fixed_frames();
    let get = |name| &frames.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(
        Envelope::from_bytes(get("envelope_direct")).unwrap(),
        direct_envelope(1, 2, b"ciphertext")
    );
    assert_eq!(
        Envelope::from_bytes(get("envelope_room")).unwrap(),
        room_envelope(1, 10)
    );
    assert_eq!(
        codec::decode::<RendezvousRequest>(get("rendezvous_login")).unwrap(),
        RendezvousRequest::Login {
            name: user("alice"),
            instance: 7,
        }
    );
    assert_eq!(
        codec::decode::<RendezvousRequest>(get("rendezvous_discover_room")).unwrap(),
        RendezvousRequest::Discover {
            namespace: palaver_protocol::rendezvous::discovery::Namespace::Room(RoomId([6; 32]))
        }
    );
    assert_eq!(
        codec::decode::<ServerPush>(get("server_push_presence")).unwrap(),
        ServerPush::Presence(presence())
    );
}

#[test]
fn every_truncation_of_an_envelope_is_an_error() {
    let frame = direct_envelope(1, 2, b"some ciphertext")
        .to_bytes()
        .unwrap();
    for cut in 0..frame.len() {
        assert!(
            Envelope::from_bytes(&frame[..cut]).is_err(),
            "prefix of {cut} bytes accepted"
        );
    }
}

#[test]
fn an_oversized_envelope_is_refused_before_decoding() {
    let frame = vec![WIRE_VERSION; MAX_ENVELOPE_LEN + 1];
    assert_eq!(
        Envelope::from_bytes(&frame),
        Err(WireError::TooLarge(MAX_ENVELOPE_LEN + 1))
    );
    let frame = vec![WIRE_VERSION; MAX_FRAME_LEN + 1];
    assert!(matches!(
        codec::decode::<PeerRequest>(&frame),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn an_unknown_wire_version_is_refused() {
    let mut frame = direct_envelope(1, 2, b"x").to_bytes().unwrap();
    frame[0] = WIRE_VERSION + 1;
    assert_eq!(
        Envelope::from_bytes(&frame),
        Err(WireError::Decode(DecodeError::UnsupportedVersion {
            found: WIRE_VERSION + 1
        }))
    );
}

#[test]
fn a_forged_sender_is_refused() {
    // Mallory takes Alice's envelope and claims it is from herself, or re-signs it as Alice.
    let mut envelope = direct_envelope(1, 2, b"x");
    if let Body::Direct(direct) = &mut envelope.body {
        direct.sender = identity(3).public();
    }
    assert_eq!(envelope.verify(), Err(WireError::BadSignature));
    let body = direct_envelope(1, 2, b"x").body;
    assert_eq!(
        Envelope::sign(body, identity(3).signing_key()).unwrap_err(),
        WireError::WrongSigner
    );
}

#[test]
fn a_room_envelope_verifies_only_under_its_sender_key() {
    let envelope = room_envelope(1, 10);
    assert_eq!(envelope.verify(), Ok(()));
    // Signed by the member's identity instead of its sender key: refused.
    assert_eq!(
        Envelope::sign(envelope.body.clone(), identity(1).signing_key()).unwrap_err(),
        WireError::WrongSigner
    );
    // A signature from one kind of envelope does not verify on another kind with the same signer.
    let mut swapped = envelope.clone();
    swapped.signature = Envelope::sign(
        direct_envelope(10, 2, b"x").body,
        &SigningKey::from_bytes(&[10; 32]),
    )
    .unwrap()
    .signature;
    assert_eq!(swapped.verify(), Err(WireError::BadSignature));
}

#[test]
fn message_ids_differ_for_different_envelopes() {
    let a = direct_envelope(1, 2, b"one");
    assert_eq!(a.id(), direct_envelope(1, 2, b"one").id());
    assert_ne!(a.id(), direct_envelope(1, 2, b"two").id());
    assert_ne!(a.id(), direct_envelope(1, 3, b"one").id());
    assert_eq!(MessageId::from_hex(&a.id().to_hex()), Some(a.id()));
}

#[test]
fn names_on_the_wire_must_be_canonical() {
    // "Alice" encoded as a raw string must not decode as a UserName.
    let frame = codec::encode(&"Alice".to_string()).unwrap();
    assert!(codec::decode::<palaver_protocol::UserName>(&frame).is_err());
    let frame = codec::encode(&"alice".to_string()).unwrap();
    assert_eq!(
        codec::decode::<palaver_protocol::UserName>(&frame).unwrap(),
        user("alice")
    );
}
