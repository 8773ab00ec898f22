#![no_main]
//! The peer protocol: deliveries and gap-fill requests between nodes.

use libfuzzer_sys::fuzz_target;
use palaver_protocol::codec;
use palaver_protocol::wire::{PeerRequest, PeerResponse};

fuzz_target!(|frame: &[u8]| {
    if let Ok(request) = codec::decode::<PeerRequest>(frame) {
        let again = codec::encode(&request).expect("re-encode");
        assert_eq!(codec::decode::<PeerRequest>(&again).expect("re-decode"), request);
    }
    let _ = codec::decode::<PeerResponse>(frame);
});
