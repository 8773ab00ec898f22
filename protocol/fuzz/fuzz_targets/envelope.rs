#![no_main]
//! Envelope decoding and signature checking: anything from any path (direct, gossip, mailbox).

use libfuzzer_sys::fuzz_target;
use palaver_protocol::Envelope;

fuzz_target!(|frame: &[u8]| {
    if let Ok(envelope) = Envelope::from_bytes(frame) {
        // What decodes must re-encode to a frame that decodes to the same envelope and id.
        let again = Envelope::from_bytes(&envelope.to_bytes().expect("re-encode")).expect("re-decode");
        assert_eq!(again.id(), envelope.id());
    }
});
