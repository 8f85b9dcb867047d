//! Any flash contents: reading a provisioning image never panics, and an image that
//! reads back re-encodes to one that reads the same; its forwarding rules decide any
//! destination without panicking.
#![no_main]

use agent_core::provision::Provision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = Provision::decode(data) {
        let mut buf = vec![0u8; data.len().max(4096)];
        let n = image.encode(&mut buf).expect("an image that decoded fits again");
        assert_eq!(Provision::decode(&buf[..n]).expect("re-decodes"), image);
        if let Some(rules) = image.forward {
            for host in ["10.0.2.101", "plc.local", image.agent_id, ""] {
                for addr in [None, Some([10, 0, 2, 7].into()), Some([0; 4].into())] {
                    let _ = rules.check(host, addr, 80);
                }
            }
        }
    }
});
