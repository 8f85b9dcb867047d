//! The engine against a scripted relay on a virtual clock.

use super::*;
use crate::wire::{Bytes, Frame, Hello, Kind, Stream};

extern crate std;
use std::vec::Vec;

struct Sim {
    agent: Agent<2>,
    now: Instant,
}

fn enc(f: Frame) -> Vec<u8> {
    let mut b = std::vec![0u8; f.buffer_len()];
    f.encode(&mut b).unwrap();
    b
}

impl Sim {
    fn new() -> Self {
        let now = Instant(1_000);
        Sim {
            agent: Agent::new(AgentConfig::default(), now),
            now,
        }
    }
    /// Everything the agent wants to send now, decoded to owned debug strings and raw.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while let Some(n) = self.agent.poll_transmit(self.now, &mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }
    fn feed(&mut self, f: Frame) -> Result<Option<std::string::String>, ProtocolError> {
        let msg = enc(f);
        self.agent.handle_frame(self.now, &msg).map(|e| {
            e.map(|e| match e {
                // Keep payloads out of assertion messages.
                Event::Data { sid, ch, data } => {
                    std::format!("Data {{ sid: {sid}, ch: {ch}, len: {} }}", data.len())
                }
                e => std::format!("{e:?}"),
            })
        })
    }
    fn ready() -> Self {
        let mut s = Sim::new();
        let out = s.drain();
        assert!(matches!(Frame::decode(&out[0]).unwrap(), Frame::Hello(h) if h.max_sessions == 2));
        s.feed(Frame::Hello(Hello {
            version: crate::PROTOCOL_VERSION,
            max_frame: 4096,
            max_sessions: 0,
            features: 0,
        }))
        .unwrap();
        let nonce = [7u8; 32];
        let ev = s
            .feed(Frame::Challenge {
                nonce: Bytes(&nonce),
            })
            .unwrap()
            .unwrap();
        assert!(ev.starts_with("Challenge"));
        s.agent
            .authenticate([1; 32], [2; 64], "CODE", "sesame-user")
            .unwrap();
        let out = s.drain();
        match Frame::decode(&out[0]).unwrap() {
            Frame::Auth(a) => {
                assert_eq!(a.public_key.0, &[1; 32]);
                assert_eq!(a.signature.0, &[2; 64]);
                assert_eq!(a.activation, "CODE");
                assert_eq!(a.account, "sesame-user");
            }
            f => panic!("expected Auth, got {f:?}"),
        }
        let ev = s.feed(Frame::AuthOk { agent_id: "a1" }).unwrap().unwrap();
        assert!(ev.contains("a1"));
        assert!(s.agent.is_ready());
        s
    }
    fn open(&mut self, sid: u32, window: u32) -> Option<std::string::String> {
        self.feed(Frame::Open {
            sid,
            window,
            kind: Kind::Exec {
                argv: Bytes(b"true\0"),
            },
            account: "",
        })
        .unwrap()
    }
}

#[test]
fn open_before_auth_is_a_protocol_error() {
    let mut s = Sim::new();
    let _ = s.drain();
    let msg = enc(Frame::Open {
        sid: 1,
        window: 1,
        kind: Kind::Exec {
            argv: Bytes(b"x\0"),
        },
        account: "",
    });
    assert_eq!(
        s.agent.handle_frame(s.now, &msg),
        Err(ProtocolError::UnexpectedFrame { frame_type: 4 })
    );
    assert!(s.agent.is_closed());
}

#[test]
fn session_limit_rejects_with_reason_and_spawns_nothing() {
    let mut s = Sim::ready();
    assert!(s.open(1, 100).unwrap().starts_with("Open"));
    assert!(s.open(2, 100).unwrap().starts_with("Open"));
    assert_eq!(s.open(3, 100), None, "no event: the driver spawns nothing");
    let out = s.drain();
    match Frame::decode(&out[0]).unwrap() {
        Frame::Reject { sid, code, reason } => {
            assert_eq!(sid, 3);
            assert_eq!(code, ErrorCode::SESSION_LIMIT);
            assert_eq!(
                reason,
                "agent session limit reached (2 of 2 sessions in use)"
            );
        }
        f => panic!("expected Reject, got {f:?}"),
    }
    // Closing one frees its slot for the next open.
    s.agent.accept(1);
    s.agent.close(1, Exit::Code(0), "");
    let out = s.drain();
    assert!(matches!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Accept { sid: 1, .. }
    ));
    assert!(matches!(
        Frame::decode(&out[1]).unwrap(),
        Frame::Close {
            sid: 1,
            exit: Exit::Code(0),
            ..
        }
    ));
    assert_eq!(s.agent.session_count(), 1);
    assert!(s.open(4, 100).unwrap().starts_with("Open"));
}

#[test]
fn duplicate_open_is_connection_error() {
    let mut s = Sim::ready();
    s.open(1, 100);
    let msg = enc(Frame::Open {
        sid: 1,
        window: 1,
        kind: Kind::Exec {
            argv: Bytes(b"x\0"),
        },
        account: "",
    });
    assert_eq!(
        s.agent.handle_frame(s.now, &msg),
        Err(ProtocolError::DuplicateSession { sid: 1 })
    );
    assert!(s.agent.is_closed());
    let out = s.drain();
    assert!(matches!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Error { sid: 0, .. }
    ));
}

#[test]
fn open_hands_the_account_to_the_driver() {
    let mut s = Sim::ready();
    let msg = enc(Frame::Open {
        sid: 1,
        window: 100,
        kind: Kind::PIPE_SHELL,
        account: "deploy",
    });
    assert_eq!(
        s.agent.handle_frame(s.now, &msg),
        Ok(Some(Event::Open {
            sid: 1,
            kind: Kind::PIPE_SHELL,
            account: "deploy"
        }))
    );
}

#[test]
fn an_account_that_is_no_account_name_is_refused_before_the_driver_sees_it() {
    let mut s = Sim::ready();
    let long = "a".repeat(crate::wire::ACCOUNT_MAX + 1);
    for (sid, account) in [(1, "-oProxyCommand=x"), (2, "../root"), (3, long.as_str())] {
        let msg = enc(Frame::Open {
            sid,
            window: 100,
            kind: Kind::PIPE_SHELL,
            account,
        });
        assert_eq!(s.agent.handle_frame(s.now, &msg), Ok(None), "{account}");
        let out = s.drain();
        match Frame::decode(&out[0]).unwrap() {
            Frame::Reject {
                sid: got,
                code,
                reason,
            } => {
                assert_eq!((got, code), (sid, ErrorCode::NO_SUCH_USER));
                assert_eq!(
                    reason,
                    "not a valid account name (at most 64 bytes of letters, digits, . _ - @ $)"
                );
            }
            f => panic!("expected Reject, got {f:?}"),
        }
    }
    assert_eq!(s.agent.session_count(), 0, "no slot taken");
}

#[test]
fn auth_names_a_valid_default_account_or_is_not_sent() {
    let mut s = Sim::new();
    let _ = s.drain();
    s.feed(Frame::Hello(Hello {
        version: crate::PROTOCOL_VERSION,
        max_frame: 4096,
        max_sessions: 0,
        features: 0,
    }))
    .unwrap();
    s.feed(Frame::Challenge {
        nonce: Bytes(&[7u8; 32]),
    })
    .unwrap();
    let long = "a".repeat(crate::wire::ACCOUNT_MAX + 1);
    for bad in ["", "../root", "-x", long.as_str()] {
        assert_eq!(
            s.agent.authenticate([1; 32], [2; 64], "", bad),
            Err(AuthError::Account),
            "{bad:?}"
        );
        assert!(s.drain().is_empty(), "nothing sent for {bad:?}");
    }
    assert_eq!(
        std::format!("{}", AuthError::Account),
        "the default account must be an account name (at most 64 bytes of letters, digits, . _ - @ $)"
    );
    // Nothing changed: the agent may still answer, and the longest name goes whole.
    let longest = &long[1..];
    s.agent.authenticate([1; 32], [2; 64], "", longest).unwrap();
    let out = s.drain();
    match Frame::decode(&out[0]).unwrap() {
        Frame::Auth(a) => assert_eq!(a.account, longest),
        f => panic!("expected Auth, got {f:?}"),
    }
}

#[test]
fn a_peer_of_another_protocol_version_is_refused_at_hello() {
    let mut s = Sim::new();
    let _ = s.drain();
    let hello = Frame::Hello(Hello {
        version: 1,
        max_frame: 4096,
        max_sessions: 0,
        features: 0,
    });
    let err = s.feed(hello).unwrap_err();
    assert_eq!(err, ProtocolError::Version { peer: 1 });
    assert_eq!(
        std::format!("{err}"),
        "peer speaks protocol version 1, this side speaks 2"
    );
    assert!(s.agent.is_closed());
}

#[test]
fn sender_respects_peer_credit() {
    let mut s = Sim::ready();
    s.open(1, 10);
    let mut out = [0u8; 256];
    assert_eq!(
        s.agent.send_data(s.now, 1, 0, Stream::OUT, b"x", &mut out),
        Err(SendError::NotOpen),
        "no data before Accept is transmitted"
    );
    s.agent.accept(1);
    let _ = s.drain();
    let (n, len) = s
        .agent
        .send_data(s.now, 1, 0, Stream::OUT, &[b'a'; 25], &mut out)
        .unwrap();
    assert_eq!(n, 10, "only the granted window");
    assert!(
        matches!(Frame::decode(&out[..len]).unwrap(), Frame::Data { data, .. } if data.0.len() == 10)
    );
    assert_eq!(
        s.agent
            .send_data(s.now, 1, 0, Stream::OUT, b"a", &mut out)
            .unwrap(),
        (0, 0)
    );
    s.feed(Frame::Credit {
        sid: 1,
        ch: 0,
        bytes: 4,
    })
    .unwrap();
    assert_eq!(
        s.agent
            .send_data(s.now, 1, 0, Stream::OUT, &[b'a'; 25], &mut out)
            .unwrap()
            .0,
        4
    );
}

#[test]
fn flow_violation_aborts_only_that_session() {
    let mut s = Sim::ready();
    s.open(1, 100);
    s.open(2, 100);
    s.agent.accept(1);
    s.agent.accept(2);
    let _ = s.drain();
    let big = std::vec![0u8; 30_000];
    let data = Frame::Data {
        sid: 1,
        ch: 0,
        stream: Stream::OUT,
        data: Bytes(&big),
    };
    // The window is 64 KiB: two frames of 30 000 fit, the third exceeds the credit.
    for _ in 0..2 {
        assert!(s.feed(data).unwrap().unwrap().starts_with("Data"));
    }
    let ev = s.feed(data).unwrap().unwrap();
    assert!(ev.contains("Abort") && ev.contains("FlowControl"), "{ev}");
    // Session 2 still works.
    let ev = s
        .feed(Frame::Data {
            sid: 2,
            ch: 0,
            stream: Stream::OUT,
            data: Bytes(b"hi"),
        })
        .unwrap()
        .unwrap();
    assert!(ev.starts_with("Data"));
    // Session 1 ignores further input until the driver closes it.
    assert_eq!(
        s.feed(Frame::Data {
            sid: 1,
            ch: 0,
            stream: Stream::OUT,
            data: Bytes(b"x")
        })
        .unwrap(),
        None
    );
    assert!(!s.agent.is_closed());
}

#[test]
fn consumed_input_returns_credit() {
    let mut s = Sim::ready();
    s.open(1, 100);
    s.agent.accept(1);
    let _ = s.drain();
    let chunk = std::vec![1u8; 20_000];
    s.feed(Frame::Data {
        sid: 1,
        ch: 0,
        stream: Stream::OUT,
        data: Bytes(&chunk),
    })
    .unwrap();
    s.agent.consumed(1, 0, 20_000);
    let out = s.drain();
    assert_eq!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Credit {
            sid: 1,
            ch: 0,
            bytes: 20_000
        }
    );
}

#[test]
fn eof_is_sent_before_close_and_data_after_eof_refused() {
    let mut s = Sim::ready();
    s.open(1, 100);
    s.agent.accept(1);
    let _ = s.drain();
    s.agent.eof(1, 0);
    s.agent.close(1, Exit::Signal(9), "killed");
    let out = s.drain();
    assert_eq!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Eof { sid: 1, ch: 0 }
    );
    assert_eq!(
        Frame::decode(&out[1]).unwrap(),
        Frame::Close {
            sid: 1,
            exit: Exit::Signal(9),
            reason: "killed"
        }
    );
    assert_eq!(s.agent.session_count(), 0);
}

#[test]
fn peer_close_asks_driver_to_terminate() {
    let mut s = Sim::ready();
    s.open(1, 100);
    s.agent.accept(1);
    let ev = s
        .feed(Frame::Close {
            sid: 1,
            exit: Exit::Aborted(ErrorCode::TERMINATED),
            reason: "",
        })
        .unwrap()
        .unwrap();
    assert_eq!(ev, "Terminate { sid: 1 }");
}

#[test]
fn peer_close_before_the_driver_answers_ends_the_session_too() {
    // The driver may take time to start a session (an account to create): a Close
    // meanwhile must reach it, or it would start a session nobody waits for.
    let mut s = Sim::ready();
    s.open(1, 100);
    let ev = s
        .feed(Frame::Close {
            sid: 1,
            exit: Exit::Aborted(ErrorCode::TERMINATED),
            reason: "",
        })
        .unwrap()
        .unwrap();
    assert_eq!(ev, "Terminate { sid: 1 }");
    // A late accept does nothing; the driver's reject frees the slot.
    s.agent.accept(1);
    assert!(s.drain().is_empty(), "no Accept for an ended session");
    s.agent
        .reject(1, ErrorCode::TERMINATED, "ended before it started");
    let out = s.drain();
    assert_eq!(out.len(), 1);
    assert!(matches!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Reject {
            sid: 1,
            code: ErrorCode::TERMINATED,
            ..
        }
    ));
    assert_eq!(s.agent.session_count(), 0);
    // A second Close for it is a late frame, ignored.
    let late = s.feed(Frame::Close {
        sid: 1,
        exit: Exit::Aborted(ErrorCode::TERMINATED),
        reason: "",
    });
    assert_eq!(late, Ok(None));
}

#[test]
fn keepalive_and_dead_peer_on_virtual_clock() {
    let mut s = Sim::ready();
    let _ = s.drain();
    let t = s.agent.poll_timeout().unwrap();
    assert_eq!(t, s.now + Duration::from_secs(15));
    s.now = t;
    s.agent.handle_timeout(s.now);
    let out = s.drain();
    assert!(matches!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Ping { .. }
    ));
    // The relay stays silent: after 45 s without input the connection is lost.
    loop {
        let t = s.agent.poll_timeout().unwrap();
        s.now = t;
        s.agent.handle_timeout(s.now);
        let _ = s.drain();
        if let Some(ev) = s.agent.poll_event() {
            assert_eq!(ev, Event::ConnectionLost);
            break;
        }
    }
    assert_eq!(s.now, Instant(1_000) + Duration::from_secs(45));
}

#[test]
fn handshake_times_out() {
    let mut s = Sim::new();
    let _ = s.drain();
    s.now = s.agent.poll_timeout().unwrap();
    s.agent.handle_timeout(s.now);
    assert_eq!(s.agent.poll_event(), Some(Event::ConnectionLost));
    assert!(s.agent.is_closed());
}

#[test]
fn ping_answered_with_pong_and_unknown_frames_skipped() {
    let mut s = Sim::ready();
    s.feed(Frame::Ping { nonce: 42 }).unwrap();
    let out = s.drain();
    assert_eq!(Frame::decode(&out[0]).unwrap(), Frame::Pong { nonce: 42 });
    assert_eq!(s.agent.handle_frame(s.now, &[0x30, 0x01]), Ok(None));
    assert!(s.agent.is_ready());
}

#[test]
fn garbage_closes_connection_with_error() {
    let mut s = Sim::ready();
    let r = s.agent.handle_frame(s.now, &[0x07, 0x01]);
    assert!(matches!(r, Err(ProtocolError::Decode(_))));
    assert!(s.agent.is_closed());
}

/// A forward-capable engine: 2 sessions of 3 channels.
struct Fwd {
    agent: Agent<2, 3>,
    now: Instant,
}

impl Fwd {
    fn ready() -> Fwd {
        let now = Instant(0);
        let config = AgentConfig {
            features: wire::features::FORWARD | wire::features::EXEC,
            ..AgentConfig::default()
        };
        let mut agent = Agent::new(config, now);
        let mut buf = [0u8; 256];
        while agent.poll_transmit(now, &mut buf).is_some() {}
        let hello = enc(Frame::Hello(Hello {
            version: crate::PROTOCOL_VERSION,
            max_frame: 4096,
            max_sessions: 0,
            features: 0,
        }));
        agent.handle_frame(now, &hello).unwrap();
        let nonce = [7u8; 32];
        agent
            .handle_frame(
                now,
                &enc(Frame::Challenge {
                    nonce: Bytes(&nonce),
                }),
            )
            .unwrap();
        agent.authenticate([1; 32], [2; 64], "", "root").unwrap();
        while agent.poll_transmit(now, &mut buf).is_some() {}
        agent
            .handle_frame(now, &enc(Frame::AuthOk { agent_id: "a" }))
            .unwrap();
        let mut f = Fwd { agent, now };
        let _ = f.drain();
        let msg = enc(Frame::Open {
            sid: 1,
            window: 1000,
            kind: Kind::Forward,
            account: "",
        });
        assert!(matches!(
            f.agent.handle_frame(now, &msg),
            Ok(Some(Event::Open {
                sid: 1,
                kind: Kind::Forward,
                account: ""
            }))
        ));
        f.agent.accept(1);
        let out = f.drain();
        assert!(matches!(
            Frame::decode(&out[0]).unwrap(),
            Frame::Accept { sid: 1, .. }
        ));
        f
    }
    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while let Some(n) = self.agent.poll_transmit(self.now, &mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }
    fn open_ch(&mut self, ch: u16, window: u32) -> bool {
        let msg = enc(Frame::ChannelOpen {
            sid: 1,
            ch,
            window,
            host: "127.0.0.1",
            port: 80,
        });
        match self.agent.handle_frame(self.now, &msg).unwrap() {
            Some(Event::ChannelOpen {
                sid: 1,
                ch: c,
                host: "127.0.0.1",
                port: 80,
            }) => c == ch,
            _ => false,
        }
    }
}

#[test]
fn forward_channels_have_independent_credit() {
    let mut f = Fwd::ready();
    assert!(f.open_ch(1, 10));
    assert!(f.open_ch(2, 10));
    f.agent.accept_channel(1, 1);
    f.agent.accept_channel(1, 2);
    let out = f.drain();
    assert_eq!(
        Frame::decode(&out[0]).unwrap(),
        Frame::ChannelAccept {
            sid: 1,
            ch: 1,
            window: 64 * 1024
        }
    );
    assert_eq!(
        Frame::decode(&out[1]).unwrap(),
        Frame::ChannelAccept {
            sid: 1,
            ch: 2,
            window: 64 * 1024
        }
    );
    let mut buf = [0u8; 256];
    // Channel 1 spends all its credit and stalls; channel 2 is unaffected.
    assert_eq!(
        f.agent
            .send_data(f.now, 1, 1, Stream::OUT, &[1; 50], &mut buf)
            .unwrap()
            .0,
        10
    );
    assert_eq!(
        f.agent
            .send_data(f.now, 1, 1, Stream::OUT, &[1; 50], &mut buf)
            .unwrap(),
        (0, 0)
    );
    assert_eq!(
        f.agent
            .send_data(f.now, 1, 2, Stream::OUT, &[1; 50], &mut buf)
            .unwrap()
            .0,
        10
    );
    f.agent
        .handle_frame(
            f.now,
            &enc(Frame::Credit {
                sid: 1,
                ch: 1,
                bytes: 5,
            }),
        )
        .unwrap();
    assert_eq!(f.agent.send_credit(1, 1), 5);
    assert_eq!(f.agent.send_credit(1, 2), 0);
    // Input is delivered per channel.
    let msg = enc(Frame::Data {
        sid: 1,
        ch: 2,
        stream: Stream::OUT,
        data: Bytes(b"hi"),
    });
    let ev = f.agent.handle_frame(f.now, &msg).unwrap();
    assert_eq!(
        ev,
        Some(Event::Data {
            sid: 1,
            ch: 2,
            data: b"hi"
        })
    );
}

#[test]
fn channel_beyond_capacity_is_rejected_and_the_session_goes_on() {
    let mut f = Fwd::ready();
    for ch in 1..=3 {
        assert!(f.open_ch(ch, 10));
        f.agent.accept_channel(1, ch);
    }
    assert!(!f.open_ch(4, 10), "no event for the refused channel");
    let out = f.drain();
    let reject = out
        .iter()
        .map(|m| Frame::decode(m).unwrap())
        .find(|f| matches!(f, Frame::ChannelReject { .. }));
    assert_eq!(
        reject,
        Some(Frame::ChannelReject {
            sid: 1,
            ch: 4,
            code: ErrorCode::CHANNEL_LIMIT,
            reason: "channel limit reached (3 connections in this session)"
        })
    );
    // A failed connection frees its channel; the id can be used again.
    f.agent
        .reject_channel(1, 3, ErrorCode::REFUSED, "connection refused");
    let out = f.drain();
    assert_eq!(
        Frame::decode(&out[0]).unwrap(),
        Frame::ChannelReject {
            sid: 1,
            ch: 3,
            code: ErrorCode::REFUSED,
            reason: "connection refused"
        }
    );
    assert!(f.open_ch(4, 10));
    assert!(f.agent.is_ready());
}

#[test]
fn channel_half_close_then_close_and_peer_abort() {
    let mut f = Fwd::ready();
    assert!(f.open_ch(1, 100));
    f.agent.accept_channel(1, 1);
    let _ = f.drain();
    let msg = enc(Frame::Eof { sid: 1, ch: 1 });
    let ev = f.agent.handle_frame(f.now, &msg).unwrap();
    assert_eq!(ev, Some(Event::Eof { sid: 1, ch: 1 }));
    f.agent.eof(1, 1);
    f.agent.close_channel(1, 1, "");
    let out = f.drain();
    assert_eq!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Eof { sid: 1, ch: 1 }
    );
    assert_eq!(
        Frame::decode(&out[1]).unwrap(),
        Frame::ChannelClose {
            sid: 1,
            ch: 1,
            reason: ""
        }
    );
    // Late data for the closed channel is ignored, not an error.
    let late = enc(Frame::Data {
        sid: 1,
        ch: 1,
        stream: Stream::OUT,
        data: Bytes(b"x"),
    });
    assert_eq!(f.agent.handle_frame(f.now, &late), Ok(None));
    // The peer aborts another channel.
    assert!(f.open_ch(2, 100));
    f.agent.accept_channel(1, 2);
    let msg = enc(Frame::ChannelClose {
        sid: 1,
        ch: 2,
        reason: "",
    });
    let ev = f.agent.handle_frame(f.now, &msg).unwrap();
    assert_eq!(ev, Some(Event::ChannelClose { sid: 1, ch: 2 }));
}

#[test]
fn channel_open_on_an_exec_session_aborts_that_session() {
    let mut f = Fwd::ready();
    let msg = enc(Frame::Open {
        sid: 2,
        window: 100,
        kind: Kind::Exec {
            argv: Bytes(b"x\0"),
        },
        account: "",
    });
    f.agent.handle_frame(f.now, &msg).unwrap();
    f.agent.accept(2);
    let msg = enc(Frame::ChannelOpen {
        sid: 2,
        ch: 1,
        window: 1,
        host: "h",
        port: 1,
    });
    let ev = f.agent.handle_frame(f.now, &msg).unwrap();
    assert!(matches!(ev, Some(Event::Abort { sid: 2, .. })));
    assert!(f.open_ch(1, 10), "the forward session is untouched");
}

#[test]
fn unsupported_kinds_are_rejected_by_the_engine() {
    let mut s = Sim::ready(); // shell and exec only
    let msg = enc(Frame::Open {
        sid: 5,
        window: 1,
        kind: Kind::Forward,
        account: "",
    });
    assert_eq!(s.agent.handle_frame(s.now, &msg), Ok(None));
    let out = s.drain();
    assert!(matches!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Reject {
            sid: 5,
            code: ErrorCode::UNSUPPORTED,
            ..
        }
    ));
}

#[test]
fn limit_frame_paces_output_at_the_configured_rate() {
    let mut s = Sim::ready();
    let msg = enc(Frame::Open {
        sid: 1,
        window: u32::MAX / 2,
        kind: Kind::Exec {
            argv: Bytes(b"x\0"),
        },
        account: "",
    });
    s.agent.handle_frame(s.now, &msg).unwrap();
    s.agent
        .handle_frame(
            s.now,
            &enc(Frame::Limit {
                sid: 1,
                rate: 25_000,
            }),
        )
        .unwrap();
    s.agent.accept(1);
    let _ = s.drain();
    let start = s.now;
    let mut out = [0u8; 4096];
    let mut sent = 0usize;
    // A driver with endless output: send whenever allowed, sleep until poll_timeout.
    while s.now < start + Duration::from_secs(10) {
        let (n, _) = s
            .agent
            .send_data(s.now, 1, 0, Stream::OUT, &[0u8; 4000], &mut out)
            .unwrap();
        sent += n;
        if n == 0 {
            let t = s.agent.poll_timeout().unwrap();
            assert!(t > s.now, "timer must move forward");
            s.now = t;
            s.agent.handle_timeout(s.now);
            let _ = s.drain();
        }
    }
    // 10 s at 25 000 B/s, plus at most the initial bucket (5 000 B).
    assert!((250_000..=255_000 + 4000).contains(&sent), "sent {sent}");
    // Lifting the limit (rate 0) lets output go at credit speed again.
    s.agent
        .handle_frame(s.now, &enc(Frame::Limit { sid: 1, rate: 0 }))
        .unwrap();
    assert_eq!(
        s.agent
            .send_data(s.now, 1, 0, Stream::OUT, &[0u8; 4000], &mut out)
            .unwrap()
            .0,
        4000
    );
}

mod strings {
    //! Every string the core takes, from the network or from its driver, at any
    //! length and in any script, is clipped on a character boundary, never sliced
    //! through a character (issue: a 64-byte cut in a two-byte `é` aborted the agent).
    use super::*;
    use proptest::prelude::*;

    fn handshake(s: &mut Sim) {
        s.drain();
        let hello = Hello {
            version: crate::PROTOCOL_VERSION,
            max_frame: 4096,
            max_sessions: 0,
            features: 0,
        };
        s.feed(Frame::Hello(hello)).unwrap();
        s.feed(Frame::Challenge {
            nonce: Bytes(&[7u8; 32]),
        })
        .unwrap();
    }

    #[test]
    fn activation_code_cut_inside_a_character_is_clipped_before_it() {
        let mut s = Sim::new();
        handshake(&mut s);
        let code = std::format!("{}é", "a".repeat(63));
        s.agent.authenticate([1; 32], [2; 64], &code, "a").unwrap();
        let out = s.drain();
        match Frame::decode(&out[0]).unwrap() {
            Frame::Auth(a) => assert_eq!(a.activation, "a".repeat(63)),
            f => panic!("expected Auth, got {f:?}"),
        }
    }

    proptest! {
        #[test]
        fn no_string_input_panics(text in "\\PC{0,200}", pad in 0usize..130) {
            // Shift the text so that every cut point lands inside some character.
            let text = std::format!("{}{}", "a".repeat(pad), text);
            let mut s = Sim::new();
            handshake(&mut s);
            // Any text is sent whole as the account or refused, never clipped.
            match s.agent.authenticate([1; 32], [2; 64], &text, &text) {
                Ok(()) => prop_assert!(!text.is_empty() && crate::wire::account_valid(&text)),
                Err(_) => s.agent.authenticate([1; 32], [2; 64], &text, "a").unwrap(),
            }
            s.drain();
            let _ = s.feed(Frame::AuthOk { agent_id: &text });
            let _ = s.feed(Frame::Open { sid: 1, window: 4096, kind: Kind::Exec { argv: Bytes(b"true\0") }, account: &text });
            s.agent.reject(1, ErrorCode::SPAWN, &text);
            s.agent.close(1, Exit::Code(0), &text);
            s.agent.reject_channel(1, 0, ErrorCode::UNREACHABLE, &text);
            s.agent.close_channel(1, 0, &text);
            s.drain();
            let _ = s.feed(Frame::Error { sid: 0, code: ErrorCode::PROTOCOL, message: &text });
            let clipped: heapless::String<64> = clip(&text);
            prop_assert!(text.starts_with(clipped.as_str()));
            prop_assert!(clipped.len() > 64 - 4 || clipped.len() == text.len());
        }
    }
}
