//! Resumable sessions, end to end in the core: the agent's engine and a client,
//! joined through a small relay that does what `docs/protocol.md` (section 8) asks
//! of one (a `Suspend` to each side that stays or comes back, the sides' frames
//! dropped until their `Resume`, the two `Resume`s exchanged once both are there),
//! over links that are cut anywhere, their frames in flight lost. Also a channel
//! fed `DataAt` frames dropped, duplicated and reordered at will.

extern crate std;

use std::vec::Vec;

use proptest::prelude::*;

use crate::client::{Client, ClientEvent};
use crate::session::{Agent, AgentConfig, ChannelHandle, Event};
use crate::testing::{authenticated, handshake};
use crate::wire::{self, Bytes, Exit, Frame, Kind, Stream};
use crate::{Duration, Instant};

type Engine = Agent<2, 1, [u8; 4096]>;
type Cli = Client<1, [u8; 4096]>;

const HOLD: u32 = 600;

struct Sim {
    agent: Engine,
    client: Cli,
    /// The relay and the two links.
    net: Relay,
    channel: Option<ChannelHandle>,
    /// What the agent's process writes, and how much of it it wrote.
    output: Vec<u8>,
    written: usize,
    /// What the user types, and how much the client took.
    input: Vec<u8>,
    typed: usize,
    got_output: Vec<u8>,
    got_input: Vec<u8>,
    exited: bool,
    accepted: bool,
    closed: Option<Exit>,
    now: Instant,
    buf: Vec<u8>,
}

fn encode(f: Frame) -> Vec<u8> {
    let mut b = std::vec![0u8; f.buffer_len()];
    let n = f.encode(&mut b).unwrap();
    b.truncate(n);
    b
}

impl Sim {
    fn new(output: Vec<u8>, input: Vec<u8>) -> Sim {
        let config = AgentConfig {
            features: wire::features::EXEC | wire::features::RESUME,
            window: 8192,
            ..AgentConfig::default()
        };
        let now = Instant(0);
        let mut sim = Sim {
            agent: authenticated(config, now),
            client: Client::new(1, 8192),
            net: Relay::new(),
            channel: None,
            output,
            written: 0,
            input,
            typed: 0,
            got_output: Vec::new(),
            got_input: Vec::new(),
            exited: false,
            accepted: false,
            closed: None,
            now,
            buf: std::vec![0u8; 32 * 1024],
        };
        let kind = Kind::Exec {
            argv: Bytes(b"cat\0"),
        };
        let n = sim.client.open(kind, "", &mut sim.buf).unwrap();
        // The relay opens it on the agent, resumable from its start, and tells the
        // client before the agent's `Accept`.
        let resumable = |token| Frame::Resumable {
            sid: 1,
            hold: HOLD,
            token,
        };
        sim.net.a.down.push_back(encode(resumable("")));
        sim.net.a.down.push_back(sim.buf[..n].to_vec());
        sim.net.c.down.push_back(encode(resumable("token")));
        // Faults start once the session runs: before its `Accept` it is not
        // resumable (a cut then ends it).
        while !sim.accepted {
            sim.agent_step();
            sim.net.step(true);
            sim.net.step(false);
            sim.client_step();
        }
        sim
    }

    /// The side comes back on a new link, and is asked where it stands.
    fn reconnect(&mut self, agent: bool) {
        if agent {
            if self.net.a.connected {
                return;
            }
            self.agent.reconnect(self.now);
            handshake(&mut self.agent, self.now);
            self.net.back(true);
        } else {
            if self.net.c.connected || self.client.reattach().is_err() {
                return;
            }
            self.net.back(false);
        }
    }

    /// The agent's side: its driver and engine take one frame, then send.
    fn agent_step(&mut self) {
        if let Some(msg) = self.net.a.down.pop_front() {
            match self.agent.handle_frame(self.now, &msg).unwrap() {
                Some(Event::Open { session, .. }) => {
                    self.agent.accept(session).unwrap();
                    self.channel = Some(session.main());
                }
                Some(Event::Data { channel, data }) => {
                    self.got_input.extend_from_slice(data);
                    self.agent.consumed(channel, data.len()).unwrap();
                }
                Some(Event::Eof { .. }) | None => {}
                Some(e) => panic!("agent event {e:?}"),
            }
        }
        if let Some(e) = self.agent.poll_event() {
            panic!("agent event {e:?}");
        }
        if let Some(ch) = self.channel {
            if self.written < self.output.len() {
                let n = self
                    .agent
                    .send_slice(ch, Stream::OUT, &self.output[self.written..])
                    .unwrap();
                self.written += n;
                if self.written == self.output.len() {
                    self.agent.finish(ch).unwrap();
                }
            }
            if !self.exited
                && self.written == self.output.len()
                && self.got_input.len() == self.input.len()
            {
                self.exited = true;
                self.agent.exited(ch.session(), Exit::Code(0), "").unwrap();
            }
        }
        while let Some(n) = self.agent.poll_transmit(self.now, &mut self.buf).unwrap() {
            if self.net.a.connected {
                self.net.a.up.push_back(self.buf[..n].to_vec());
            }
        }
    }

    /// The client's side: one frame in, its input typed, what it has sent.
    fn client_step(&mut self) {
        if let Some(msg) = self.net.c.down.pop_front() {
            match self.client.handle_frame(&msg).unwrap() {
                Some(ClientEvent::Data { data, .. }) => {
                    self.got_output.extend_from_slice(data);
                    let n = data.len();
                    self.client.consumed(0, n);
                }
                Some(ClientEvent::Closed { exit, .. }) => self.closed = Some(exit),
                Some(ClientEvent::Accepted) => self.accepted = true,
                Some(
                    ClientEvent::Eof { .. }
                    | ClientEvent::Resumable { .. }
                    | ClientEvent::Suspended
                    | ClientEvent::Resumed,
                )
                | None => {}
                Some(e) => panic!("client event {e:?}"),
            }
        }
        if self.typed < self.input.len() && !self.client.is_over() {
            if let Ok(n) = self.client.send_slice(0, &self.input[self.typed..]) {
                self.typed += n;
                if self.typed == self.input.len() {
                    self.client.finish(0).unwrap();
                }
            }
        }
        while let Some(n) = self.client.poll_transmit(&mut self.buf).unwrap() {
            if self.net.c.connected {
                self.net.c.up.push_back(self.buf[..n].to_vec());
            }
        }
    }

    fn invariant(&self) {
        assert!(
            self.output.starts_with(&self.got_output),
            "output not a prefix"
        );
        assert!(
            self.input.starts_with(&self.got_input),
            "input not a prefix"
        );
    }
}

mod forward;
mod relay;

use relay::Relay;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever is cut, and when: each side receives a prefix of what the other
    /// sent, and once the links are back, everything, exactly once, and the exit.
    #[test]
    fn a_session_cut_anywhere_delivers_everything_exactly_once(
        out_len in 0usize..40_000,
        in_len in 0usize..20_000,
        steps in proptest::collection::vec(0u8..=255, 0..3000),
    ) {
        let output: Vec<u8> = (0..out_len).map(|i| (i * 7 % 251) as u8).collect();
        let input: Vec<u8> = (0..in_len).map(|i| (i * 13 % 241) as u8).collect();
        let mut sim = Sim::new(output, input);
        for s in steps {
            match s {
                0..=59 => sim.agent_step(),
                60..=119 => sim.client_step(),
                120..=179 => sim.net.step(true),
                180..=239 => sim.net.step(false),
                240..=243 => { sim.net.cut(true); },
                244..=247 => { sim.net.cut(false); },
                248..=251 => sim.reconnect(true),
                _ => sim.reconnect(false),
            }
            sim.now = sim.now + Duration::from_millis(1);
            sim.invariant();
        }
        // The links come back and stay.
        sim.reconnect(true);
        sim.reconnect(false);
        for _ in 0..200_000 {
            if sim.closed.is_some() {
                break;
            }
            sim.agent_step();
            sim.net.step(true);
            sim.net.step(true);
            sim.client_step();
            sim.net.step(false);
            sim.net.step(false);
            sim.invariant();
        }
        prop_assert_eq!(sim.closed, Some(Exit::Code(0)));
        prop_assert_eq!(&sim.got_output, &sim.output);
        prop_assert_eq!(&sim.got_input, &sim.input);
    }
}

proptest! {
    /// `DataAt` frames dropped, duplicated and reordered: what the channel
    /// delivers is always a prefix of what was sent; resending from where it
    /// stands delivers the rest.
    #[test]
    fn a_channel_delivers_a_prefix_whatever_the_link_does(
        len in 1usize..20_000,
        cuts in proptest::collection::vec(1usize..2000, 1..40),
        order in proptest::collection::vec((0usize..64, any::<bool>()), 0..200),
    ) {
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        // The stream in frames of the given sizes.
        let mut frames = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < len {
            let n = cuts[i % cuts.len()].min(len - at);
            frames.push((at, n));
            at += n;
            i += 1;
        }
        let mut client: Cli = Client::new(1, u32::MAX);
        let mut buf = [0u8; 512];
        client.open(Kind::Exec { argv: Bytes(b"x\0") }, "", &mut buf).unwrap();
        let feed = |client: &mut Cli, f: Frame| -> Vec<u8> {
            match client.handle_frame(&encode(f)).unwrap() {
                Some(ClientEvent::Data { data, .. }) => data.to_vec(),
                _ => Vec::new(),
            }
        };
        feed(&mut client, Frame::Resumable { sid: 1, hold: 1, token: "" });
        feed(&mut client, Frame::Accept { sid: 1, window: 0 });
        let mut got = Vec::new();
        // The link: frames picked at random from those sent, some twice, some never.
        for (pick, dup) in order {
            let Some(&(at, n)) = frames.get(pick % frames.len()) else { continue };
            for _ in 0..if dup { 2 } else { 1 } {
                let f = Frame::DataAt {
                    sid: 1,
                    ch: 0,
                    stream: Stream::OUT,
                    offset: at as u64,
                    data: Bytes(&data[at..at + n]),
                };
                got.extend(feed(&mut client, f));
                prop_assert!(data.starts_with(&got));
            }
        }
        // A resume: the sender goes again from where the receiver stands.
        feed(&mut client, Frame::Suspend { sid: 1 });
        let n = client.poll_transmit(&mut buf).unwrap().unwrap();
        let Ok(Frame::Resume { offset, .. }) = Frame::decode(&buf[..n]) else {
            panic!("no Resume");
        };
        prop_assert_eq!(offset as usize, got.len());
        for &(at, n) in frames.iter().filter(|&&(at, n)| at + n > offset as usize) {
            let f = Frame::DataAt {
                sid: 1,
                ch: 0,
                stream: Stream::OUT,
                offset: at as u64,
                data: Bytes(&data[at..at + n]),
            };
            got.extend(feed(&mut client, f));
        }
        prop_assert_eq!(got, data);
    }
}

/// A suspended session the relay ends sends its `Close` at once (not after its
/// hold), and a session whose link is gone frees its place however its driver's
/// calls interleave with the engine's events.
#[test]
fn ended_sessions_free_their_places_while_suspended_or_detached() {
    let config = AgentConfig {
        features: wire::features::EXEC | wire::features::RESUME,
        ..AgentConfig::default()
    };
    let now = Instant(0);
    let mut agent: Engine = authenticated(config, now);
    let mut out = std::vec![0u8; 32 * 1024];
    let mut sent = |agent: &mut Engine| -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while let Some(n) = agent.poll_transmit(now, &mut out).unwrap() {
            frames.push(out[..n].to_vec());
        }
        frames
    };
    let open = |sid| Frame::Open {
        sid,
        window: 8192,
        kind: Kind::Exec {
            argv: Bytes(b"cat\0"),
        },
        account: "",
    };
    let session_of =
        |agent: &mut Engine, sid| match agent.handle_frame(now, &encode(open(sid))).unwrap() {
            Some(Event::Open { session, .. }) => session,
            e => panic!("{e:?}"),
        };
    let resumable = Frame::Resumable {
        sid: 1,
        hold: 600,
        token: "",
    };
    agent.handle_frame(now, &encode(resumable)).unwrap();
    let s1 = session_of(&mut agent, 1);
    agent.accept(s1).unwrap();
    sent(&mut agent);
    agent
        .handle_frame(now, &encode(Frame::Suspend { sid: 1 }))
        .unwrap();
    let answer = sent(&mut agent);
    assert!(matches!(
        Frame::decode(&answer[0]),
        Ok(Frame::Resume { sid: 1, .. })
    ));
    let close = Frame::Close {
        sid: 1,
        exit: Exit::Aborted(wire::ErrorCode::TERMINATED),
        reason: "the client ended the session",
    };
    let close = encode(close);
    let ev = agent.handle_frame(now, &close).unwrap();
    assert!(matches!(ev, Some(Event::Terminate { .. })), "{ev:?}");
    agent.exited(s1, Exit::Signal(1), "").unwrap();
    let end = sent(&mut agent);
    assert!(
        matches!(
            Frame::decode(&end[0]),
            Ok(Frame::Close {
                sid: 1,
                exit: Exit::Signal(1),
                ..
            })
        ),
        "{end:?}"
    );
    assert_eq!(agent.session_count(), 0);

    // A session that is not resumable ends with its link; its driver may say it
    // exited before it hears the engine's `Terminate`.
    let s2 = session_of(&mut agent, 2);
    agent.accept(s2).unwrap();
    sent(&mut agent);
    agent.reconnect(now);
    agent.exited(s2, Exit::Signal(1), "").unwrap();
    assert_eq!(agent.session_count(), 0);
    assert!(agent.poll_event().is_none());
}
