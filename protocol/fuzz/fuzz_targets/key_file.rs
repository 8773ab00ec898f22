#![no_main]
//! The identity key file: a crafted file must be a clear error, never a panic or a huge allocation.

use libfuzzer_sys::fuzz_target;
use palaver_protocol::identity::keyfile;

fuzz_target!(|bytes: &[u8]| {
    let _ = keyfile::open(bytes, None, "fuzz");
});
