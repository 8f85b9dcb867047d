//! The golden vectors of `tests/vectors/frames.txt`, checked against frames built here.

use agent_core::wire::{Auth, Bytes, ErrorCode, Exit, Frame, Hello, Kind, Stream};
use agent_core::DecodeError;

fn vectors() -> Vec<(String, Vec<u8>, Option<String>)> {
    let text = include_str!("../../tests/vectors/frames.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, rest) = l.split_once(':').expect("name: hex");
            let (hex, expect) = match rest.split_once("=>") {
                Some((h, e)) => (h, Some(e.trim().to_string())),
                None => (rest, None),
            };
            let bytes = hex
                .split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
                .collect();
            (name.trim().to_string(), bytes, expect)
        })
        .collect()
}

/// Bytes 0 to 31: the `challenge` vector's nonce and the `auth` vector's public key.
static NONCE: [u8; 32] = {
    let mut n = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        n[i] = i as u8;
        i += 1;
    }
    n
};

/// The signature of the `auth` vector: bytes 0x40 to 0x7f.
static SIGNATURE: [u8; 64] = {
    let mut s = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        s[i] = 0x40 + i as u8;
        i += 1;
    }
    s
};

fn expected(name: &str) -> Frame<'static> {
    let close = |exit, reason| Frame::Close {
        sid: 1,
        exit,
        reason,
    };
    match name {
        "auth" => Frame::Auth(Auth {
            public_key: Bytes(&NONCE),
            signature: Bytes(&SIGNATURE),
            activation: "",
            account: "sesame-user",
        }),
        "hello" => Frame::Hello(Hello {
            version: 2,
            max_frame: 32768,
            max_sessions: 20,
            features: 3,
        }),
        "challenge" => Frame::Challenge {
            nonce: Bytes(&NONCE),
        },
        "auth_ok" => Frame::AuthOk { agent_id: "gw-01" },
        "open_shell" => Frame::Open {
            sid: 1,
            window: 65536,
            kind: Kind::Shell {
                term: "xterm",
                cols: 80,
                rows: 24,
            },
            account: "",
        },
        "open_exec" => Frame::Open {
            sid: 7,
            window: 65536,
            kind: Kind::Exec {
                argv: Bytes(b"echo\0hi\0"),
            },
            account: "",
        },
        "open_true" => Frame::Open {
            sid: 1,
            window: 262144,
            kind: Kind::Exec {
                argv: Bytes(b"true\0"),
            },
            account: "",
        },
        "accept" => Frame::Accept {
            sid: 1,
            window: 65536,
        },
        "reject_limit" => Frame::Reject {
            sid: 2,
            code: ErrorCode::SESSION_LIMIT,
            reason: "limit reached",
        },
        "data_stdout" => Frame::Data {
            sid: 1,
            ch: 0,
            stream: Stream::OUT,
            data: Bytes(b"hi"),
        },
        "data_stderr" => Frame::Data {
            sid: 1,
            ch: 0,
            stream: Stream::ERR,
            data: Bytes(b"!"),
        },
        "credit" => Frame::Credit {
            sid: 1,
            ch: 0,
            bytes: 65536,
        },
        "resize" => Frame::Resize {
            sid: 1,
            cols: 132,
            rows: 50,
        },
        "eof" => Frame::Eof { sid: 1, ch: 0 },
        "close_exit_0" => close(Exit::Code(0), ""),
        "close_exit_3" => close(Exit::Code(3), ""),
        "close_signal_9" => close(Exit::Signal(9), ""),
        "close_aborted" => close(Exit::Aborted(ErrorCode::TERMINATED), "terminated"),
        "signal_int" => Frame::Signal { sid: 1, signal: 2 },
        "ping" => Frame::Ping { nonce: 1 },
        "pong" => Frame::Pong { nonce: 1 },
        "error_conn" => Frame::Error {
            sid: 0,
            code: ErrorCode::AUTH,
            message: "unknown key",
        },
        "unknown_error_code" => Frame::Error {
            sid: 5,
            code: ErrorCode(999),
            message: "",
        },
        "open_forward" => Frame::Open {
            sid: 3,
            window: 65536,
            kind: Kind::Forward,
            account: "",
        },
        "channel_open" => Frame::ChannelOpen {
            sid: 3,
            ch: 1,
            window: 65536,
            host: "127.0.0.1",
            port: 8080,
        },
        "channel_accept" => Frame::ChannelAccept {
            sid: 3,
            ch: 1,
            window: 65536,
        },
        "channel_reject" => Frame::ChannelReject {
            sid: 3,
            ch: 2,
            code: ErrorCode::REFUSED,
            reason: "refused",
        },
        "channel_close" => Frame::ChannelClose {
            sid: 3,
            ch: 1,
            reason: "",
        },
        "data_channel_1" => Frame::Data {
            sid: 3,
            ch: 1,
            stream: Stream::OUT,
            data: Bytes(b"ok"),
        },
        "limit_200kbit" => Frame::Limit {
            sid: 3,
            rate: 25_000,
        },
        "notice_joined" => Frame::Notice {
            sid: 3,
            message: "bob joined",
        },
        "resumable" => Frame::Resumable {
            sid: 3,
            hold: 600,
            token: "tk",
        },
        "suspend" => Frame::Suspend { sid: 3 },
        "resume" => Frame::Resume {
            sid: 3,
            ch: 0,
            offset: 300,
            limit: 65836,
            eof: false,
            open: true,
        },
        "ack" => Frame::Ack {
            sid: 3,
            ch: 0,
            offset: 300,
        },
        "data_at" => Frame::DataAt {
            sid: 3,
            ch: 0,
            stream: Stream::OUT,
            offset: 300,
            data: Bytes(b"ok"),
        },
        "open_exec_as_deploy" => Frame::Open {
            sid: 7,
            window: 65536,
            kind: Kind::Exec {
                argv: Bytes(b"echo\0hi\0"),
            },
            account: "deploy",
        },
        "open_ssh_key" => Frame::Open {
            sid: 4,
            window: 0,
            kind: Kind::SshKey {
                user: "root",
                key: "ssh-ed25519 AAAA",
                ttl: 60,
            },
            account: "",
        },
        other => panic!("vector {other} has no expected frame in this test"),
    }
}

fn error_name(e: DecodeError) -> &'static str {
    match e {
        DecodeError::Empty => "Empty",
        DecodeError::Oversized { .. } => "Oversized",
        DecodeError::UnknownFrame { .. } => "UnknownFrame",
        DecodeError::Truncated => "Truncated",
        DecodeError::Malformed => "Malformed",
        DecodeError::TrailingBytes => "TrailingBytes",
        _ => "other",
    }
}

#[test]
fn golden_vectors_decode_and_encode_exactly() {
    let vs = vectors();
    let mut good = 0;
    let mut bad = 0;
    for (name, bytes, expect) in vs {
        match expect {
            Some(err) => {
                let got = Frame::decode(&bytes).expect_err(&name);
                assert_eq!(error_name(got), err, "vector {name}");
                bad += 1;
            }
            None => {
                let want = expected(&name);
                let got = Frame::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(got, want, "vector {name} decodes");
                let mut buf = [0u8; 128];
                let n = want.encode(&mut buf).unwrap();
                assert_eq!(&buf[..n], &bytes[..], "vector {name} encodes");
                assert_eq!(want.buffer_len(), n, "vector {name} buffer_len");
                good += 1;
            }
        }
    }
    assert_eq!((good, bad), (38, 9), "vector file lost or gained lines");
}
