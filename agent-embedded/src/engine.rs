//! The device's sessions, sans I/O: agent-core's engine, the terminals of shell and
//! exec sessions ([`crate::terminals`]) and the pool of forwarded connections
//! ([`crate::forward`]). Made once, it outlives every relay connection: the link
//! ([`crate::link`]) says when one is up ([`Engine::connected`]) and when it is gone
//! ([`Engine::disconnected`]), feeds it WebSocket messages and timeouts and sends
//! what it transmits; host tests drive it directly.
//!
//! agent-core owns every byte a session sends and decides when a session ends,
//! which includes what a lost link does to it (docs/protocol.md §8): a resumable
//! session (the relay sends `Resumable` before its `Open`) is held, its console
//! going on and its output kept in its channel's buffer ([`RING`]) until the peer
//! acknowledges it, so that a resume sends again what did not arrive; any other
//! session ends at the cut. What stays here is routing: events to terminals and
//! connections, their output to the channels.

use agent_core::provision::ForwardRules;
use agent_core::session::{Agent, AgentConfig, Event, SessionHandle, UseError};
use agent_core::wire::{features, ErrorCode, Exit, Kind};
use agent_core::Instant;
use ed25519_dalek::{Signer, SigningKey};
use heapless::String;

pub use agent_core::session::Failure;

use crate::console::Board;
use crate::forward::{Forwarding, Ports};
use crate::terminals::{Terminals, View};

/// Sessions a device runs at once unless a board asks for another number.
pub const DEFAULT_SESSIONS: usize = 4;
/// Largest frame the device accepts, announced in `Hello` (the relay keeps to it),
/// and the largest it sends.
pub const MAX_FRAME: usize = 2048;
/// Bytes a client may send a session before the device returns credit.
pub const WINDOW: usize = 512;
/// Longest console command line.
pub const LINE: usize = 128;
/// Each channel's output buffer in agent-core: output waiting for credit and, in a
/// resumable session, output sent and not yet acknowledged (its replay buffer). A
/// console writes a step only while one fits, so a resumable session sends at most
/// this much per round trip to the client and back. 1 KiB: console output is short,
/// the `N` × [`CHANNELS`] buffers are static RAM, and flash is the tighter budget
/// (with 2 KiB the firmware took 8 KiB more RAM and 3 KiB more flash: the compiler
/// fills an empty session and channel of agent-core's table from constants in
/// flash, buffers included).
pub const RING: usize = 1024;
/// Channels of a session in agent-core's table: a forward session's connections
/// (shell and exec use one). The pool ([`crate::forward::PORTS`]) caps them across
/// sessions.
pub const CHANNELS: usize = 2;
/// The one account of a device: every session runs as the console. It is the default
/// account the device names in `Auth`; `Open` may name it or leave the account empty,
/// and any other is refused (the device does not announce `features::RUN_AS`).
pub const ACCOUNT: &str = "console";

/// agent-core's engine as the device sizes it.
pub(crate) type Core<const N: usize> = Agent<N, CHANNELS, [u8; RING]>;

/// The device's sessions and its relay connection, if one is up. `N` is the session
/// capacity announced in `Hello`.
pub struct Engine<'k, const N: usize = DEFAULT_SESSIONS> {
    agent: Core<N>,
    terminals: Terminals<N>,
    ports: Ports<'k>,
    key: &'k SigningKey,
    agent_id: String<64>,
    failure: Option<Failure>,
    reboot: bool,
    /// A relay connection is up: frames go out.
    online: bool,
    /// Relay state for the `net` command, kept by the link.
    pub net: String<96>,
}

impl<'k, const N: usize> Engine<'k, N> {
    /// The device's engine, made once; it has no relay connection until
    /// [`Engine::connected`]. With `forward` rules (from the provisioning image) the
    /// device announces and serves `forward` sessions; it always announces resumable
    /// sessions (`features::RESUME`).
    // Not inlined: agent-core's `Agent` is built in this frame and returned in
    // place, never in a caller's larger frame (see `link::new_engine`).
    #[inline(never)]
    pub fn new(key: &'k SigningKey, forward: Option<ForwardRules<'k>>, now: Instant) -> Self {
        let mut kinds = features::SHELL | features::EXEC | features::RESUME;
        if forward.is_some() {
            kinds |= features::FORWARD;
        }
        let config = AgentConfig {
            max_frame: MAX_FRAME as u32,
            window: WINDOW as u32,
            features: kinds,
            ..AgentConfig::default()
        };
        Engine {
            agent: Agent::new(config, now),
            terminals: Terminals::new(),
            ports: Ports::new(forward),
            key,
            agent_id: String::new(),
            failure: None,
            reboot: false,
            online: false,
            net: String::new(),
        }
    }

    /// A relay connection is up (its WebSocket open): its handshake starts now, with
    /// its own timer, and `Hello` is the first frame out. agent-core begins the
    /// connection again even if [`Engine::disconnected`] began one when the last
    /// link ended: that one's handshake timer may have gone off meanwhile. Held
    /// sessions stay held (from when they were first cut) until the relay resumes
    /// them.
    pub fn connected(&mut self, now: Instant, board: &mut dyn Board) {
        self.agent.reconnect(now);
        self.online = true;
        self.failure = None;
        self.agent_id.clear();
        self.net.clear();
        self.drain_events(board);
    }

    /// The relay connection is gone: agent-core keeps the resumable sessions, held
    /// for their hold, and ends every other one now, not when a connection comes
    /// back ([`Event::Terminate`]: its terminal goes, its forwarded connections are
    /// dropped when the link next polls their ports, and its end goes nowhere). A
    /// held session keeps going, a forward session's connections included: what
    /// they read waits in their channels' buffers, and what the client sent waits
    /// for the socket. Nothing is transmitted until [`Engine::connected`];
    /// meanwhile [`Engine::pump`], [`Engine::on_timeout`] and the link's ports keep
    /// the held sessions going.
    pub fn disconnected(&mut self, now: Instant, board: &mut dyn Board) {
        self.online = false;
        self.agent.reconnect(now);
        self.drain_events(board);
    }

    /// Whether a relay connection is up.
    pub fn is_connected(&self) -> bool {
        self.online
    }

    /// The relay's name for this agent, once authenticated.
    pub fn agent_id(&self) -> Option<&str> {
        (!self.agent_id.is_empty()).then_some(self.agent_id.as_str())
    }

    /// Sessions open now (those whose last output and `Close` are still on their way
    /// included).
    pub fn open_sessions(&self) -> usize {
        self.agent.session_count()
    }

    /// The pool of forwarded connections with agent-core, for the link's ports.
    pub fn forwarding(&mut self) -> Forwarding<'_, 'k, N> {
        Forwarding {
            ports: &mut self.ports,
            agent: &mut self.agent,
        }
    }

    /// Why the connection must end, once it must.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// Whether a `reboot` command asked for a restart; the link calls the board's
    /// `request_reboot` after sending everything queued.
    pub fn take_reboot(&mut self) -> bool {
        core::mem::take(&mut self.reboot)
    }

    /// A complete binary message from the relay.
    pub fn on_message(&mut self, now: Instant, msg: &[u8], board: &mut dyn Board) {
        match self.agent.handle_frame(now, msg) {
            // `ev` borrows `msg`, not the engine.
            Ok(Some(ev)) => self.on_event(ev, board),
            Ok(None) => {}
            // The engine has queued an Error frame; the link sends it, then ends.
            Err(e) => self.failure = Some(Failure::Protocol(e)),
        }
        self.drain_events(board);
    }

    /// Time passed: keepalives, handshake and dead-peer timers, rate limits.
    pub fn on_timeout(&mut self, now: Instant, board: &mut dyn Board) {
        self.agent.handle_timeout(now);
        self.drain_events(board);
    }

    /// When [`Engine::on_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.agent.poll_timeout()
    }

    /// The terminals write what fits into their sessions' buffers: with or without
    /// a relay connection (a held session's command goes on while its output fits).
    pub fn pump(&mut self, board: &mut dyn Board) {
        let mut view = View {
            board: &mut *board,
            open: 0,
            capacity: N,
            net: &self.net,
            reboot: &mut self.reboot,
        };
        if let Err(e) = self.terminals.pump(&mut self.agent, &mut view) {
            self.fail(Failure::Internal(e), board);
        }
    }

    /// The next message to send to the relay, written into `out` (which holds
    /// [`MAX_FRAME`] bytes); never one without a connection. The terminals first
    /// write what they can into their sessions' buffers ([`Engine::pump`]), so call
    /// this until it returns `None`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut [u8],
        board: &mut dyn Board,
    ) -> Option<usize> {
        self.pump(board);
        if !self.online {
            return None;
        }
        match self.agent.poll_transmit(now, out) {
            Ok(len) => len,
            Err(e) => {
                self.failure = Some(Failure::Internal(e));
                None
            }
        }
    }

    fn drain_events(&mut self, board: &mut dyn Board) {
        while let Some(ev) = self.agent.poll_event() {
            self.on_event(ev, board);
        }
    }

    fn on_event(&mut self, ev: Event<'_>, board: &mut dyn Board) {
        if let Err(e) = self.handle(ev, board) {
            self.fail(Failure::Internal(e), board);
        }
    }

    /// A misused core call is a bug of this driver: the connection ends and the link
    /// logs why (a clean reconnect beats a connection in an unknown state). Without
    /// a connection there is none to end: it is logged now.
    fn fail(&mut self, failure: Failure, board: &mut dyn Board) {
        if self.online {
            self.failure.get_or_insert(failure);
        } else {
            board.log(format_args!("sessions: {failure}"));
        }
    }

    fn handle(&mut self, ev: Event<'_>, board: &mut dyn Board) -> Result<(), UseError> {
        match ev {
            Event::Challenge { nonce } => {
                let key = self.key;
                let public = key.verifying_key().to_bytes();
                // Every session of a device runs as the console: the account the
                // relay's policies decide on.
                let sign = |m: &[u8]| key.sign(m).to_bytes();
                if let Err(e) = self
                    .agent
                    .answer_challenge(nonce, public, sign, "", ACCOUNT)
                {
                    self.failure = Some(Failure::Auth(e));
                }
            }
            Event::Authenticated { agent_id } => {
                self.agent_id = agent_core::session::clip(agent_id);
                board.log(format_args!("relay: authenticated as agent {agent_id}"));
            }
            Event::Open {
                session,
                kind,
                account,
            } => return self.open(session, kind, account),
            Event::Data { channel, data } => match self.ports.input(channel, data) {
                Some(Ok(())) => {}
                // agent-core holds the client to the window, which the port holds.
                Some(Err(())) => {
                    self.ports.abort(channel);
                    return self.agent.close_channel(channel, "input beyond the window");
                }
                None => match self.terminals.input(channel, data) {
                    Some(Some(n)) => return self.agent.consumed(channel, n),
                    // agent-core holds the client to the window: a bug, which ends
                    // only this session.
                    Some(None) => {
                        let exit = Exit::Aborted(ErrorCode::FLOW_CONTROL);
                        return self.end(channel.session(), exit, "input beyond the window");
                    }
                    None => return self.agent.consumed(channel, data.len()),
                },
            },
            Event::Eof { channel } => {
                if !self.ports.eof(channel) {
                    self.terminals.end_of_input(channel.session());
                }
            }
            Event::Signal { session, signal } => {
                if signal == 2 {
                    self.terminals.interrupt(session);
                }
            }
            Event::Terminate { session } => {
                return self.end(session, Exit::Aborted(ErrorCode::TERMINATED), "")
            }
            Event::Abort { session, error } => {
                return self.end(session, Exit::Aborted(error.code()), "")
            }
            Event::ChannelOpen {
                channel,
                host,
                port,
            } => self.forwarding().open(channel, host, port),
            Event::ChannelClose { channel } => {
                // The link drops its connection when it next polls the port.
                self.ports.abort(channel);
                return self.agent.close_channel(channel, "");
            }
            Event::Resize { .. } => {}
            // Without a connection, only the handshake timer of the one that ended
            // goes off: there is nothing to lose.
            ev @ (Event::PeerError { .. } | Event::ConnectionLost) => {
                if self.online {
                    self.failure = Failure::of(&ev);
                }
            }
        }
        Ok(())
    }

    /// The session's work is over: its terminal goes, agent-core sends what waits
    /// (unless the session was ended), then `Eof` and `Close`. A session whose work
    /// was already over (its output still on its way) needs nothing more.
    fn end(&mut self, h: SessionHandle, exit: Exit, reason: &str) -> Result<(), UseError> {
        if !self.terminals.remove(h) {
            return Ok(());
        }
        self.ports.end_session(h);
        self.agent.exited(h, exit, reason)
    }

    fn open(&mut self, h: SessionHandle, kind: Kind<'_>, account: &str) -> Result<(), UseError> {
        // A device has no accounts: its sessions all run as the console. Asking for
        // another account is refused, never silently run as the console.
        if !account.is_empty() && account != ACCOUNT {
            let why = "this device has no accounts; sessions run as 'console'";
            return self.agent.reject(h, ErrorCode::DENIED, why);
        }
        self.terminals.open(&mut self.agent, h, kind)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::rig::*;
    use agent_core::wire::{Bytes, Frame};

    #[test]
    fn fifth_session_is_refused_and_others_keep_working() {
        let mut rig = Rig::ready();
        for sid in 1..=4 {
            rig.open_shell(sid);
        }
        rig.drain();
        rig.open(
            5,
            Kind::Exec {
                argv: Bytes(b"uptime\0"),
            },
        );
        let sent = rig.drain();
        assert!(last(&sent).contains("Reject") && last(&sent).contains("sid: 5"));
        assert!(rig.type_line(2, b"echo still\r").contains("still"));
    }
    #[test]
    fn sessions_run_as_the_console_and_no_other_account() {
        let mut rig = Rig::ready();
        rig.open_as(
            1,
            Kind::Exec {
                argv: Bytes(b"echo\0hi\0"),
            },
            "console",
        );
        let sent = rig.drain();
        assert_eq!(output(&sent, 1), "hi\r\n");
        assert!(last(&sent).contains("Code(0)"), "{}", last(&sent));
        for (sid, account) in [(2, "root"), (3, "deploy")] {
            rig.open_as(
                sid,
                Kind::Exec {
                    argv: Bytes(b"echo\0hi\0"),
                },
                account,
            );
            let sent = rig.drain();
            assert_eq!(sent.len(), 1, "nothing ran: {sent:?}");
            match Frame::decode(&sent[0].1).unwrap() {
                Frame::Reject {
                    sid: s,
                    code,
                    reason,
                } => {
                    assert_eq!((s, code), (sid, ErrorCode::DENIED));
                    assert_eq!(
                        reason,
                        "this device has no accounts; sessions run as 'console'"
                    );
                }
                f => panic!("expected Reject, got {f:?}"),
            }
        }
        assert_eq!(rig.engine.open_sessions(), 0);
        // The default account (empty) is the console too.
        let (out, _) = rig.exec(4, b"echo\0still\0");
        assert_eq!(out, "still\r\n");
    }
    #[test]
    fn forward_is_refused_as_unsupported() {
        let mut rig = Rig::ready();
        rig.open(1, Kind::Forward);
        let end = last(&rig.drain());
        // agent-core refuses kinds outside the announced features before the engine.
        assert!(
            end.contains("Reject") && end.contains("ErrorCode(4)"),
            "{end}"
        );
    }
    #[test]
    fn reboot_waits_for_the_answer() {
        let mut rig = Rig::ready();
        let (out, _) = rig.exec(1, b"reboot\0");
        assert!(out.contains("rebooting"));
        assert!(rig.engine.take_reboot());
        assert!(!rig.engine.take_reboot());
        assert_eq!(
            rig.board.reboots, 0,
            "the link reboots the board, not the engine"
        );
    }
    #[test]
    fn relay_error_and_silence_end_the_connection() {
        let mut rig = Rig::ready();
        rig.feed(Frame::Error {
            sid: 0,
            code: ErrorCode::AUTH,
            message: "unknown agent key",
        });
        assert!(std::format!("{}", rig.engine.failure().unwrap()).contains("unknown agent key"));

        let mut rig = Rig::ready();
        let far = Instant(rig.now.0 + 10 * 60 * 1000);
        rig.engine.on_timeout(far, &mut rig.board);
        assert_eq!(rig.engine.failure(), Some(&Failure::Lost));
    }
}
