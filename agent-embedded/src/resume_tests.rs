//! Sessions across a cut of the relay link (docs/protocol.md §8), on the host rig
//! playing the relay: a resumable console is held and sends again what was not
//! acknowledged, exactly once; every other session ends at the cut; a hold that
//! passes while the link is down ends its session.

extern crate std;

use agent_core::wire::{Bytes, ErrorCode, Exit, Frame, Kind, Stream};
use agent_core::Instant;

use crate::engine::RING;
use crate::rig::*;

/// The relay's hold in these tests, in seconds.
const HOLD: u32 = 60;

/// Append the output of `sid` in `sent` to what the client received, `got`. Every
/// frame of a resumable session is a `DataAt` that starts where the last one ended:
/// nothing is repeated and nothing skipped.
fn receive(sent: &Sent, sid: u32, got: &mut V<u8>) {
    for (text, raw) in sent {
        match Frame::decode(raw).unwrap() {
            Frame::DataAt {
                sid: s,
                ch: 0,
                offset,
                data,
                ..
            } if s == sid => {
                assert_eq!(offset, got.len() as u64, "a gap or a repeat: {text}");
                got.extend_from_slice(data.0);
            }
            Frame::Data { sid: s, .. } if s == sid => {
                panic!("Data, not DataAt, in a resumable session: {text}")
            }
            _ => {}
        }
    }
}

fn ack(rig: &mut Rig, sid: u32, offset: usize) {
    rig.feed(Frame::Ack {
        sid,
        ch: 0,
        offset: offset as u64,
    });
}

/// What the client types, as a resumable client sends it.
fn type_at(rig: &mut Rig, sid: u32, offset: u64, line: &[u8]) {
    rig.feed(Frame::DataAt {
        sid,
        ch: 0,
        stream: Stream::OUT,
        offset,
        data: Bytes(line),
    });
}

/// The frames `sent` holds, decoded.
fn frames(sent: &Sent) -> V<Frame<'_>> {
    sent.iter()
        .map(|(_, raw)| Frame::decode(raw).unwrap())
        .collect()
}

fn resumable_shell(rig: &mut Rig, sid: u32, hold: u32) {
    rig.feed(Frame::Resumable {
        sid,
        hold,
        token: "",
    });
    rig.open_shell(sid);
}

/// The relay on the new link suspends `sid`: the device answers where it stands.
fn suspend(rig: &mut Rig, sid: u32) -> Frame<'static> {
    rig.feed(Frame::Suspend { sid });
    let sent = rig.drain();
    assert_eq!(sent.len(), 1, "one answer per Suspend: {sent:?}");
    let raw = std::boxed::Box::leak(sent[0].1.clone().into_boxed_slice());
    Frame::decode(raw).unwrap()
}

#[test]
fn a_resumable_console_survives_a_link_drop_and_sends_again_what_was_not_acknowledged() {
    let mut rig = Rig::ready();
    resumable_shell(&mut rig, 1, HOLD);
    let mut got = V::new();
    let sent = rig.drain();
    assert!(sent[0].0.contains("Accept"), "{sent:?}");
    receive(&sent, 1, &mut got);
    let greeting = got.clone();
    assert!(greeting.ends_with(b"sesame> "));
    ack(&mut rig, 1, got.len());

    // A command whose output is longer than the buffer: it waits for acknowledgements.
    let line = b"count 200\r";
    type_at(&mut rig, 1, 0, line);
    let mut sent = rig.drain();
    let input_acked = |sent: &Sent| {
        frames(sent).contains(&Frame::Ack {
            sid: 1,
            ch: 0,
            offset: line.len() as u64,
        })
    };
    // A small frame is not acknowledged by itself (an `Ack` each 256 KiB)...
    assert!(!input_acked(&sent), "{sent:?}");
    // ...but at once when the client asks (an empty `DataAt`).
    type_at(&mut rig, 1, line.len() as u64, b"");
    sent.extend(rig.drain());
    assert!(input_acked(&sent), "the input is acknowledged: {sent:?}");
    receive(&sent, 1, &mut got);
    let unacked = got.len() - greeting.len();
    assert!(
        unacked > 0 && unacked <= RING,
        "no more than the buffer unacknowledged: {unacked}"
    );
    assert!(rig.drain().is_empty(), "it waits for the client's Ack");

    // The client acknowledges some; then the link drops before anything more goes.
    let acked = greeting.len() + unacked / 2;
    ack(&mut rig, 1, acked);
    rig.cut();
    assert_eq!(rig.engine.open_sessions(), 1, "held");

    // While the link is down the command goes on into the room the Ack freed, and
    // nothing is transmitted; the handshake timer of no connection changes nothing.
    let parts = rig.board.parts;
    rig.engine.pump(&mut rig.board);
    assert!(
        rig.board.parts > parts,
        "the console ran while the link was down"
    );
    assert!(rig.drain().is_empty(), "nothing sent without a link");
    rig.now = Instant(rig.now.0 + 30_000);
    rig.engine.on_timeout(rig.now, &mut rig.board);
    assert!(rig.drain().is_empty());
    assert_eq!(rig.engine.failure(), None);
    assert_eq!(
        rig.engine.open_sessions(),
        1,
        "still held: the hold is 60 s"
    );

    // A new link: its Hello first, the handshake, then the relay's Suspend.
    rig.now = Instant(rig.now.0 + 5_000);
    rig.connect();
    match suspend(&mut rig, 1) {
        Frame::Resume {
            sid: 1,
            ch: 0,
            offset,
            limit,
            eof: false,
            open: true,
        } => {
            assert_eq!(offset, line.len() as u64, "what the device received");
            assert!(limit >= offset, "{limit}");
        }
        f => panic!("expected Resume, got {f:?}"),
    }
    assert!(rig.drain().is_empty(), "nothing before the peer's Resume");

    // The client lost what was not acknowledged: it resumes from there.
    got.truncate(acked);
    rig.feed(Frame::Resume {
        sid: 1,
        ch: 0,
        offset: acked as u64,
        limit: acked as u64 + 64 * 1024,
        eof: false,
        open: true,
    });
    let want = [
        &greeting[..],
        b"count 200\r\n",
        counted(200).as_bytes(),
        b"sesame> ",
    ]
    .concat();
    for _ in 0..50 {
        let sent = rig.drain();
        receive(&sent, 1, &mut got);
        ack(&mut rig, 1, got.len());
        if got.len() >= want.len() {
            break;
        }
    }
    assert_eq!(S::from_utf8_lossy(&got), S::from_utf8_lossy(&want));

    // The session goes on as before.
    type_at(&mut rig, 1, line.len() as u64, b"exit\r");
    let sent = rig.drain();
    receive(&sent, 1, &mut got);
    assert!(got.ends_with(b"exit\r\n"), "{:?}", S::from_utf8_lossy(&got));
    ack(&mut rig, 1, got.len());
    let end = last(&rig.drain());
    assert!(end.contains("Close") && end.contains("Code(0)"), "{end}");
    assert_eq!(rig.engine.open_sessions(), 0);
}

#[test]
fn sessions_that_cannot_be_held_end_at_the_cut() {
    let rules = agent_core::provision::ForwardRules {
        allow: "10.0.2.0/24:80",
        deny: "",
    };
    let mut rig = Rig::ready_with(Some(rules));
    rig.open_shell(1); // not resumable
    resumable_shell(&mut rig, 2, HOLD);
    rig.open(3, Kind::Forward);
    rig.feed(Frame::ChannelOpen {
        sid: 3,
        ch: 1,
        window: 64 * 1024,
        host: "10.0.2.5",
        port: 80,
    });
    rig.drain();
    assert!(rig.engine.forwarding().dial(0).is_some());
    assert_eq!(rig.engine.forwarding().ports.in_use(), 1);

    rig.cut();
    assert_eq!(
        rig.engine.open_sessions(),
        1,
        "only the resumable shell stays"
    );
    // Its connection, being dialed, is dropped when the link's port hears back.
    let mut fwd = rig.engine.forwarding();
    assert_eq!(fwd.resolved(0, "10.0.2.5".parse().ok()), None);
    assert_eq!(fwd.ports.in_use(), 0, "the port is free");
    assert!(rig.drain().is_empty(), "their ends go nowhere");

    rig.connect();
    // The relay asks after each: the ended ones answer as gone.
    for sid in [1, 3] {
        match suspend(&mut rig, sid) {
            Frame::Close {
                sid: s,
                exit: Exit::Aborted(code),
                reason,
            } => {
                assert_eq!((s, code), (sid, ErrorCode::AGENT_GONE));
                assert_eq!(reason, "the session is no longer on this agent");
            }
            f => panic!("expected Close, got {f:?}"),
        }
    }
    assert!(matches!(suspend(&mut rig, 2), Frame::Resume { sid: 2, .. }));
    // The ended sessions' places are free again.
    assert_eq!(rig.exec(5, b"echo\0again\0").0, "again\r\n");
}

#[test]
fn a_hold_that_passes_while_the_link_is_down_ends_the_session() {
    let mut rig = Rig::ready();
    resumable_shell(&mut rig, 1, 2);
    rig.drain();
    rig.cut();
    assert_eq!(rig.engine.open_sessions(), 1);
    rig.now = Instant(rig.now.0 + 1_999);
    rig.engine.on_timeout(rig.now, &mut rig.board);
    assert_eq!(rig.engine.open_sessions(), 1, "within its hold");
    rig.now = Instant(rig.now.0 + 1);
    rig.engine.on_timeout(rig.now, &mut rig.board);
    assert_eq!(rig.engine.open_sessions(), 0, "its hold is over");
    assert!(rig.drain().is_empty());

    rig.connect();
    assert!(matches!(
        suspend(&mut rig, 1),
        Frame::Close {
            sid: 1,
            exit: Exit::Aborted(ErrorCode::AGENT_GONE),
            ..
        }
    ));
    // Its terminal went too: the device runs four sessions again.
    for sid in 2..=5 {
        rig.open_shell(sid);
    }
    let sent = rig.drain();
    assert!(!sent.iter().any(|(t, _)| t.contains("Reject")), "{sent:?}");
}
