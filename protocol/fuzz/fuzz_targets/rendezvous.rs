#![no_main]
//! The rendezvous protocol: requests the server decodes, responses and pushes the node decodes.

use libfuzzer_sys::fuzz_target;
use palaver_protocol::codec;
use palaver_protocol::wire::{RendezvousRequest, RendezvousResponse, ServerPush};

fuzz_target!(|frame: &[u8]| {
    if let Ok(request) = codec::decode::<RendezvousRequest>(frame) {
        let again = codec::encode(&request).expect("re-encode");
        assert_eq!(codec::decode::<RendezvousRequest>(&again).expect("re-decode"), request);
    }
    if let Ok(response) = codec::decode::<RendezvousResponse>(frame) {
        let again = codec::encode(&response).expect("re-encode");
        assert_eq!(codec::decode::<RendezvousResponse>(&again).expect("re-decode"), response);
    }
    let _ = codec::decode::<ServerPush>(frame);
});
