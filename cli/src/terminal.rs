//! The local terminal: raw mode restored on every exit path, and its size.

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

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        assert_eq!(super::printable("bob joined"), "bob joined");
        assert_eq!(super::printable("x\x1b[2Jy\r\n"), "x?[2Jy??");
    }
}
