//! The device console: a line editor and a command interpreter, allocation-free.
//!
//! It works in steps, each writing into one [`Output`] of at most [`STEP`] bytes, so
//! that a session's output streams through a small buffer however long it is: the
//! driver runs a step only once the previous ones are on their way.
//! [`Console::input`] takes keystrokes while their echo fits and stops at a command
//! line; [`Console::run`] then prints the command's output a part at a time (a
//! board command with more to say returns [`Step::More`] and is asked for the next
//! part). [`Terminal`] holds a session's input for it and steps it.

use core::fmt::{self, Write};

use heapless::{String, Vec};

/// Most arguments a command line may have.
pub const MAX_ARGS: usize = 16;
/// Most output one part of a command writes (a step holds it and the prompt after
/// it; beyond the step, output is cut).
pub const PART: usize = 496;
/// Most output of one step: a part of a command's output and the prompt after it,
/// or the echo of keystrokes. The driver runs a step once this much fits.
pub const STEP: usize = PART + 16;

/// How far a command got with its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More follows: ask for the next part once this one is on its way.
    More,
    /// The command is over, with this exit status.
    Done(i32),
}

/// What a board tells the console and what it may add to it.
pub trait Board {
    /// Milliseconds since boot.
    fn uptime_ms(&self) -> u64;
    /// `(used, total)` bytes of RAM, as the board accounts for it (static + stack).
    fn memory(&self) -> (usize, usize);
    /// One line about the network (address, link, relay connection).
    fn network(&self, out: &mut dyn Write) -> fmt::Result;
    /// Sessions open now and the capacity. The network driver answers this for
    /// the console itself; boards need not.
    fn sessions(&self) -> (usize, usize) {
        (0, 0)
    }
    /// Restart the device. The network driver calls this once the `reboot` command's
    /// answer has been sent.
    fn request_reboot(&mut self);
    /// One line of status from the driver (connection state, errors), for the
    /// board's log output.
    fn log(&mut self, line: fmt::Arguments<'_>) {
        let _ = line;
    }
    /// Run a board command, or go on with its output: `part` counts from 0 (effects
    /// belong to part 0); a part writes at most [`PART`] bytes and returns
    /// [`Step::More`] to be asked for `part + 1`, or [`Step::Done`] when over.
    /// `None` when `argv[0]` is not one of the board's.
    fn command(&mut self, argv: &[&str], part: usize, out: &mut dyn Write) -> Option<Step> {
        let _ = (argv, part, out);
        None
    }
    /// `name  summary` lines of the board's commands, for `help`.
    fn help(&self, out: &mut dyn Write) -> fmt::Result {
        let _ = out;
        Ok(())
    }
}

/// An Ethernet address, printed `52:54:00:12:34:56` (for boards' `network`).
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Output collected for the session, bounded: what does not fit is cut and marked.
pub struct Output<const N: usize> {
    buf: Vec<u8, N>,
    truncated: bool,
}

impl<const N: usize> Default for Output<N> {
    fn default() -> Self {
        Output {
            buf: Vec::new(),
            truncated: false,
        }
    }
}

impl<const N: usize> Output<N> {
    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    /// Bytes that still fit.
    pub fn room(&self) -> usize {
        N - self.buf.len()
    }
    /// Whether some output was dropped for lack of room.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
    /// Forget what was sent.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.truncated = false;
    }
    fn push_bytes(&mut self, b: &[u8]) {
        if self.buf.extend_from_slice(b).is_err() {
            let room = N - self.buf.len();
            let _ = self.buf.extend_from_slice(&b[..room]);
            self.truncated = true;
        }
    }
}

impl<const N: usize> Write for Output<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Terminals want CR LF.
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                self.push_bytes(b"\r\n");
            }
            self.push_bytes(part.as_bytes());
        }
        Ok(())
    }
}

/// A line editor over one session's bytes, and the command it runs. `LINE` is the
/// longest command line.
pub struct Console<const LINE: usize> {
    line: String<LINE>,
    /// Last byte was CR: a following LF is part of the same end of line.
    after_cr: bool,
    /// A command line waiting to run or with more output, and its next part.
    running: Option<(String<LINE>, usize)>,
    /// A shell session (a prompt follows each command), not one exec command.
    shell: bool,
}

impl<const LINE: usize> Default for Console<LINE> {
    fn default() -> Self {
        Console {
            line: String::new(),
            after_cr: false,
            running: None,
            shell: false,
        }
    }
}

/// What [`Console::input`] did with the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// It took this many: all of them, or those whose echo fit, or those up to a
    /// command line, which now waits for [`Console::run`].
    Took(usize),
    /// The session ends (`exit`, `logout`, ^D on an empty line).
    End,
}

const PROMPT: &str = "sesame> ";

impl<const LINE: usize> Console<LINE> {
    /// The most one input byte may echo: ^U erases a full line (`BS SP BS` each).
    const ECHO_MAX: usize = if 3 * LINE > 16 { 3 * LINE } else { 16 };

    /// A shell session: its greeting and first prompt.
    pub fn start<const N: usize>(&mut self, out: &mut Output<N>) {
        self.shell = true;
        let _ = write!(out, "Sesame device console. Type 'help'.\n{PROMPT}");
    }

    /// An exec session: `argv` is its one command, run by [`Console::run`]. A
    /// command line longer than `LINE` does not run: the error is in `out`, and the
    /// exit status is returned.
    pub fn exec<'a, const N: usize>(
        &mut self,
        argv: impl Iterator<Item = &'a [u8]>,
        out: &mut Output<N>,
    ) -> Option<i32> {
        let mut line: String<LINE> = String::new();
        for (i, arg) in argv.enumerate() {
            let arg = core::str::from_utf8(arg).unwrap_or("\u{fffd}");
            if (i > 0 && line.push(' ').is_err()) || line.push_str(arg).is_err() {
                let _ = writeln!(out, "error: command line longer than {LINE} bytes");
                return Some(2);
            }
        }
        self.running = Some((line, 0));
        None
    }

    /// ^C as a terminal's line discipline sees it (SIGINT, or ^C typed while a
    /// command runs): the command's output stops and the line is abandoned.
    pub fn interrupt<const N: usize>(&mut self, out: &mut Output<N>) {
        self.running = None;
        self.line.clear();
        self.after_cr = false;
        let _ = write!(out, "^C\n{PROMPT}");
    }

    /// Whether a command waits to run or has more output ([`Console::run`]); input
    /// waits meanwhile.
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// Feed terminal input: echoes and edits; a complete line waits to run. Takes
    /// bytes while their echo surely fits in `out` (at least one), and none after a
    /// command line.
    pub fn input<const N: usize>(&mut self, bytes: &[u8], out: &mut Output<N>) -> Input {
        for (i, &b) in bytes.iter().enumerate() {
            let full = !out.as_bytes().is_empty() && out.room() < Self::ECHO_MAX;
            if self.busy() || full {
                return Input::Took(i);
            }
            let after_cr = core::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    out.push_bytes(b"\r\n");
                    let line: String<LINE> = core::mem::take(&mut self.line);
                    let line = line.trim();
                    if line == "exit" || line == "logout" {
                        return Input::End;
                    }
                    if line.is_empty() {
                        let _ = out.write_str(PROMPT);
                    } else {
                        let mut cmd = String::new();
                        let _ = cmd.push_str(line);
                        self.running = Some((cmd, 0));
                    }
                }
                // Backspace / DEL: erase one character on screen too.
                0x08 | 0x7f if self.line.pop().is_some() => out.push_bytes(b"\x08 \x08"),
                0x08 | 0x7f => {}
                // ^C: abandon the line.
                0x03 => {
                    self.line.clear();
                    let _ = write!(out, "^C\n{PROMPT}");
                }
                // ^U: erase the whole line.
                0x15 => {
                    for _ in 0..self.line.len() {
                        out.push_bytes(b"\x08 \x08");
                    }
                    self.line.clear();
                }
                // ^D on an empty line ends the session, like a shell.
                0x04 if self.line.is_empty() => return Input::End,
                0x20..=0x7e => {
                    if self.line.push(b as char).is_ok() {
                        out.push_bytes(&[b]);
                    } else {
                        out.push_bytes(b"\x07"); // line full: bell
                    }
                }
                _ => {} // other control bytes and non-ASCII are ignored
            }
        }
        Input::Took(bytes.len())
    }

    /// The next part of the waiting command's output (in a shell, the prompt follows
    /// its last); `None` when no command waits.
    pub fn run<const N: usize>(
        &mut self,
        board: &mut dyn Board,
        out: &mut Output<N>,
    ) -> Option<Step> {
        let (line, part) = self.running.as_mut()?;
        let step = Self::run_part(line, *part, board, out);
        match step {
            Step::More => *part += 1,
            Step::Done(_) => {
                self.running = None;
                if self.shell {
                    let _ = out.write_str(PROMPT);
                }
            }
        }
        Some(step)
    }

    /// Part `part` of one command line's output (built-in commands have one part).
    pub fn run_part<const N: usize>(
        line: &str,
        part: usize,
        board: &mut dyn Board,
        out: &mut Output<N>,
    ) -> Step {
        let mut argv: Vec<&str, MAX_ARGS> = Vec::new();
        for word in line.split_ascii_whitespace() {
            if argv.push(word).is_err() {
                let _ = writeln!(out, "error: more than {MAX_ARGS} arguments");
                return Step::Done(2);
            }
        }
        let Some(&cmd) = argv.first() else {
            return Step::Done(0);
        };
        if part == 0 {
            if let Some(status) = Self::builtin(&argv, board, out) {
                return Step::Done(status);
            }
        }
        match board.command(&argv, part, out) {
            Some(step) => step,
            None => {
                let _ = writeln!(out, "{cmd}: command not found (try 'help')");
                Step::Done(127)
            }
        }
    }

    /// A built-in command's output and status; `None` for another command.
    fn builtin<const N: usize>(
        argv: &[&str],
        board: &mut dyn Board,
        out: &mut Output<N>,
    ) -> Option<i32> {
        match argv[0] {
            "help" => {
                let _ = out.write_str(
                    "help      this list\nuptime    time since boot\nmem       memory use\n\
                     net       network state\nsessions  open sessions\necho ARG  print ARG...\n\
                     reboot    restart the device\nexit      end this session\n",
                );
                let _ = board.help(out);
            }
            "uptime" => {
                let ms = board.uptime_ms();
                let s = ms / 1000;
                let _ = writeln!(
                    out,
                    "up {}d {:02}:{:02}:{:02}.{:03}",
                    s / 86400,
                    s / 3600 % 24,
                    s / 60 % 60,
                    s % 60,
                    ms % 1000
                );
            }
            "mem" => {
                let (used, total) = board.memory();
                let _ = writeln!(
                    out,
                    "{used} of {total} bytes used ({} KiB free)",
                    total.saturating_sub(used) / 1024
                );
            }
            "net" => {
                let _ = board.network(out);
                let _ = out.write_str("\n");
            }
            "sessions" => {
                let (open, cap) = board.sessions();
                let _ = writeln!(out, "{open} of {cap} sessions open");
            }
            "echo" => {
                for (i, a) in argv[1..].iter().enumerate() {
                    let _ = write!(out, "{}{a}", if i > 0 { " " } else { "" });
                }
                let _ = out.write_str("\n");
            }
            "reboot" => {
                let _ = writeln!(out, "rebooting");
                board.request_reboot();
            }
            _ => return None,
        }
        Some(0)
    }
}

/// One session's terminal: its [`Console`] and the input it has not run yet, with
/// what a line discipline adds (^C stops a running command, end of input ends a
/// shell). `IN` bytes of input may wait: the session's receive window.
pub struct Terminal<const LINE: usize, const IN: usize> {
    console: Console<LINE>,
    shell: bool,
    input: Vec<u8, IN>,
    /// A SIGINT came after this many bytes of `input`: it acts once they have run.
    sigint: Option<usize>,
    /// The work is over with this status once the console is idle (a shell's client
    /// sent all its input; an exec line could not run).
    ended: Option<i32>,
}

/// What one [`Terminal::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stepped {
    /// Input bytes that ran (their credit may go back to the client).
    pub ran: usize,
    /// The session's work is over, with this exit status.
    pub exit: Option<i32>,
}

impl<const LINE: usize, const IN: usize> Terminal<LINE, IN> {
    fn new(shell: bool) -> Self {
        Terminal {
            console: Console::default(),
            shell,
            input: Vec::new(),
            sigint: None,
            ended: None,
        }
    }

    /// A shell session; its greeting goes to `out`.
    pub fn shell<const N: usize>(out: &mut Output<N>) -> Self {
        let mut t = Terminal::new(true);
        t.console.start(out);
        t
    }

    /// An exec session running `argv` (an error goes to `out` if it cannot).
    pub fn exec<'a, const N: usize>(
        argv: impl Iterator<Item = &'a [u8]>,
        out: &mut Output<N>,
    ) -> Self {
        let mut t = Terminal::new(false);
        t.ended = t.console.exec(argv, out);
        t
    }

    /// Input from the client. A shell keeps it for its console (its credit follows
    /// as it runs: [`Stepped::ran`]) and returns 0; an exec command has no standard
    /// input and drops it: all of it may be credited now. `None` when more than `IN`
    /// bytes would wait (the client overran its window).
    pub fn input(&mut self, data: &[u8]) -> Option<usize> {
        if !self.shell {
            return Some(data.len());
        }
        self.input.extend_from_slice(data).ok().map(|()| 0)
    }

    /// The client sent all its input: a shell ends once it has run.
    pub fn end_of_input(&mut self) {
        if self.shell {
            self.ended.get_or_insert(0);
        }
    }

    /// SIGINT: after the input before it, ^C stops the command or abandons the line.
    pub fn interrupt(&mut self) {
        if self.shell {
            self.sigint.get_or_insert(self.input.len());
        }
    }

    /// One step into `out`, which must hold [`STEP`] bytes: a ^C, the next part of
    /// a command's output, or input through the line editor; `None` when there is
    /// nothing to do.
    pub fn step<const N: usize>(
        &mut self,
        board: &mut dyn Board,
        out: &mut Output<N>,
    ) -> Option<Stepped> {
        // ^C typed while a command runs stops it, as a terminal's ISIG does (and, as
        // there, the input before it goes).
        let typed = self.input.iter().position(|&b| b == 0x03);
        let busy = self.console.busy();
        let ran = if self.sigint == Some(0) {
            0
        } else if let (true, Some(p)) = (busy, typed) {
            p + 1
        } else if busy {
            let exit = match self.console.run(board, out) {
                Some(Step::Done(status)) if !self.shell => Some(status),
                _ => None,
            };
            return Some(Stepped { ran: 0, exit });
        } else if !self.input.is_empty() {
            let upto = self.sigint.unwrap_or(self.input.len());
            return Some(match self.console.input(&self.input[..upto], out) {
                Input::Took(n) => Stepped {
                    ran: self.ran(n),
                    exit: None,
                },
                Input::End => Stepped {
                    ran: 0,
                    exit: Some(0),
                },
            });
        } else {
            return self.ended.map(|status| Stepped {
                ran: 0,
                exit: Some(status),
            });
        };
        self.sigint = None;
        self.console.interrupt(out);
        Some(Stepped {
            ran: self.ran(ran),
            exit: None,
        })
    }

    /// The first `n` bytes of input ran; returns `n`.
    fn ran(&mut self, n: usize) -> usize {
        let rest = self.input.len() - n;
        self.input.copy_within(n.., 0);
        self.input.truncate(rest);
        self.sigint = self.sigint.map(|at| at.saturating_sub(n));
        n
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String as StdString;

    #[derive(Default)]
    struct TestBoard {
        rebooted: bool,
    }

    impl Board for TestBoard {
        fn uptime_ms(&self) -> u64 {
            90_061_005
        }
        fn memory(&self) -> (usize, usize) {
            (100 * 1024, 256 * 1024)
        }
        fn network(&self, out: &mut dyn Write) -> fmt::Result {
            out.write_str("eth0 10.0.2.15/24 up, relay connected")
        }
        fn sessions(&self) -> (usize, usize) {
            (1, 4)
        }
        fn request_reboot(&mut self) {
            self.rebooted = true;
        }
        fn command(&mut self, argv: &[&str], part: usize, out: &mut dyn Write) -> Option<Step> {
            match argv[0] {
                "led" => {
                    let _ = out.write_str("led on\n");
                    Some(Step::Done(0))
                }
                // Three parts: "0\n1\n2\n".
                "count" => {
                    let _ = writeln!(out, "{part}");
                    Some(if part < 2 { Step::More } else { Step::Done(3) })
                }
                _ => None,
            }
        }
    }

    fn text<const N: usize>(out: &Output<N>) -> StdString {
        StdString::from_utf8(out.as_bytes().to_vec()).unwrap()
    }

    /// An exec session's output, all parts, and its status.
    fn run(line: &str) -> (i32, StdString, TestBoard) {
        let mut board = TestBoard::default();
        let mut c: Console<64> = Console::default();
        let mut all = StdString::new();
        let mut out: Output<STEP> = Output::default();
        if let Some(status) = c.exec(line.split(' ').map(str::as_bytes), &mut out) {
            return (status, text(&out), board);
        }
        loop {
            let mut out: Output<STEP> = Output::default();
            let step = c.run(&mut board, &mut out).unwrap();
            all += &text(&out);
            if let Step::Done(status) = step {
                assert!(!c.busy() && c.run(&mut board, &mut out).is_none());
                return (status, all, board);
            }
        }
    }

    #[test]
    fn built_in_and_board_commands() {
        assert_eq!(run("uptime").1, "up 1d 01:01:01.005\r\n");
        assert_eq!(
            run("mem").1,
            "102400 of 262144 bytes used (156 KiB free)\r\n"
        );
        assert_eq!(run("net").1, "eth0 10.0.2.15/24 up, relay connected\r\n");
        assert_eq!(run("sessions").1, "1 of 4 sessions open\r\n");
        assert_eq!(run("echo  hello   world").1, "hello world\r\n");
        assert_eq!(run("led").1, "led on\r\n");
        let (status, text, _) = run("frobnicate now");
        assert_eq!(
            (status, text.as_str()),
            (127, "frobnicate: command not found (try 'help')\r\n")
        );
        let (_, _, board) = run("reboot");
        assert!(board.rebooted);
        assert!(run("help").1.contains("sessions  open sessions"));
        // A board command's output in parts, one step each.
        let (status, text, _) = run("count");
        assert_eq!((status, text.as_str()), (3, "0\r\n1\r\n2\r\n"));
        let (status, text, _) = run(&"x".repeat(65));
        assert_eq!(
            (status, text.as_str()),
            (2, "error: command line longer than 64 bytes\r\n")
        );
    }

    #[test]
    fn line_editing_like_a_terminal() {
        let mut c: Console<16> = Console::default();
        let mut board = TestBoard::default();
        let mut out: Output<STEP> = Output::default();
        c.start(&mut out);
        out.clear();
        // typo, backspace, correction: the input stops at the command line, which
        // runs, then the LF of CR LF is taken as part of the same end of line.
        let typed = b"echo hx\x7fi\r\n";
        assert_eq!(c.input(typed, &mut out), Input::Took(typed.len() - 1));
        assert!(c.busy());
        assert_eq!(
            c.input(b"\n", &mut out),
            Input::Took(0),
            "waits for the command"
        );
        assert_eq!(c.run(&mut board, &mut out), Some(Step::Done(0)));
        assert_eq!(c.input(b"\n", &mut out), Input::Took(1));
        assert_eq!(text(&out), "echo hx\x08 \x08i\r\nhi\r\nsesame> ");
        out.clear();
        // ^C abandons, ^U erases, a full line rings the bell
        c.input(b"junk\x03", &mut out);
        c.input(b"abc\x15", &mut out);
        c.input(b"0123456789abcdefXY", &mut out);
        let typed = text(&out);
        assert!(typed.contains("^C\r\nsesame> "));
        assert_eq!(typed.matches('\x07').count(), 2, "{typed:?}");
        out.clear();
        c.input(b"\x15", &mut out);
        // An empty line prompts again, with nothing to run.
        assert_eq!(c.input(b"\r", &mut out), Input::Took(1));
        assert!(!c.busy() && text(&out).ends_with("\r\nsesame> "));
        // exit and ^D on an empty line end the session
        assert_eq!(c.input(b"exit\r", &mut out), Input::End);
        assert_eq!(
            Console::<16>::default().input(b"\x04", &mut out),
            Input::End
        );
    }

    #[test]
    fn input_stops_where_its_echo_might_not_fit() {
        let mut c: Console<16> = Console::default();
        let mut out: Output<64> = Output::default();
        // ^U may echo 3 * 16 bytes: with less room than that left, input waits.
        let typed = [b'x'; 40];
        assert_eq!(c.input(&typed, &mut out), Input::Took(17));
        assert_eq!(text(&out), std::format!("{}\x07", "x".repeat(16)));
        out.clear();
        assert_eq!(c.input(&typed[17..], &mut out), Input::Took(17));
        assert_eq!(text(&out), "\x07".repeat(17), "the line is full");
        // An empty output always takes a byte, however small.
        let mut tiny: Output<4> = Output::default();
        assert_eq!(c.input(b"\x15\x15", &mut tiny), Input::Took(1));
        assert!(tiny.truncated());
    }

    #[test]
    fn output_is_bounded_and_marked_when_cut() {
        let mut board = TestBoard::default();
        let mut out: Output<8> = Output::default();
        Console::<64>::run_part("echo 0123456789", 0, &mut board, &mut out);
        assert_eq!(out.as_bytes(), b"01234567");
        assert!(out.truncated());
    }

    /// Steps `t` until it has nothing to do; returns its output and how it ended.
    fn steps(t: &mut Terminal<64, 32>, board: &mut TestBoard) -> (StdString, usize, Option<i32>) {
        let (mut all, mut ran) = (StdString::new(), 0);
        loop {
            let mut out: Output<STEP> = Output::default();
            let Some(step) = t.step(board, &mut out) else {
                return (all, ran, None);
            };
            all += &text(&out);
            ran += step.ran;
            if step.exit.is_some() {
                return (all, ran, step.exit);
            }
        }
    }

    #[test]
    fn a_terminal_runs_input_then_a_sigint_then_ends_with_its_input() {
        let mut board = TestBoard::default();
        let mut out: Output<STEP> = Output::default();
        let mut t: Terminal<64, 32> = Terminal::shell(&mut out);
        assert_eq!(
            t.input(b"echo a\recho b"),
            Some(0),
            "kept, credited as it runs"
        );
        t.interrupt();
        assert_eq!(t.input(b"c\r"), Some(0));
        t.end_of_input();
        // The SIGINT acts after "echo b": that line is abandoned, "c" runs after it.
        let (all, ran, exit) = steps(&mut t, &mut board);
        assert_eq!(
            all,
            "echo a\r\na\r\nsesame> echo b^C\r\nsesame> c\r\nc: command not found (try 'help')\r\nsesame> "
        );
        assert_eq!((ran, exit), (15, Some(0)), "every byte the client sent ran");
        assert_eq!(t.input(&[b'x'; 33]), None, "more than the window");
    }

    #[test]
    fn a_typed_ctrl_c_stops_a_running_command_and_exec_has_no_input() {
        let mut board = TestBoard::default();
        let mut out: Output<STEP> = Output::default();
        let mut t: Terminal<64, 32> = Terminal::shell(&mut out);
        t.input(b"count\r").unwrap();
        let mut out: Output<STEP> = Output::default();
        assert_eq!(t.step(&mut board, &mut out).unwrap().ran, 6);
        let mut out: Output<STEP> = Output::default();
        t.step(&mut board, &mut out); // part 0
        assert_eq!(text(&out), "0\r\n");
        t.input(b"ab\x03").unwrap();
        let (all, ran, exit) = steps(&mut t, &mut board);
        assert_eq!((all.as_str(), ran, exit), ("^C\r\nsesame> ", 3, None));

        let mut t: Terminal<64, 32> = Terminal::exec([&b"count"[..]].into_iter(), &mut out);
        assert_eq!(t.input(b"ignored"), Some(7), "dropped, credited at once");
        t.interrupt();
        t.end_of_input();
        let (all, _, exit) = steps(&mut t, &mut board);
        assert_eq!((all.as_str(), exit), ("0\r\n1\r\n2\r\n", Some(3)));
    }
}
