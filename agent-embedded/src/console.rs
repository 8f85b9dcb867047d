//! The device console: a line editor and a command interpreter, allocation-free.

use core::fmt::{self, Write};

use heapless::{String, Vec};

/// Most arguments a command line may have.
pub const MAX_ARGS: usize = 16;

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
    /// Run a board command; `None` when `argv[0]` is not one of the board's.
    fn command(&mut self, argv: &[&str], out: &mut dyn Write) -> Option<i32> {
        let _ = (argv, out);
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

/// A line editor over one session's bytes. `LINE` is the longest command line.
pub struct Console<const LINE: usize> {
    line: String<LINE>,
    /// Last byte was CR: a following LF is part of the same end of line.
    after_cr: bool,
}

impl<const LINE: usize> Default for Console<LINE> {
    fn default() -> Self {
        Console {
            line: String::new(),
            after_cr: false,
        }
    }
}

const PROMPT: &str = "sesame> ";

impl<const LINE: usize> Console<LINE> {
    /// The greeting and first prompt of a shell session.
    pub fn start<const N: usize>(&mut self, out: &mut Output<N>) {
        let _ = write!(out, "Sesame device console. Type 'help'.\n{PROMPT}");
    }

    /// Feed terminal input; echoes, edits, and runs complete lines. Returns `true`
    /// when the session should end (`exit`, or ^D on an empty line).
    pub fn input<const N: usize>(
        &mut self,
        bytes: &[u8],
        board: &mut dyn Board,
        out: &mut Output<N>,
    ) -> bool {
        for &b in bytes {
            let after_cr = core::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    out.push_bytes(b"\r\n");
                    let line: String<LINE> = core::mem::take(&mut self.line);
                    let line = line.trim();
                    if line == "exit" || line == "logout" {
                        return true;
                    }
                    if !line.is_empty() {
                        Self::run_line(line, board, out);
                    }
                    let _ = out.write_str(PROMPT);
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
                0x04 if self.line.is_empty() => return true,
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
        false
    }

    /// Run one command line (an `exec` session); returns its exit status.
    pub fn run_line<const N: usize>(line: &str, board: &mut dyn Board, out: &mut Output<N>) -> i32 {
        let mut argv: Vec<&str, MAX_ARGS> = Vec::new();
        for word in line.split_ascii_whitespace() {
            if argv.push(word).is_err() {
                let _ = writeln!(out, "error: more than {MAX_ARGS} arguments");
                return 2;
            }
        }
        let Some(&cmd) = argv.first() else { return 0 };
        match cmd {
            "help" => {
                let _ = out.write_str(
                    "help      this list\nuptime    time since boot\nmem       memory use\n\
                     net       network state\nsessions  open sessions\necho ARG  print ARG...\n\
                     reboot    restart the device\nexit      end this session\n",
                );
                let _ = board.help(out);
                0
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
                0
            }
            "mem" => {
                let (used, total) = board.memory();
                let _ = writeln!(
                    out,
                    "{used} of {total} bytes used ({} KiB free)",
                    total.saturating_sub(used) / 1024
                );
                0
            }
            "net" => {
                let _ = board.network(out);
                let _ = out.write_str("\n");
                0
            }
            "sessions" => {
                let (open, cap) = board.sessions();
                let _ = writeln!(out, "{open} of {cap} sessions open");
                0
            }
            "echo" => {
                for (i, a) in argv[1..].iter().enumerate() {
                    let _ = write!(out, "{}{a}", if i > 0 { " " } else { "" });
                }
                let _ = out.write_str("\n");
                0
            }
            "reboot" => {
                let _ = writeln!(out, "rebooting");
                board.request_reboot();
                0
            }
            _ => match board.command(&argv, out) {
                Some(status) => status,
                None => {
                    let _ = writeln!(out, "{cmd}: command not found (try 'help')");
                    127
                }
            },
        }
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
        fn command(&mut self, argv: &[&str], out: &mut dyn Write) -> Option<i32> {
            (argv[0] == "led").then(|| {
                let _ = out.write_str("led on\n");
                0
            })
        }
    }

    fn run(line: &str) -> (i32, StdString, TestBoard) {
        let mut board = TestBoard::default();
        let mut out: Output<512> = Output::default();
        let status = Console::<64>::run_line(line, &mut board, &mut out);
        (
            status,
            StdString::from_utf8(out.as_bytes().to_vec()).unwrap(),
            board,
        )
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
    }

    #[test]
    fn line_editing_like_a_terminal() {
        let mut c: Console<16> = Console::default();
        let mut board = TestBoard::default();
        let mut out: Output<512> = Output::default();
        // typo, backspace, correction, CR LF counted once
        assert!(!c.input(b"echo hx\x7fi\r\n", &mut board, &mut out));
        let text = StdString::from_utf8(out.as_bytes().to_vec()).unwrap();
        assert_eq!(text, "echo hx\x08 \x08i\r\nhi\r\nsesame> ");
        out.clear();
        // ^C abandons, ^U erases, a full line rings the bell
        c.input(b"junk\x03", &mut board, &mut out);
        c.input(b"abc\x15", &mut board, &mut out);
        c.input(b"0123456789abcdefXY", &mut board, &mut out);
        let text = StdString::from_utf8(out.as_bytes().to_vec()).unwrap();
        assert!(text.contains("^C\r\nsesame> "));
        assert_eq!(text.matches('\x07').count(), 2, "{text:?}");
        out.clear();
        c.input(b"\x15", &mut board, &mut out);
        // exit and ^D on an empty line end the session
        assert!(c.input(b"exit\r", &mut board, &mut out));
        assert!(Console::<16>::default().input(b"\x04", &mut board, &mut out));
    }

    #[test]
    fn output_is_bounded_and_marked_when_cut() {
        let mut board = TestBoard::default();
        let mut out: Output<8> = Output::default();
        Console::<64>::run_line("echo 0123456789", &mut board, &mut out);
        assert_eq!(out.as_bytes(), b"01234567");
        assert!(out.truncated());
    }
}
