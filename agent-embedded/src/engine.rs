//! The sessions of one relay connection, sans I/O: agent-core's engine plus a
//! terminal per shell or exec session ([`Terminal`]) and the pool of forwarded
//! connections ([`crate::forward`]). The link ([`crate::link`]) feeds it WebSocket
//! messages and timeouts and sends what it transmits; host tests drive it directly.
//!
//! agent-core owns every byte a session sends and decides when a session ends: a
//! terminal writes its output into the session's channel a step at a time
//! ([`STEP`]), each once the channel's buffer ([`RING`]) has room for a whole step,
//! so a command's output streams however long it is; agent-core sends it within
//! credit and rate, then `Eof` and `Close` once the work is over ([`Agent::exited`]).
//! What stays here is routing: events to terminals and connections, their output
//! to the channels.

use core::fmt::{self, Write};

use agent_core::provision::ForwardRules;
use agent_core::session::{auth_message, Agent, AgentConfig, Event, SessionHandle, UseError};
use agent_core::wire::{self, features, ErrorCode, Exit, Kind, Stream};
use agent_core::Instant;
use ed25519_dalek::{Signer, SigningKey};
use heapless::String;

use crate::console::{Board, Output, Step, Stepped, Terminal, STEP};
use crate::forward::{Forwarding, Ports};

/// Sessions a device runs at once unless a board asks for another number.
pub const DEFAULT_SESSIONS: usize = 4;
/// Largest frame the device accepts, announced in `Hello` (the relay keeps to it),
/// and the largest it sends.
pub const MAX_FRAME: usize = 2048;
/// Bytes a client may send a session before the device returns credit.
pub const WINDOW: usize = 512;
/// Longest console command line.
pub const LINE: usize = 128;
/// Each channel's output buffer in agent-core: output waiting for credit.
pub const RING: usize = 1024;
/// Channels of a session in agent-core's table: a forward session's connections
/// (shell and exec use one). The pool ([`crate::forward::PORTS`]) caps them across
/// sessions.
pub const CHANNELS: usize = 2;
/// The one account of a device: every session runs as the console. It is the default
/// account the device names in `Auth`; `Open` may name it or leave the account empty,
/// and any other is refused (the device does not announce `features::RUN_AS`).
pub const ACCOUNT: &str = "console";
/// Steps one session runs in one go: a board command that keeps asking for more
/// parts without writing any holds up the others only this long.
const STEPS: usize = 32;

/// Why the connection has to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing received for too long, or the handshake did not finish in time.
    Lost,
    /// The relay reported an error (wrong key, unknown agent, ...) and hangs up.
    Relay(String<128>),
    /// The relay broke the protocol.
    Protocol(String<128>),
    /// This driver misused agent-core (a bug).
    Internal(UseError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Lost => f.write_str("relay connection lost (no answer in time)"),
            Failure::Relay(m) => write!(f, "relay refused: {m}"),
            Failure::Protocol(m) => write!(f, "relay broke the protocol: {m}"),
            Failure::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

/// agent-core's engine as the device sizes it.
pub(crate) type Core<const N: usize> = Agent<N, CHANNELS, [u8; RING]>;

/// `args` formatted, cut at a character boundary where it stops fitting.
pub(crate) fn clipped<const M: usize>(args: fmt::Arguments<'_>) -> String<M> {
    struct Clip<const M: usize>(String<M>);
    impl<const M: usize> Write for Clip<M> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                self.0.push(c).map_err(|_| fmt::Error)?;
            }
            Ok(())
        }
    }
    let mut clip = Clip(String::new());
    let _ = clip.write_fmt(args);
    clip.0
}

/// A session: a shell or exec's terminal, or a forward session's mark (its
/// connections are in the pool).
struct Session {
    handle: SessionHandle,
    term: Option<Terminal<LINE, WINDOW>>,
}

/// What the console's `net` and `sessions` commands report, and the reboot request,
/// layered over the board.
struct View<'a> {
    board: &'a mut dyn Board,
    open: usize,
    capacity: usize,
    net: &'a str,
    reboot: &'a mut bool,
}

impl Board for View<'_> {
    fn uptime_ms(&self) -> u64 {
        self.board.uptime_ms()
    }
    fn memory(&self) -> (usize, usize) {
        self.board.memory()
    }
    fn network(&self, out: &mut dyn Write) -> fmt::Result {
        self.board.network(out)?;
        write!(out, "; {}", self.net)
    }
    fn sessions(&self) -> (usize, usize) {
        (self.open, self.capacity)
    }
    fn request_reboot(&mut self) {
        // The board reboots once the answer has left (see `Engine::take_reboot`).
        *self.reboot = true;
    }
    fn command(&mut self, argv: &[&str], part: usize, out: &mut dyn Write) -> Option<Step> {
        self.board.command(argv, part, out)
    }
    fn help(&self, out: &mut dyn Write) -> fmt::Result {
        self.board.help(out)
    }
}

/// One relay connection's state. `N` is the session capacity announced in `Hello`.
pub struct Engine<'k, const N: usize = DEFAULT_SESSIONS> {
    agent: Core<N>,
    sessions: [Option<Session>; N],
    ports: Ports<'k>,
    key: &'k SigningKey,
    agent_id: String<64>,
    failure: Option<Failure>,
    reboot: bool,
    /// Relay state for the `net` command, kept by the link.
    pub net: String<96>,
}

impl<'k, const N: usize> Engine<'k, N> {
    /// A connection that has just been made; `Hello` is the first frame out. With
    /// `forward` rules (from the provisioning image) the device announces and serves
    /// `forward` sessions.
    // Not inlined: agent-core's `Agent` is built in this frame and returned in
    // place, never in a caller's larger frame (see `link::new_engine`).
    #[inline(never)]
    pub fn new(key: &'k SigningKey, forward: Option<ForwardRules<'k>>, now: Instant) -> Self {
        let mut kinds = features::SHELL | features::EXEC;
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
            sessions: [const { None }; N],
            ports: Ports::new(forward),
            key,
            agent_id: String::new(),
            failure: None,
            reboot: false,
            net: String::new(),
        }
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
            Err(e) => {
                // The engine has queued an Error frame; the link sends it, then ends.
                self.failure = Some(Failure::Protocol(clipped(format_args!("{e}"))));
            }
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

    /// The next message to send to the relay, written into `out` (which holds
    /// [`MAX_FRAME`] bytes). The consoles first write what they can into their
    /// sessions' buffers, so call this until it returns `None`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut [u8],
        board: &mut dyn Board,
    ) -> Option<usize> {
        self.pump(board);
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

    fn session(&mut self, h: SessionHandle) -> Option<&mut Session> {
        self.sessions.iter_mut().flatten().find(|s| s.handle == h)
    }

    fn on_event(&mut self, ev: Event<'_>, board: &mut dyn Board) {
        if let Err(e) = self.handle(ev, board) {
            // A misused core call is a bug of this driver: the connection ends and
            // the link logs why (a clean reconnect beats a session in an unknown state).
            self.failure.get_or_insert(Failure::Internal(e));
        }
    }

    fn handle(&mut self, ev: Event<'_>, board: &mut dyn Board) -> Result<(), UseError> {
        match ev {
            Event::Challenge { nonce } => {
                let mut buf = [0u8; 64];
                let Some(m) = auth_message(nonce, &mut buf) else {
                    let why = format_args!("challenge nonce has the wrong length");
                    self.failure = Some(Failure::Relay(clipped(why)));
                    return Ok(());
                };
                let sig = self.key.sign(m).to_bytes();
                let public = self.key.verifying_key().to_bytes();
                // Every session of a device runs as the console: the account the
                // relay's policies decide on. A valid name, so never refused (the
                // rig's handshake checks it goes out).
                let _ = self.agent.authenticate(public, sig, "", ACCOUNT);
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
            Event::Data { channel, data } => {
                match self.ports.input(channel, data) {
                    Some(Ok(())) => return Ok(()),
                    // agent-core holds the client to the window, which the port holds.
                    Some(Err(())) => {
                        self.ports.abort(channel);
                        return self.agent.close_channel(channel, "input beyond the window");
                    }
                    None => {}
                }
                let taken = self
                    .session(channel.session())
                    .and_then(|s| s.term.as_mut())
                    .map(|t| t.input(data));
                match taken {
                    Some(Some(n)) => return self.agent.consumed(channel, n),
                    // agent-core holds the client to the window: a bug, which ends
                    // only this session.
                    Some(None) => {
                        let exit = Exit::Aborted(ErrorCode::FLOW_CONTROL);
                        return self.end(channel.session(), exit, "input beyond the window");
                    }
                    None => return self.agent.consumed(channel, data.len()),
                }
            }
            Event::Eof { channel } => {
                if self.ports.eof(channel) {
                    return Ok(());
                }
                if let Some(t) = self
                    .session(channel.session())
                    .and_then(|s| s.term.as_mut())
                {
                    t.end_of_input();
                }
            }
            Event::Signal { session, signal } => {
                let term = self.session(session).and_then(|s| s.term.as_mut());
                if let Some(t) = term.filter(|_| signal == 2) {
                    t.interrupt();
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
            Event::PeerError { message, .. } => {
                self.failure = Some(Failure::Relay(clipped(format_args!("{message}"))))
            }
            Event::ConnectionLost => self.failure = Some(Failure::Lost),
        }
        Ok(())
    }

    /// The session's work is over: its console goes, agent-core sends what waits
    /// (unless the session was ended), then `Eof` and `Close`. A session whose work
    /// was already over (its output still on its way) needs nothing more.
    fn end(&mut self, h: SessionHandle, exit: Exit, reason: &str) -> Result<(), UseError> {
        let Some(slot) = self
            .sessions
            .iter_mut()
            .find(|s| s.as_ref().is_some_and(|s| s.handle == h))
        else {
            return Ok(());
        };
        *slot = None;
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
        // agent-core refuses sessions beyond its table of `N`, the size of ours, and
        // kinds not announced in `Hello`: neither reaches here.
        let Some(free) = self.sessions.iter_mut().find(|s| s.is_none()) else {
            return self
                .agent
                .reject(h, ErrorCode::SESSION_LIMIT, "device at capacity");
        };
        let mut out: Output<STEP> = Output::default();
        let term = match kind {
            Kind::Shell { .. } => Terminal::shell(&mut out),
            Kind::Exec { argv } => Terminal::exec(wire::argv_iter(argv.0), &mut out),
            // Its connections come with `ChannelOpen` (agent-core opens forward
            // sessions only when the device announced them).
            Kind::Forward => {
                *free = Some(Session {
                    handle: h,
                    term: None,
                });
                return self.agent.accept(h);
            }
            Kind::SshKey { .. } => {
                let why = "this device runs shell, exec and forward sessions only";
                return self.agent.reject(h, ErrorCode::UNSUPPORTED, why);
            }
        };
        self.agent.accept(h)?;
        // A new session's buffer is empty: the greeting (or the error) fits.
        self.agent
            .send_slice(h.main(), Stream::OUT, out.as_bytes())?;
        *free = Some(Session {
            handle: h,
            term: Some(term),
        });
        Ok(())
    }

    /// Let each console write a step into its session's channel while a whole step
    /// fits. A session whose work is over ends here.
    fn pump(&mut self, board: &mut dyn Board) {
        let open = self.agent.session_count();
        for slot in self.sessions.iter_mut() {
            let Some(s) = slot else { continue };
            let Some(term) = s.term.as_mut() else {
                continue;
            };
            let main = s.handle.main();
            let mut view = View {
                board: &mut *board,
                open,
                capacity: N,
                net: &self.net,
                reboot: &mut self.reboot,
            };
            let mut end = None;
            for _ in 0..STEPS {
                if self.agent.send_room(main) < STEP {
                    break;
                }
                let mut out: Output<STEP> = Output::default();
                let Some(Stepped { ran, exit }) = term.step(&mut view, &mut out) else {
                    break;
                };
                // It fits: a whole step had room.
                let r = self.agent.consumed(main, ran).and_then(|()| {
                    self.agent
                        .send_slice(main, Stream::OUT, out.as_bytes())
                        .map(drop)
                });
                if let Err(e) = r {
                    self.failure.get_or_insert(Failure::Internal(e));
                }
                end = exit;
                if end.is_some() {
                    break;
                }
            }
            if let Some(status) = end {
                let h = s.handle;
                *slot = None;
                let r = self
                    .agent
                    .finish(main)
                    .and_then(|()| self.agent.exited(h, Exit::Code(status), ""));
                if let Err(e) = r {
                    self.failure.get_or_insert(Failure::Internal(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::rig::*;
    use agent_core::wire::{Bytes, Frame};

    #[test]
    fn exec_returns_output_and_status() {
        let mut rig = Rig::ready();
        let (out, end) = rig.exec(1, b"echo\0hello\0world\0");
        assert_eq!(out, "hello world\r\n");
        assert!(end.contains("Close") && end.contains("Code(0)"), "{end}");

        let (out, end) = rig.exec(3, b"uptime\0");
        assert_eq!(out, "up 0d 00:01:01.500\r\n");
        assert!(end.contains("Code(0)"), "{end}");

        let (out, end) = rig.exec(5, b"frobnicate\0");
        assert!(out.contains("frobnicate: command not found"), "{out}");
        assert!(end.contains("Code(127)"), "{end}");
        assert_eq!(rig.engine.open_sessions(), 0);
    }

    #[test]
    fn overlong_exec_line_fails_cleanly() {
        let mut rig = Rig::ready();
        let mut argv = b"echo\0".to_vec();
        argv.extend(std::iter::repeat_n(b'x', LINE + 1));
        argv.push(0);
        let (out, end) = rig.exec(1, &argv);
        assert!(out.contains("longer than"), "{out}");
        assert!(end.contains("Code(2)"), "{end}");
    }

    #[test]
    fn shell_runs_help_echo_and_exit() {
        let mut rig = Rig::ready();
        rig.open_shell(7);
        let greeting = output(&rig.drain(), 7);
        assert!(greeting.ends_with("sesame> "), "{greeting}");
        let help = rig.type_line(7, b"help\r");
        for cmd in ["uptime", "mem", "net", "sessions", "echo", "reboot"] {
            assert!(help.contains(cmd), "help lacks {cmd}: {help}");
        }
        assert!(rig.type_line(7, b"echo a  b\r").contains("a b\r\n"));
        assert!(rig
            .type_line(7, b"sessions\r")
            .contains("1 of 4 sessions open"));
        let net = rig.type_line(7, b"net\r");
        assert!(net.contains("lan9118 up"), "{net}");
        rig.feed(Frame::Data {
            sid: 7,
            ch: 0,
            stream: Stream::OUT,
            data: Bytes(b"exit\r"),
        });
        let end = rig.drain();
        assert!(last(&end).contains("Code(0)"), "{}", last(&end));
        assert_eq!(rig.engine.open_sessions(), 0);
    }

    #[test]
    fn input_then_end_of_input_runs_the_lines_then_ends() {
        // A client whose stdin is a pipe sends everything, then Eof.
        let mut rig = Rig::ready();
        rig.open_shell(4);
        rig.drain();
        rig.feed(Frame::Data {
            sid: 4,
            ch: 0,
            stream: Stream::OUT,
            data: Bytes(b"echo piped\r"),
        });
        rig.feed(Frame::Eof { sid: 4, ch: 0 });
        let sent = rig.drain();
        assert!(
            output(&sent, 4).contains("piped\r\n"),
            "{}",
            output(&sent, 4)
        );
        assert!(last(&sent).contains("Code(0)"), "{}", last(&sent));
        assert_eq!(rig.engine.open_sessions(), 0);
    }

    #[test]
    fn several_lines_in_one_message_each_run() {
        let mut rig = Rig::ready();
        rig.open_shell(1);
        rig.drain();
        let out = rig.type_line(1, b"echo one\recho two\r");
        assert!(out.contains("one\r\n") && out.contains("two\r\n"), "{out}");
    }

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

    #[test]
    fn output_waits_for_credit() {
        let mut rig = Rig::ready();
        // A window smaller than the greeting: the rest follows the credit.
        rig.feed(Frame::Open {
            sid: 1,
            window: 8,
            kind: Kind::Shell {
                term: "dumb",
                cols: 80,
                rows: 24,
            },
            account: "",
        });
        let first = output(&rig.drain(), 1);
        assert_eq!(first.len(), 8);
        rig.feed(Frame::Credit {
            sid: 1,
            ch: 0,
            bytes: 4096,
        });
        let rest = output(&rig.drain(), 1);
        assert!(std::format!("{first}{rest}").ends_with("sesame> "));
    }

    #[test]
    fn a_command_printing_more_than_1_kib_arrives_whole() {
        let mut rig = Rig::ready();
        // 300 lines: 3300 bytes, three times the session's buffer in agent-core.
        let (out, end) = rig.exec(1, b"count\x00300\0");
        assert_eq!(out.len(), 3300);
        assert_eq!(out, counted(300));
        assert!(end.contains("Close") && end.contains("Code(0)"), "{end}");
        assert_eq!(rig.engine.open_sessions(), 0);
    }

    #[test]
    fn long_output_streams_as_credit_comes() {
        let mut rig = Rig::ready();
        rig.feed(Frame::Open {
            sid: 1,
            window: 300,
            kind: Kind::Exec {
                argv: Bytes(b"count\x00200\0"),
            },
            account: "",
        });
        let mut got = output(&rig.drain(), 1);
        assert_eq!(got.len(), 300, "no more than the window");
        let mut end = S::new();
        for _ in 0..20 {
            rig.feed(Frame::Credit {
                sid: 1,
                ch: 0,
                bytes: 300,
            });
            let sent = rig.drain();
            let more = output(&sent, 1);
            assert!(more.len() <= 300, "{}", more.len());
            got += &more;
            end = last(&sent);
            if end.contains("Close") {
                break;
            }
        }
        assert_eq!(got, counted(200));
        assert!(end.contains("Code(0)"), "{end}");
    }

    #[test]
    fn a_shell_prompts_after_long_output_then_runs_what_was_typed_meanwhile() {
        let mut rig = Rig::ready();
        rig.open_shell(2);
        rig.drain();
        let out = rig.type_line(2, b"count 100\recho after\r");
        let want = std::format!(
            "count 100\r\n{}sesame> echo after\r\nafter\r\nsesame> ",
            counted(100)
        );
        assert_eq!(out, want);
    }

    #[test]
    fn a_session_the_relay_ends_mid_output_stops() {
        let mut rig = Rig::ready();
        rig.feed(Frame::Open {
            sid: 1,
            window: 64,
            kind: Kind::Exec {
                argv: Bytes(b"count\x001000\0"),
            },
            account: "",
        });
        assert_eq!(output(&rig.drain(), 1).len(), 64);
        rig.feed(Frame::Close {
            sid: 1,
            exit: Exit::Aborted(ErrorCode::TERMINATED),
            reason: "",
        });
        let sent = rig.drain();
        assert_eq!(output(&sent, 1), "", "nothing more after the end");
        assert!(last(&sent).contains("Close"), "{sent:?}");
        assert_eq!(rig.engine.open_sessions(), 0);
        // The device is free for the next session.
        assert_eq!(rig.exec(3, b"echo\0next\0").0, "next\r\n");

        // Ended while its last output waits for credit, after the command finished.
        rig.feed(Frame::Open {
            sid: 5,
            window: 2,
            kind: Kind::Exec {
                argv: Bytes(b"echo\0bye\0"),
            },
            account: "",
        });
        assert_eq!(output(&rig.drain(), 5), "by");
        rig.feed(Frame::Close {
            sid: 5,
            exit: Exit::Aborted(ErrorCode::TERMINATED),
            reason: "",
        });
        assert!(last(&rig.drain()).contains("Close"));
        assert_eq!(rig.engine.failure(), None);
        assert_eq!(rig.engine.open_sessions(), 0);
    }

    #[test]
    fn ctrl_c_stops_long_output_and_the_shell_goes_on() {
        for interrupt in [
            Frame::Signal { sid: 1, signal: 2 },
            Frame::Data {
                sid: 1,
                ch: 0,
                stream: Stream::OUT,
                data: Bytes(b"\x03"),
            },
        ] {
            let mut rig = Rig::ready();
            rig.feed(Frame::Open {
                sid: 1,
                window: 600,
                kind: Kind::Shell {
                    term: "dumb",
                    cols: 80,
                    rows: 24,
                },
                account: "",
            });
            rig.feed(Frame::Data {
                sid: 1,
                ch: 0,
                stream: Stream::OUT,
                data: Bytes(b"count 1000\r"),
            });
            assert_eq!(output(&rig.drain(), 1).len(), 600);
            rig.feed(interrupt);
            rig.feed(Frame::Credit {
                sid: 1,
                ch: 0,
                bytes: 64 * 1024,
            });
            let rest = output(&rig.drain(), 1);
            // What was already in agent-core's buffer still goes, then no more.
            assert!(rest.len() < 2 * RING, "{}", rest.len());
            assert!(rest.ends_with("^C\r\nsesame> "), "{rest:?}");
            assert_eq!(rig.type_line(1, b"echo ok\r"), "echo ok\r\nok\r\nsesame> ");
        }
    }
}
