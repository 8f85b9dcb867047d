//! The hub between a real client (`agent_core::client`) and a real agent engine
//! (`agent_core::session`), on a virtual clock, over links that delay, reorder and
//! drop frames as a seed says: the shape of quinn-proto's `tests/util.rs`.
//!
//! The agent's driver here is `cat` with a preamble: an exec session writes
//! `PREAMBLE` bytes, echoes its input, and exits 0 at end of input; a forward
//! channel echoes too, and a channel to `denied.example` is refused by the "policy".

use std::collections::VecDeque;

use agent_core::client::{Client, ClientEvent};
use agent_core::session::{Agent, AgentConfig, ChannelHandle, Event as AgentEvent};
use agent_core::wire::{self, Exit, Frame, Kind, Stream};

use super::*;

const CLIENT_SID: u32 = 7;
const AGENT_SID: u32 = 300;
const PREAMBLE: usize = 40_000;
const IDLE: Duration = Duration::from_secs(30);

type Engine = Agent<4, 4, [u8; 4096]>;
type Cli = Client<4, [u8; 4096]>;

/// xorshift64*: the faults, from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a link does to what it carries.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Each frame is delayed by up to this many milliseconds.
    jitter_ms: u64,
    /// Per mille of frames dropped.
    loss: u64,
    /// Per mille of frames overtaken by the next one.
    reorder: u64,
}

/// One direction between two parties: frames and when they arrive.
#[derive(Default)]
struct Link {
    queue: VecDeque<(Instant, Vec<u8>)>,
    sent: usize,
    dropped: usize,
}

impl Link {
    fn send(&mut self, now: Instant, msg: Vec<u8>, f: Faults, rng: &mut Rng) {
        self.sent += 1;
        if f.loss > 0 && rng.below(1000) < f.loss {
            self.dropped += 1;
            return;
        }
        let delay = Duration::from_millis(if f.jitter_ms > 0 {
            rng.below(f.jitter_ms + 1)
        } else {
            0
        });
        // In order, as a TCP connection delivers, unless overtaken on purpose.
        let last = self.queue.back().map_or(now, |(at, _)| *at);
        let at = (now + delay).max(last);
        self.queue.push_back((at, msg));
        if f.reorder > 0 && self.queue.len() >= 2 && rng.below(1000) < f.reorder {
            let n = self.queue.len();
            let (a, b) = (self.queue[n - 2].1.clone(), self.queue[n - 1].1.clone());
            self.queue[n - 2].1 = b;
            self.queue[n - 1].1 = a;
        }
    }

    fn due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.queue.front()?.0 <= now {
            return self.queue.pop_front().map(|(_, m)| m);
        }
        None
    }

    fn next_at(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }
}

struct World {
    now: Instant,
    rng: Rng,
    faults: Faults,
    /// Faults stop then (a network that recovers).
    faults_until: Instant,
    client: Cli,
    hub: Session,
    agent: Engine,
    c2h: Link,
    h2a: Link,
    a2h: Link,
    h2c: Link,
    /// The agent's driver: what it still has to write on each channel.
    pending: Vec<(ChannelHandle, Vec<u8>)>,
    /// Channels at end of input, to end once their output is written.
    eof: Vec<ChannelHandle>,
    /// Input the agent's driver got, and output the client got, per channel.
    agent_got: Vec<(u16, Vec<u8>)>,
    client_got: Vec<(u16, Vec<u8>)>,
    /// The payload of each `Data` frame the agent sent.
    agent_frames: Vec<Vec<u8>>,
    client_events: Vec<String>,
    hub_events: Vec<Event>,
    end: Option<End>,
    ended_at: Option<Instant>,
    /// Frames the relay made for the client.
    relay_frames: usize,
    /// A peer that broke off (protocol error), and why.
    broken: Vec<String>,
    /// The agent's link and the client's stream are up (a cut one carries nothing).
    agent_up: bool,
    client_up: bool,
}

fn encode(f: Frame) -> Vec<u8> {
    let mut b = vec![0u8; f.buffer_len()];
    f.encode(&mut b).unwrap();
    b
}

fn config(rate: Option<u32>) -> Config {
    Config {
        client_sid: CLIENT_SID,
        agent_sid: AGENT_SID,
        agent_max_frame: 8192,
        rate,
        idle: Some(IDLE),
        max: Some(Duration::from_secs(3600)),
        notices: true,
        resume: None,
    }
}

impl World {
    /// A session of `kind` opened by the client, through the hub, to an agent that
    /// is connected and authenticated.
    fn new(kind: Kind, cfg: Config, faults: Faults, seed: u64) -> World {
        let now = Instant::now();
        let t = agent_core::Instant(0);
        let agent_config = AgentConfig {
            features: wire::features::EXEC | wire::features::FORWARD,
            max_frame: 8192,
            window: 16 * 1024,
            ..AgentConfig::default()
        };
        let agent: Engine = agent_core::testing::authenticated(agent_config, t);
        let mut buf = vec![0u8; 8192];

        let mut client: Cli = Client::new(CLIENT_SID, 64 * 1024);
        let n = client.open(kind, "", &mut buf).unwrap();
        let open = Frame::decode(&buf[..n]).unwrap();
        let hub = Session::new(cfg, &open, "root", now).expect("the hub takes the Open");
        World {
            now,
            rng: Rng(seed | 1),
            faults,
            faults_until: now + Duration::from_secs(20),
            client,
            hub,
            agent,
            c2h: Link::default(),
            h2a: Link::default(),
            a2h: Link::default(),
            h2c: Link::default(),
            pending: Vec::new(),
            eof: Vec::new(),
            agent_got: Vec::new(),
            client_got: Vec::new(),
            agent_frames: Vec::new(),
            client_events: Vec::new(),
            hub_events: Vec::new(),
            end: None,
            ended_at: None,
            relay_frames: 0,
            broken: Vec::new(),
            agent_up: true,
            client_up: true,
        }
    }

    fn faults(&self) -> Faults {
        if self.now < self.faults_until {
            self.faults
        } else {
            Faults::default()
        }
    }

    fn agent_now(&self, t0: Instant) -> agent_core::Instant {
        agent_core::Instant(self.now.duration_since(t0).as_millis() as u64)
    }

    /// The agent's link is cut: what was on it is lost, and it carries nothing until
    /// [`World::agent_back`].
    fn cut_agent(&mut self) {
        self.agent_up = false;
        self.cut_links();
        self.hub.agent_lost(self.now);
    }

    /// The agent connects again and authenticates; its route is on the new link.
    fn agent_back(&mut self, t0: Instant) {
        let at = self.agent_now(t0);
        self.agent.reconnect(at);
        agent_core::testing::handshake(&mut self.agent, at);
        self.agent_up = true;
        self.hub.agent_back();
    }

    fn cut_client(&mut self) {
        self.client_up = false;
        self.cut_links();
        self.hub.client_lost(self.now);
    }

    /// The client opens a new stream with its token.
    fn client_back(&mut self) {
        self.client.reattach().unwrap();
        self.client_up = true;
        self.hub.client_back("token-2");
    }

    fn cut_links(&mut self) {
        if !self.agent_up {
            self.a2h = Link::default();
            self.h2a = Link::default();
        }
        if !self.client_up {
            self.c2h = Link::default();
            self.h2c = Link::default();
        }
    }

    /// Run everything that can happen at `now`; `true` if anything did.
    fn step(&mut self, t0: Instant) -> bool {
        let moved = self.step_links(t0);
        self.cut_links();
        moved
    }

    fn step_links(&mut self, t0: Instant) -> bool {
        let mut moved = false;
        let f = self.faults();
        let mut buf = vec![0u8; 4096];
        let at = self.agent_now(t0);

        // The client reads.
        while let Some(msg) = self.h2c.due(self.now) {
            moved = true;
            match self.client.handle_frame(&msg) {
                Ok(Some(ClientEvent::Data { ch, data, .. })) => {
                    self.client_got.push((ch, data.to_vec()));
                    self.client.consumed(ch, data.len());
                }
                Ok(Some(e)) => self.client_events.push(format!("{e:?}")),
                Ok(None) => {}
                Err(e) => {
                    // The CLI says why and leaves: its stream closes.
                    self.broken.push(format!("client: {e:?}"));
                    self.hub.abort("client went away".into(), false);
                }
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(format!("{e:?}"));
            }
        }
        // The client writes.
        while let Some(n) = self.client.poll_transmit(&mut buf).unwrap() {
            self.c2h.send(self.now, buf[..n].to_vec(), f, &mut self.rng);
            moved = true;
        }
        // The hub reads the client (while it wants), and writes both ways.
        while self.hub.wants_client_input() {
            let Some(msg) = self.c2h.due(self.now) else {
                break;
            };
            self.hub.handle_client(msg.into(), self.now);
            moved = true;
        }
        while self.hub.wants_agent_input() {
            let Some(msg) = self.a2h.due(self.now) else {
                break;
            };
            moved = true;
            // The agent link's routing: link frames answered, session frames
            // readdressed to the client's id.
            match Frame::decode(&msg) {
                Ok(Frame::Ping { nonce }) => {
                    let pong = encode(Frame::Pong { nonce });
                    self.h2a.send(self.now, pong, f, &mut self.rng);
                }
                Ok(frame) if frame.sid() == Some(AGENT_SID) => {
                    let routed = Routed::of(&frame).readdress(msg.clone().into(), CLIENT_SID);
                    self.hub.handle_agent(routed, self.now);
                }
                Ok(_) => {}
                Err(e) => self.broken.push(format!("relay: agent frame {e}")),
            }
        }
        if self.now >= self.hub.poll_timeout() {
            self.hub.handle_timeout(self.now);
        }
        while let Some(b) = self.hub.poll_agent(self.now) {
            self.h2a.send(self.now, b.to_vec(), f, &mut self.rng);
            moved = true;
        }
        while let Some(out) = self.hub.poll_client(self.now) {
            let bytes = match out {
                ToClient::Agent(r) => r.bytes,
                ToClient::Relay(b) => {
                    self.relay_frames += 1;
                    b
                }
            };
            self.h2c.send(self.now, bytes.to_vec(), f, &mut self.rng);
            moved = true;
        }
        while let Some(e) = self.hub.poll_event() {
            moved = true;
            if let Event::Decide { host, refused, .. } = &e {
                let decision = match refused {
                    Some(why) => Err(why.clone()),
                    None if host == "denied.example" => Err("policy says no".into()),
                    None => Ok(host.clone()),
                };
                self.hub.decided(decision, self.now);
            }
            self.hub_events.push(e);
        }
        if let Some(end) = self.hub.poll_end() {
            moved = true;
            // The end goes out on clean links (the stream task waits for it).
            let clean = Faults::default();
            if let Some(b) = &end.tell_agent {
                self.h2a.send(self.now, b.to_vec(), clean, &mut self.rng);
            }
            for b in [&end.last_frame, &end.tell_client].into_iter().flatten() {
                self.h2c.send(self.now, b.to_vec(), clean, &mut self.rng);
            }
            self.hub.close_channels("the session ended", self.now);
            while let Some(e) = self.hub.poll_event() {
                self.hub_events.push(e);
            }
            self.end = Some(end);
            self.ended_at = Some(self.now);
        }

        // The agent reads and its driver acts.
        while let Some(msg) = self.h2a.due(self.now) {
            moved = true;
            match self.agent.handle_frame(at, &msg) {
                Ok(Some(e)) => self.agent_event(e),
                Ok(None) => {}
                Err(e) => self.broken.push(format!("agent: {e:?}")),
            }
        }
        self.agent.handle_timeout(at);
        while let Some(e) = self.agent.poll_event() {
            self.agent_event(e);
        }
        for (channel, data) in &mut self.pending {
            if data.is_empty() {
                continue;
            }
            if let Ok(n) = self.agent.send_slice(*channel, Stream::OUT, data) {
                if n > 0 {
                    moved = true;
                    data.drain(..n);
                }
            }
        }
        let drained = |c: &ChannelHandle, p: &[(ChannelHandle, Vec<u8>)]| {
            p.iter().all(|(pc, d)| pc != c || d.is_empty())
        };
        let (done, waiting): (Vec<_>, Vec<_>) =
            self.eof.iter().partition(|c| drained(c, &self.pending));
        self.eof = waiting;
        for channel in done {
            moved = true;
            self.pending.retain(|(c, _)| *c != channel);
            if channel.ch() == 0 {
                self.agent
                    .exited(channel.session(), Exit::Code(0), "")
                    .unwrap();
            } else {
                let _ = self.agent.finish(channel);
            }
        }
        while let Some(n) = self.agent.poll_transmit(at, &mut buf).unwrap() {
            if let Ok(Frame::Data { data, .. }) = Frame::decode(&buf[..n]) {
                self.agent_frames.push(data.0.to_vec());
            }
            self.a2h.send(self.now, buf[..n].to_vec(), f, &mut self.rng);
            moved = true;
        }

        moved
    }

    fn agent_event(&mut self, e: AgentEvent) {
        match e {
            AgentEvent::Open { session, .. } => {
                self.agent.accept(session).unwrap();
                let preamble = preamble();
                self.pending.push((session.main(), preamble));
            }
            AgentEvent::Data { channel, data } => {
                self.agent_got.push((channel.ch(), data.to_vec()));
                let echo = data.to_vec();
                self.agent.consumed(channel, data.len()).unwrap();
                match self.pending.iter_mut().find(|(c, _)| *c == channel) {
                    Some((_, q)) => q.extend_from_slice(&echo),
                    None => self.pending.push((channel, echo)),
                }
            }
            // `cat` writes what it has, then exits (a channel: finishes).
            AgentEvent::Eof { channel } => self.eof.push(channel),
            AgentEvent::ChannelOpen { channel, .. } => {
                self.agent.accept_channel(channel).unwrap();
            }
            AgentEvent::ChannelClose { channel } => {
                self.pending.retain(|(c, _)| *c != channel);
                self.eof.retain(|c| *c != channel);
                let _ = self.agent.close_channel(channel, "");
            }
            AgentEvent::Terminate { session } | AgentEvent::Abort { session, .. } => {
                self.pending.retain(|(c, _)| c.session() != session);
                self.eof.retain(|c| c.session() != session);
                let _ = self
                    .agent
                    .exited(session, Exit::Aborted(wire::ErrorCode::TERMINATED), "");
            }
            _ => {}
        }
    }

    /// Run for `limit` of virtual time, as the drivers run: each party acts when
    /// something arrives that it reads, or at its own timeout, and the hub is read
    /// only while it wants input. So a hub that leaves a frame waiting with no
    /// timeout to wake its driver stalls here as it would in the relay.
    fn run_for(&mut self, limit: Duration, t0: Instant) {
        let stop = self.now + limit;
        let mut same_time = 0;
        loop {
            self.step(t0);
            let hub = !self.hub.is_over() || self.end.is_none();
            let next = [
                self.c2h.next_at().filter(|_| self.hub.wants_client_input()),
                self.a2h.next_at().filter(|_| self.hub.wants_agent_input()),
                self.h2a.next_at(),
                self.h2c.next_at(),
                Some(self.hub.poll_timeout()).filter(|_| hub),
                self.agent
                    .poll_timeout()
                    .map(|t| t0 + Duration::from_millis(t.0)),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(stop);
            if next <= self.now {
                same_time += 1;
                assert!(same_time < 10_000, "livelock at {:?}", self.now - t0);
                continue;
            }
            same_time = 0;
            if next >= stop {
                self.now = stop;
                return;
            }
            self.now = next;
        }
    }

    fn got(list: &[(u16, Vec<u8>)], ch: u16) -> Vec<u8> {
        list.iter()
            .filter(|(c, _)| *c == ch)
            .flat_map(|(_, d)| d.clone())
            .collect()
    }
}

/// What the agent writes first: no two frames of it alike (an order check can trust
/// a frame's bytes).
fn preamble() -> Vec<u8> {
    let mut r = Rng(0x2545_f491);
    (0..PREAMBLE).map(|_| (r.next() >> 32) as u8).collect()
}

fn exec() -> Kind<'static> {
    Kind::Exec {
        argv: wire::Bytes(b"cat\0"),
    }
}

/// Input for the client to write, in turns with running the world.
fn feed(w: &mut World, t0: Instant, ch: u16, data: &[u8]) {
    let mut sent = 0;
    while sent < data.len() {
        sent += w.client.send_slice(ch, &data[sent..]).unwrap();
        w.run_for(Duration::from_millis(50), t0);
    }
}

#[test]
fn an_exec_session_through_the_hub_carries_everything_and_ends_with_its_exit() {
    let mut w = World::new(exec(), config(None), Faults::default(), 1);
    let t0 = w.now;
    let input: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    feed(&mut w, t0, 0, &input);
    w.client.finish(0).unwrap();
    w.run_for(Duration::from_secs(5), t0);
    let mut expected = preamble();
    expected.extend_from_slice(&input);
    assert_eq!(World::got(&w.agent_got, 0), input);
    assert_eq!(World::got(&w.client_got, 0), expected);
    assert_eq!(
        w.client_events.last().unwrap(),
        "Closed { exit: Code(0), reason: \"\" }"
    );
    let end = w.end.as_ref().expect("the hub saw the end");
    assert_eq!(end.outcome, Ok(()));
    assert!(end.tell_agent.is_none() && end.tell_client.is_none());
    assert_eq!(w.hub.traffic().bytes_in, input.len() as u64);
    assert_eq!(w.hub.traffic().bytes_out, expected.len() as u64);
    assert!(w.broken.is_empty(), "{:?}", w.broken);
    assert_eq!(w.agent.session_count(), 0);
}

#[test]
fn the_agent_sees_the_windows_clamped_and_the_policy_account() {
    let mut buf = vec![0u8; 512];
    let mut client: Cli = Client::new(CLIENT_SID, 64 * 1024 * 1024);
    let n = client.open(exec(), "mallory", &mut buf).unwrap();
    let open = Frame::decode(&buf[..n]).unwrap();
    let mut hub = Session::new(config(Some(50_000)), &open, "alice", Instant::now()).unwrap();
    let first = hub.poll_agent(Instant::now()).unwrap();
    match Frame::decode(&first).unwrap() {
        Frame::Open {
            sid,
            window,
            account,
            ..
        } => {
            assert_eq!((sid, window, account), (AGENT_SID, MAX_WINDOW, "alice"));
        }
        f => panic!("{f:?}"),
    }
    let limit = hub.poll_agent(Instant::now()).unwrap();
    assert_eq!(
        Frame::decode(&limit).unwrap(),
        Frame::Limit {
            sid: AGENT_SID,
            rate: 50_000
        }
    );
    // An Open over the agent's frame limit is refused before the agent hears of it.
    let small = Config {
        agent_max_frame: 8,
        ..config(None)
    };
    let e = Session::new(small, &open, "alice", Instant::now())
        .err()
        .unwrap();
    assert!(e.starts_with("Open frame of "), "{e}");
}

#[test]
fn a_rate_limited_session_takes_the_time_its_rate_says_on_the_virtual_clock() {
    // 40 000 preamble + 60 000 echoed = 100 000 bytes to the client at 20 000 B/s:
    // about 5 s less the first burst, however fast the links are.
    let mut w = World::new(exec(), config(Some(20_000)), Faults::default(), 2);
    let t0 = w.now;
    let input = vec![b'x'; 60_000];
    feed(&mut w, t0, 0, &input);
    w.client.finish(0).unwrap();
    w.run_for(Duration::from_secs(30), t0);
    assert_eq!(World::got(&w.client_got, 0).len(), 100_000);
    assert!(
        w.client_events
            .last()
            .unwrap()
            .starts_with("Closed { exit: Code(0)"),
        "{:?}",
        w.client_events
    );
    // When the hub passed the agent's Close on: no earlier than the rate allows.
    let elapsed = w.ended_at.unwrap() - t0;
    // Burst: TokenBucket::burst_for(20 000, 64 KiB) = 4 096 bytes; both ways paced.
    assert!(
        elapsed >= Duration::from_millis(4_700) && elapsed <= Duration::from_millis(6_500),
        "{elapsed:?}"
    );
}

#[test]
fn an_idle_session_ends_at_its_timer_and_both_peers_hear_why() {
    let mut w = World::new(exec(), config(None), Faults::default(), 3);
    let t0 = w.now;
    w.run_for(Duration::from_secs(1), t0);
    assert!(w.end.is_none());
    // Nothing is typed: 30 s after the last output, the hub ends it.
    w.run_for(IDLE + Duration::from_secs(1), t0);
    let end = w.end.as_ref().expect("ended");
    assert_eq!(
        end.outcome,
        Err("idle timeout: no input or output for 30s".into())
    );
    // 30 s after the preamble's last byte reached the hub, not later.
    let ended = w.ended_at.unwrap() - t0;
    assert!(
        ended >= IDLE && ended <= IDLE + Duration::from_millis(100),
        "{ended:?}"
    );
    assert!(
        w.client_events
            .iter()
            .any(|e| e.contains("idle timeout: no input or output for 30s")),
        "{:?}",
        w.client_events
    );
    assert_eq!(w.agent.session_count(), 0, "the agent was told to stop");
}

#[test]
fn forward_channels_are_decided_counted_and_closed_with_the_session() {
    let mut w = World::new(Kind::Forward, config(None), Faults::default(), 4);
    let t0 = w.now;
    w.run_for(Duration::from_millis(100), t0);
    let a = w.client.open_channel("db.internal", 5432).unwrap();
    let b = w.client.open_channel("denied.example", 80).unwrap();
    w.run_for(Duration::from_millis(100), t0);
    assert!(
        w.client_events
            .iter()
            .any(|e| e.starts_with("ChannelRejected") && e.contains("policy says no")),
        "{:?}",
        w.client_events
    );
    let up = vec![b'q'; 10_000];
    feed(&mut w, t0, a, &up);
    w.run_for(Duration::from_millis(100), t0);
    assert_eq!(World::got(&w.client_got, a), up);
    let _ = b;
    w.client.close("done");
    w.run_for(Duration::from_secs(1), t0);
    let closed: Vec<&ChannelRecord> = w
        .hub_events
        .iter()
        .filter_map(|e| match e {
            Event::ChannelClosed(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 1, "{:?}", w.hub_events);
    assert_eq!(
        (closed[0].host.as_str(), closed[0].port),
        ("db.internal", 5432)
    );
    assert_eq!(closed[0].bytes_to_dest, 10_000);
    assert_eq!(closed[0].bytes_from_dest, 10_000);
}

#[test]
fn a_frame_the_client_may_not_send_ends_only_the_session_with_a_clear_reason() {
    let mut w = World::new(exec(), config(None), Faults::default(), 5);
    let t0 = w.now;
    w.run_for(Duration::from_millis(100), t0);
    let auth = encode(Frame::AuthOk { agent_id: "x" });
    w.hub.handle_client(auth.into(), w.now);
    w.run_for(Duration::from_millis(100), t0);
    let end = w.end.as_ref().unwrap();
    assert_eq!(end.outcome, Err("client protocol error".into()));
    assert!(
        w.client_events
            .iter()
            .any(|e| e.contains("is not allowed on a session stream")),
        "{:?}",
        w.client_events
    );
    assert_eq!(w.agent.session_count(), 0);
}

/// Over links that drop, reorder and delay, for many seeds: nobody panics, nothing
/// reaches a peer that was not sent (no byte invented, duplicated or altered by the
/// hub), and every session ends, with its output whole when nothing was lost and
/// otherwise at the latest at its idle timer, with the client told why. (Frames
/// lost or reordered on a real connection are what session resume recovers from;
/// here the links are worse than TCP on purpose.)
#[test]
fn over_lossy_reordering_links_nothing_is_invented_and_every_session_ends() {
    let mut tally = [0usize; 2];
    for seed in 1..=60u64 {
        let faults = Faults {
            jitter_ms: 40,
            loss: if seed % 3 == 0 { 0 } else { 20 },
            reorder: if seed % 2 == 0 { 30 } else { 0 },
        };
        let mut w = World::new(exec(), config(None), faults, seed);
        let t0 = w.now;
        let input: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        let mut sent = 0;
        while sent < input.len() && w.end.is_none() && w.now < t0 + Duration::from_secs(60) {
            sent += w.client.send_slice(0, &input[sent..]).unwrap_or(0);
            w.run_for(Duration::from_millis(20), t0);
        }
        let _ = w.client.finish(0);
        w.run_for(IDLE + Duration::from_secs(40), t0);
        let clean = faults.loss == 0 && faults.reorder == 0;
        let lost = w.c2h.dropped + w.h2a.dropped + w.a2h.dropped + w.h2c.dropped;
        let end = w
            .end
            .as_ref()
            .unwrap_or_else(|| panic!("seed {seed}: the session never ended"));
        // Each Data frame the client got is one the agent sent, as it was, once.
        let whole: Vec<u8> = w.agent_frames.concat();
        let mut unmatched = w.agent_frames.clone();
        for (_, got) in &w.client_got {
            let Some(at) = unmatched.iter().position(|s| s == got) else {
                panic!("seed {seed}: the client got a frame the agent did not send");
            };
            unmatched.remove(at);
        }
        if clean || (lost == 0 && faults.reorder == 0) {
            assert_eq!(end.outcome, Ok(()), "seed {seed}");
            assert_eq!(World::got(&w.client_got, 0), whole, "seed {seed}");
            assert!(w.broken.is_empty(), "seed {seed}: {:?}", w.broken);
        } else if end.outcome.is_err() {
            // Ended by the relay: the client heard why, unless it had left itself.
            let told = w
                .client_events
                .iter()
                .any(|e| e.starts_with("Closed") || e.starts_with("Rejected"));
            let left = w.broken.iter().any(|b| b.starts_with("client:"));
            assert!(
                told || left,
                "seed {seed}: {:?} {:?}",
                end.outcome,
                w.client_events
            );
        }
        if faults.reorder == 0 {
            // And in the order it sent them.
            let mut sent = w.agent_frames.iter();
            for (_, got) in &w.client_got {
                assert!(sent.any(|s| s == got), "seed {seed}: out of order");
            }
        }
        tally[usize::from(end.outcome.is_err())] += usize::from(lost > 0);
    }
    // Both ends were seen: lossy sessions that still finished, and stuck ones that
    // the idle timer ended.
    assert!(tally[0] > 0 && tally[1] > 0, "{tally:?}");
}

#[test]
fn a_reused_channel_id_is_refused_by_the_relay_and_the_open_channel_goes_on() {
    let mut w = World::new(Kind::Forward, config(None), Faults::default(), 6);
    let t0 = w.now;
    w.run_for(Duration::from_millis(100), t0);
    let a = w.client.open_channel("db.internal", 5432).unwrap();
    w.run_for(Duration::from_millis(100), t0);
    // A client that reuses an open channel's id, written by hand.
    let again = encode(Frame::ChannelOpen {
        sid: CLIENT_SID,
        ch: a,
        window: 1000,
        host: "other",
        port: 1,
    });
    w.c2h.send(w.now, again, Faults::default(), &mut w.rng);
    w.run_for(Duration::from_millis(100), t0);
    assert!(
        w.client_events
            .iter()
            .any(|e| e.contains("is already open")),
        "{:?}",
        w.client_events
    );
    assert_eq!(
        w.relay_frames, 1,
        "the refusal is the relay's, not the agent's"
    );
    assert!(w.end.is_none());
    // The channel that was open is still the hub's, with its destination.
    w.client.close("done");
    w.run_for(Duration::from_secs(1), t0);
    let closed: Vec<_> = w
        .hub_events
        .iter()
        .filter_map(|e| match e {
            Event::ChannelClosed(c) => Some((c.ch, c.host.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [(a, "db.internal")]);
}

#[test]
fn notices_reach_a_client_that_asked_for_them_ahead_of_paced_output() {
    let mut w = World::new(exec(), config(Some(5_000)), Faults::default(), 7);
    let t0 = w.now;
    w.run_for(Duration::from_millis(300), t0);
    let before = World::got(&w.client_got, 0).len();
    assert!(before < PREAMBLE, "the rate holds the preamble back");
    w.hub.notice("carol joined (read-only)");
    w.run_for(Duration::from_millis(10), t0);
    assert!(
        w.client_events.iter().any(|e| e.contains("carol joined")),
        "{:?}",
        w.client_events
    );
    let mut quiet = World::new(
        exec(),
        Config {
            notices: false,
            ..config(None)
        },
        Faults::default(),
        7,
    );
    quiet.hub.notice("carol joined (read-only)");
    quiet.run_for(Duration::from_millis(100), t0);
    assert!(!quiet.client_events.iter().any(|e| e.contains("carol")));
}

#[test]
fn the_maximum_duration_ends_a_busy_session() {
    let cfg = Config {
        max: Some(Duration::from_secs(2)),
        ..config(None)
    };
    let mut w = World::new(exec(), cfg, Faults::default(), 8);
    let t0 = w.now;
    for _ in 0..30 {
        let _ = w.client.send_slice(0, b"still here");
        w.run_for(Duration::from_millis(100), t0);
    }
    let end = w.end.as_ref().expect("ended");
    assert_eq!(
        end.outcome,
        Err("maximum session duration of 2s reached".into())
    );
    assert_eq!(w.ended_at.unwrap() - t0, Duration::from_secs(2));
    assert_eq!(w.agent.session_count(), 0);
}

#[test]
fn a_session_the_relay_ends_after_the_clients_close_still_tells_the_agent() {
    let mut hub = Session::new(config(None), &exec_open(), "root", Instant::now()).unwrap();
    let now = Instant::now();
    while hub.poll_agent(now).is_some() {}
    let close = encode(Frame::Close {
        sid: CLIENT_SID,
        exit: Exit::Aborted(wire::ErrorCode::TERMINATED),
        reason: "bye",
    });
    hub.handle_client(close.into(), now);
    assert!(hub.poll_agent(now).is_some(), "the client's Close goes on");
    // Its write failed: the relay ends the session, and the agent must hear of it.
    hub.abort("agent went away".into(), true);
    let end = hub.poll_end().unwrap();
    let told = Frame::decode(end.tell_agent.as_ref().expect("a Close for the agent")).unwrap();
    assert!(
        matches!(told, Frame::Close { sid: AGENT_SID, .. }),
        "{told:?}"
    );
    let told = Frame::decode(end.tell_client.as_ref().unwrap()).unwrap();
    assert!(
        matches!(
            told,
            Frame::Close {
                sid: CLIENT_SID,
                reason: "agent went away",
                ..
            }
        ),
        "{told:?}"
    );
    assert!(hub.poll_agent(now).is_none() && hub.poll_client(now).is_none());
}

fn exec_open() -> Frame<'static> {
    Frame::Open {
        sid: CLIENT_SID,
        window: 1000,
        kind: exec(),
        account: "",
    }
}

#[test]
fn a_resumable_session_survives_cuts_of_either_link_with_nothing_lost_or_repeated() {
    for seed in 1..20 {
        let mut cfg = config(None);
        cfg.resume = Some((Duration::from_secs(600), "token".into()));
        let faults = Faults {
            jitter_ms: 15,
            ..Faults::default()
        };
        let mut w = World::new(exec(), cfg, faults, seed);
        w.faults_until = w.now + Duration::from_secs(3600);
        let t0 = w.now;
        let input: Vec<u8> = (0..100_000u32)
            .map(|i| (i * 7 + seed as u32) as u8)
            .collect();
        for (i, piece) in input.chunks(10_000).enumerate() {
            feed(&mut w, t0, 0, piece);
            let wait = Duration::from_millis(w.rng.below(3000));
            match i % 4 {
                0 => {
                    w.cut_agent();
                    w.run_for(wait, t0);
                    w.agent_back(t0);
                }
                1 => {
                    w.cut_client();
                    w.run_for(wait, t0);
                    w.client_back();
                }
                2 => {
                    // Both at once, as when the relay restarts.
                    w.cut_agent();
                    w.cut_client();
                    w.run_for(wait, t0);
                    w.client_back();
                    w.agent_back(t0);
                }
                _ => {}
            }
        }
        w.client.finish(0).unwrap();
        w.run_for(Duration::from_secs(20), t0);
        let mut expected = preamble();
        expected.extend_from_slice(&input);
        assert!(w.broken.is_empty(), "seed {seed}: {:?}", w.broken);
        assert_eq!(World::got(&w.agent_got, 0), input, "seed {seed}: input");
        assert_eq!(
            World::got(&w.client_got, 0),
            expected,
            "seed {seed}: output"
        );
        assert_eq!(
            w.client_events.last().unwrap(),
            "Closed { exit: Code(0), reason: \"\" }",
            "seed {seed}"
        );
        let resumed = w.client_events.iter().filter(|e| *e == "Resumed").count();
        assert!(resumed >= 7, "seed {seed}: {resumed} resumes");
        assert!(w
            .client_events
            .contains(&"Resumable { hold: 600, token: \"token-2\" }".to_string()));
        assert_eq!(w.end.as_ref().unwrap().outcome, Ok(()), "seed {seed}");
        assert_eq!(w.agent.session_count(), 0);
    }
}

#[test]
fn a_side_away_longer_than_the_hold_ends_the_session_saying_who() {
    let mut cfg = config(None);
    cfg.resume = Some((Duration::from_secs(60), "token".into()));
    cfg.idle = None;
    let mut w = World::new(exec(), cfg, Faults::default(), 3);
    let t0 = w.now;
    w.run_for(Duration::from_secs(1), t0);
    w.cut_agent();
    w.run_for(Duration::from_secs(59), t0);
    assert!(w.end.is_none(), "still held");
    w.run_for(Duration::from_secs(2), t0);
    let end = w.end.as_ref().expect("ended after the hold");
    assert_eq!(
        end.outcome,
        Err("the agent was unreachable for 1m".to_string())
    );
    assert!(w
        .client_events
        .last()
        .unwrap()
        .contains("the agent was unreachable for 1m"));
}

#[test]
fn a_session_a_restarted_relay_takes_up_counts_its_hold_from_the_cut() {
    let mut cfg = config(None);
    cfg.resume = Some((Duration::from_secs(60), "token".into()));
    cfg.idle = None;
    cfg.max = None;
    let now = Instant::now();
    let hour = Duration::from_secs(3600);
    // The previous run stopped 45 s ago: 15 s of the hold are left.
    let s = Session::revived(cfg.clone(), now, hour, Duration::from_secs(45));
    assert!(s.is_suspended());
    assert_eq!(s.timers_at(), now + Duration::from_secs(15));
    assert_eq!(s.timer_reason(), "the agent was unreachable for 1m");
    assert_eq!(s.away_since(), Some(now - Duration::from_secs(45)));
    // The agent comes back and the client does not: it is the client that was
    // away for the hold.
    let mut back = Session::revived(cfg.clone(), now, hour, Duration::from_secs(45));
    back.agent_back();
    assert_eq!(back.timer_reason(), "the client was unreachable for 1m");
    // The maximum duration counts from when it started: an hour ago, so now.
    let mut short = cfg;
    short.max = Some(hour);
    let s = Session::revived(short, now, hour, Duration::from_secs(45));
    assert_eq!(s.timers_at(), now);
}

#[test]
fn a_restarted_relay_writes_one_row_per_forward_channel_with_its_destination() {
    let mut cfg = config(None);
    cfg.resume = Some((Duration::from_secs(60), "token".into()));
    cfg.idle = None;
    cfg.max = None;
    let now = Instant::now();
    let before = now - Duration::from_secs(5);
    let mut s = Session::revived(cfg, now, Duration::from_secs(10), Duration::from_secs(1));
    // The audit log: 1 and 3 open at the stop, 2 closed before it.
    let open = [
        (1, "10.0.0.5".to_string(), 80, before),
        (3, "10.0.0.6".to_string(), 22, before),
    ];
    s.known_channels(open, vec![2]);
    s.agent_back();
    s.client_back("token-2");
    let stand = |ch: u16, offset: u64, eof: bool| Frame::Resume {
        sid: CLIENT_SID,
        ch,
        offset,
        limit: offset + 1000,
        eof,
        open: true,
    };
    let end = Frame::Resume {
        sid: CLIENT_SID,
        ch: 0,
        offset: 0,
        limit: 0,
        eof: false,
        open: true,
    };
    // The agent names 1, and 2 among those it freed (its end lost in the stop);
    // 3 ended while the relay was down. The client names 1 and 2.
    for f in [stand(1, 100, false), stand(2, 7, true), end] {
        s.handle_agent(Routed::new(f, CLIENT_SID), now);
    }
    for f in [stand(1, 400, false), stand(2, 9, false), end] {
        s.handle_client(encode(f).into(), now);
    }
    assert!(!s.is_suspended(), "resumed");
    // The agent sends 2's end again, then 1 closes.
    for ch in [2, 1] {
        let close = Frame::ChannelClose {
            sid: CLIENT_SID,
            ch,
            reason: "",
        };
        s.handle_agent(Routed::new(close, CLIENT_SID), now);
    }
    let mut rows = Vec::new();
    while let Some(e) = s.poll_event() {
        if let Event::ChannelClosed(r) = e {
            rows.push(r);
        }
    }
    let row = |ch: u16| rows.iter().find(|r| r.ch == ch);
    assert_eq!(
        rows.len(),
        2,
        "one row each for 1 and 3, none for 2: {rows:?}"
    );
    let three = row(3).expect("3's row");
    assert_eq!((three.host.as_str(), three.port), ("10.0.0.6", 22));
    assert_eq!(three.reason, "ended while a side was away");
    let one = row(1).expect("1's row");
    assert_eq!((one.host.as_str(), one.port), ("10.0.0.5", 80));
    assert_eq!((one.bytes_to_dest, one.bytes_from_dest), (100, 400));
    assert!(one.duration >= Duration::from_secs(5), "{:?}", one.duration);
}

#[test]
fn a_resumable_forward_session_keeps_its_channels_through_cuts_counting_each_byte_once() {
    for seed in 1..12 {
        let mut cfg = config(None);
        cfg.resume = Some((Duration::from_secs(600), "token".into()));
        let faults = Faults {
            jitter_ms: 15,
            ..Faults::default()
        };
        let mut w = World::new(Kind::Forward, cfg, faults, seed);
        w.faults_until = w.now + Duration::from_secs(3600);
        let t0 = w.now;
        w.run_for(Duration::from_millis(100), t0);
        let mut chans: Vec<(u16, Vec<u8>)> = Vec::new();
        for round in 0..8u16 {
            let cut = round % 4;
            if round % 3 == 0 && chans.len() < 3 {
                let ch = w.client.open_channel("db.internal", 5432 + round).unwrap();
                chans.push((ch, Vec::new()));
            }
            for (ch, sent) in chans.iter_mut() {
                let piece: Vec<u8> = (0..6_000u32)
                    .map(|i| (i * 7 + u32::from(*ch) * 31 + u32::from(round)) as u8)
                    .collect();
                feed(&mut w, t0, *ch, &piece);
                sent.extend_from_slice(&piece);
            }
            match cut {
                0 => w.cut_agent(),
                1 => w.cut_client(),
                2 => {
                    w.cut_agent();
                    w.cut_client();
                }
                _ => {}
            }
            if cut < 3 && chans.len() < 3 {
                // A connection made while a side is away.
                let ch = w.client.open_channel("db.internal", 6000 + round).unwrap();
                chans.push((ch, Vec::new()));
            }
            let wait = Duration::from_millis(w.rng.below(3000));
            w.run_for(wait, t0);
            if cut == 1 || cut == 2 {
                w.client_back();
            }
            if cut == 0 || cut == 2 {
                w.agent_back(t0);
            }
            w.run_for(Duration::from_millis(300), t0);
        }
        for (ch, _) in &chans {
            w.client.finish(*ch).unwrap();
        }
        w.run_for(Duration::from_secs(20), t0);
        assert!(w.broken.is_empty(), "seed {seed}: {:?}", w.broken);
        let resumed = w.client_events.iter().filter(|e| *e == "Resumed").count();
        assert!(resumed >= 5, "seed {seed}: {resumed} resumes");
        let mut total = 0;
        for (ch, sent) in &chans {
            assert_eq!(&World::got(&w.agent_got, *ch), sent, "seed {seed}: to {ch}");
            assert_eq!(
                &World::got(&w.client_got, *ch),
                sent,
                "seed {seed}: from {ch}"
            );
            let closed = format!("ChannelClosed {{ ch: {ch}, reason: \"\" }}");
            assert!(
                w.client_events.contains(&closed),
                "seed {seed}: {ch} not closed: {:?}",
                w.client_events
            );
            total += sent.len() as u64;
        }
        // Each byte counted once, however often it was sent; every channel's row
        // is on record (a channel the relay never saw open has none).
        let rows: Vec<&ChannelRecord> = w
            .hub_events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelClosed(c) => Some(c),
                _ => None,
            })
            .collect();
        for r in &rows {
            let (_, sent) = chans.iter().find(|(c, _)| *c == r.ch).unwrap();
            assert!(r.bytes_to_dest <= sent.len() as u64, "seed {seed}: {r:?}");
            assert!(r.bytes_from_dest <= sent.len() as u64, "seed {seed}: {r:?}");
        }
        let traffic = w.hub.traffic();
        assert_eq!(traffic.bytes_in, total, "seed {seed}: bytes in");
        assert_eq!(traffic.bytes_out, total, "seed {seed}: bytes out");
        assert_eq!(w.agent.session_count(), 1, "seed {seed}");
        assert!(w.end.is_none(), "seed {seed}: the session goes on");
    }
}
