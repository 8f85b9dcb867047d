//! Searching recordings' output (`GET /v1/recordings/grep`), sans I/O but for the
//! reader it is given: terminal escape sequences are stripped (CSI, OSC, DCS and
//! the other string sequences, two- and three-byte escapes), the text is cut into
//! lines at `\n` and `\r` (a progress bar's redraws are lines of their own),
//! backspaces take back the character before them, and each line is matched with
//! the time its first character was written.
//!
//! A search reads each recording whole, once: its cost is linear in the recorded
//! output it scans (no index).

use std::io::BufRead;

use base64::Engine as _;
use serde_json::Value;

/// A line longer than this many characters is cut (the rest still counts for
/// the next line's start, not for matching).
pub const MAX_LINE: usize = 2000;

/// Where an escape sequence is, between chunks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Esc {
    /// Plain text.
    #[default]
    Ground,
    /// After ESC.
    Escape,
    /// After ESC and an intermediate byte (`ESC ( B`): one more character.
    Intermediate,
    /// In a CSI sequence, until its final byte (0x40 to 0x7E).
    Csi,
    /// In a string sequence (OSC, DCS, SOS, PM, APC), until BEL or ST.
    Str,
    /// ESC inside a string sequence (ST is `ESC \`).
    StrEscape,
}

/// Output text made into lines, across chunks.
#[derive(Debug, Default)]
pub struct Lines {
    esc: Esc,
    line: String,
    chars: usize,
    started: Option<f64>,
}

impl Lines {
    /// Feed `text` written at `t` seconds; `emit(start, line)` for each line it ends.
    pub fn feed(&mut self, t: f64, text: &str, emit: &mut impl FnMut(f64, &str)) {
        for c in text.chars() {
            self.esc = match (self.esc, c) {
                (Esc::Ground, '\u{1b}') => Esc::Escape,
                (Esc::Ground, '\u{9b}') => Esc::Csi,
                (Esc::Ground, '\n' | '\r') => {
                    self.end(emit);
                    Esc::Ground
                }
                (Esc::Ground, '\u{8}') => {
                    if self.line.pop().is_some() {
                        self.chars -= 1;
                    }
                    Esc::Ground
                }
                (Esc::Ground, c) => {
                    if c == '\t' || !c.is_control() {
                        self.started.get_or_insert(t);
                        if self.chars < MAX_LINE {
                            self.line.push(c);
                            self.chars += 1;
                        }
                    }
                    Esc::Ground
                }
                (Esc::Escape, '[') => Esc::Csi,
                (Esc::Escape, ']' | 'P' | 'X' | '^' | '_') => Esc::Str,
                (Esc::Escape, ' '..='/') => Esc::Intermediate,
                (Esc::Escape | Esc::Intermediate, _) => Esc::Ground,
                (Esc::Csi, '\u{40}'..='\u{7e}') => Esc::Ground,
                (Esc::Csi, _) => Esc::Csi,
                (Esc::Str, '\u{7}') => Esc::Ground,
                (Esc::Str, '\u{1b}') => Esc::StrEscape,
                (Esc::Str, _) => Esc::Str,
                (Esc::StrEscape, '\\') => Esc::Ground,
                (Esc::StrEscape, _) => Esc::Str,
            };
        }
    }

    fn end(&mut self, emit: &mut impl FnMut(f64, &str)) {
        if let Some(start) = self.started.take() {
            if !self.line.trim().is_empty() {
                emit(start, &self.line);
            }
        }
        self.line.clear();
        self.chars = 0;
    }

    /// The last line, unfinished.
    pub fn finish(&mut self, emit: &mut impl FnMut(f64, &str)) {
        self.end(emit);
    }
}

/// A line that matched: when it started (seconds into the session), and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Seconds since the recording started.
    pub offset: f64,
    /// The line, escape sequences stripped.
    pub line: String,
}

/// What to look for.
#[derive(Debug, Clone)]
pub struct Needle {
    text: String,
    ignore_case: bool,
}

impl Needle {
    /// `text`, in any case when `ignore_case`.
    pub fn new(text: &str, ignore_case: bool) -> Needle {
        let text = if ignore_case {
            text.to_lowercase()
        } else {
            text.to_string()
        };
        Needle { text, ignore_case }
    }

    fn matches(&self, line: &str) -> bool {
        if self.ignore_case {
            line.to_lowercase().contains(&self.text)
        } else {
            line.contains(&self.text)
        }
    }
}

/// The lines of a recording's output (asciicast `o` events, or an exec record's
/// stdout and stderr) that contain `needle`, at most `max`. A forward record has
/// no output; lines that do not parse are skipped (a live recording's last one).
pub fn scan(reader: impl BufRead, needle: &Needle, max: usize) -> std::io::Result<Vec<Hit>> {
    let mut hits = Vec::new();
    let mut lines = reader.lines();
    let Some(header) = lines.next().transpose()? else {
        return Ok(hits);
    };
    let header: Value = serde_json::from_str(&header).unwrap_or_default();
    let exec = header["kind"] == "exec";
    if !exec && header["version"] != 2 {
        return Ok(hits);
    }
    // Exec: stdout and stderr are lines of their own.
    let mut streams = [Lines::default(), Lines::default()];
    let mut emit = |start: f64, line: &str| {
        if hits.len() < max && needle.matches(line) {
            hits.push(Hit {
                offset: start,
                line: line.to_string(),
            });
        }
    };
    for l in lines {
        let l = l?;
        let Ok(v) = serde_json::from_str::<Value>(&l) else {
            continue;
        };
        if exec {
            let (Some(t), Some(stream)) = (v["t"].as_f64(), v["stream"].as_str()) else {
                continue;
            };
            let i = match stream {
                "stdout" => 0,
                "stderr" => 1,
                _ => continue,
            };
            let text = match (v["text"].as_str(), v["base64"].as_str()) {
                (Some(t), _) => t.to_string(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default(),
                _ => continue,
            };
            streams[i].feed(t, &text, &mut emit);
        } else {
            let (Some(t), Some("o"), Some(text)) = (v[0].as_f64(), v[1].as_str(), v[2].as_str())
            else {
                continue;
            };
            streams[0].feed(t, text, &mut emit);
        }
    }
    for s in &mut streams {
        s.finish(&mut emit);
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[(f64, &str)]) -> Vec<(f64, String)> {
        let mut out = Vec::new();
        let mut l = Lines::default();
        let mut emit = |t: f64, s: &str| out.push((t, s.to_string()));
        for (t, c) in chunks {
            l.feed(*t, c, &mut emit);
        }
        l.finish(&mut emit);
        out
    }

    #[test]
    fn escape_sequences_are_stripped_even_across_chunks() {
        let got = lines_of(&[
            (
                0.5,
                "\u{1b}]0;root@gw-01: ~\u{7}\u{1b}[01;32mroot@gw-01\u{1b}[00m:~# ",
            ),
            (1.0, "ls\r\n"),
            (1.2, "\u{1b}[0m\u{1b}[01;34mdir\u{1b}"),
            (1.3, "[0m  file\r\n\u{1b}(Bplain\u{1b}P1$r\u{1b}\\ done\n"),
        ]);
        assert_eq!(
            got,
            vec![
                (0.5, "root@gw-01:~# ls".to_string()),
                (1.2, "dir  file".to_string()),
                (1.3, "plain done".to_string()),
            ]
        );
    }

    #[test]
    fn carriage_returns_end_lines_and_backspaces_take_back() {
        let got = lines_of(&[
            (2.0, "10%\r20%\rdone\n"),
            (3.0, "pa\u{8}\u{8}ok\tX\n\n\r\n"),
        ]);
        assert_eq!(
            got,
            vec![
                (2.0, "10%".to_string()),
                (2.0, "20%".to_string()),
                (2.0, "done".to_string()),
                (3.0, "ok\tX".to_string()),
            ]
        );
    }

    #[test]
    fn a_cast_and_an_exec_record_are_searched_by_their_output() {
        let cast = "{\"version\": 2, \"width\": 80, \"height\": 24}\n\
                    [0.100000, \"o\", \"$ \"]\n\
                    [0.200000, \"i\", \"secret-typed\\r\"]\n\
                    [0.300000, \"o\", \"cat notes\\r\\nthe Secret is \\u001b[1m42\\u001b[0m\\r\\n\"]\n\
                    [1.500000, \"r\", \"100x30\"]\n\
                    [2.000000, \"o\", \"no secret here\"]\n\
                    [2.5, \"o\", \"unfinished li";
        let hits = scan(cast.as_bytes(), &Needle::new("secret", false), 10).unwrap();
        assert_eq!(
            hits,
            vec![Hit {
                offset: 2.0,
                line: "no secret here".into()
            }]
        );
        let hits = scan(cast.as_bytes(), &Needle::new("SECRET", true), 10).unwrap();
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].line, "the Secret is 42");
        assert_eq!(hits[0].offset, 0.3);
        let one = scan(cast.as_bytes(), &Needle::new("secret", true), 1).unwrap();
        assert_eq!(one.len(), 1);

        let exec = "{\"version\":1,\"kind\":\"exec\",\"argv\":[\"sh\"]}\n\
                    {\"t\":0.1,\"stream\":\"stdout\",\"text\":\"out \"}\n\
                    {\"t\":0.2,\"stream\":\"stderr\",\"text\":\"err line\\n\"}\n\
                    {\"t\":0.3,\"stream\":\"stdout\",\"base64\":\"bGluZf8K\"}\n\
                    {\"t\":0.4,\"exit\":{\"code\":0},\"reason\":\"\"}\n";
        let hits = scan(exec.as_bytes(), &Needle::new("line", false), 10).unwrap();
        assert_eq!(
            hits,
            vec![
                Hit {
                    offset: 0.2,
                    line: "err line".into()
                },
                Hit {
                    offset: 0.1,
                    line: "out line\u{fffd}".into()
                },
            ]
        );
        let forward = "{\"version\":1,\"kind\":\"forward\"}\n{\"channel\":1,\"host\":\"line\"}\n";
        assert!(scan(forward.as_bytes(), &Needle::new("line", false), 10)
            .unwrap()
            .is_empty());
    }
}
