//! Forward sessions on the device, sans I/O: which channel each of the link's
//! [`PORTS`] TCP connections serves, the destination rules of the provisioning
//! image, and the bytes between a connection ([`Conn`]) and agent-core's channel.
//! The link ([`crate::tcp`]) resolves, dials and polls each port with its embassy-net
//! socket; host tests use a fake.
//!
//! Flow control stays agent-core's. Input from the client waits here (at most the
//! channel's window, [`WINDOW`]) until the socket takes it, and only then is it
//! `consumed`: a destination that does not read stalls its own client and nobody
//! else. Output read from the socket goes into the channel's buffer as it has room:
//! a client that does not read stalls its own destination. agent-core sends the
//! `Eof` after the output ([`agent_core::session::Agent::finish`]) and closes the
//! channel once both directions are over.

use core::fmt::Write as _;
use core::net::Ipv4Addr;

use agent_core::provision::{ForwardRules, Verdict};
use agent_core::session::{ChannelHandle, SessionHandle, REASON_MAX};
use agent_core::wire::{ErrorCode, Stream};
use heapless::{String, Vec};

use crate::engine::{Core, WINDOW};

/// TCP connections a device forwards at once, across all its forward sessions.
pub const PORTS: usize = 2;
/// Longest destination host name a device dials.
pub const HOST_MAX: usize = 128;

/// What the forwarding needs of a connected socket, polled without waiting: the
/// link's embassy-net `TcpSocket`, a fake in tests.
pub trait Conn {
    /// Queue as much of `data` as fits now; `Ok(0)` when full.
    fn send(&mut self, data: &[u8]) -> Result<usize, Reset>;
    /// Hand what has arrived to `take`, which returns how much of it it took.
    fn recv(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> Recv;
    /// No more output: the destination gets a FIN after what is queued.
    fn finish(&mut self);
}

/// The connection was reset (or timed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset;

/// What [`Conn::recv`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// Bytes arrived; `take` took this many.
    Took(usize),
    /// Nothing yet.
    Nothing,
    /// The destination closed its side (FIN), after everything it sent.
    End,
    /// The connection was reset.
    Reset,
}

/// What a port did in [`Forwarding::pump`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Nothing moved: wait for the socket or the engine.
    Idle,
    /// Bytes moved: agent-core has something to send.
    Moved,
    /// The connection is over: close it (`abort`: reset it), then [`Forwarding::free`].
    Over {
        /// The channel was aborted (by the client, the session's end or a reset).
        abort: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the link to pick it up.
    Requested,
    /// The link is resolving and connecting.
    Dialing,
    /// Connected: bytes flow.
    Open,
}

/// One connection of the pool.
#[derive(Debug)]
struct Port {
    channel: ChannelHandle,
    host: String<HOST_MAX>,
    port: u16,
    stage: Stage,
    /// From the client, not yet taken by the socket.
    input: Vec<u8, WINDOW>,
    peer_eof: bool,
    fin_sent: bool,
    eof_read: bool,
    /// The channel is gone (client's `ChannelClose`, session ended): drop the socket.
    aborted: bool,
}

/// The pool's table and the rules it dials by.
#[derive(Debug)]
pub struct Ports<'r> {
    rules: Option<ForwardRules<'r>>,
    ports: [Option<Port>; PORTS],
}

impl<'r> Ports<'r> {
    /// A pool that dials by `rules` (`None`: the device forwards nothing).
    pub fn new(rules: Option<ForwardRules<'r>>) -> Self {
        Ports {
            rules,
            ports: core::array::from_fn(|_| None),
        }
    }

    /// Whether the device forwards at all (and announces `forward` sessions).
    pub fn enabled(&self) -> bool {
        self.rules.is_some()
    }

    /// Connections in use.
    pub fn in_use(&self) -> usize {
        self.ports.iter().flatten().count()
    }

    fn find(&mut self, channel: ChannelHandle) -> Option<&mut Port> {
        self.ports
            .iter_mut()
            .flatten()
            .find(|p| p.channel == channel)
    }

    /// Input for a channel, if one of ours; it fits, as agent-core keeps the client
    /// within the window.
    pub fn input(&mut self, channel: ChannelHandle, data: &[u8]) -> Option<Result<(), ()>> {
        let p = self.find(channel)?;
        Some(p.input.extend_from_slice(data).map_err(drop))
    }

    /// The client's end of input on a channel, if one of ours.
    pub fn eof(&mut self, channel: ChannelHandle) -> bool {
        self.find(channel).map(|p| p.peer_eof = true).is_some()
    }

    /// The channel is gone: its connection is dropped.
    pub fn abort(&mut self, channel: ChannelHandle) {
        if let Some(p) = self.find(channel) {
            p.aborted = true;
        }
    }

    /// The session ended: every connection of it is dropped.
    pub fn end_session(&mut self, session: SessionHandle) {
        for p in self.ports.iter_mut().flatten() {
            if p.channel.session() == session {
                p.aborted = true;
            }
        }
    }
}

/// The pool with agent-core's engine: what the engine's events and the link's
/// ports call.
pub struct Forwarding<'a, 'r, const N: usize> {
    pub(crate) ports: &'a mut Ports<'r>,
    pub(crate) agent: &'a mut Core<N>,
}

/// "destination HOST:PORT is denied by the device's forwarding policy"
fn denied(host: &str, port: u16, addr: Option<Ipv4Addr>) -> String<REASON_MAX> {
    let mut why = String::new();
    let _ = match addr.filter(|a| host.parse() != Ok(*a)) {
        Some(a) => write!(why, "destination {host}:{port} ({a}) is denied"),
        None => write!(why, "destination {host}:{port} is denied"),
    };
    let _ = why.push_str(" by the device's forwarding policy");
    why
}

impl<const N: usize> Forwarding<'_, '_, N> {
    /// A client asks for a connection: refused at once when the rules deny it or
    /// every port is in use, else it waits for the link.
    pub fn open(&mut self, channel: ChannelHandle, host: &str, port: u16) {
        let Some(rules) = self.ports.rules else {
            let why = "this device does not forward ports";
            let _ = self
                .agent
                .reject_channel(channel, ErrorCode::UNSUPPORTED, why);
            return;
        };
        let mut why: String<REASON_MAX> = String::new();
        let code = if rules.check(host, None, port) == Verdict::Deny {
            why = denied(host, port, None);
            ErrorCode::DENIED
        } else if host.len() > HOST_MAX {
            let _ = write!(why, "host name longer than {HOST_MAX} bytes");
            ErrorCode::UNREACHABLE
        } else if let Some(free) = self.ports.ports.iter_mut().find(|p| p.is_none()) {
            *free = Some(Port {
                channel,
                host: agent_core::session::clip(host),
                port,
                stage: Stage::Requested,
                input: Vec::new(),
                peer_eof: false,
                fin_sent: false,
                eof_read: false,
                aborted: false,
            });
            return;
        } else {
            let _ = write!(
                why,
                "device connection limit reached ({PORTS} of {PORTS} connections in use)"
            );
            ErrorCode::CHANNEL_LIMIT
        };
        let _ = self.agent.reject_channel(channel, code, &why);
    }

    /// The host port `i` is to dial next, as the client named it: resolve it, then
    /// [`Forwarding::resolved`].
    pub fn dial(&mut self, i: usize) -> Option<&str> {
        let slot = self.ports.ports.get_mut(i)?;
        if slot
            .as_ref()
            .is_some_and(|p| p.aborted && p.stage == Stage::Requested)
        {
            *slot = None;
        }
        let p = slot.as_mut().filter(|p| p.stage == Stage::Requested)?;
        p.stage = Stage::Dialing;
        Some(p.host.as_str())
    }

    /// The destination resolved to `addr` (`None`: it did not): the address to
    /// connect to, or `None` when the channel is refused (or gone) and the port free.
    pub fn resolved(&mut self, i: usize, addr: Option<Ipv4Addr>) -> Option<(Ipv4Addr, u16)> {
        let slot = &mut self.ports.ports[i];
        let p = slot.as_mut()?;
        let mut why: String<REASON_MAX> = String::new();
        let code = match (addr, self.ports.rules) {
            _ if p.aborted => {
                *slot = None;
                return None;
            }
            (None, _) => {
                let _ = write!(why, "cannot resolve '{}'", p.host);
                ErrorCode::UNREACHABLE
            }
            (Some(a), Some(rules)) if rules.check(&p.host, Some(a), p.port) == Verdict::Allow => {
                return Some((a, p.port))
            }
            (Some(a), _) => {
                why = denied(&p.host, p.port, Some(a));
                ErrorCode::DENIED
            }
        };
        let _ = self.agent.reject_channel(p.channel, code, &why);
        *slot = None;
        None
    }

    /// The connection is up (`Ok`) or failed (`Err(code, reason)`): whether to pump
    /// it. A failed or unwanted one keeps its port until the link closed its socket
    /// ([`Forwarding::free`]): a request that came meanwhile takes another.
    pub fn connected(&mut self, i: usize, result: Result<(), (ErrorCode, &str)>) -> bool {
        let Some(p) = self.ports.ports[i].as_mut() else {
            return false;
        };
        let go = match result {
            _ if p.aborted => false,
            Ok(()) => self.agent.accept_channel(p.channel).is_ok(),
            Err((code, why)) => {
                let _ = self.agent.reject_channel(p.channel, code, why);
                false
            }
        };
        if go {
            p.stage = Stage::Open;
        } else {
            p.aborted = true;
        }
        go
    }

    /// Move what can move now between port `i`'s connection and its channel.
    pub fn pump(&mut self, i: usize, conn: &mut impl Conn) -> Pumped {
        let agent = &mut *self.agent;
        let Some(p) = self.ports.ports[i]
            .as_mut()
            .filter(|p| p.stage == Stage::Open)
        else {
            return Pumped::Over { abort: true };
        };
        let ch = p.channel;
        if p.aborted || !agent.is_channel_live(ch) {
            return Pumped::Over { abort: true };
        }
        let mut moved = false;
        // Client to destination: what the socket takes is consumed; credit follows.
        while !p.input.is_empty() {
            match conn.send(&p.input) {
                Ok(0) => break,
                Ok(n) => {
                    let rest = p.input.len() - n;
                    p.input.copy_within(n.., 0);
                    p.input.truncate(rest);
                    moved = true;
                    if agent.consumed(ch, n).is_err() {
                        return Pumped::Over { abort: true };
                    }
                }
                Err(Reset) => return reset(agent, p),
            }
        }
        if p.input.is_empty() && p.peer_eof && !p.fin_sent {
            conn.finish();
            p.fin_sent = true;
        }
        // Destination to client, as the channel's buffer has room.
        while !p.eof_read && agent.send_room(ch) > 0 {
            let mut gone = false;
            let got = conn.recv(&mut |data| {
                agent.send_slice(ch, Stream::OUT, data).unwrap_or_else(|_| {
                    gone = true;
                    0
                })
            });
            match got {
                _ if gone => return Pumped::Over { abort: true },
                Recv::Took(0) | Recv::Nothing => break,
                Recv::Took(_) => moved = true,
                Recv::End => {
                    p.eof_read = true;
                    moved = true;
                    if agent.finish(ch).is_err() {
                        return Pumped::Over { abort: true };
                    }
                }
                Recv::Reset => return reset(agent, p),
            }
        }
        if p.eof_read && p.fin_sent {
            Pumped::Over { abort: false }
        } else if moved {
            Pumped::Moved
        } else {
            Pumped::Idle
        }
    }

    /// Port `i`'s connection is closed: the port takes the next request.
    pub fn free(&mut self, i: usize) {
        self.ports.ports[i] = None;
    }
}

/// The destination reset the connection: the channel ends with the reason.
fn reset<const N: usize>(agent: &mut Core<N>, p: &Port) -> Pumped {
    let mut why: String<REASON_MAX> = String::new();
    let _ = write!(why, "connection to {}:{} reset", p.host, p.port);
    let _ = agent.close_channel(p.channel, &why);
    Pumped::Over { abort: true }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::engine::RING;
    use crate::rig::*;
    use agent_core::wire::{Bytes, Frame, Kind};
    use agent_core::Instant;

    /// A destination: what it got, what it has to send, how it ends.
    #[derive(Default)]
    struct Dest {
        got: V<u8>,
        to_send: V<u8>,
        /// Room in the socket's send buffer.
        room: usize,
        /// It closed its side after `to_send`.
        fin: bool,
        reset: bool,
        /// The device closed its side.
        finished: bool,
    }

    impl Conn for Dest {
        fn send(&mut self, data: &[u8]) -> Result<usize, Reset> {
            if self.reset {
                return Err(Reset);
            }
            let n = data.len().min(self.room);
            self.got.extend_from_slice(&data[..n]);
            self.room -= n;
            Ok(n)
        }
        fn recv(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> Recv {
            if self.reset {
                Recv::Reset
            } else if !self.to_send.is_empty() {
                // Two pieces, as a ring buffer that wrapped hands them.
                let part = self.to_send.len().min(700);
                let n = take(&self.to_send[..part]);
                self.to_send.drain(..n);
                Recv::Took(n)
            } else if self.fin {
                Recv::End
            } else {
                Recv::Nothing
            }
        }
        fn finish(&mut self) {
            self.finished = true;
        }
    }

    const RULES: ForwardRules<'static> = ForwardRules {
        allow: "10.0.2.0/24:80 plc.local:502",
        deny: "10.0.2.100",
    };

    /// Ready, with forward session 1 open.
    fn rig() -> Rig {
        let mut rig = Rig::ready_with(Some(RULES));
        rig.open(1, Kind::Forward);
        assert!(last(&rig.drain()).contains("Accept"));
        rig
    }

    fn frames(sent: &Sent) -> V<Frame<'_>> {
        sent.iter()
            .map(|(_, raw)| Frame::decode(raw).unwrap())
            .collect()
    }

    fn open(rig: &mut Rig, sid: u32, ch: u16, host: &str, port: u16) {
        rig.feed(Frame::ChannelOpen {
            sid,
            ch,
            window: 64 * 1024,
            host,
            port,
        });
    }

    /// The channel `ch` of session `sid` asks for `10.0.2.101:80` and is connected
    /// on the port it gets.
    fn connect(rig: &mut Rig, sid: u32, ch: u16) -> usize {
        open(rig, sid, ch, "10.0.2.101", 80);
        let mut fwd = rig.engine.forwarding();
        let i = (0..PORTS).find(|&i| fwd.dial(i).is_some()).unwrap();
        let addr = "10.0.2.101".parse().unwrap();
        assert_eq!(fwd.resolved(i, Some(addr)), Some((addr, 80)));
        assert!(fwd.connected(i, Ok(())));
        match frames(&rig.drain())[..] {
            [Frame::ChannelAccept {
                sid: s,
                ch: c,
                window,
            }] => {
                assert_eq!((s, c, window), (sid, ch, WINDOW as u32))
            }
            ref f => panic!("expected ChannelAccept, got {f:?}"),
        }
        i
    }

    /// Pump port `i` and send what agent-core has, until nothing moves or the
    /// connection is over; returns what the client got on `ch` and the last pump's
    /// result.
    fn run(rig: &mut Rig, i: usize, dest: &mut Dest, ch: u16, sent: &mut Sent) -> (V<u8>, Pumped) {
        let mut got = V::new();
        loop {
            let pumped = rig.engine.forwarding().pump(i, dest);
            if let Pumped::Over { .. } = pumped {
                return (got, pumped);
            }
            let more = rig.drain();
            for f in frames(&more) {
                if let Frame::Data { ch: c, data, .. } = f {
                    assert_eq!(c, ch);
                    got.extend_from_slice(data.0);
                }
            }
            let quiet = more.is_empty();
            sent.extend(more);
            if pumped != Pumped::Moved && quiet {
                return (got, pumped);
            }
        }
    }

    fn reject(sent: &Sent) -> (u16, ErrorCode, S) {
        match frames(sent)[..] {
            [Frame::ChannelReject {
                ch, code, reason, ..
            }] => (ch, code, reason.into()),
            ref f => panic!("expected one ChannelReject, got {f:?}"),
        }
    }

    #[test]
    fn a_connection_carries_bytes_both_ways_then_closes_by_itself() {
        let mut rig = rig();
        let i = connect(&mut rig, 1, 1);
        let request = b"GET /7 HTTP/1.0\r\n\r\n";
        rig.feed(Frame::Data {
            sid: 1,
            ch: 1,
            stream: Stream::OUT,
            data: Bytes(request),
        });
        // 3 000 bytes, three times the channel's buffer, then the destination's FIN.
        let body: V<u8> = (0..3000u32).map(|n| (n * 7 % 251) as u8).collect();
        let mut dest = Dest {
            room: 4096,
            to_send: body.clone(),
            fin: true,
            ..Dest::default()
        };
        let mut sent = Sent::new();
        let (got, pumped) = run(&mut rig, i, &mut dest, 1, &mut sent);
        assert_eq!(dest.got, request);
        assert_eq!(got, body);
        assert_eq!(pumped, Pumped::Idle, "the client's side is still open");
        assert!(last(&sent).contains("Eof"), "{sent:?}");
        // The client is done too: the device closes its side, and the channel ends.
        rig.feed(Frame::Eof { sid: 1, ch: 1 });
        let (_, pumped) = run(&mut rig, i, &mut dest, 1, &mut sent);
        assert!(dest.finished);
        assert_eq!(pumped, Pumped::Over { abort: false });
        rig.engine.forwarding().free(i);
        match frames(&rig.drain())[..] {
            [Frame::ChannelClose {
                sid: 1,
                ch: 1,
                reason: "",
            }] => {}
            ref f => panic!("expected ChannelClose, got {f:?}"),
        }
        // The session goes on: the port takes the next connection.
        assert_eq!(connect(&mut rig, 1, 2), i);
    }

    #[test]
    fn input_is_consumed_as_the_destination_takes_it() {
        let mut rig = rig();
        let i = connect(&mut rig, 1, 1);
        let input = [b'x'; WINDOW];
        rig.feed(Frame::Data {
            sid: 1,
            ch: 1,
            stream: Stream::OUT,
            data: Bytes(&input),
        });
        // The destination's buffer is full: the input waits, and no credit goes back.
        let mut dest = Dest::default();
        let mut sent = Sent::new();
        run(&mut rig, i, &mut dest, 1, &mut sent);
        assert!(sent.is_empty(), "{sent:?}");
        // It drains: credit for what it took.
        dest.room = 300;
        run(&mut rig, i, &mut dest, 1, &mut sent);
        assert_eq!(dest.got.len(), 300);
        match frames(&sent)[..] {
            [Frame::Credit {
                ch: 1, bytes: 300, ..
            }] => {}
            ref f => panic!("expected Credit 300, got {f:?}"),
        }
        dest.room = 1000;
        run(&mut rig, i, &mut dest, 1, &mut sent);
        assert_eq!(dest.got, input);
    }

    #[test]
    fn denied_destinations_are_refused_with_the_line() {
        let mut rig = rig();
        for (ch, host, port) in [
            (1, "10.0.2.100", 80), // denied, though in an allowed network
            (2, "10.0.2.101", 22), // not an allowed port
            (3, "192.0.2.1", 80),  // not an allowed network
            (4, "web.example", 22),
        ] {
            open(&mut rig, 1, ch, host, port);
            let want = std::format!(
                "destination {host}:{port} is denied by the device's forwarding policy"
            );
            assert_eq!(reject(&rig.drain()), (ch, ErrorCode::DENIED, want));
        }
        assert_eq!(rig.engine.forwarding().ports.in_use(), 0);
        // A name the address rules may allow is resolved, then checked.
        open(&mut rig, 1, 5, "web.example", 80);
        assert!(rig.drain().is_empty());
        let mut fwd = rig.engine.forwarding();
        assert_eq!(fwd.dial(0), Some("web.example"));
        assert_eq!(fwd.resolved(0, "10.0.2.100".parse().ok()), None);
        let why =
            "destination web.example:80 (10.0.2.100) is denied by the device's forwarding policy";
        assert_eq!(reject(&rig.drain()), (5, ErrorCode::DENIED, why.into()));
        open(&mut rig, 1, 6, "plc.local", 502);
        let mut fwd = rig.engine.forwarding();
        assert_eq!(fwd.dial(0), Some("plc.local"));
        assert_eq!(fwd.resolved(0, None), None);
        let why = "cannot resolve 'plc.local'";
        assert_eq!(
            reject(&rig.drain()),
            (6, ErrorCode::UNREACHABLE, why.into())
        );
        assert_eq!(rig.engine.forwarding().ports.in_use(), 0);
    }

    #[test]
    fn a_failed_connect_is_refused_with_its_reason() {
        let mut rig = rig();
        open(&mut rig, 1, 1, "10.0.2.101", 80);
        let mut fwd = rig.engine.forwarding();
        assert!(fwd.dial(0).is_some());
        assert!(fwd.resolved(0, "10.0.2.101".parse().ok()).is_some());
        let why = "cannot connect to 10.0.2.101:80: connection refused";
        assert!(!fwd.connected(0, Err((ErrorCode::REFUSED, why))));
        assert_eq!(reject(&rig.drain()), (1, ErrorCode::REFUSED, why.into()));
        // Its port is busy until its socket is closed: a request meanwhile takes
        // the other one, and is not lost when this one is freed.
        open(&mut rig, 1, 2, "10.0.2.101", 80);
        assert!(rig.drain().is_empty());
        let mut fwd = rig.engine.forwarding();
        assert_eq!(fwd.dial(0), None);
        fwd.free(0);
        assert_eq!(fwd.dial(1), Some("10.0.2.101"));
        assert_eq!(fwd.ports.in_use(), 1);
    }

    #[test]
    fn connections_beyond_the_pool_are_refused_and_the_others_go_on() {
        let mut rig = rig();
        let a = connect(&mut rig, 1, 1);
        rig.open(3, Kind::Forward);
        rig.drain();
        let b = connect(&mut rig, 3, 1);
        assert_ne!(a, b);
        open(&mut rig, 3, 2, "10.0.2.101", 80);
        let why = "device connection limit reached (2 of 2 connections in use)";
        assert_eq!(
            reject(&rig.drain()),
            (2, ErrorCode::CHANNEL_LIMIT, why.into())
        );
        // The others still carry bytes.
        let mut dest = Dest {
            to_send: b"still".to_vec(),
            ..Dest::default()
        };
        let (got, _) = run(&mut rig, b, &mut dest, 1, &mut Sent::new());
        assert_eq!(got, b"still");
    }

    #[test]
    fn a_reset_a_client_abort_and_the_sessions_end_drop_only_their_connections() {
        let mut rig = rig();
        let a = connect(&mut rig, 1, 1);
        let b = connect(&mut rig, 1, 2);
        // The destination of `a` resets: the client hears why.
        let mut dest_a = Dest {
            reset: true,
            ..Dest::default()
        };
        let mut sent = Sent::new();
        let (_, pumped) = run(&mut rig, a, &mut dest_a, 1, &mut sent);
        assert_eq!(pumped, Pumped::Over { abort: true });
        let sent = rig.drain();
        match frames(&sent)[..] {
            [Frame::ChannelClose { ch: 1, reason, .. }] => {
                assert_eq!(reason, "connection to 10.0.2.101:80 reset")
            }
            ref f => panic!("expected ChannelClose, got {f:?}"),
        }
        rig.engine.forwarding().free(a);
        // The client aborts `b`: its socket is dropped.
        rig.feed(Frame::ChannelClose {
            sid: 1,
            ch: 2,
            reason: "",
        });
        assert!(last(&rig.drain()).contains("ChannelClose"));
        let mut dest_b = Dest::default();
        assert_eq!(
            rig.engine.forwarding().pump(b, &mut dest_b),
            Pumped::Over { abort: true }
        );
        rig.engine.forwarding().free(b);
        // A connection being dialed when its session ends is not accepted.
        open(&mut rig, 1, 3, "10.0.2.101", 80);
        let mut fwd = rig.engine.forwarding();
        assert!(fwd.dial(0).is_some());
        rig.feed(Frame::Close {
            sid: 1,
            exit: agent_core::wire::Exit::Aborted(ErrorCode::TERMINATED),
            reason: "",
        });
        let mut fwd = rig.engine.forwarding();
        assert_eq!(fwd.resolved(0, "10.0.2.101".parse().ok()), None);
        assert_eq!(fwd.ports.in_use(), 0);
        assert!(last(&rig.drain()).contains("Close"));
        assert_eq!(rig.engine.open_sessions(), 0);
    }

    /// The `DataAt`s of channel `ch` in `sent`, appended to `got` where they start
    /// at its end: a repeat or a gap fails.
    fn receive_at(sent: &Sent, ch: u16, got: &mut V<u8>) {
        for f in frames(sent) {
            match f {
                Frame::DataAt {
                    ch: c,
                    offset,
                    data,
                    ..
                } if c == ch && !data.0.is_empty() => {
                    assert_eq!(offset, got.len() as u64, "a gap or a repeat");
                    got.extend_from_slice(data.0);
                }
                Frame::Data { ch: c, .. } if c == ch => panic!("Data in a resumable session"),
                _ => {}
            }
        }
    }

    #[test]
    fn a_held_forward_sessions_connection_goes_on_across_a_cut_each_byte_once() {
        let (mut rig, i) = held_forward(60);
        // The request waits for the destination, whose buffer is full.
        let request = b"GET /big HTTP/1.0\r\n\r\n";
        rig.feed(Frame::DataAt {
            sid: 1,
            ch: 1,
            stream: Stream::OUT,
            offset: 0,
            data: Bytes(request),
        });
        let body: V<u8> = (0..5000u32).map(|n| (n * 13 % 251) as u8).collect();
        let mut dest = Dest {
            to_send: body[..1500].to_vec(),
            ..Dest::default()
        };
        let mut got = V::new();
        assert_eq!(rig.engine.forwarding().pump(i, &mut dest), Pumped::Moved);
        receive_at(&rig.drain(), 1, &mut got);
        assert!(!got.is_empty() && got.len() <= RING, "{}", got.len());
        // The client acknowledges part of it, then the link drops.
        let acked = got.len() / 2;
        rig.feed(Frame::Ack {
            sid: 1,
            ch: 1,
            offset: acked as u64,
        });
        rig.drain();
        rig.cut();
        assert_eq!(rig.engine.open_sessions(), 1, "held");
        assert_eq!(rig.engine.forwarding().ports.in_use(), 1, "its port stays");

        // While the link is down the connection goes on: the destination takes the
        // request, and what it sends fills the room the Ack freed, no more.
        dest.room = 4096;
        dest.to_send.extend_from_slice(&body[1500..]);
        let sent_before = body.len() - dest.to_send.len();
        assert_eq!(rig.engine.forwarding().pump(i, &mut dest), Pumped::Moved);
        assert_eq!(dest.got, request, "the request reached the destination");
        let read_offline = body.len() - dest.to_send.len() - sent_before;
        assert!(read_offline > 0, "nothing read while the link was down");
        assert!(
            body.len() - dest.to_send.len() <= acked + RING,
            "more read than the buffer holds"
        );
        assert_eq!(rig.engine.forwarding().pump(i, &mut dest), Pumped::Idle);
        assert!(rig.drain().is_empty(), "nothing sent without a link");

        // A new link: the device names the connection, still open.
        rig.connect();
        rig.feed(Frame::Suspend { sid: 1 });
        match frames(&rig.drain())[..] {
            [Frame::Resume {
                sid: 1,
                ch: 1,
                offset,
                eof: false,
                open: true,
                ..
            }, Frame::Resume { sid: 1, ch: 0, .. }] => {
                assert_eq!(offset, request.len() as u64, "what the device received")
            }
            ref f => panic!("expected the list of channel 1 and 0, got {f:?}"),
        }
        // The client lost what it did not acknowledge: it resumes from there.
        got.truncate(acked);
        for ch in [1, 0] {
            rig.feed(Frame::Resume {
                sid: 1,
                ch,
                offset: if ch == 1 { acked as u64 } else { 0 },
                limit: if ch == 1 { acked as u64 + 64 * 1024 } else { 0 },
                eof: false,
                open: true,
            });
        }
        dest.fin = true;
        for _ in 0..100 {
            rig.engine.forwarding().pump(i, &mut dest);
            let sent = rig.drain();
            receive_at(&sent, 1, &mut got);
            rig.feed(Frame::Ack {
                sid: 1,
                ch: 1,
                offset: got.len() as u64,
            });
            if frames(&sent)
                .iter()
                .any(|f| matches!(f, Frame::Eof { ch: 1, .. }))
            {
                break;
            }
        }
        assert!(
            got == body,
            "{} of {} bytes, or not the body",
            got.len(),
            body.len()
        );
        // The session goes on: the client is done too, and the connection closes.
        rig.feed(Frame::Eof { sid: 1, ch: 1 });
        assert_eq!(
            rig.engine.forwarding().pump(i, &mut dest),
            Pumped::Over { abort: false }
        );
        assert!(dest.finished);
    }

    #[test]
    fn a_connection_dialed_across_a_cut_is_accepted_after_the_resume() {
        let mut rig = resumable_forward(60);
        open(&mut rig, 1, 1, "10.0.2.101", 80);
        assert!(rig.engine.forwarding().dial(0).is_some());
        rig.cut();
        // The connect completes while the link is down.
        let mut fwd = rig.engine.forwarding();
        let addr = "10.0.2.101".parse().unwrap();
        assert_eq!(fwd.resolved(0, Some(addr)), Some((addr, 80)));
        assert!(fwd.connected(0, Ok(())));
        assert!(rig.drain().is_empty());
        rig.connect();
        rig.feed(Frame::Suspend { sid: 1 });
        match frames(&rig.drain())[..] {
            [Frame::Resume {
                ch: 1, open: true, ..
            }, Frame::Resume { ch: 0, .. }] => {}
            ref f => panic!("expected channel 1 named open, got {f:?}"),
        }
        // The client, which never saw the ChannelAccept, takes the Resume for it.
        for ch in [1, 0] {
            rig.feed(Frame::Resume {
                sid: 1,
                ch,
                offset: 0,
                limit: if ch == 1 { 64 * 1024 } else { 0 },
                eof: false,
                open: ch == 0,
            });
        }
        let mut dest = Dest {
            to_send: b"hello".to_vec(),
            ..Dest::default()
        };
        rig.engine.forwarding().pump(0, &mut dest);
        let mut got = V::new();
        receive_at(&rig.drain(), 1, &mut got);
        assert_eq!(got, b"hello");
    }

    /// Resumable forward session 1, held `hold` seconds.
    fn resumable_forward(hold: u32) -> Rig {
        let mut rig = Rig::ready_with(Some(RULES));
        rig.feed(Frame::Resumable {
            sid: 1,
            hold,
            token: "",
        });
        rig.open(1, Kind::Forward);
        assert!(last(&rig.drain()).contains("Accept"));
        rig
    }

    /// [`resumable_forward`] with channel 1 connected on its port.
    fn held_forward(hold: u32) -> (Rig, usize) {
        let mut rig = resumable_forward(hold);
        let i = connect(&mut rig, 1, 1);
        (rig, i)
    }

    #[test]
    fn a_hold_that_passes_while_the_link_is_down_drops_the_sessions_connections() {
        let (mut rig, i) = held_forward(2);
        rig.cut();
        let mut dest = Dest::default();
        assert_eq!(rig.engine.forwarding().pump(i, &mut dest), Pumped::Idle);
        rig.now = Instant(rig.now.0 + 2_000);
        rig.engine.on_timeout(rig.now, &mut rig.board);
        assert_eq!(rig.engine.open_sessions(), 0, "its hold is over");
        assert_eq!(
            rig.engine.forwarding().pump(i, &mut dest),
            Pumped::Over { abort: true }
        );
        rig.engine.forwarding().free(i);
        assert_eq!(rig.engine.forwarding().ports.in_use(), 0);
    }

    #[test]
    fn a_connection_the_client_no_longer_has_at_the_resume_is_dropped() {
        let (mut rig, i) = held_forward(60);
        rig.cut();
        rig.connect();
        rig.feed(Frame::Suspend { sid: 1 });
        rig.drain();
        // The client names channel 0 only: channel 1 is over at its side.
        rig.feed(Frame::Resume {
            sid: 1,
            ch: 0,
            offset: 0,
            limit: 0,
            eof: false,
            open: true,
        });
        let mut dest = Dest::default();
        assert_eq!(
            rig.engine.forwarding().pump(i, &mut dest),
            Pumped::Over { abort: true }
        );
        rig.engine.forwarding().free(i);
        rig.drain();
        assert_eq!(rig.engine.open_sessions(), 1, "the session goes on");
        assert_eq!(connect(&mut rig, 1, 2), i, "and its port takes the next");
    }
}
