extern crate std;
use std::boxed::Box;
use std::string::ToString;
use std::vec;

use super::*;
use crate::DecodeError;
use proptest::prelude::*;

#[test]
fn data_frame_bytes() {
    let f = Frame::Data {
        sid: 300,
        ch: 0,
        stream: Stream::OUT,
        data: Bytes(b"ok"),
    };
    let mut buf = [0u8; 16];
    let n = f.encode(&mut buf).unwrap();
    // type 7, sid 300 = varint ac 02, ch 0, stream 0, len 2, "ok"
    assert_eq!(&buf[..n], &[0x07, 0xac, 0x02, 0x00, 0x00, 0x02, b'o', b'k']);
    assert_eq!(Frame::decode(&buf[..n]).unwrap(), f);
}

#[test]
fn open_carries_the_account_last() {
    let f = Frame::Open {
        sid: 3,
        window: 65536,
        kind: Kind::Forward,
        account: "deploy",
    };
    let mut buf = [0u8; 16];
    let n = f.encode(&mut buf).unwrap();
    // type 4, sid 3, window 65536, Kind::Forward, then "deploy"
    let want = [
        4, 3, 0x80, 0x80, 4, 2, 6, b'd', b'e', b'p', b'l', b'o', b'y',
    ];
    assert_eq!(&buf[..n], &want);
    assert_eq!(Frame::decode(&buf[..n]).unwrap(), f);
    // The version 1 layout (no account) is short by the account's length byte.
    assert_eq!(Frame::decode(&want[..6]), Err(DecodeError::Truncated));
}

#[test]
fn auth_carries_the_default_account_last() {
    let (key, sig) = ([1u8; 32], [2u8; 64]);
    let f = Frame::Auth(Auth {
        public_key: Bytes(&key),
        signature: Bytes(&sig),
        activation: "",
        account: "root",
    });
    let mut buf = [0u8; 128];
    let n = f.encode(&mut buf).unwrap();
    assert_eq!(n, 1 + 33 + 65 + 1 + 5);
    // type 2, the key and the signature, no activation code, then "root"
    assert_eq!(&buf[..2], &[2, 32]);
    assert_eq!(&buf[n - 6..n], &[0, 4, b'r', b'o', b'o', b't']);
    assert_eq!(Frame::decode(&buf[..n]).unwrap(), f);
    // The version 1 layout (no account) is short by the account.
    assert_eq!(Frame::decode(&buf[..n - 5]), Err(DecodeError::Truncated));
}

#[test]
fn account_names() {
    for ok in [
        "",
        "root",
        "deploy",
        "sesame-user",
        "john.doe",
        "svc_1",
        "a@b",
        "host$",
    ] {
        assert!(account_valid(ok), "{ok:?}");
    }
    let long = "a".repeat(ACCOUNT_MAX + 1);
    for bad in [
        "-x",
        ".",
        "..",
        "../etc",
        "a b",
        "a:b",
        "a\nb",
        "a/b",
        "é",
        long.as_str(),
    ] {
        assert!(!account_valid(bad), "{bad:?}");
    }
    assert!(account_valid(&long[1..]));
}

#[test]
fn payload_is_borrowed_not_copied() {
    let msg = [0x07, 0x01, 0x00, 0x00, 0x03, b'a', b'b', b'c'];
    let Frame::Data { data, .. } = Frame::decode(&msg).unwrap() else {
        panic!("not data")
    };
    assert!(core::ptr::eq(data.0.as_ptr(), msg[5..].as_ptr()));
}

#[test]
fn encode_into_small_buffer_fails_cleanly() {
    let f = Frame::Error {
        sid: 0,
        code: ErrorCode::AUTH,
        message: "a long enough message",
    };
    let mut buf = [0u8; 8];
    assert_eq!(
        f.encode(&mut buf),
        Err(crate::EncodeError::BufferTooSmall {
            needed: f.buffer_len()
        })
    );
}

#[test]
fn oversized_refused_before_parsing() {
    let msg = [0x0du8; 100];
    assert_eq!(
        Frame::decode_bounded(&msg, 64),
        Err(DecodeError::Oversized { len: 100, max: 64 })
    );
}

#[test]
fn argv_keeps_empty_arguments() {
    let argv = b"sh\0-c\0\0";
    assert!(argv_valid(argv));
    let v: heapless::Vec<&[u8], 4> = argv_iter(argv).collect();
    assert_eq!(&v[..], &[&b"sh"[..], b"-c", b""]);
    assert!(!argv_valid(b"sh"));
    assert!(!argv_valid(b""));
}

#[test]
fn with_sid_rewrites_session_frames_only() {
    let f = Frame::Credit {
        sid: 1,
        ch: 0,
        bytes: 5,
    };
    assert_eq!(f.with_sid(9).sid(), Some(9));
    assert_eq!(Frame::Ping { nonce: 1 }.with_sid(9).sid(), None);
}

fn frame_from(sel: u8, a: u32, b: u16, c: u64, bytes: &[u8], text: &str) -> Frame<'static> {
    // Leak to get 'static borrows: test-only, small.
    let bytes: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
    let text: &'static str = Box::leak(text.to_string().into_boxed_str());
    match sel % 27 {
        0 => Frame::Hello(Hello {
            version: b,
            max_frame: a,
            max_sessions: b,
            features: a,
        }),
        1 => Frame::Challenge {
            nonce: Bytes(bytes),
        },
        2 => Frame::Auth(Auth {
            public_key: Bytes(bytes),
            signature: Bytes(bytes),
            activation: text,
            account: text,
        }),
        3 => Frame::AuthOk { agent_id: text },
        4 => Frame::Open {
            sid: a,
            window: a,
            kind: match c % 4 {
                0 => Kind::Shell {
                    term: text,
                    cols: b,
                    rows: b,
                },
                1 => Kind::Exec { argv: Bytes(bytes) },
                2 => Kind::Forward,
                _ => Kind::SshKey {
                    user: text,
                    key: text,
                    ttl: a,
                },
            },
            account: text,
        },
        5 => Frame::Accept { sid: a, window: a },
        6 => Frame::Reject {
            sid: a,
            code: ErrorCode(b),
            reason: text,
        },
        7 => Frame::Data {
            sid: a,
            ch: b,
            stream: Stream(c as u8),
            data: Bytes(bytes),
        },
        8 => Frame::Credit {
            sid: a,
            ch: b,
            bytes: a,
        },
        9 => Frame::Resize {
            sid: a,
            cols: b,
            rows: b,
        },
        10 => Frame::Eof { sid: a, ch: b },
        11 => Frame::Close {
            sid: a,
            exit: match c % 3 {
                0 => Exit::Code(a as i32),
                1 => Exit::Signal(b as u8),
                _ => Exit::Aborted(ErrorCode(b)),
            },
            reason: text,
        },
        12 => Frame::Signal {
            sid: a,
            signal: b as u8,
        },
        13 => Frame::Ping { nonce: c },
        14 => Frame::Pong { nonce: c },
        15 => Frame::Error {
            sid: a,
            code: ErrorCode(b),
            message: text,
        },
        16 => Frame::ChannelOpen {
            sid: a,
            ch: b,
            window: a,
            host: text,
            port: b,
        },
        17 => Frame::ChannelAccept {
            sid: a,
            ch: b,
            window: a,
        },
        18 => Frame::ChannelReject {
            sid: a,
            ch: b,
            code: ErrorCode(b),
            reason: text,
        },
        19 => Frame::ChannelClose {
            sid: a,
            ch: b,
            reason: text,
        },
        20 => Frame::Limit { sid: a, rate: a },
        22 => Frame::Resumable {
            sid: a,
            hold: a,
            token: text,
        },
        23 => Frame::Suspend { sid: a },
        24 => Frame::Resume {
            sid: a,
            ch: b,
            offset: c,
            limit: c.wrapping_add(u64::from(a)),
            eof: a.is_multiple_of(2),
            open: a.is_multiple_of(3),
        },
        25 => Frame::Ack {
            sid: a,
            ch: b,
            offset: c,
        },
        26 => Frame::DataAt {
            sid: a,
            ch: b,
            stream: Stream(b as u8),
            offset: c,
            data: Bytes(bytes),
        },
        _ => Frame::Notice {
            sid: a,
            message: text,
        },
    }
}

proptest! {
    #[test]
    fn decode_of_encode_is_identity(
        sel in any::<u8>(), a in any::<u32>(), b in any::<u16>(), c in any::<u64>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..300), text in ".{0,40}",
    ) {
        let f = frame_from(sel, a, b, c, &bytes, &text);
        let mut buf = vec![0u8; f.buffer_len()];
        let n = f.encode(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(Frame::decode(&buf).unwrap(), f);
        prop_assert_eq!(f.frame_type(), buf[0]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(msg in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(f) = Frame::decode(&msg) {
            // Whatever decodes re-encodes to the same bytes (canonical encoding),
            // except for non-minimal varints, which postcard accepts.
            let mut buf = vec![0u8; f.buffer_len()];
            f.encode(&mut buf).unwrap();
            prop_assert_eq!(Frame::decode(&buf).unwrap(), f);
        }
    }
}

proptest! {
    /// The relay's readdressing reads the same session id as the decoder and yields
    /// the same frame for the new session, for every frame type.
    #[test]
    fn rewriting_the_sid_is_with_sid(
        sel in any::<u8>(), a in any::<u32>(), b in any::<u16>(), c in any::<u64>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..300), text in ".{0,40}",
        sid in any::<u32>(),
    ) {
        let f = frame_from(sel, a, b, c, &bytes, &text);
        let mut buf = vec![0u8; f.buffer_len()];
        f.encode(&mut buf).unwrap();
        let Some(h) = SidHeader::read(&buf) else {
            let is_error = matches!(f, Frame::Error { .. });
            prop_assert!(f.sid().is_none() && !is_error);
            return Ok(());
        };
        prop_assert_eq!(h.sid, f.sid().unwrap_or(0));
        let again = match rewrite_sid(&mut buf, sid) {
            Some(start) => buf[start..].to_vec(),
            None => {
                let mut header = [0u8; SID_HEADER_MAX];
                let k = SidHeader { sid, ..h }.write(&mut header);
                let mut v = header[..k].to_vec();
                v.extend_from_slice(&buf[h.len..]);
                v
            }
        };
        prop_assert_eq!(Frame::decode(&again).unwrap(), f.with_sid(sid));
    }

    /// Whatever decodes, the header read without decoding names the same session.
    #[test]
    fn the_sid_header_agrees_with_the_decoder(msg in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let (Ok(f), Some(h)) = (Frame::decode(&msg), SidHeader::read(&msg)) {
            prop_assert_eq!(h.sid, f.sid().unwrap_or(0));
            prop_assert_eq!(h.frame_type, u32::from(f.frame_type()));
        }
    }
}
