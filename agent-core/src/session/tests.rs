//! The engine against a scripted relay on a virtual clock.

use super::*;
use crate::wire::{Bytes, Frame, Hello, Kind, Stream};

extern crate std;
use std::collections::BTreeMap;
use std::vec::Vec;

struct Sim {
    agent: Agent<2>,
    now: Instant,
    /// The sessions the engine opened, by wire id.
    handles: BTreeMap<u32, SessionHandle>,
}

/// An event as a string with wire ids (handles are opaque), payloads as lengths.
fn describe(e: &Event) -> std::string::String {
    match *e {
        Event::Open {
            session,
            kind,
            account,
        } => {
            std::format!(
                "Open {{ sid: {}, kind: {kind:?}, account: {account:?} }}",
                session.sid()
            )
        }
        Event::Data { channel, data } => std::format!(
            "Data {{ sid: {}, ch: {}, len: {} }}",
            channel.session().sid(),
            channel.ch(),
            data.len()
        ),
        Event::Eof { channel } => {
            std::format!(
                "Eof {{ sid: {}, ch: {} }}",
                channel.session().sid(),
                channel.ch()
            )
        }
        Event::ChannelOpen {
            channel,
            host,
            port,
        } => std::format!(
            "ChannelOpen {{ sid: {}, ch: {}, host: {host:?}, port: {port} }}",
            channel.session().sid(),
            channel.ch()
        ),
        Event::ChannelClose { channel } => std::format!(
            "ChannelClose {{ sid: {}, ch: {} }}",
            channel.session().sid(),
            channel.ch()
        ),
        Event::Terminate { session } => std::format!("Terminate {{ sid: {} }}", session.sid()),
        Event::Abort { session, error } => {
            std::format!("Abort {{ sid: {}, error: {error:?} }}", session.sid())
        }
        Event::Resize {
            session,
            cols,
            rows,
        } => {
            std::format!(
                "Resize {{ sid: {}, cols: {cols}, rows: {rows} }}",
                session.sid()
            )
        }
        Event::Signal { session, signal } => {
            std::format!("Signal {{ sid: {}, signal: {signal} }}", session.sid())
        }
        ref e => std::format!("{e:?}"),
    }
}

/// Every frame `agent` wants to send now.
fn drain_all<const N: usize, const C: usize, B: Buffer>(
    agent: &mut Agent<N, C, B>,
    now: Instant,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = std::vec![0u8; agent.max_frame()];
    while let Some(n) = agent.poll_transmit(now, &mut buf).unwrap() {
        out.push(buf[..n].to_vec());
    }
    out
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
            handles: BTreeMap::new(),
        }
    }
    /// Everything the agent wants to send now.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        drain_all(&mut self.agent, self.now)
    }
    fn feed(&mut self, f: Frame) -> Result<Option<std::string::String>, ProtocolError> {
        let msg = enc(f);
        let ev = self.agent.handle_frame(self.now, &msg)?;
        if let Some(Event::Open { session, .. }) = ev {
            self.handles.insert(session.sid(), session);
        }
        Ok(ev.as_ref().map(describe))
    }
    /// The handle of session `sid`.
    fn h(&self, sid: u32) -> SessionHandle {
        self.handles[&sid]
    }
    /// Payload of every `Data` frame in `frames`, concatenated.
    fn data_of(frames: &[Vec<u8>]) -> Vec<u8> {
        frames
            .iter()
            .filter_map(|m| match Frame::decode(m).unwrap() {
                Frame::Data { data, .. } => Some(data.0.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
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
    s.agent.accept(s.h(1)).unwrap();
    s.agent.exited(s.h(1), Exit::Code(0), "").unwrap();
    let out = s.drain();
    assert!(matches!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Accept { sid: 1, .. }
    ));
    assert_eq!(
        Frame::decode(&out[1]).unwrap(),
        Frame::Eof { sid: 1, ch: 0 },
        "the process's output ended with it"
    );
    assert!(matches!(
        Frame::decode(&out[2]).unwrap(),
        Frame::Close {
            sid: 1,
            exit: Exit::Code(0),
            ..
        }
    ));
    assert_eq!(s.agent.session_count(), 1);
    // Its handle is stale now, even when the place is taken again.
    let old = s.h(1);
    assert!(s.open(4, 100).unwrap().starts_with("Open"));
    assert_eq!(s.agent.accept(old), Err(UseError::Stale));
    assert_eq!(
        s.agent.send_slice(old.main(), Stream::OUT, b"x"),
        Err(UseError::Stale)
    );
    assert_eq!(s.agent.exited(old, Exit::Code(1), ""), Err(UseError::Stale));
    assert_eq!(s.agent.session_count(), 2);
}

#[test]
fn a_duplicate_open_is_refused_alone() {
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
    assert_eq!(s.agent.handle_frame(s.now, &msg), Ok(None));
    assert!(!s.agent.is_closed(), "the link goes on");
    let out = s.drain();
    assert!(
        matches!(
            Frame::decode(&out[0]).unwrap(),
            Frame::Reject {
                sid: 1,
                code: ErrorCode::PROTOCOL,
                reason: "session 1 is already open on this agent",
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        s.agent.session_count(),
        1,
        "the session that has the id goes on"
    );
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
    let ev = s.agent.handle_frame(s.now, &msg).unwrap().unwrap();
    assert_eq!(
        describe(&ev),
        "Open { sid: 1, kind: Shell { term: \"\", cols: 0, rows: 0 }, account: \"deploy\" }"
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
    let out = s.h(1).main();
    assert_eq!(
        s.agent.send_slice(out, Stream::OUT, b"x"),
        Ok(1),
        "output may wait before the session is accepted"
    );
    assert!(s.drain().is_empty(), "nothing goes before Accept");
    s.agent.accept(s.h(1)).unwrap();
    assert_eq!(s.agent.send_slice(out, Stream::OUT, &[b'a'; 24]), Ok(24));
    let frames = s.drain();
    assert!(matches!(
        Frame::decode(&frames[0]).unwrap(),
        Frame::Accept { sid: 1, .. }
    ));
    assert_eq!(Sim::data_of(&frames).len(), 10, "only the granted window");
    assert!(s.drain().is_empty(), "the rest waits for credit");
    s.feed(Frame::Credit {
        sid: 1,
        ch: 0,
        bytes: 4,
    })
    .unwrap();
    assert_eq!(Sim::data_of(&s.drain()), b"aaaa");
    // The buffer holds 1 KiB: beyond that the driver waits.
    let room = s.agent.send_room(out);
    assert_eq!(room, 1024 - 11);
    assert_eq!(
        s.agent.send_slice(out, Stream::OUT, &[b'b'; 2000]),
        Ok(room)
    );
    assert_eq!(s.agent.send_slice(out, Stream::OUT, b"c"), Ok(0));
}

#[test]
fn output_goes_in_order_then_eof_then_close_and_nothing_after() {
    let mut s = Sim::ready();
    s.open(1, 100_000);
    let (h, out) = (s.h(1), s.h(1).main());
    s.agent.accept(h).unwrap();
    s.agent.send_slice(out, Stream::OUT, b"one ").unwrap();
    s.agent.send_slice(out, Stream::ERR, b"two ").unwrap();
    s.agent.send_slice(out, Stream::OUT, b"three").unwrap();
    s.agent.exited(h, Exit::Code(3), "").unwrap();
    assert_eq!(
        s.agent.send_slice(out, Stream::OUT, b"late"),
        Err(UseError::Finished)
    );
    assert_eq!(
        s.agent.exited(h, Exit::Code(4), ""),
        Err(UseError::Finished)
    );
    let raw = s.drain();
    let frames: Vec<Frame> = raw.iter().map(|m| Frame::decode(m).unwrap()).collect();
    let shown: Vec<std::string::String> = frames.iter().map(|f| std::format!("{f:?}")).collect();
    assert_eq!(shown.len(), 6, "{shown:#?}");
    assert!(
        matches!(frames[1], Frame::Data { stream: Stream::OUT, data, .. } if data.0 == b"one ")
    );
    assert!(
        matches!(frames[2], Frame::Data { stream: Stream::ERR, data, .. } if data.0 == b"two ")
    );
    assert!(
        matches!(frames[3], Frame::Data { stream: Stream::OUT, data, .. } if data.0 == b"three")
    );
    assert_eq!(frames[4], Frame::Eof { sid: 1, ch: 0 });
    assert_eq!(
        frames[5],
        Frame::Close {
            sid: 1,
            exit: Exit::Code(3),
            reason: ""
        }
    );
    assert_eq!(s.agent.session_count(), 0);
}

#[test]
fn a_process_that_exits_with_output_waiting_for_credit_closes_once_it_is_out() {
    let mut s = Sim::ready();
    s.open(1, 4);
    let h = s.h(1);
    s.agent.accept(h).unwrap();
    s.agent
        .send_slice(h.main(), Stream::OUT, b"12345678")
        .unwrap();
    s.agent.exited(h, Exit::Code(0), "").unwrap();
    assert_eq!(Sim::data_of(&s.drain()), b"1234");
    assert_eq!(s.agent.session_count(), 1, "not closed with output waiting");
    s.feed(Frame::Credit {
        sid: 1,
        ch: 0,
        bytes: 100,
    })
    .unwrap();
    let frames = s.drain();
    assert_eq!(Sim::data_of(&frames), b"5678");
    assert!(matches!(
        Frame::decode(frames.last().unwrap()).unwrap(),
        Frame::Close { sid: 1, .. }
    ));
}

#[test]
fn a_transmit_buffer_smaller_than_the_protocol_minimum_is_refused_not_dropped() {
    let mut s = Sim::ready();
    s.feed(Frame::Ping { nonce: 1 }).unwrap();
    let mut small = [0u8; 100];
    assert_eq!(
        s.agent.poll_transmit(s.now, &mut small),
        Err(UseError::BufferTooSmall { needed: 512 })
    );
    // Nothing was lost: the Pong is still there.
    assert_eq!(
        Frame::decode(&s.drain()[0]).unwrap(),
        Frame::Pong { nonce: 1 }
    );
    // A buffer smaller than the peer accepts makes smaller Data frames.
    s.open(1, 100_000);
    s.agent.accept(s.h(1)).unwrap();
    s.agent
        .send_slice(s.h(1).main(), Stream::OUT, &[7; 1000])
        .unwrap();
    let mut buf = [0u8; 600];
    let mut sizes = std::vec::Vec::new();
    while let Some(n) = s.agent.poll_transmit(s.now, &mut buf).unwrap() {
        if let Frame::Data { data, .. } = Frame::decode(&buf[..n]).unwrap() {
            sizes.push(data.0.len());
        }
    }
    assert_eq!(sizes.iter().sum::<usize>(), 1000);
    assert!(sizes.iter().all(|&n| n <= 600), "{sizes:?}");
}

#[test]
fn flow_violation_aborts_only_that_session() {
    let mut s = Sim::ready();
    s.open(1, 100);
    s.open(2, 100);
    s.agent.accept(s.h(1)).unwrap();
    s.agent.accept(s.h(2)).unwrap();
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
    // The driver stops it; the engine closes it as aborted, with the code.
    s.agent.exited(s.h(1), Exit::Signal(9), "").unwrap();
    let closed = s.drain();
    assert_eq!(
        Frame::decode(closed.last().unwrap()).unwrap(),
        Frame::Close {
            sid: 1,
            exit: Exit::Aborted(ErrorCode::FLOW_CONTROL),
            reason: "protocol violation: session 1: peer sent more data than its credit"
        }
    );
}

#[test]
fn consumed_input_returns_credit() {
    let mut s = Sim::ready();
    s.open(1, 100);
    s.agent.accept(s.h(1)).unwrap();
    let _ = s.drain();
    let chunk = std::vec![1u8; 20_000];
    s.feed(Frame::Data {
        sid: 1,
        ch: 0,
        stream: Stream::OUT,
        data: Bytes(&chunk),
    })
    .unwrap();
    s.agent.consumed(s.h(1).main(), 20_000).unwrap();
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
    s.agent.accept(s.h(1)).unwrap();
    let _ = s.drain();
    s.agent.finish(s.h(1).main()).unwrap();
    s.agent.exited(s.h(1), Exit::Signal(9), "killed").unwrap();
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
    s.agent.accept(s.h(1)).unwrap();
    let ev = s
        .feed(Frame::Close {
            sid: 1,
            exit: Exit::Aborted(ErrorCode::TERMINATED),
            reason: "",
        })
        .unwrap()
        .unwrap();
    assert_eq!(ev, "Terminate { sid: 1 }");
    // Output waiting is dropped: the peer does not want it. The Close says so.
    s.agent
        .send_slice(s.h(1).main(), Stream::OUT, b"unwanted")
        .unwrap();
    s.agent
        .exited(s.h(1), Exit::Signal(15), "terminated")
        .unwrap();
    let out = s.drain();
    assert_eq!(Sim::data_of(&out), b"", "{out:?}");
    assert_eq!(
        Frame::decode(out.last().unwrap()).unwrap(),
        Frame::Close {
            sid: 1,
            exit: Exit::Signal(15),
            reason: "terminated"
        }
    );
    assert_eq!(s.agent.session_count(), 0);
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
    // A late accept is refused; the driver's reject frees the slot.
    assert_eq!(s.agent.accept(s.h(1)), Err(UseError::Finished));
    assert!(s.drain().is_empty(), "no Accept for an ended session");
    s.agent
        .reject(s.h(1), ErrorCode::TERMINATED, "ended before it started")
        .unwrap();
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
fn a_session_request_that_cannot_be_read_is_refused_alone() {
    let mut s = Sim::ready();
    s.open(1, 100);
    // Open (4), sid 9, window 1, then a kind this version does not know (9).
    assert_eq!(
        s.agent.handle_frame(s.now, &[0x04, 0x09, 0x01, 0x09, 0x00]),
        Ok(None)
    );
    let out = s.drain();
    assert_eq!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Reject {
            sid: 9,
            code: ErrorCode::UNSUPPORTED,
            reason: "cannot read this session request (a newer kind of session?)"
        }
    );
    // A Close with an exit this version cannot read still ends its session.
    assert_eq!(
        s.agent
            .handle_frame(s.now, &[0x0b, 0x01, 0x07, 0x00, 0x00])
            .unwrap()
            .as_ref()
            .map(describe)
            .as_deref(),
        Some("Terminate { sid: 1 }")
    );
    assert!(s.agent.is_ready(), "the connection goes on");
}

#[test]
fn a_newer_hello_with_more_fields_is_understood() {
    let mut s = Sim::new();
    let _ = s.drain();
    let mut hello = enc(Frame::Hello(Hello {
        version: crate::PROTOCOL_VERSION,
        max_frame: 4096,
        max_sessions: 0,
        features: 0,
    }));
    hello.extend_from_slice(&[0x05, 0x01]);
    assert_eq!(s.agent.handle_frame(s.now, &hello), Ok(None));
    assert!(!s.agent.is_closed());
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
    session: SessionHandle,
    chans: BTreeMap<u16, ChannelHandle>,
}

impl Fwd {
    fn ready() -> Fwd {
        let now = Instant(0);
        let config = AgentConfig {
            features: wire::features::FORWARD | wire::features::EXEC,
            ..AgentConfig::default()
        };
        let mut agent = Agent::new(config, now);
        let _ = drain_all(&mut agent, now);
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
        let _ = drain_all(&mut agent, now);
        agent
            .handle_frame(now, &enc(Frame::AuthOk { agent_id: "a" }))
            .unwrap();
        let msg = enc(Frame::Open {
            sid: 1,
            window: 1000,
            kind: Kind::Forward,
            account: "",
        });
        let session = match agent.handle_frame(now, &msg) {
            Ok(Some(Event::Open {
                session,
                kind: Kind::Forward,
                account: "",
            })) => session,
            other => panic!("expected Open, got {other:?}"),
        };
        let mut f = Fwd {
            agent,
            now,
            session,
            chans: BTreeMap::new(),
        };
        f.agent.accept(session).unwrap();
        let out = f.drain();
        assert!(matches!(
            Frame::decode(&out[0]).unwrap(),
            Frame::Accept { sid: 1, .. }
        ));
        f
    }
    fn drain(&mut self) -> Vec<Vec<u8>> {
        drain_all(&mut self.agent, self.now)
    }
    fn c(&self, ch: u16) -> ChannelHandle {
        self.chans[&ch]
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
                channel,
                host: "127.0.0.1",
                port: 80,
            }) if channel.ch() == ch && channel.session() == self.session => {
                self.chans.insert(ch, channel);
                true
            }
            _ => false,
        }
    }
}

#[test]
fn forward_channels_have_independent_credit() {
    let mut f = Fwd::ready();
    assert!(f.open_ch(1, 10));
    assert!(f.open_ch(2, 10));
    f.agent.accept_channel(f.c(1)).unwrap();
    f.agent.accept_channel(f.c(2)).unwrap();
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
    // Channel 1 spends all its credit and stalls; channel 2 is unaffected.
    f.agent.send_slice(f.c(1), Stream::OUT, &[1; 50]).unwrap();
    f.agent.send_slice(f.c(2), Stream::OUT, &[2; 50]).unwrap();
    let raw = f.drain();
    let sent: Vec<Frame> = raw.iter().map(|m| Frame::decode(m).unwrap()).collect();
    let per = |ch: u16| -> usize {
        sent.iter()
            .map(|fr| match fr {
                Frame::Data { ch: c, data, .. } if *c == ch => data.0.len(),
                _ => 0,
            })
            .sum()
    };
    assert_eq!((per(1), per(2)), (10, 10));
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
    let more = f.drain();
    assert_eq!(Sim::data_of(&more), [1; 5]);
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
            channel: f.c(2),
            data: b"hi"
        })
    );
}

#[test]
fn channel_beyond_capacity_is_rejected_and_the_session_goes_on() {
    let mut f = Fwd::ready();
    for ch in 1..=3 {
        assert!(f.open_ch(ch, 10));
        if ch < 3 {
            f.agent.accept_channel(f.c(ch)).unwrap();
        }
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
        .reject_channel(f.c(3), ErrorCode::REFUSED, "connection refused")
        .unwrap();
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
fn a_channel_closes_by_itself_once_both_directions_ended_and_a_peer_abort_drops_its_output() {
    let mut f = Fwd::ready();
    assert!(f.open_ch(1, 100));
    f.agent.accept_channel(f.c(1)).unwrap();
    let _ = f.drain();
    let msg = enc(Frame::Eof { sid: 1, ch: 1 });
    let ev = f.agent.handle_frame(f.now, &msg).unwrap();
    assert_eq!(ev, Some(Event::Eof { channel: f.c(1) }));
    f.agent.send_slice(f.c(1), Stream::OUT, b"bye").unwrap();
    f.agent.finish(f.c(1)).unwrap();
    let raw = f.drain();
    let out: Vec<Frame> = raw.iter().map(|m| Frame::decode(m).unwrap()).collect();
    let shown: Vec<std::string::String> = out.iter().map(|x| std::format!("{x:?}")).collect();
    assert_eq!(shown.len(), 3, "{shown:#?}");
    assert!(matches!(out[0], Frame::Data { ch: 1, data, .. } if data.0 == b"bye"));
    assert_eq!(out[1], Frame::Eof { sid: 1, ch: 1 });
    assert_eq!(
        out[2],
        Frame::ChannelClose {
            sid: 1,
            ch: 1,
            reason: ""
        }
    );
    assert_eq!(
        f.agent.send_slice(f.c(1), Stream::OUT, b"x"),
        Err(UseError::Stale)
    );
    // Late data for the closed channel is ignored, not an error.
    let late = enc(Frame::Data {
        sid: 1,
        ch: 1,
        stream: Stream::OUT,
        data: Bytes(b"x"),
    });
    assert_eq!(f.agent.handle_frame(f.now, &late), Ok(None));
    // The peer aborts another channel: what waits is dropped, the driver's close
    // answers.
    assert!(f.open_ch(2, 100));
    f.agent.accept_channel(f.c(2)).unwrap();
    let _ = f.drain();
    f.agent.send_slice(f.c(2), Stream::OUT, &[9; 500]).unwrap();
    let msg = enc(Frame::ChannelClose {
        sid: 1,
        ch: 2,
        reason: "",
    });
    let ev = f.agent.handle_frame(f.now, &msg).unwrap();
    assert_eq!(ev, Some(Event::ChannelClose { channel: f.c(2) }));
    f.agent.close_channel(f.c(2), "").unwrap();
    let out = f.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(
        Frame::decode(&out[0]).unwrap(),
        Frame::ChannelClose {
            sid: 1,
            ch: 2,
            reason: ""
        }
    );
    // A connection that fails ends its channel with the reason, output dropped.
    assert!(f.open_ch(3, 100));
    f.agent.accept_channel(f.c(3)).unwrap();
    f.agent.send_slice(f.c(3), Stream::OUT, b"lost").unwrap();
    f.agent.close_channel(f.c(3), "connection reset").unwrap();
    let out = f.drain();
    assert_eq!(
        Frame::decode(out.last().unwrap()).unwrap(),
        Frame::ChannelClose {
            sid: 1,
            ch: 3,
            reason: "connection reset"
        }
    );
    assert_eq!(Sim::data_of(&out), b"");
    // The session ends: its channels go with it.
    assert!(f.open_ch(1, 100));
    f.agent.accept_channel(f.c(1)).unwrap();
    let close = enc(Frame::Close {
        sid: 1,
        exit: Exit::Code(0),
        reason: "",
    });
    let ev = f.agent.handle_frame(f.now, &close).unwrap();
    assert!(matches!(ev, Some(Event::Terminate { .. })));
    f.agent
        .exited(
            f.session,
            Exit::Aborted(ErrorCode::TERMINATED),
            "terminated",
        )
        .unwrap();
    let out = f.drain();
    assert!(matches!(
        Frame::decode(out.last().unwrap()).unwrap(),
        Frame::Close { sid: 1, .. }
    ));
    assert_eq!(f.agent.session_count(), 0);
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
    let Some(Event::Open { session, .. }) = f.agent.handle_frame(f.now, &msg).unwrap() else {
        panic!("expected Open");
    };
    f.agent.accept(session).unwrap();
    let msg = enc(Frame::ChannelOpen {
        sid: 2,
        ch: 1,
        window: 1,
        host: "h",
        port: 1,
    });
    let ev = f.agent.handle_frame(f.now, &msg).unwrap();
    assert!(matches!(ev, Some(Event::Abort { session: s, .. }) if s == session));
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
    let Some(Event::Open { session, .. }) = s.agent.handle_frame(s.now, &msg).unwrap() else {
        panic!("expected Open");
    };
    s.agent
        .handle_frame(
            s.now,
            &enc(Frame::Limit {
                sid: 1,
                rate: 25_000,
            }),
        )
        .unwrap();
    s.agent.accept(session).unwrap();
    let _ = s.drain();
    let start = s.now;
    let mut sent = 0usize;
    // A driver with endless output: keep the buffer full, send what the engine
    // lets go, sleep until poll_timeout.
    while s.now < start + Duration::from_secs(10) {
        while s
            .agent
            .send_slice(session.main(), Stream::OUT, &[0u8; 512])
            .unwrap()
            > 0
        {}
        let n = Sim::data_of(&s.drain()).len();
        sent += n;
        if n == 0 {
            let t = s.agent.poll_timeout().unwrap();
            assert!(t > s.now, "timer must move forward");
            s.now = t;
            s.agent.handle_timeout(s.now);
        }
    }
    // 10 s at 25 000 B/s, plus at most the initial bucket (5 000 B) and a wake-up.
    assert!((250_000..=255_000 + 4096).contains(&sent), "sent {sent}");
    // Lifting the limit (rate 0) lets output go at credit speed again.
    s.agent
        .handle_frame(s.now, &enc(Frame::Limit { sid: 1, rate: 0 }))
        .unwrap();
    let _ = s.drain();
    s.agent
        .send_slice(session.main(), Stream::OUT, &[0u8; 1000])
        .unwrap();
    assert!(Sim::data_of(&s.drain()).len() >= 1000);
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
            if let Some(&h) = s.handles.get(&1) {
                let _ = s.agent.reject(h, ErrorCode::SPAWN, &text);
                let _ = s.agent.exited(h, Exit::Code(0), &text);
                let _ = s.agent.reject_channel(h.main(), ErrorCode::UNREACHABLE, &text);
                let _ = s.agent.close_channel(h.main(), &text);
            }
            s.drain();
            let _ = s.feed(Frame::Error { sid: 0, code: ErrorCode::PROTOCOL, message: &text });
            let clipped: heapless::String<64> = clip(&text);
            prop_assert!(text.starts_with(clipped.as_str()));
            prop_assert!(clipped.len() > 64 - 4 || clipped.len() == text.len());
        }
    }
}

mod bytes {
    //! Whatever the driver writes and the peer grants, in any sizes and order, what
    //! goes out is exactly what was written, in order, within credit.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn output_is_sent_whole_in_order_within_credit(
            writes in proptest::collection::vec((0usize..3000, any::<bool>()), 1..40),
            grants in proptest::collection::vec(0u32..5000, 1..40),
            window in 0u32..4000,
        ) {
            let mut s = Sim::ready();
            s.open(1, window);
            let h = s.h(1);
            s.agent.accept(h).unwrap();
            let mut written: Vec<(Stream, u8)> = Vec::new();
            let mut sent: Vec<(Stream, u8)> = Vec::new();
            let mut credit = i64::from(window);
            let mut next = 0u8;
            let mut grants = grants.into_iter();
            for (len, err) in writes {
                let stream = if err { Stream::ERR } else { Stream::OUT };
                let data: Vec<u8> = (0..len).map(|i| next.wrapping_add(i as u8)).collect();
                let mut off = 0;
                // Write all of it, sending and granting as the buffer fills.
                while off < data.len() {
                    let n = s.agent.send_slice(h.main(), stream, &data[off..]).unwrap();
                    written.extend(data[off..off + n].iter().map(|b| (stream, *b)));
                    off += n;
                    for m in s.drain() {
                        if let Frame::Data { stream, data, .. } = Frame::decode(&m).unwrap() {
                            credit -= data.0.len() as i64;
                            prop_assert!(credit >= 0, "beyond credit");
                            sent.extend(data.0.iter().map(|b| (stream, *b)));
                        }
                    }
                    if n == 0 {
                        let g = grants.next().unwrap_or(4096).max(1);
                        credit += i64::from(g);
                        s.feed(Frame::Credit { sid: 1, ch: 0, bytes: g }).unwrap();
                    }
                }
                next = next.wrapping_add(len as u8);
            }
            s.agent.exited(h, Exit::Code(0), "").unwrap();
            loop {
                let frames = s.drain();
                let mut closed = false;
                for m in &frames {
                    match Frame::decode(m).unwrap() {
                        Frame::Data { stream, data, .. } => {
                            credit -= data.0.len() as i64;
                            prop_assert!(credit >= 0, "beyond credit");
                            sent.extend(data.0.iter().map(|b| (stream, *b)));
                        }
                        Frame::Close { .. } => closed = true,
                        _ => {}
                    }
                }
                if closed {
                    break;
                }
                credit += 4096;
                s.feed(Frame::Credit { sid: 1, ch: 0, bytes: 4096 }).unwrap();
            }
            prop_assert_eq!(sent, written);
        }
    }
}

#[test]
fn a_peer_cannot_close_channel_0_alone_nor_leak_a_refused_slot_with_credit() {
    let mut s = Sim::ready();
    s.open(1, 100);
    s.agent.accept(s.h(1)).unwrap();
    let _ = s.drain();
    let ev = s
        .feed(Frame::ChannelClose {
            sid: 1,
            ch: 0,
            reason: "",
        })
        .unwrap()
        .unwrap();
    assert!(
        ev.starts_with("Abort { sid: 1, error: UnknownChannel"),
        "{ev}"
    );
    // Told once: more junk on the session changes nothing.
    assert_eq!(
        s.feed(Frame::Credit {
            sid: 1,
            ch: 5,
            bytes: 1
        })
        .unwrap(),
        None
    );
    s.agent.exited(s.h(1), Exit::Signal(9), "").unwrap();
    let out = s.drain();
    assert!(matches!(
        Frame::decode(out.last().unwrap()).unwrap(),
        Frame::Close {
            sid: 1,
            exit: Exit::Aborted(ErrorCode::PROTOCOL),
            ..
        }
    ));
    assert_eq!(s.agent.session_count(), 0);
    // A session being refused ignores credit: its Reject still goes and frees it.
    s.open(2, 100);
    s.agent.reject(s.h(2), ErrorCode::SPAWN, "no").unwrap();
    assert_eq!(
        s.feed(Frame::Credit {
            sid: 2,
            ch: 5,
            bytes: 1
        })
        .unwrap(),
        None
    );
    let out = s.drain();
    assert!(matches!(
        Frame::decode(&out[0]).unwrap(),
        Frame::Reject { sid: 2, .. }
    ));
    assert_eq!(s.agent.session_count(), 0);
    // Nor can output end before the session was accepted.
    s.open(3, 100);
    assert_eq!(s.agent.finish(s.h(3).main()), Err(UseError::NotNow));
}

#[test]
fn output_that_alternates_streams_asks_for_acks_when_its_runs_run_out_and_never_stalls() {
    // A resumable exec whose program writes stdout and stderr in turn, two bytes
    // at a time: each write takes a run of the buffer, and only an `Ack` frees
    // one. The client acknowledges only when asked (or each 256 KiB).
    let mut s = Sim::ready();
    s.feed(Frame::Resumable {
        sid: 1,
        hold: 60,
        token: "",
    })
    .unwrap();
    s.open(1, 100_000);
    let (h, out) = (s.h(1), s.h(1).main());
    s.agent.accept(h).unwrap();
    s.drain();
    // The ask not answered yet, asks seen, and what the client received.
    let (mut asked, mut asks, mut received) = (None, 0, 0u64);
    let mut take = |s: &mut Sim, asked: &mut Option<u64>| {
        for m in s.drain() {
            if let Frame::DataAt { offset, data, .. } = Frame::decode(&m).unwrap() {
                if data.0.is_empty() {
                    *asked = Some(offset);
                    asks += 1;
                }
                received = received.max(offset + data.0.len() as u64);
            }
        }
        received
    };
    for i in 0..200 {
        let stream = if i % 2 == 0 { Stream::OUT } else { Stream::ERR };
        if s.agent.send_slice(out, stream, b"ab").unwrap() == 0 {
            // No room for another run: the buffer has asked for an `Ack`.
            let got = take(&mut s, &mut asked);
            let at = asked
                .take()
                .unwrap_or_else(|| panic!("write {i} waits, and nothing asked"));
            s.feed(Frame::Ack {
                sid: 1,
                ch: 0,
                offset: at.max(got),
            })
            .unwrap();
            let n = s.agent.send_slice(out, stream, b"ab").unwrap();
            assert_eq!(n, 2, "write {i} got no room from the Ack");
        }
        take(&mut s, &mut asked);
    }
    assert!(asks > 0, "the runs never ran out");
}
