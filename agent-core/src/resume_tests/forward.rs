//! Resumable forward sessions: connections opened, connected, refused and ended
//! while the links are cut anywhere. The relay here also passes the sides' channel
//! lists (one `Resume` per channel, then channel 0's), and the drivers check that no
//! connection is made twice, none is lost, and each carries its bytes exactly once.

extern crate std;

use std::collections::VecDeque;
use std::vec::Vec;

use proptest::prelude::*;

use super::{encode, Relay};
use crate::client::{Client, ClientEvent};
use crate::session::{Agent, AgentConfig, ChannelHandle, Event};
use crate::testing::{authenticated, handshake};
use crate::wire::{self, ErrorCode, Frame, Kind, Stream};
use crate::{Duration, Instant};

type Engine = Agent<2, 4, [u8; 2048]>;
type Cli = Client<4, [u8; 2048]>;

/// Connections whose port is `k` with `k % 4 == 3` are refused by the destination.
fn refused(k: usize) -> bool {
    k % 4 == 3
}

/// Connections whose port is `k` with `k % 5 == 4` (and not refused) are reset by
/// the destination halfway through its output.
fn reset(k: usize) -> bool {
    k % 5 == 4 && !refused(k)
}

/// One connection: what the destination sends and what the local program sends.
struct Conn {
    output: Vec<u8>,
    input: Vec<u8>,
    /// Bytes the agent wrote of `output`, and the client typed of `input`.
    written: usize,
    typed: usize,
    got_output: Vec<u8>,
    got_input: Vec<u8>,
    /// The client's channel for it, while it has one.
    ch: Option<u16>,
    /// The agent's channel for it, once connected.
    at_agent: Option<ChannelHandle>,
    /// Times the agent connected it.
    dialed: u32,
    /// The destination reset it.
    was_reset: bool,
    /// How it ended at the client: closed (reason) or refused.
    ended: Option<Result<std::string::String, ErrorCode>>,
}

struct Sim {
    agent: Engine,
    client: Cli,
    net: Relay,
    conns: Vec<Conn>,
    /// Connections asked for, in order; the next one the client opens.
    next: usize,
    /// Channels the agent is connecting, by connection.
    dialing: VecDeque<(ChannelHandle, usize)>,
    accepted: bool,
    now: Instant,
    buf: Vec<u8>,
}

impl Sim {
    fn new(conns: Vec<(usize, usize)>) -> Sim {
        let config = AgentConfig {
            features: wire::features::FORWARD | wire::features::RESUME,
            window: 4096,
            ..AgentConfig::default()
        };
        let now = Instant(0);
        let conns = conns
            .into_iter()
            .enumerate()
            .map(|(k, (o, i))| Conn {
                output: (0..o).map(|j| ((j * 7 + k) % 251) as u8).collect(),
                input: (0..i).map(|j| ((j * 13 + k) % 241) as u8).collect(),
                written: 0,
                typed: 0,
                got_output: Vec::new(),
                got_input: Vec::new(),
                ch: None,
                at_agent: None,
                dialed: 0,
                was_reset: false,
                ended: None,
            })
            .collect();
        let mut sim = Sim {
            agent: authenticated(config, now),
            client: Client::new(1, 4096),
            net: Relay::new(),
            conns,
            next: 0,
            dialing: VecDeque::new(),
            accepted: false,
            now,
            buf: std::vec![0u8; 32 * 1024],
        };
        let n = sim.client.open(Kind::Forward, "", &mut sim.buf).unwrap();
        let resumable = |token| Frame::Resumable {
            sid: 1,
            hold: 600,
            token,
        };
        sim.net.a.down.push_back(encode(resumable("")));
        sim.net.a.down.push_back(sim.buf[..n].to_vec());
        sim.net.c.down.push_back(encode(resumable("token")));
        // Faults start once the session runs (before its `Accept` a cut ends it).
        while !sim.accepted {
            sim.agent_step();
            sim.net.step(true);
            sim.net.step(false);
            sim.client_step(false);
        }
        sim
    }

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

    fn conn_at_agent(&self, h: ChannelHandle) -> usize {
        self.conns
            .iter()
            .position(|c| c.at_agent == Some(h))
            .expect("a channel the agent's driver connected")
    }

    /// The agent's driver: one frame in, one connection made or refused, output
    /// written, what the engine sends.
    fn agent_step(&mut self) {
        if let Some(msg) = self.net.a.down.pop_front() {
            match self.agent.handle_frame(self.now, &msg).unwrap() {
                Some(Event::Open { session, .. }) => self.agent.accept(session).unwrap(),
                Some(Event::ChannelOpen { channel, port, .. }) => {
                    self.dialing.push_back((channel, usize::from(port)));
                }
                Some(Event::Data { channel, data }) => {
                    let k = self.conn_at_agent(channel);
                    self.conns[k].got_input.extend_from_slice(data);
                    self.agent.consumed(channel, data.len()).unwrap();
                }
                Some(Event::Eof { channel }) => {
                    let k = self.conn_at_agent(channel);
                    assert_eq!(self.conns[k].got_input, self.conns[k].input, "Eof early");
                }
                None => {}
                Some(e) => panic!("agent event {e:?}"),
            }
        }
        if let Some(e) = self.agent.poll_event() {
            panic!("agent event {e:?}");
        }
        if let Some((channel, k)) = self.dialing.pop_front() {
            if refused(k) {
                self.agent
                    .reject_channel(channel, ErrorCode::REFUSED, "refused")
                    .unwrap();
            } else {
                let c = &mut self.conns[k];
                assert_eq!(c.dialed, 0, "connection {k} made twice");
                c.dialed += 1;
                c.at_agent = Some(channel);
                self.agent.accept_channel(channel).unwrap();
            }
        }
        for k in 0..self.conns.len() {
            let c = &mut self.conns[k];
            let Some(h) = c.at_agent.filter(|h| self.agent.is_channel_live(*h)) else {
                continue;
            };
            if reset(k) && !c.was_reset && c.written >= c.output.len() / 2 {
                c.was_reset = true;
                self.agent.close_channel(h, "reset by peer").unwrap();
                continue;
            }
            if c.was_reset {
                continue;
            }
            if c.written < c.output.len() {
                let n = self
                    .agent
                    .send_slice(h, Stream::OUT, &c.output[c.written..])
                    .unwrap();
                c.written += n;
                if c.written == c.output.len() {
                    self.agent.finish(h).unwrap();
                }
            } else if c.output.is_empty() && c.written == 0 {
                c.written = usize::MAX; // (finished once)
                self.agent.finish(h).unwrap();
            }
        }
        while let Some(n) = self.agent.poll_transmit(self.now, &mut self.buf).unwrap() {
            if self.net.a.connected {
                self.net.a.up.push_back(self.buf[..n].to_vec());
            }
        }
    }

    fn conn_of(&self, ch: u16) -> usize {
        self.conns
            .iter()
            .position(|c| c.ch == Some(ch))
            .expect("a channel the client opened")
    }

    fn client_event(&mut self, ev: ClientEvent<'_>) {
        match ev {
            ClientEvent::Data { ch, data, .. } => {
                let k = self.conn_of(ch);
                self.conns[k].got_output.extend_from_slice(data);
                let n = data.len();
                self.client.consumed(ch, n);
            }
            ClientEvent::ChannelRejected { ch, code, .. } => {
                let k = self.conn_of(ch);
                assert!(refused(k), "connection {k} refused: {code:?}");
                self.conns[k].ch = None;
                self.conns[k].ended = Some(Err(code));
            }
            ClientEvent::ChannelClosed { ch, reason } => {
                let k = self.conn_of(ch);
                self.conns[k].ch = None;
                self.conns[k].ended = Some(Ok(reason.into()));
            }
            ClientEvent::Accepted => self.accepted = true,
            ClientEvent::Closed { exit, reason } => panic!("session closed: {exit:?} {reason}"),
            _ => {}
        }
    }

    /// The client's driver: one frame in, a connection opened if `open`, input
    /// typed, what it sends.
    fn client_step(&mut self, open: bool) {
        if let Some(msg) = self.net.c.down.pop_front() {
            if let Some(ev) = self.client.handle_frame(&msg).unwrap() {
                self.client_event(ev);
            }
            while let Some(ev) = self.client.poll_event() {
                self.client_event(ev);
            }
        }
        if open && self.next < self.conns.len() {
            // Port `k` names the connection.
            if let Ok(ch) = self.client.open_channel("dest", self.next as u16) {
                self.conns[self.next].ch = Some(ch);
                self.next += 1;
            }
        }
        for c in self.conns.iter_mut() {
            let Some(ch) = c.ch else { continue };
            if c.typed < c.input.len() {
                if let Ok(n) = self.client.send_slice(ch, &c.input[c.typed..]) {
                    c.typed += n;
                    if c.typed == c.input.len() {
                        self.client.finish(ch).unwrap();
                    }
                }
            } else if c.input.is_empty() && c.typed == 0 {
                c.typed = usize::MAX;
                self.client.finish(ch).unwrap();
            }
        }
        while let Some(n) = self.client.poll_transmit(&mut self.buf).unwrap() {
            if self.net.c.connected {
                self.net.c.up.push_back(self.buf[..n].to_vec());
            }
        }
    }

    fn invariant(&self) {
        for (k, c) in self.conns.iter().enumerate() {
            assert!(
                c.output.starts_with(&c.got_output),
                "{k}: output not a prefix"
            );
            assert!(c.input.starts_with(&c.got_input), "{k}: input not a prefix");
        }
    }

    fn done(&self) -> bool {
        self.next == self.conns.len() && self.conns.iter().all(|c| c.ended.is_some())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Connections opened, refused, carried and ended across cuts anywhere: each
    /// one is made once (or refused), carries its bytes both ways exactly once and
    /// ends cleanly; no channel is left behind on either side.
    #[test]
    fn forward_channels_survive_cuts_anywhere(
        conns in proptest::collection::vec((0usize..6000, 0usize..3000), 1..8),
        steps in proptest::collection::vec(0u8..=255, 0..3000),
    ) {
        let mut sim = Sim::new(conns);
        for s in steps {
            match s {
                0..=59 => sim.agent_step(),
                60..=109 => sim.client_step(false),
                110..=119 => sim.client_step(true),
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
        sim.reconnect(true);
        sim.reconnect(false);
        for _ in 0..200_000 {
            if sim.done() {
                break;
            }
            sim.agent_step();
            sim.net.step(true);
            sim.net.step(true);
            sim.client_step(true);
            sim.net.step(false);
            sim.net.step(false);
            sim.invariant();
        }
        prop_assert!(sim.done(), "not every connection ended");
        for (k, c) in sim.conns.iter().enumerate() {
            if refused(k) {
                prop_assert_eq!(&c.ended, &Some(Err(ErrorCode::REFUSED)));
                continue;
            }
            prop_assert_eq!(c.dialed, 1);
            if reset(k) {
                // Cut short (a prefix, checked all along), and the client hears why
                // (or, when the agent's word was lost in a cut, that it was lost).
                let why = c.ended.clone().and_then(Result::ok).unwrap_or_default();
                prop_assert!(
                    why == "reset by peer" || why == crate::client::LOST_CHANNEL,
                    "end of {}: {:?}", k, c.ended
                );
                continue;
            }
            prop_assert_eq!(&c.got_output, &c.output, "output of {}", k);
            prop_assert_eq!(&c.got_input, &c.input, "input of {}", k);
            prop_assert_eq!(&c.ended, &Some(Ok(std::string::String::new())), "end of {}", k);
        }
        // Nothing left at the agent: every channel freed, the session still open.
        for _ in 0..100 {
            sim.agent_step();
            sim.net.step(true);
            sim.client_step(false);
            sim.net.step(false);
        }
        prop_assert_eq!(sim.agent.session_count(), 1);
        prop_assert!(sim.dialing.is_empty());
        prop_assert!(sim.conns.iter().all(|c| c.at_agent.is_none_or(|h| !sim.agent.is_channel_live(h))));
    }
}
