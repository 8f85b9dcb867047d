//! Any bytes: decoding never panics, and whatever decodes re-encodes to a frame that
//! decodes to the same value.
#![no_main]

use agent_core::wire::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        let mut buf = vec![0u8; frame.buffer_len()];
        let n = frame.encode(&mut buf).expect("buffer_len is exact");
        assert_eq!(n, buf.len());
        assert_eq!(Frame::decode(&buf).expect("re-decodes"), frame);
    }
});
