#![no_main]
//! The plaintext inside an envelope, after decryption (a malicious peer controls it fully).

use libfuzzer_sys::fuzz_target;
use palaver_protocol::{codec, wire::Content};

fuzz_target!(|frame: &[u8]| {
    if let Ok(content) = codec::decode::<Content>(frame) {
        let again = codec::encode(&content).expect("re-encode");
        assert_eq!(codec::decode::<Content>(&again).expect("re-decode"), content);
    }
});
