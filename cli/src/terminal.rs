//! The local terminal: raw mode restored on every exit path, its size, and the
//! `~.` escape that leaves a session.

use std::io::IsTerminal;

use rustix::termios::{self, OptionalActions, Termios};

/// Raw mode on stdin while alive; the previous mode comes back on drop.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Switch stdin to raw mode.
    pub fn enable() -> std::io::Result<RawMode> {
        let stdin = rustix::stdio::stdin();
        let saved = termios::tcgetattr(stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin, OptionalActions::Now, &raw)?;
        SAVED.with(|s| *s.borrow_mut() = Some(saved.clone()));
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.saved);
        SAVED.with(|s| *s.borrow_mut() = None);
    }
}

thread_local! {
    static SAVED: std::cell::RefCell<Option<Termios>> = const { std::cell::RefCell::new(None) };
}

/// Restore the terminal if raw mode is still on (panic hook, early exit).
pub fn restore() {
    SAVED.with(|s| {
        if let Some(t) = s.borrow_mut().take() {
            let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &t);
        }
    });
}

/// Columns and rows of the terminal on stdout (or stdin), if there is one.
pub fn size() -> Option<(u16, u16)> {
    let ws = if std::io::stdout().is_terminal() {
        termios::tcgetwinsize(rustix::stdio::stdout()).ok()?
    } else if std::io::stdin().is_terminal() {
        termios::tcgetwinsize(rustix::stdio::stdin()).ok()?
    } else {
        return None;
    };
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// `text` with control characters (escape sequences a relay or another user could
/// slip in) shown as `?`, for a line written to the user's terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// What the user types into a session, watched for the escape `~.` at the start
/// of a line (as ssh's): it leaves the session, even while the relay is away.
/// `~~` sends one `~`; a `~` followed by anything else is sent as typed.
#[derive(Debug)]
pub struct Escape {
    /// The next byte starts a line.
    line_start: bool,
    /// A `~` at the start of a line is held, to see what follows.
    held: bool,
}

impl Default for Escape {
    fn default() -> Self {
        Escape {
            line_start: true,
            held: false,
        }
    }
}

impl Escape {
    /// `typed`, as it goes to the session, appended to `out`; `true` if the user
    /// typed `~.` (what came before it is in `out`, nothing after).
    pub fn filter(&mut self, typed: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in typed {
            if self.held {
                self.held = false;
                match b {
                    b'.' => return true,
                    b'~' => {
                        out.push(b'~');
                        self.line_start = false;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if self.line_start && b == b'~' {
                self.held = true;
                continue;
            }
            out.push(b);
            self.line_start = matches!(b, b'\r' | b'\n');
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Escape;

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        assert_eq!(super::printable("bob joined"), "bob joined");
        assert_eq!(super::printable("x\x1b[2Jy\r\n"), "x?[2Jy??");
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut e = Escape::default();
        let mut out = Vec::new();
        for c in chunks {
            if e.filter(c, &mut out) {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn tilde_dot_at_a_line_start_leaves_and_nowhere_else() {
        assert_eq!(run(&[b"~."]), (vec![], true));
        assert_eq!(run(&[b"ls\r~.rest"]), (b"ls\r".to_vec(), true));
        // Split between two reads.
        assert_eq!(run(&[b"x\n~", b".y"]), (b"x\n".to_vec(), true));
        // Not at a line start: typed as is.
        assert_eq!(run(&[b"a~.b"]), (b"a~.b".to_vec(), false));
        // `~~` is one `~`; a `~` and anything else go as typed.
        assert_eq!(run(&[b"~~.\r~x"]), (b"~.\r~x".to_vec(), false));
    }
}
