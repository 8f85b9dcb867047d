//! One table of frame types: the enum's order on the wire, `frame_type()`,
//! `FRAME_NAMES` and the table in `docs/protocol.md` all agree.

use agent_core::wire::{
    Bytes, ErrorCode, Exit, Frame, Hello, Kind, Stream, FRAME_NAMES, FRAME_TYPES,
};

/// One frame of every type, in order.
fn every_frame() -> Vec<Frame<'static>> {
    vec![
        Frame::Hello(Hello {
            version: 2,
            max_frame: 512,
            max_sessions: 1,
            features: 0,
        }),
        Frame::Challenge {
            nonce: Bytes(&[0; 32]),
        },
        Frame::Auth(agent_core::wire::Auth {
            public_key: Bytes(&[0; 32]),
            signature: Bytes(&[0; 64]),
            activation: "",
            account: "a",
        }),
        Frame::AuthOk { agent_id: "a" },
        Frame::Open {
            sid: 1,
            window: 1,
            kind: Kind::Forward,
            account: "",
        },
        Frame::Accept { sid: 1, window: 1 },
        Frame::Reject {
            sid: 1,
            code: ErrorCode::SPAWN,
            reason: "",
        },
        Frame::Data {
            sid: 1,
            ch: 0,
            stream: Stream::OUT,
            data: Bytes(b"x"),
        },
        Frame::Credit {
            sid: 1,
            ch: 0,
            bytes: 1,
        },
        Frame::Resize {
            sid: 1,
            cols: 1,
            rows: 1,
        },
        Frame::Eof { sid: 1, ch: 0 },
        Frame::Close {
            sid: 1,
            exit: Exit::Code(0),
            reason: "",
        },
        Frame::Signal { sid: 1, signal: 2 },
        Frame::Ping { nonce: 1 },
        Frame::Pong { nonce: 1 },
        Frame::Error {
            sid: 0,
            code: ErrorCode::PROTOCOL,
            message: "",
        },
        Frame::ChannelOpen {
            sid: 1,
            ch: 1,
            window: 1,
            host: "h",
            port: 1,
        },
        Frame::ChannelAccept {
            sid: 1,
            ch: 1,
            window: 1,
        },
        Frame::ChannelReject {
            sid: 1,
            ch: 1,
            code: ErrorCode::REFUSED,
            reason: "",
        },
        Frame::ChannelClose {
            sid: 1,
            ch: 1,
            reason: "",
        },
        Frame::Limit { sid: 1, rate: 1 },
        Frame::Notice {
            sid: 1,
            message: "",
        },
        Frame::Resumable {
            sid: 1,
            hold: 1,
            token: "",
        },
        Frame::Suspend { sid: 1 },
        Frame::Resume {
            sid: 1,
            ch: 0,
            offset: 0,
            limit: 0,
            eof: false,
            open: false,
        },
        Frame::Ack {
            sid: 1,
            ch: 0,
            offset: 0,
        },
        Frame::DataAt {
            sid: 1,
            ch: 0,
            stream: Stream::OUT,
            offset: 0,
            data: Bytes(b"x"),
        },
    ]
}

#[test]
fn the_enum_the_wire_the_names_and_the_docs_agree() {
    let frames = every_frame();
    assert_eq!(frames.len() as u32, FRAME_TYPES);
    for (i, f) in frames.iter().enumerate() {
        let mut buf = [0u8; 256];
        let n = f.encode(&mut buf).unwrap();
        assert_eq!(buf[0] as usize, i, "{f:?} is not type {i} on the wire");
        assert_eq!(f.frame_type() as usize, i, "frame_type() of {f:?}");
        let debug = format!("{f:?}");
        assert!(
            debug.starts_with(FRAME_NAMES[i]),
            "{debug} named {}",
            FRAME_NAMES[i]
        );
        assert_eq!(Frame::decode(&buf[..n]).unwrap(), *f);
    }
    // The first type past the table is unknown to the decoder.
    assert!(matches!(
        Frame::decode(&[FRAME_TYPES as u8, 0]),
        Err(agent_core::DecodeError::UnknownFrame { .. })
    ));
    // docs/protocol.md's table: `| N | `Name` | ...` in order, and nothing else.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    let rows: Vec<(usize, String)> = doc
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let n = cells.next()?.parse().ok()?;
            let name = cells.next()?.trim_matches('`').to_string();
            Some((n, name))
        })
        .collect();
    let want: Vec<(usize, String)> = FRAME_NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| (i, n.to_string()))
        .collect();
    assert_eq!(rows, want, "docs/protocol.md's frame table");
}
