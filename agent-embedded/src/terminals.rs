//! The shell and exec sessions of a connection, sans I/O: a [`Terminal`] per
//! session, each stepped into its session's channel in agent-core.
//!
//! A terminal writes its output a step at a time ([`STEP`]), each once the
//! channel's buffer ([`RING`](crate::engine::RING)) has room for a whole step, so a
//! command's output streams however long it is; agent-core sends it within credit
//! and rate, then `Eof` and `Close` once the work is over ([`Agent::exited`]). The
//! table also marks forward sessions (their connections are in
//! [`crate::forward::Ports`]), so that it is the device's table of sessions.
//!
//! [`Agent::exited`]: agent_core::session::Agent::exited

use core::fmt::{self, Write};

use agent_core::session::{ChannelHandle, SessionHandle, UseError};
use agent_core::wire::{self, ErrorCode, Exit, Kind, Stream};

use crate::console::{Board, Output, Step, Stepped, Terminal, STEP};
use crate::engine::{Core, LINE, WINDOW};

/// Steps one session runs in one go: a board command that keeps asking for more
/// parts without writing any holds up the others only this long.
const STEPS: usize = 32;

/// A session: a shell or exec's terminal, or a forward session's mark.
struct Session {
    handle: SessionHandle,
    term: Option<Terminal<LINE, WINDOW>>,
}

/// What the console's `net` and `sessions` commands report, and the reboot request,
/// layered over the board.
pub(crate) struct View<'a> {
    pub board: &'a mut dyn Board,
    pub open: usize,
    pub capacity: usize,
    pub net: &'a str,
    pub reboot: &'a mut bool,
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

/// The device's sessions: `N`, as agent-core's table.
pub(crate) struct Terminals<const N: usize> {
    sessions: [Option<Session>; N],
}

impl<const N: usize> Terminals<N> {
    pub fn new() -> Self {
        Terminals {
            sessions: core::array::from_fn(|_| None),
        }
    }

    fn term(&mut self, h: SessionHandle) -> Option<&mut Terminal<LINE, WINDOW>> {
        let s = self.sessions.iter_mut().flatten().find(|s| s.handle == h);
        s.and_then(|s| s.term.as_mut())
    }

    /// Start session `h`: a terminal for a shell or exec (its greeting or error is
    /// its first output), a mark for a forward session; accepted in agent-core.
    pub fn open(
        &mut self,
        agent: &mut Core<N>,
        h: SessionHandle,
        kind: Kind<'_>,
    ) -> Result<(), UseError> {
        // agent-core refuses sessions beyond its table of `N`, the size of ours, and
        // kinds not announced in `Hello`: neither reaches here.
        let Some(free) = self.sessions.iter_mut().find(|s| s.is_none()) else {
            return agent.reject(h, ErrorCode::SESSION_LIMIT, "device at capacity");
        };
        let mut out: Output<STEP> = Output::default();
        let term = match kind {
            Kind::Shell { .. } => Some(Terminal::shell(&mut out)),
            Kind::Exec { argv } => Some(Terminal::exec(wire::argv_iter(argv.0), &mut out)),
            // Its connections come with `ChannelOpen`.
            Kind::Forward => None,
            Kind::SshKey { .. } => {
                let why = "this device runs shell, exec and forward sessions only";
                return agent.reject(h, ErrorCode::UNSUPPORTED, why);
            }
        };
        agent.accept(h)?;
        if term.is_some() {
            // A new session's buffer is empty: the greeting (or the error) fits.
            agent.send_slice(h.main(), Stream::OUT, out.as_bytes())?;
        }
        *free = Some(Session { handle: h, term });
        Ok(())
    }

    /// Input for a session's terminal: `None` when it has none, else how much it
    /// took (`None`: more than its window).
    pub fn input(&mut self, channel: ChannelHandle, data: &[u8]) -> Option<Option<usize>> {
        self.term(channel.session()).map(|t| t.input(data))
    }

    /// The client's end of input.
    pub fn end_of_input(&mut self, h: SessionHandle) {
        if let Some(t) = self.term(h) {
            t.end_of_input();
        }
    }

    /// Ctrl-C.
    pub fn interrupt(&mut self, h: SessionHandle) {
        if let Some(t) = self.term(h) {
            t.interrupt();
        }
    }

    /// Forget session `h`; whether it was here.
    pub fn remove(&mut self, h: SessionHandle) -> bool {
        let slot = self
            .sessions
            .iter_mut()
            .find(|s| s.as_ref().is_some_and(|s| s.handle == h));
        slot.map(|s| *s = None).is_some()
    }

    /// Let each terminal write a step into its session's channel while a whole step
    /// fits. A session whose work is over ends here.
    pub fn pump(&mut self, agent: &mut Core<N>, view: &mut View<'_>) -> Result<(), UseError> {
        view.open = agent.session_count();
        for slot in self.sessions.iter_mut() {
            let Some(s) = slot else { continue };
            let Some(term) = s.term.as_mut() else {
                continue;
            };
            let main = s.handle.main();
            let mut end = None;
            for _ in 0..STEPS {
                if agent.send_room(main) < STEP {
                    break;
                }
                let mut out: Output<STEP> = Output::default();
                let Some(Stepped { ran, exit }) = term.step(view, &mut out) else {
                    break;
                };
                // It fits: a whole step had room.
                agent.consumed(main, ran)?;
                agent.send_slice(main, Stream::OUT, out.as_bytes())?;
                end = exit;
                if end.is_some() {
                    break;
                }
            }
            if let Some(status) = end {
                let h = s.handle;
                *slot = None;
                agent.finish(main)?;
                agent.exited(h, Exit::Code(status), "")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use crate::engine::{LINE, RING};
    use crate::rig::*;
    use agent_core::wire::{Bytes, ErrorCode, Exit, Frame, Kind, Stream};

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
