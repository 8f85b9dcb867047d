//! A client and an agent engine talking through a transparent relay, in memory:
//! every byte each side writes reaches the other's driver, in order, within
//! credit, and the ends are what the drivers said.

use super::*;
use crate::session::{Agent, AgentConfig, ChannelHandle, Event, SessionHandle};
use crate::Instant;

extern crate std;
use std::vec::Vec;

type Engine = Agent<2, 4, [u8; 256]>;
type Cli = Client<4, [u8; 256]>;

struct Pair {
    agent: Engine,
    client: Cli,
    now: Instant,
    /// What the agent's driver got: (channel, bytes), and its session.
    agent_got: Vec<(u16, Vec<u8>)>,
    session: Option<SessionHandle>,
    channels: Vec<ChannelHandle>,
    /// What the client's driver got.
    client_got: Vec<(u16, Vec<u8>)>,
    client_events: Vec<std::string::String>,
    agent_events: Vec<std::string::String>,
}

fn frame(f: Frame) -> Vec<u8> {
    let mut b = std::vec![0u8; f.buffer_len()];
    f.encode(&mut b).unwrap();
    b
}

impl Pair {
    fn new() -> Pair {
        let now = Instant(0);
        let config = AgentConfig {
            features: wire::features::EXEC | wire::features::FORWARD,
            window: 300,
            ..AgentConfig::default()
        };
        let agent: Engine = crate::testing::authenticated(config, now);
        Pair {
            agent,
            client: Client::new(7, 200),
            now,
            agent_got: Vec::new(),
            session: None,
            channels: Vec::new(),
            client_got: Vec::new(),
            client_events: Vec::new(),
            agent_events: Vec::new(),
        }
    }

    /// Carry frames both ways until neither side has anything to send; each driver
    /// writes out (and reports as consumed) everything it receives.
    fn run(&mut self) {
        let mut buf = std::vec![0u8; 32 * 1024];
        loop {
            let mut moved = false;
            while let Some(n) = self.client.poll_transmit(&mut buf).unwrap() {
                moved = true;
                let msg = buf[..n].to_vec();
                match self.agent.handle_frame(self.now, &msg).unwrap() {
                    Some(Event::Open { session, .. }) => {
                        self.session = Some(session);
                        self.agent.accept(session).unwrap();
                    }
                    Some(Event::Data { channel, data }) => {
                        self.agent_got.push((channel.ch(), data.to_vec()));
                        self.agent.consumed(channel, data.len()).unwrap();
                    }
                    Some(Event::ChannelOpen { channel, .. }) => {
                        self.channels.push(channel);
                        self.agent.accept_channel(channel).unwrap();
                    }
                    Some(e) => self.agent_events.push(std::format!("{e:?}")),
                    None => {}
                }
            }
            while let Some(n) = self.agent.poll_transmit(self.now, &mut buf).unwrap() {
                moved = true;
                let msg = buf[..n].to_vec();
                match self.client.handle_frame(&msg).unwrap() {
                    Some(ClientEvent::Data { ch, data, .. }) => {
                        self.client_got.push((ch, data.to_vec()));
                        self.client.consumed(ch, data.len());
                    }
                    Some(e) => self.client_events.push(std::format!("{e:?}")),
                    None => {}
                }
            }
            if !moved {
                break;
            }
        }
    }
}

fn joined(got: &[(u16, Vec<u8>)], ch: u16) -> Vec<u8> {
    got.iter()
        .filter(|(c, _)| *c == ch)
        .flat_map(|(_, d)| d.clone())
        .collect()
}

#[test]
fn an_exec_session_carries_input_and_output_whole_and_ends_with_the_exit() {
    let mut p = Pair::new();
    let mut open = std::vec![0u8; 256];
    let n = p
        .client
        .open(
            Kind::Exec {
                argv: wire::Bytes(b"cat\0"),
            },
            "",
            &mut open,
        )
        .unwrap();
    let msg = open[..n].to_vec();
    let Some(Event::Open { session, .. }) = p.agent.handle_frame(p.now, &msg).unwrap() else {
        panic!("no Open");
    };
    p.session = Some(session);
    p.agent.accept(session).unwrap();
    // 5 000 bytes each way through 256-byte buffers and 200/300-byte windows.
    let input: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let output: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let (mut i, mut o) = (0, 0);
    while i < input.len() || o < output.len() {
        i += p.client.send_slice(0, &input[i..]).unwrap();
        o += p
            .agent
            .send_slice(session.main(), Stream::OUT, &output[o..])
            .unwrap();
        p.run();
    }
    p.client.finish(0).unwrap();
    p.run();
    assert!(
        p.agent_events.iter().any(|e| e.starts_with("Eof")),
        "{:?}",
        p.agent_events
    );
    p.agent.exited(session, Exit::Code(3), "").unwrap();
    p.run();
    assert_eq!(joined(&p.agent_got, 0), input);
    assert_eq!(joined(&p.client_got, 0), output);
    assert_eq!(
        p.client_events,
        [
            "Accepted",
            "Eof { ch: 0 }",
            "Closed { exit: Code(3), reason: \"\" }"
        ]
    );
    assert!(p.client.is_over());
    assert_eq!(p.agent.session_count(), 0);
}

#[test]
fn forward_channels_open_carry_bytes_and_close_once_both_sides_are_done() {
    let mut p = Pair::new();
    let mut open = std::vec![0u8; 256];
    let n = p.client.open(Kind::Forward, "", &mut open).unwrap();
    let msg = open[..n].to_vec();
    let Some(Event::Open { session, .. }) = p.agent.handle_frame(p.now, &msg).unwrap() else {
        panic!("no Open");
    };
    p.agent.accept(session).unwrap();
    p.run();
    let a = p.client.open_channel("db", 5432).unwrap();
    let b = p.client.open_channel("web", 80).unwrap();
    assert_ne!(a, b);
    p.run();
    assert_eq!(p.channels.len(), 2);
    assert!(
        p.client_events
            .iter()
            .filter(|e| e.starts_with("ChannelAccepted"))
            .count()
            == 2
    );
    let (ca, cb) = (p.channels[0], p.channels[1]);
    let up: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let (mut sent, mut back) = (0, 0);
    while sent < up.len() || back < up.len() {
        sent += p.client.send_slice(a, &up[sent..]).unwrap();
        back += p.agent.send_slice(cb, Stream::OUT, &up[back..]).unwrap();
        p.run();
    }
    assert_eq!(joined(&p.agent_got, a), up);
    assert_eq!(joined(&p.client_got, b), up);
    // Channel a: both sides finish; the agent closes it, the client hears of it.
    p.client.finish(a).unwrap();
    p.agent.finish(ca).unwrap();
    p.run();
    assert!(
        p.client_events
            .iter()
            .any(|e| e == &std::format!("ChannelClosed {{ ch: {a}, reason: \"\" }}")),
        "{:?}",
        p.client_events
    );
    assert!(!p.agent.is_channel_live(ca));
    // Channel b: the client's local side fails; it is aborted.
    p.client.close_channel(b, "local read failed").unwrap();
    p.run();
    assert!(
        p.agent_events.iter().any(|e| e.starts_with("ChannelClose")),
        "{:?}",
        p.agent_events
    );
    // Its place and id are held until the agent answers.
    assert!(p.client.chan(b).is_some());
    p.agent.close_channel(cb, "").unwrap();
    p.run();
    assert!(!p.agent.is_channel_live(cb));
    assert!(p.client.chan(b).is_none());
    assert_eq!(
        p.client_events.last().map(std::string::String::as_str),
        Some(std::format!("ChannelClosed {{ ch: {b}, reason: \"\" }}").as_str())
    );
    // The client ends the session.
    p.client.close("done");
    p.run();
    assert!(p.agent_events.iter().any(|e| e.starts_with("Terminate")));
    p.agent
        .exited(session, Exit::Aborted(ErrorCode::TERMINATED), "terminated")
        .unwrap();
    p.run();
    assert_eq!(p.agent.session_count(), 0);
}

#[test]
fn a_peer_beyond_our_window_is_a_protocol_error_and_junk_is_refused() {
    let mut c: Cli = Client::new(1, 10);
    let mut out = std::vec![0u8; 64];
    c.open(
        Kind::Exec {
            argv: wire::Bytes(b"x\0"),
        },
        "",
        &mut out,
    )
    .unwrap();
    c.handle_frame(&frame(Frame::Accept { sid: 1, window: 5 }))
        .unwrap();
    let big = frame(Frame::Data {
        sid: 1,
        ch: 0,
        stream: Stream::OUT,
        data: wire::Bytes(&[0; 11]),
    });
    assert_eq!(
        c.handle_frame(&big),
        Err(ProtocolError::FlowControl { sid: 1 })
    );
    assert!(c.handle_frame(&[0x07, 0x01]).is_err());
    assert_eq!(
        c.handle_frame(&[0x30, 0x00]),
        Ok(None),
        "unknown frame types are skipped"
    );
    let mut small = [0u8; 10];
    assert!(matches!(
        c.poll_transmit(&mut small),
        Err(UseError::BufferTooSmall { .. })
    ));
}

#[test]
fn channels_wait_for_the_accept_and_nothing_is_sent_after_the_end() {
    let mut c: Cli = Client::new(1, 100);
    let mut out = std::vec![0u8; 1024];
    c.open(Kind::Forward, "", &mut out).unwrap();
    assert_eq!(c.open_channel("db", 1), Err(UseError::NotNow));
    c.handle_frame(&frame(Frame::Accept { sid: 1, window: 0 }))
        .unwrap();
    let ch = c.open_channel("db", 1).unwrap();
    assert_eq!(c.close_channel(0, "x"), Err(UseError::NotNow));
    // Sizes coalesce to the latest.
    c.resize(80, 24);
    c.resize(100, 30);
    for _ in 0..4 {
        c.signal(2).unwrap();
    }
    assert_eq!(c.signal(2), Err(UseError::NotNow));
    let mut sent = Vec::new();
    while let Some(n) = c.poll_transmit(&mut out).unwrap() {
        sent.push(std::format!("{:?}", Frame::decode(&out[..n]).unwrap()));
    }
    assert_eq!(sent[0], "Resize { sid: 1, cols: 100, rows: 30 }");
    assert_eq!(sent.len(), 6, "{sent:?}");
    assert!(sent[5].starts_with("ChannelOpen"));
    // A reject for a channel we do not have is ignored.
    let stray = frame(Frame::ChannelReject {
        sid: 1,
        ch: 99,
        code: ErrorCode::REFUSED,
        reason: "",
    });
    assert_eq!(c.handle_frame(&stray), Ok(None));
    // The Close goes before anything else, and nothing after it.
    c.close("bye");
    assert_eq!(c.send_slice(ch, b"x"), Ok(1));
    let n = c.poll_transmit(&mut out).unwrap().unwrap();
    assert!(matches!(
        Frame::decode(&out[..n]).unwrap(),
        Frame::Close { .. }
    ));
    assert_eq!(c.poll_transmit(&mut out), Ok(None));
    assert_eq!(c.send_slice(ch, b"x"), Err(UseError::Finished));
}

/// A forward client of windows 100 growing to 400, 300 for all channels together,
/// accepted, with channels `n` channels open and accepted.
fn sharing(n: u16) -> (Client<3, [u8; 16]>, Vec<u16>) {
    let mut c = Client::new(1, 100).growing(400).sharing(300);
    let mut out = std::vec![0u8; 1024];
    c.open(Kind::Forward, "", &mut out).unwrap();
    c.handle_frame(&frame(Frame::Accept { sid: 1, window: 0 }))
        .unwrap();
    let chs: Vec<u16> = (0..n).map(|_| c.open_channel("db", 1).unwrap()).collect();
    while c.poll_transmit(&mut out).unwrap().is_some() {}
    for &ch in &chs {
        c.handle_frame(&frame(Frame::ChannelAccept {
            sid: 1,
            ch,
            window: 100,
        }))
        .unwrap();
    }
    (c, chs)
}

/// `n` bytes arrive on `ch` and are written out; the credit it returns.
fn receive(c: &mut Client<3, [u8; 16]>, ch: u16, n: usize) -> Vec<u32> {
    let data = std::vec![0u8; n];
    let f = frame(Frame::Data {
        sid: 1,
        ch,
        stream: Stream::OUT,
        data: wire::Bytes(&data),
    });
    assert!(matches!(
        c.handle_frame(&f),
        Ok(Some(ClientEvent::Data { .. }))
    ));
    c.consumed(ch, n);
    let mut out = std::vec![0u8; 1024];
    let mut credit = Vec::new();
    while let Some(len) = c.poll_transmit(&mut out).unwrap() {
        if let Ok(Frame::Credit { bytes, .. }) = Frame::decode(&out[..len]) {
            credit.push(bytes);
        }
    }
    credit
}

#[test]
fn windows_grow_into_what_the_other_channels_leave_of_the_total() {
    let (mut c, chs) = sharing(2);
    let (a, b) = (chs[0], chs[1]);
    // a doubles to 200 (b holds 100 of the 300), then may not grow further.
    assert_eq!(receive(&mut c, a, 100), [200]);
    assert_eq!(receive(&mut c, a, 200), [200]);
    // b has no room left: it keeps its 100.
    assert_eq!(receive(&mut c, b, 100), [100]);
    // Once b is gone, a grows into the whole total, and never past it.
    let close = frame(Frame::ChannelClose {
        sid: 1,
        ch: b,
        reason: "",
    });
    c.handle_frame(&close).unwrap();
    assert_eq!(receive(&mut c, a, 200), [300]);
    assert_eq!(receive(&mut c, a, 300), [300]);
    assert_eq!(c.chan(a).map(|c| c.recv.window()), Some(300));
}

#[test]
fn an_aborted_channel_delivers_nothing_more_and_waits_for_the_answer() {
    let (mut c, chs) = sharing(3);
    let a = chs[0];
    assert_eq!(c.send_slice(a, b"unsent"), Ok(6));
    c.close_channel(a, "local write failed").unwrap();
    let mut out = std::vec![0u8; 1024];
    let n = c.poll_transmit(&mut out).unwrap().unwrap();
    assert_eq!(
        Frame::decode(&out[..n]).unwrap(),
        Frame::ChannelClose {
            sid: 1,
            ch: a,
            reason: "local write failed"
        },
        "what waited is dropped"
    );
    assert_eq!(c.poll_transmit(&mut out), Ok(None), "nothing after it");
    // Data and Eof the agent sent before it heard of it are not delivered.
    let data = frame(Frame::Data {
        sid: 1,
        ch: a,
        stream: Stream::OUT,
        data: wire::Bytes(b"late"),
    });
    assert_eq!(c.handle_frame(&data), Ok(None));
    assert_eq!(
        c.handle_frame(&frame(Frame::Eof { sid: 1, ch: a })),
        Ok(None)
    );
    assert_eq!(c.send_slice(a, b"x"), Err(UseError::Finished));
    // Every place is taken until the agent answers; then a is free.
    assert_eq!(c.open_channel("db", 1), Err(UseError::NotNow));
    let answer = frame(Frame::ChannelClose {
        sid: 1,
        ch: a,
        reason: "",
    });
    assert_eq!(
        c.handle_frame(&answer),
        Ok(Some(ClientEvent::ChannelClosed { ch: a, reason: "" }))
    );
    assert!(c.open_channel("db", 1).is_ok());
}

#[test]
fn a_channel_is_aborted_once_and_an_aborted_channel_cannot_finish() {
    let mut c: Cli = Client::new(1, 100);
    let mut out = std::vec![0u8; 1024];
    c.open(Kind::Forward, "", &mut out).unwrap();
    c.handle_frame(&frame(Frame::Accept { sid: 1, window: 0 }))
        .unwrap();
    let ch = c.open_channel("db", 1).unwrap();
    c.close_channel(ch, "first").unwrap();
    assert_eq!(c.close_channel(ch, "again"), Err(UseError::Finished));
    assert_eq!(c.finish(ch), Err(UseError::Finished));
    let mut closes = 0;
    while let Some(n) = c.poll_transmit(&mut out).unwrap() {
        closes += usize::from(matches!(
            Frame::decode(&out[..n]).unwrap(),
            Frame::ChannelClose { .. }
        ));
    }
    assert_eq!(closes, 1);
}

#[test]
fn an_ack_on_its_way_when_a_channel_is_aborted_is_no_violation() {
    let mut buf = std::vec![0u8; 4096];
    let mut client = resumable(Kind::Forward, 0);
    let ch = client.open_channel("db", 5432).unwrap();
    while client.poll_transmit(&mut buf).unwrap().is_some() {}
    feed(
        &mut client,
        Frame::ChannelAccept {
            sid: 7,
            ch,
            window: 1000,
        },
    )
    .unwrap();
    assert_eq!(client.send_slice(ch, &[b'x'; 100]).unwrap(), 100);
    while client.poll_transmit(&mut buf).unwrap().is_some() {}
    // The local side fails: what was sent is dropped; then the agent's Ack for
    // it, sent before it knew, arrives.
    client.close_channel(ch, "local write failed").unwrap();
    let ack = Frame::Ack {
        sid: 7,
        ch,
        offset: 100,
    };
    assert_eq!(feed(&mut client, ack), Ok(false));
    assert!(!client.is_over());
}

#[test]
fn an_end_after_bytes_lost_without_a_resume_is_an_error_not_a_short_stream() {
    let exec = Kind::Exec {
        argv: crate::wire::Bytes(b"x\0"),
    };
    let mut client = resumable(exec, 100);
    let at = |offset: u64| Frame::DataAt {
        sid: 7,
        ch: 0,
        stream: Stream::OUT,
        offset,
        data: crate::wire::Bytes(b"0123456789"),
    };
    assert_eq!(feed(&mut client, at(0)), Ok(true));
    // The frame at 10 is lost; the one at 20 cannot be delivered.
    assert_eq!(feed(&mut client, at(20)), Ok(false));
    assert_eq!(
        feed(&mut client, Frame::Eof { sid: 7, ch: 0 }),
        Err(ProtocolError::ResumeOffset { sid: 7 })
    );
}

/// A client whose session of `kind` the relay made resumable and the agent
/// accepted (announcing `window`).
fn resumable(kind: Kind, window: u32) -> Cli {
    let mut client: Cli = Client::new(7, 200);
    let mut buf = std::vec![0u8; 4096];
    client.open(kind, "", &mut buf).unwrap();
    let resumable = Frame::Resumable {
        sid: 7,
        hold: 60,
        token: "t",
    };
    client.handle_frame(&frame(resumable)).unwrap();
    client
        .handle_frame(&frame(Frame::Accept { sid: 7, window }))
        .unwrap();
    client
}

fn feed(client: &mut Cli, f: Frame) -> Result<bool, ProtocolError> {
    client.handle_frame(&frame(f)).map(|e| e.is_some())
}

/// Every frame the client has to send now.
fn transmitted(client: &mut Cli) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = std::vec![0u8; 4096];
    while let Some(n) = client.poll_transmit(&mut buf).unwrap() {
        out.push(buf[..n].to_vec());
    }
    out
}

#[test]
fn a_session_taken_up_by_another_client_goes_on_from_where_it_stood() {
    let shell = Kind::Shell {
        term: "xterm",
        cols: 80,
        rows: 24,
    };
    let mut first = resumable(shell, 1000);
    let out = |offset, data| Frame::DataAt {
        sid: 7,
        ch: 0,
        stream: Stream::OUT,
        offset,
        data: wire::Bytes(data),
    };
    assert_eq!(feed(&mut first, out(0, b"hello")), Ok(true));
    first.consumed(0, 5);
    assert_eq!(first.send_slice(0, b"abcdef"), Ok(6));
    transmitted(&mut first);
    let ack = Frame::Ack {
        sid: 7,
        ch: 0,
        offset: 2,
    };
    assert_eq!(feed(&mut first, ack), Ok(false));
    let (place, a, b) = first.place_now().unwrap();
    let expected = Place {
        hold: 60,
        received: 5,
        eof: false,
        acked: 2,
    };
    assert_eq!(place, expected);
    let input = [a, b].concat();
    assert_eq!(input, b"cdef");

    // A new client (a reloaded page) takes it up and answers the relay's Suspend.
    let mut second: Cli = Client::take_up(7, (200, 200), place, &input).unwrap();
    assert!(second.is_suspended() && second.is_resumable());
    assert!(
        transmitted(&mut second).is_empty(),
        "nothing before the Suspend"
    );
    assert_eq!(feed(&mut second, Frame::Suspend { sid: 7 }), Ok(true));
    let answer = transmitted(&mut second);
    assert_eq!(answer.len(), 1);
    assert!(
        matches!(
            Frame::decode(&answer[0]).unwrap(),
            Frame::Resume {
                ch: 0,
                offset: 5,
                limit: 205,
                eof: false,
                ..
            }
        ),
        "{:?}",
        Frame::decode(&answer[0])
    );
    // The agent had "abcd": "ef" goes again, at 4.
    let resume = Frame::Resume {
        sid: 7,
        ch: 0,
        offset: 4,
        limit: 104,
        eof: false,
        open: true,
    };
    assert_eq!(feed(&mut second, resume), Ok(true));
    let again: Vec<_> = transmitted(&mut second);
    assert!(
        again.iter().any(|f| matches!(
            Frame::decode(f).unwrap(),
            Frame::DataAt { offset: 4, data, .. } if data.0 == b"ef"
        )),
        "{again:?}"
    );
    // What the first client had is not delivered twice; what follows is.
    assert_eq!(feed(&mut second, out(0, b"hello")), Ok(false));
    assert_eq!(feed(&mut second, out(5, b"world")), Ok(true));

    // Input that does not fit is refused, not cut.
    let big = [0u8; 300];
    assert!(Cli::take_up(7, (200, 200), place, &big).is_err());
}

/// What the frames in `sent` are: (`Ack`s, empty `DataAt`s: asks for an `Ack`).
fn acks_and_asks(sent: &[Vec<u8>]) -> (usize, usize) {
    let decoded = sent.iter().map(|f| Frame::decode(f).unwrap());
    decoded.fold((0, 0), |(acks, asks), f| match f {
        Frame::Ack { .. } => (acks + 1, asks),
        Frame::DataAt { data, .. } if data.0.is_empty() => (acks, asks + 1),
        _ => (acks, asks),
    })
}

#[test]
fn a_receiver_acknowledges_every_256_kib_when_asked_and_at_the_end_not_per_frame() {
    // A window that never runs out here: this is about acknowledgements.
    let mut client: Cli = resumable_exec(1 << 24, 1000);
    // 4 MiB of output in frames of every size (a socket's reads), small ones too:
    // a small frame is no reason to acknowledge (a sender that waits asks).
    let sizes = [1usize, 100, 5000, 32 * 1024, 7, 20_000];
    let (mut offset, mut acks) = (0u64, 0);
    let chunk = [0u8; 32 * 1024];
    let mut i = 0;
    while offset < 4 << 20 {
        let n = sizes[i % sizes.len()];
        i += 1;
        let f = Frame::DataAt {
            sid: 7,
            ch: 0,
            stream: Stream::OUT,
            offset,
            data: wire::Bytes(&chunk[..n]),
        };
        assert_eq!(feed(&mut client, f), Ok(true));
        client.consumed(0, n);
        offset += n as u64;
        acks += acks_and_asks(&transmitted(&mut client)).0;
    }
    // One each time 256 KiB are due (a frame may carry it up to 32 KiB past).
    let (most, least) = (16, (4 << 20) / (288 * 1024));
    assert!(
        (least..=most).contains(&acks),
        "{acks} acks for 4 MiB in {i} frames, not {least}..={most}"
    );
    // An ask is answered at once, with everything received.
    let ask = Frame::DataAt {
        sid: 7,
        ch: 0,
        stream: Stream::OUT,
        offset,
        data: wire::Bytes(&[]),
    };
    assert_eq!(feed(&mut client, ask), Ok(false));
    let sent = transmitted(&mut client);
    assert!(
        sent.iter().any(|f| matches!(
            Frame::decode(f).unwrap(),
            Frame::Ack { offset: o, .. } if o == offset
        )),
        "{sent:?}"
    );
    // So is the end: one past the last byte acknowledges the `Eof` too.
    feed(&mut client, Frame::Eof { sid: 7, ch: 0 }).unwrap();
    let sent = transmitted(&mut client);
    assert!(
        sent.iter().any(|f| matches!(
            Frame::decode(f).unwrap(),
            Frame::Ack { offset: o, .. } if o == offset + 1
        )),
        "{sent:?}"
    );
}

/// A 1 MiB replay buffer, as the Linux agent gives a shell or exec (and the CLI a
/// forward session's input).
struct Big(std::boxed::Box<[u8]>);

impl Buffer for Big {
    fn new() -> Self {
        Big(std::vec![0u8; 1 << 20].into_boxed_slice())
    }
}

impl AsRef<[u8]> for Big {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Big {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// A resumable exec session's client receiving up to `window`, the agent's
/// `Accept` granting it `credit`.
fn resumable_exec<const C: usize, B: Buffer>(window: u32, credit: u32) -> Client<C, B> {
    let mut c: Client<C, B> = Client::new(7, window);
    let mut buf = std::vec![0u8; 4096];
    let exec = Kind::Exec {
        argv: wire::Bytes(b"x\0"),
    };
    c.open(exec, "", &mut buf).unwrap();
    let resumable = Frame::Resumable {
        sid: 7,
        hold: 60,
        token: "t",
    };
    c.handle_frame(&frame(resumable)).unwrap();
    let accept = Frame::Accept {
        sid: 7,
        window: credit,
    };
    c.handle_frame(&frame(accept)).unwrap();
    while c.poll_transmit(&mut buf).unwrap().is_some() {}
    c
}

/// A resumable exec session's client that sends through a replay buffer `B`,
/// with all the credit it can use.
fn sender<B: Buffer>() -> Client<1, B> {
    resumable_exec(1000, u32::MAX)
}

/// Frames `c` sends now, and the offset after its last `DataAt`.
fn drain<const C: usize, B: Buffer>(c: &mut Client<C, B>, sent: &mut u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = std::vec![0u8; 40 * 1024];
    while let Some(n) = c.poll_transmit(&mut buf).unwrap() {
        if let Ok(Frame::DataAt { offset, data, .. }) = Frame::decode(&buf[..n]) {
            *sent = offset + data.0.len() as u64;
        }
        out.push(buf[..n].to_vec());
    }
    out
}

#[test]
fn a_sender_with_a_large_replay_buffer_never_asks_and_a_small_one_asks_once_per_answer() {
    // Large: a full buffer is acknowledged by the receiver's own rule (every
    // 256 KiB), so the sender never asks, however the `Ack`s come: here a
    // receiver that acknowledges each 32 KiB, one round trip late (1 MiB in
    // flight), which each time left half the buffer waiting.
    let mut big: Client<1, Big> = sender();
    let (mut sent, mut acked, mut asks) = (0u64, 0u64, 0);
    let data = std::vec![1u8; 64 * 1024];
    while acked < 16 << 20 {
        while big.send_slice(0, &data).unwrap() > 0 {}
        asks += acks_and_asks(&drain(&mut big, &mut sent)).1;
        let late = sent.saturating_sub(1 << 20).max(acked);
        acked = (late + 32 * 1024).min(sent);
        let ack = Frame::Ack {
            sid: 7,
            ch: 0,
            offset: acked,
        };
        big.handle_frame(&frame(ack)).unwrap();
    }
    assert_eq!(asks, 0, "a 1 MiB replay buffer asked for Acks");

    // Small (256 bytes; the device's is 1 KiB): it asks once half waits, and
    // again only once that ask was answered, not at every `Ack` before.
    let mut small: Client<1, [u8; 256]> = sender();
    let mut sent = 0;
    assert_eq!(small.send_slice(0, &[2u8; 200]), Ok(200));
    let first = drain(&mut small, &mut sent);
    assert_eq!(acks_and_asks(&first), (0, 1), "{first:?}");
    let ack = |offset| Frame::Ack {
        sid: 7,
        ch: 0,
        offset,
    };
    // An Ack from before the ask (the receiver's own): still asked.
    small.handle_frame(&frame(ack(50))).unwrap();
    assert_eq!(small.send_slice(0, &[2u8; 100]), Ok(100));
    assert_eq!(acks_and_asks(&drain(&mut small, &mut sent)), (0, 0));
    // Its answer: the next ask may go, as half waits again.
    small.handle_frame(&frame(ack(200))).unwrap();
    assert_eq!(small.send_slice(0, &[2u8; 100]), Ok(100));
    assert_eq!(acks_and_asks(&drain(&mut small, &mut sent)), (0, 1));
    assert_eq!(sent, 400);
}

#[test]
fn with_prompt_acks_typed_input_is_asked_to_be_acknowledged_once_it_is_all_sent() {
    let shell = Kind::Shell {
        term: "xterm",
        cols: 80,
        rows: 24,
    };
    // Without: a typed line waits for the agent's own rule (each 256 KiB).
    let mut plain = resumable(shell, 1000);
    transmitted(&mut plain);
    assert_eq!(plain.send_slice(0, b"ls\r"), Ok(3));
    assert_eq!(acks_and_asks(&transmitted(&mut plain)), (0, 0));
    // With: the line, then an ask, once until it is answered.
    let mut prompt = resumable(shell, 1000).with_prompt_acks();
    transmitted(&mut prompt);
    assert_eq!(prompt.send_slice(0, b"ls\r"), Ok(3));
    let sent = transmitted(&mut prompt);
    assert_eq!(acks_and_asks(&sent), (0, 1), "{sent:?}");
    assert!(matches!(
        Frame::decode(sent.last().unwrap()).unwrap(),
        Frame::DataAt { offset: 3, data, .. } if data.0.is_empty()
    ));
    assert_eq!(prompt.send_slice(0, b"pwd\r"), Ok(4));
    assert_eq!(
        acks_and_asks(&transmitted(&mut prompt)),
        (0, 0),
        "asked already"
    );
    let ack = |offset| Frame::Ack {
        sid: 7,
        ch: 0,
        offset,
    };
    assert_eq!(feed(&mut prompt, ack(3)), Ok(false));
    // Its answer came, and "pwd\r" still waits: asked again.
    assert_eq!(acks_and_asks(&transmitted(&mut prompt)), (0, 1));
    assert_eq!(feed(&mut prompt, ack(7)), Ok(false));
    assert!(
        transmitted(&mut prompt).is_empty(),
        "nothing held, nothing asked"
    );
    let (place, a, b) = prompt.place_now().unwrap();
    assert_eq!(
        (place.acked, a.len() + b.len()),
        (7, 0),
        "nothing kept to save"
    );
}
