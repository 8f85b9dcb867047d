//! The one status line the user sees while a session waits (its stream is being
//! replaced, or its agent is away), and its removal once the session goes on,
//! without disturbing what the session drew: under the cursor on a raw terminal
//! (the cursor goes back where it was), on a line of its own on a plain one, as
//! two lines in a log. [`StatusLine`] says what to write; pure, so that the escape
//! sequences are tested here.

use std::io::{IsTerminal, Write};

/// Write what the status line needs to the terminal (stderr, unbuffered; the
/// session's own output is flushed before each of these).
pub(crate) fn draw(s: &str) {
    if !s.is_empty() {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(s.as_bytes());
        let _ = err.flush();
    }
}

/// Why the status line is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The stream to the relay was cut.
    Relay,
    /// The agent is away (the relay suspended the session).
    Agent,
}

/// How the status line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// On a terminal in raw mode, under the cursor, which goes back where it was.
    Raw,
    /// On a terminal (not raw), on a line of its own, erased afterwards.
    Line,
    /// Not on a terminal: a line when it shows, another when it goes.
    Log,
}

impl Mode {
    /// How to draw on this process's stderr, `raw` if the terminal is in raw mode.
    pub(crate) fn detect(raw: bool) -> Mode {
        let stderr = std::io::stderr().is_terminal();
        if stderr && raw {
            Mode::Raw
        } else if stderr && std::io::stdout().is_terminal() {
            Mode::Line
        } else {
            Mode::Log
        }
    }
}

/// The one status line shown while the session waits, as what to write for it.
pub(crate) struct StatusLine {
    mode: Mode,
    shown: Option<Why>,
    /// The text shown, to redraw only what changed.
    text: String,
    /// The last output did not end its line (a [`Mode::Line`] status starts a new one).
    line_open: bool,
}

impl StatusLine {
    /// Nothing shown; drawn as `mode`.
    pub(crate) fn new(mode: Mode) -> Self {
        StatusLine {
            mode,
            shown: None,
            text: String::new(),
            line_open: false,
        }
    }

    /// Show `text` for `why` on a terminal `cols` wide (replacing what is shown).
    /// The same news again draws nothing; on a terminal, new words for the same
    /// news (what was typed meanwhile) replace the line in place, and a log gets a
    /// line only for news.
    pub(crate) fn show(&mut self, why: Why, text: &str, cols: u16) -> String {
        if self.shown == Some(why) && (self.text == text || self.mode == Mode::Log) {
            return String::new();
        }
        self.text = text.to_string();
        let line = format!("sesame: {text}");
        let fitted = fit(&line, cols);
        let out = match (self.mode, self.shown) {
            // A line feed keeps the column in raw mode: down (scrolling if need be)
            // and up again is the same place, with room below it; save it there.
            (Mode::Raw, None) => format!("\n\x1b[A\x1b7\r\n{fitted}\x1b[K"),
            (Mode::Raw, Some(_)) => format!("\r{fitted}\x1b[K"),
            (Mode::Line, None) if self.line_open => format!("\n{fitted}\n"),
            (Mode::Line, None) => format!("{fitted}\n"),
            (Mode::Line, Some(_)) => format!("\x1b[A\r{fitted}\x1b[K\n"),
            (Mode::Log, _) => format!("{line}\n"),
        };
        self.shown = Some(why);
        self.line_open = false;
        out
    }

    /// The session goes on: erase the line (a terminal), or say so (a log).
    pub(crate) fn clear(&mut self, target: &str) -> String {
        let Some(why) = self.shown.take() else {
            return String::new();
        };
        match (self.mode, why) {
            (Mode::Raw, _) => "\r\x1b[K\x1b8".into(),
            (Mode::Line, _) => "\x1b[A\r\x1b[K".into(),
            (Mode::Log, Why::Relay) => "sesame: reconnected\n".into(),
            (Mode::Log, Why::Agent) => format!("sesame: {target} reachable again\n"),
        }
    }

    /// `data` is about to be written: a line on a terminal makes way for it.
    pub(crate) fn output(&mut self, data: &[u8]) -> String {
        let out = match (self.mode, self.shown) {
            (Mode::Log, _) | (_, None) => String::new(),
            (_, Some(_)) => self.clear(""),
        };
        if let Some(&last) = data.last() {
            self.line_open = last != b'\n';
        }
        out
    }
}

impl Drop for StatusLine {
    /// The CLI ends with the line up: erased, the cursor at its start, where the
    /// error line goes.
    fn drop(&mut self) {
        if self.shown.is_some() {
            match self.mode {
                Mode::Raw => draw("\r\x1b[K"),
                Mode::Line => draw("\x1b[A\r\x1b[K"),
                Mode::Log => {}
            }
        }
    }
}

/// `line` cut to fit on one row of `cols` columns, the last one left free (writing
/// there would wrap on some terminals).
fn fit(line: &str, cols: u16) -> String {
    let room = usize::from(cols.max(2)) - 1;
    line.chars().take(room).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drop guard writes nothing for a line that was cleared.
    fn done(mut s: StatusLine) {
        s.shown = None;
    }

    #[test]
    fn a_raw_terminal_gets_the_line_under_the_cursor_and_the_cursor_back() {
        let mut s = StatusLine::new(Mode::Raw);
        let lost = s.show(Why::Relay, "connection to the relay lost", 80);
        assert_eq!(
            lost,
            "\n\x1b[A\x1b7\r\nsesame: connection to the relay lost\x1b[K"
        );
        // The same news again draws nothing; other news replaces it in place.
        assert_eq!(s.show(Why::Relay, "connection to the relay lost", 80), "");
        assert_eq!(
            s.show(Why::Agent, "gw-01 unreachable", 80),
            "\rsesame: gw-01 unreachable\x1b[K"
        );
        assert_eq!(s.clear("gw-01"), "\r\x1b[K\x1b8");
        assert_eq!(s.clear("gw-01"), "", "one clear per line shown");
        done(s);
    }

    #[test]
    fn new_words_for_the_same_news_replace_the_line_on_a_terminal_only() {
        let mut s = StatusLine::new(Mode::Raw);
        let _ = s.show(Why::Relay, "relay lost", 80);
        assert_eq!(
            s.show(Why::Relay, "relay lost; 3 bytes typed", 80),
            "\rsesame: relay lost; 3 bytes typed\x1b[K"
        );
        done(s);
        let mut s = StatusLine::new(Mode::Log);
        let _ = s.show(Why::Relay, "relay lost", 80);
        assert_eq!(s.show(Why::Relay, "relay lost; 3 bytes typed", 80), "");
    }

    #[test]
    fn the_line_never_wraps() {
        let mut s = StatusLine::new(Mode::Raw);
        let out = s.show(Why::Relay, "connection to the relay lost", 12);
        assert!(out.ends_with("\r\nsesame: con\x1b[K"), "{out:?}");
        done(s);
    }

    #[test]
    fn a_plain_terminal_gets_a_line_of_its_own_erased_afterwards() {
        let mut s = StatusLine::new(Mode::Line);
        assert_eq!(s.output(b"partial"), "");
        assert_eq!(
            s.show(Why::Agent, "gw-01 unreachable", 80),
            "\nsesame: gw-01 unreachable\n"
        );
        assert_eq!(
            s.show(Why::Relay, "relay lost", 80),
            "\x1b[A\rsesame: relay lost\x1b[K\n"
        );
        assert_eq!(s.clear("gw-01"), "\x1b[A\r\x1b[K");
        assert_eq!(s.output(b"done\n"), "");
        assert_eq!(s.show(Why::Relay, "relay lost", 80), "sesame: relay lost\n");
        done(s);
    }

    #[test]
    fn output_on_a_terminal_erases_the_line_first() {
        let mut s = StatusLine::new(Mode::Raw);
        let _ = s.show(Why::Agent, "gw-01 unreachable", 80);
        assert_eq!(s.output(b"\r\nbob joined\r\n"), "\r\x1b[K\x1b8");
        assert_eq!(s.clear("gw-01"), "");
    }

    #[test]
    fn a_log_says_when_the_session_goes_on() {
        let mut s = StatusLine::new(Mode::Log);
        let long = "connection to the relay lost; reconnecting (session kept for 10m)...";
        assert_eq!(s.show(Why::Relay, long, 20), format!("sesame: {long}\n"));
        assert_eq!(s.output(b"late output\n"), "", "a log line stays");
        assert_eq!(s.clear("gw-01"), "sesame: reconnected\n");
        let _ = s.show(Why::Agent, "gw-01 unreachable", 80);
        assert_eq!(s.clear("gw-01"), "sesame: gw-01 reachable again\n");
    }
}
