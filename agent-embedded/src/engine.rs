//! The sessions of one relay connection, sans I/O: agent-core's engine plus a
//! console per session. The link ([`crate::link`]) feeds it WebSocket messages and
//! timeouts and sends what it transmits; host tests drive it directly.

use core::fmt::{self, Write};

use agent_core::session::{auth_message, Agent, AgentConfig, Event, SendError};
use agent_core::wire::{self, features, ErrorCode, Exit, Kind, Stream};
use agent_core::Instant;
use ed25519_dalek::{Signer, SigningKey};
use heapless::{String, Vec};

use crate::console::{Board, Console, Output};

/// Sessions a device runs at once unless a board asks for another number.
pub const DEFAULT_SESSIONS: usize = 4;
/// Largest frame the device accepts, announced in `Hello` (the relay keeps to it).
pub const MAX_FRAME: usize = 2048;
/// Bytes a client may send a session before the device returns credit.
pub const WINDOW: usize = 512;
/// Longest console command line.
pub const LINE: usize = 128;
/// Output one command may produce; more is cut.
pub const OUT: usize = 1024;
/// The one account of a device: every session runs as the console. It is the default
/// account the device names in `Auth`; `Open` may name it or leave the account empty,
/// and any other is refused (the device does not announce `features::RUN_AS`).
pub const ACCOUNT: &str = "console";

/// Why the connection has to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing received for too long, or the handshake did not finish in time.
    Lost,
    /// The relay reported an error (wrong key, unknown agent, ...) and hangs up.
    Relay(String<128>),
    /// The relay broke the protocol.
    Protocol(String<128>),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Lost => f.write_str("relay connection lost (no answer in time)"),
            Failure::Relay(m) => write!(f, "relay refused: {m}"),
            Failure::Protocol(m) => write!(f, "relay broke the protocol: {m}"),
        }
    }
}

/// `args` formatted, cut at a character boundary where it stops fitting.
fn clipped<const M: usize>(args: fmt::Arguments<'_>) -> String<M> {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Free,
    Shell,
    Exec,
}

struct Session {
    sid: u32,
    role: Role,
    console: Console<LINE>,
    out: Output<OUT>,
    /// Bytes of `out` already sent.
    sent: usize,
    /// Input not yet run through the console (at most one window).
    input: Vec<u8, WINDOW>,
    /// End the session once output is sent (exit, end of input, exec done).
    ending: bool,
    status: i32,
}

impl Session {
    fn free() -> Self {
        Session {
            sid: 0,
            role: Role::Free,
            console: Console::default(),
            out: Output::default(),
            sent: 0,
            input: Vec::new(),
            ending: false,
            status: 0,
        }
    }
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
    fn command(&mut self, argv: &[&str], out: &mut dyn Write) -> Option<i32> {
        self.board.command(argv, out)
    }
    fn help(&self, out: &mut dyn Write) -> fmt::Result {
        self.board.help(out)
    }
}

/// One relay connection's state. `N` is the session capacity announced in `Hello`.
pub struct Engine<'k, const N: usize = DEFAULT_SESSIONS> {
    agent: Agent<N, 1>,
    sessions: [Session; N],
    key: &'k SigningKey,
    agent_id: String<64>,
    failure: Option<Failure>,
    reboot: bool,
    /// Relay state for the `net` command, kept by the link.
    pub net: String<96>,
}

impl<'k, const N: usize> Engine<'k, N> {
    /// A connection that has just been made; `Hello` is the first frame out.
    pub fn new(key: &'k SigningKey, now: Instant) -> Self {
        let config = AgentConfig {
            max_frame: MAX_FRAME as u32,
            window: WINDOW as u32,
            features: features::SHELL | features::EXEC,
            ..AgentConfig::default()
        };
        Engine {
            agent: Agent::new(config, now),
            sessions: core::array::from_fn(|_| Session::free()),
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

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.role != Role::Free)
            .count()
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

    fn drain_events(&mut self, board: &mut dyn Board) {
        while let Some(ev) = self.agent.poll_event() {
            self.on_event(ev, board);
        }
    }

    fn slot(&mut self, sid: u32) -> Option<&mut Session> {
        self.sessions
            .iter_mut()
            .find(|s| s.role != Role::Free && s.sid == sid)
    }

    fn on_event(&mut self, ev: Event<'_>, board: &mut dyn Board) {
        match ev {
            Event::Challenge { nonce } => {
                let mut buf = [0u8; 64];
                match auth_message(nonce, &mut buf) {
                    Some(m) => {
                        let sig = self.key.sign(m).to_bytes();
                        let public = self.key.verifying_key().to_bytes();
                        // Every session of a device runs as the console: the
                        // account the relay's policies decide on. A valid name, so
                        // never refused (the rig's handshake checks it goes out).
                        let _ = self.agent.authenticate(public, sig, "", ACCOUNT);
                    }
                    None => {
                        let why = format_args!("challenge nonce has the wrong length");
                        self.failure = Some(Failure::Relay(clipped(why)));
                    }
                }
            }
            Event::Authenticated { agent_id } => {
                self.agent_id = agent_core::session::clip(agent_id);
                board.log(format_args!("relay: authenticated as agent {agent_id}"));
            }
            Event::Open { sid, kind, account } => self.open(sid, kind, account, board),
            Event::Data { sid, ch, data } => {
                let Some(role) = self.slot(sid).map(|s| s.role) else {
                    return;
                };
                if role != Role::Shell {
                    // An exec command has no standard input.
                    self.agent.consumed(sid, ch, data.len());
                    return;
                }
                let full = self
                    .slot(sid)
                    .is_some_and(|s| s.input.extend_from_slice(data).is_err());
                if full {
                    // agent-core holds the peer to the window, so this is a bug: end
                    // only this session.
                    let why = "input beyond the window";
                    self.end(sid, Exit::Aborted(ErrorCode::FLOW_CONTROL), why);
                }
            }
            Event::Eof { sid, .. } => {
                if let Some(s) = self.slot(sid) {
                    s.ending = true;
                }
            }
            Event::Signal { sid, signal } => {
                // SIGINT abandons the line, as ^C would.
                if signal == 2 {
                    if let Some(s) = self.slot(sid) {
                        if s.role == Role::Shell {
                            let _ = s.input.push(0x03);
                        }
                    }
                }
            }
            Event::Terminate { sid } => self.end(sid, Exit::Aborted(ErrorCode::TERMINATED), ""),
            Event::Abort { sid, .. } => {
                self.end(sid, Exit::Aborted(ErrorCode::PROTOCOL), "protocol error")
            }
            Event::ChannelOpen { sid, ch, .. } => self.agent.reject_channel(
                sid,
                ch,
                ErrorCode::UNSUPPORTED,
                "this device does not forward ports",
            ),
            Event::ChannelClose { sid, ch } => self.agent.close_channel(sid, ch, ""),
            Event::Resize { .. } => {}
            Event::PeerError { message, .. } => {
                self.failure = Some(Failure::Relay(clipped(format_args!("{message}"))))
            }
            Event::ConnectionLost => self.failure = Some(Failure::Lost),
        }
    }

    fn end(&mut self, sid: u32, exit: Exit, reason: &str) {
        if let Some(s) = self.slot(sid) {
            s.role = Role::Free;
            self.agent.close(sid, exit, reason);
        }
    }

    fn open(&mut self, sid: u32, kind: Kind<'_>, account: &str, board: &mut dyn Board) {
        // A device has no accounts: its sessions all run as the console. Asking for
        // another account is refused, never silently run as the console.
        if !account.is_empty() && account != ACCOUNT {
            self.agent.reject(
                sid,
                ErrorCode::DENIED,
                "this device has no accounts; sessions run as 'console'",
            );
            return;
        }
        let open = self.open_sessions();
        let Some(i) = self.sessions.iter().position(|s| s.role == Role::Free) else {
            let why: String<64> = clipped(format_args!("device at capacity ({N} sessions)"));
            self.agent.reject(sid, ErrorCode::SESSION_LIMIT, &why);
            return;
        };
        let mut view = View {
            board,
            open: open + 1,
            capacity: N,
            net: &self.net,
            reboot: &mut self.reboot,
        };
        let s = &mut self.sessions[i];
        *s = Session::free();
        s.sid = sid;
        match kind {
            Kind::Shell { .. } => {
                s.role = Role::Shell;
                s.console.start(&mut s.out);
            }
            Kind::Exec { argv } => {
                s.role = Role::Exec;
                let mut line: String<LINE> = String::new();
                let mut fits = true;
                for (i, arg) in wire::argv_iter(argv.0).enumerate() {
                    let arg = core::str::from_utf8(arg).unwrap_or("\u{fffd}");
                    fits &= (i == 0 || line.push(' ').is_ok()) && line.push_str(arg).is_ok();
                }
                s.status = if fits {
                    Console::<LINE>::run_line(&line, &mut view, &mut s.out)
                } else {
                    let _ = writeln!(s.out, "error: command line longer than {LINE} bytes");
                    2
                };
                s.ending = true;
            }
            Kind::Forward | Kind::SshKey { .. } => {
                self.agent.reject(
                    sid,
                    ErrorCode::UNSUPPORTED,
                    "this device runs shell and exec sessions only",
                );
                return;
            }
        }
        self.agent.accept(sid);
    }

    /// The next message to send to the relay, written into `out` (which holds
    /// [`MAX_FRAME`] bytes): protocol frames first, then session output.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut [u8],
        board: &mut dyn Board,
    ) -> Option<usize> {
        loop {
            if let Some(n) = self.agent.poll_transmit(now, out) {
                return Some(n);
            }
            let mut progressed = false;
            let open = self.open_sessions();
            for i in 0..N {
                let s = &mut self.sessions[i];
                if s.role == Role::Free {
                    continue;
                }
                let pending = &s.out.as_bytes()[s.sent..];
                if !pending.is_empty() {
                    match self
                        .agent
                        .send_data(now, s.sid, 0, Stream::OUT, pending, out)
                    {
                        Ok((taken, len)) if taken > 0 => {
                            s.sent += taken;
                            if s.sent == s.out.as_bytes().len() {
                                s.out.clear();
                                s.sent = 0;
                            }
                            return Some(len);
                        }
                        // Out of credit or rate: a Credit frame or a timeout resumes.
                        Ok(_) => continue,
                        // The core has forgotten the session: free its slot.
                        Err(SendError::UnknownSession) => {
                            s.role = Role::Free;
                            continue;
                        }
                        // Accept is still queued ahead of the output.
                        Err(_) => continue,
                    }
                }
                if s.role == Role::Shell && !s.input.is_empty() {
                    // One line at a time, so its output fits before the next runs.
                    let n = s
                        .input
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n' || b == 0x03)
                        .map_or(s.input.len(), |p| p + 1);
                    let mut view = View {
                        board: &mut *board,
                        open,
                        capacity: N,
                        net: &self.net,
                        reboot: &mut self.reboot,
                    };
                    let exit = s.console.input(&s.input[..n], &mut view, &mut s.out);
                    let rest = s.input.len() - n;
                    s.input.copy_within(n.., 0);
                    s.input.truncate(rest);
                    self.agent.consumed(s.sid, 0, n);
                    if exit {
                        s.ending = true;
                        s.input.clear();
                    }
                    progressed = true;
                } else if s.ending && (s.role == Role::Exec || s.input.is_empty()) {
                    let (sid, status) = (s.sid, s.status);
                    s.role = Role::Free;
                    self.agent.eof(sid, 0);
                    self.agent.close(sid, Exit::Code(status), "");
                    progressed = true;
                }
            }
            if !progressed {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use agent_core::wire::{Bytes, Frame, Hello};
    use ed25519_dalek::{Signature, Verifier};
    use std::string::String as S;
    use std::vec::Vec as V;

    #[derive(Default)]
    struct TestBoard {
        log: V<S>,
        reboots: usize,
    }

    impl Board for TestBoard {
        fn uptime_ms(&self) -> u64 {
            61_500
        }
        fn memory(&self) -> (usize, usize) {
            (1000, 4000)
        }
        fn network(&self, out: &mut dyn Write) -> fmt::Result {
            out.write_str("lan9118 up")
        }
        fn sessions(&self) -> (usize, usize) {
            (99, 99) // the engine answers this itself
        }
        fn request_reboot(&mut self) {
            self.reboots += 1;
        }
        fn log(&mut self, line: fmt::Arguments<'_>) {
            self.log.push(std::format!("{line}"));
        }
    }

    fn enc(f: Frame) -> V<u8> {
        let mut b = std::vec![0u8; f.buffer_len()];
        let n = f.encode(&mut b).unwrap();
        b.truncate(n);
        b
    }

    struct Rig {
        engine: Engine<'static, 4>,
        board: TestBoard,
        now: Instant,
    }

    /// What the device sent, as (frame debug text, raw bytes).
    type Sent = V<(S, V<u8>)>;

    impl Rig {
        fn key() -> &'static SigningKey {
            std::boxed::Box::leak(std::boxed::Box::new(SigningKey::from_bytes(&[5; 32])))
        }

        /// Connected, authenticated as `dev-1`.
        fn ready() -> Rig {
            let key = Self::key();
            let now = Instant(1000);
            let mut rig = Rig {
                engine: Engine::new(key, now),
                board: TestBoard::default(),
                now,
            };
            let hello = rig.drain();
            match Frame::decode(&hello[0].1).unwrap() {
                Frame::Hello(h) => {
                    assert_eq!((h.max_sessions, h.max_frame), (4, MAX_FRAME as u32));
                    assert_eq!(h.features, features::SHELL | features::EXEC);
                }
                f => panic!("expected Hello, got {f:?}"),
            }
            rig.feed(Frame::Hello(Hello {
                version: agent_core::PROTOCOL_VERSION,
                max_frame: 32 * 1024,
                max_sessions: 0,
                features: 0,
            }));
            let nonce = [9u8; 32];
            rig.feed(Frame::Challenge {
                nonce: Bytes(&nonce),
            });
            let auth = rig.drain();
            match Frame::decode(&auth[0].1).unwrap() {
                Frame::Auth(a) => {
                    let mut buf = [0u8; 64];
                    let m = auth_message(&nonce, &mut buf).unwrap();
                    let sig = Signature::from_slice(a.signature.0).unwrap();
                    key.verifying_key().verify(m, &sig).unwrap();
                    assert_eq!(a.public_key.0, key.verifying_key().as_bytes());
                    assert_eq!(a.activation, "");
                    // The default account the relay's policies see: the console.
                    assert_eq!(a.account, ACCOUNT);
                }
                f => panic!("expected Auth, got {f:?}"),
            }
            rig.feed(Frame::AuthOk { agent_id: "dev-1" });
            assert_eq!(rig.engine.agent_id(), Some("dev-1"));
            rig
        }

        fn feed(&mut self, f: Frame) {
            let msg = enc(f);
            self.engine.on_message(self.now, &msg, &mut self.board);
        }

        fn drain(&mut self) -> Sent {
            let mut out = V::new();
            let mut buf = [0u8; MAX_FRAME];
            while let Some(n) = self
                .engine
                .poll_transmit(self.now, &mut buf, &mut self.board)
            {
                let text = std::format!("{:?}", Frame::decode(&buf[..n]).unwrap());
                out.push((text, buf[..n].to_vec()));
            }
            out
        }

        fn open(&mut self, sid: u32, kind: Kind) {
            self.open_as(sid, kind, "");
        }

        fn open_as(&mut self, sid: u32, kind: Kind, account: &str) {
            self.feed(Frame::Open {
                sid,
                window: 64 * 1024,
                kind,
                account,
            });
        }

        fn open_shell(&mut self, sid: u32) {
            self.open(
                sid,
                Kind::Shell {
                    term: "dumb",
                    cols: 80,
                    rows: 24,
                },
            );
        }

        fn exec(&mut self, sid: u32, argv: &[u8]) -> (S, S) {
            self.open(sid, Kind::Exec { argv: Bytes(argv) });
            let sent = self.drain();
            (output(&sent, sid), last(&sent))
        }

        fn type_line(&mut self, sid: u32, line: &[u8]) -> S {
            self.feed(Frame::Data {
                sid,
                ch: 0,
                stream: Stream::OUT,
                data: Bytes(line),
            });
            output(&self.drain(), sid)
        }
    }

    /// The session's output bytes, as text.
    fn output(sent: &Sent, sid: u32) -> S {
        let mut out = V::new();
        for (_, raw) in sent {
            if let Frame::Data { sid: s, data, .. } = Frame::decode(raw).unwrap() {
                if s == sid {
                    out.extend_from_slice(data.0);
                }
            }
        }
        S::from_utf8(out).unwrap()
    }

    fn last(sent: &Sent) -> S {
        sent.last().map(|(t, _)| t.clone()).unwrap_or_default()
    }

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
}
