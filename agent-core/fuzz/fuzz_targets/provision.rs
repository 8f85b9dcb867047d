//! Any flash contents: reading a provisioning image never panics, and an image that
//! reads back re-encodes to one that reads the same.
#![no_main]

use agent_core::provision::Provision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = Provision::decode(data) {
        let mut buf = vec![0u8; data.len().max(4096)];
        let n = image.encode(&mut buf).expect("an image that decoded fits again");
        assert_eq!(Provision::decode(&buf[..n]).expect("re-decodes"), image);
    }
});
