//! The recording formats, sans I/O: a session's [`Meta`] makes the header line,
//! each [`Event`] (with its time since the recording started) appends zero or more
//! lines, and [`Encoder::finish`] the last ones. No clock, no files: the writer
//! task (`writer.rs`) owns those.
//!
//! - Shell: asciicast v2 (<https://docs.asciinema.org/manual/asciicast/v2/>): a
//!   header object, then `[TIME, "o", TEXT]` for output (stdout and stderr alike),
//!   `[TIME, "r", "COLSxROWS"]` for a resize, `[TIME, "i", TEXT]` for input when the
//!   relay records input. Text is UTF-8: a sequence split across frames is held
//!   until its end comes; invalid bytes become U+FFFD.
//! - Exec: JSON lines. A header (`"kind": "exec"`, `argv`), then one object per
//!   chunk of output, `{"t", "stream": "stdout"|"stderr"|"stdin", "text"}`, or
//!   `"base64"` instead of `"text"` when the chunk is not UTF-8 or holds control
//!   characters other than those of terminal text (so the bytes are kept exactly,
//!   and binary output is not six times its size in escapes), and last
//!   `{"t", "exit", "reason"}`.
//! - Forward: JSON lines. A header (`"kind": "forward"`), then one object per
//!   channel once it is over: destination, open and close times, bytes each way,
//!   how and why it ended. Never the bytes themselves.
//!
//! Times are seconds since the recording started, to the microsecond.

use std::collections::HashMap;
use std::time::Duration;

use agent_core::wire::Exit;
use base64::Engine as _;
use serde_json::{json, Value};

/// Who, where and what: the header's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The relay's session id.
    pub session: String,
    /// The target's name.
    pub target: String,
    /// The user's name.
    pub user: String,
    /// The account on the target.
    pub account: String,
    /// Unix seconds when the recording started.
    pub timestamp: i64,
    /// The kind and its particulars.
    pub kind: KindMeta,
}

/// The recorded kinds of session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindMeta {
    /// A shell on a terminal of `cols` x `rows` (0 x 0: on pipes).
    Shell {
        /// `TERM`.
        term: String,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// A command.
    Exec {
        /// Its arguments.
        argv: Vec<String>,
    },
    /// TCP forwarding.
    Forward,
}

impl KindMeta {
    /// The file name's suffix for this kind (before `.gz`).
    pub fn extension(&self) -> &'static str {
        match self {
            KindMeta::Shell { .. } => super::CAST,
            KindMeta::Exec { .. } => super::EXEC,
            KindMeta::Forward => super::FORWARD,
        }
    }
}

/// What the relay saw happen in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent's output on a shell or exec session.
    Output {
        /// From stderr (else stdout).
        stderr: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// What the client sent to a shell or exec session (recorded only when the
    /// relay records input).
    Input(Vec<u8>),
    /// The client's terminal changed size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// A forward channel asked for, to its canonical destination.
    ChannelOpen {
        /// Channel id.
        ch: u16,
        /// Destination host.
        host: String,
        /// Destination port.
        port: u16,
    },
    /// A forward channel refused by the relay's policies (the agent never heard of it).
    ChannelDenied {
        /// Channel id.
        ch: u16,
        /// Destination host.
        host: String,
        /// Destination port.
        port: u16,
        /// The refusal.
        reason: String,
    },
    /// The agent connected the channel.
    ChannelAccepted {
        /// Channel id.
        ch: u16,
    },
    /// The agent could not connect the channel.
    ChannelRejected {
        /// Channel id.
        ch: u16,
        /// Why.
        reason: String,
    },
    /// Payload on a channel, towards the destination (`to_dest`) or from it.
    ChannelData {
        /// Channel id.
        ch: u16,
        /// Client to destination.
        to_dest: bool,
        /// Payload bytes.
        bytes: u64,
    },
    /// The client aborts a channel (the agent answers with its own close).
    ChannelAbort {
        /// Channel id.
        ch: u16,
        /// Why, if it said.
        reason: String,
    },
    /// The agent says the channel is over.
    ChannelClosed {
        /// Channel id.
        ch: u16,
        /// Why, if it did not end cleanly.
        reason: String,
    },
    /// The agent's `Close` (or `Reject`): how the session ended.
    Exit {
        /// The status.
        exit: Exit,
        /// Why, if the agent said.
        reason: String,
    },
}

/// What one event counts for against the writer's queue bound, in bytes.
pub fn cost(e: &Event) -> usize {
    const OVERHEAD: usize = 64;
    OVERHEAD
        + match e {
            Event::Output { data, .. } | Event::Input(data) => data.len(),
            Event::ChannelOpen { host, .. } => host.len(),
            Event::ChannelDenied { host, reason, .. } => host.len() + reason.len(),
            Event::ChannelRejected { reason, .. }
            | Event::ChannelAbort { reason, .. }
            | Event::ChannelClosed { reason, .. }
            | Event::Exit { reason, .. } => reason.len(),
            Event::Resize { .. } | Event::ChannelAccepted { .. } | Event::ChannelData { .. } => 0,
        }
}

/// `12.000345`: seconds to the microsecond, exactly (no float rounding).
pub fn secs(d: Duration) -> String {
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

/// Bytes of a stream that may split UTF-8 sequences across chunks: holds an
/// incomplete sequence at the end of a chunk until the next one.
#[derive(Debug, Default, Clone)]
pub struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    /// The whole sequences of `held ++ data`, and whether they are valid UTF-8; an
    /// incomplete sequence at the end is held for the next chunk.
    pub fn push(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        let (mut pos, mut valid) = (0, true);
        let cut = loop {
            match std::str::from_utf8(&buf[pos..]) {
                Ok(_) => break buf.len(),
                Err(e) => match e.error_len() {
                    // Cut short: the rest may be completed by the next chunk.
                    None => break pos + e.valid_up_to(),
                    Some(n) => {
                        valid = false;
                        pos += e.valid_up_to() + n;
                    }
                },
            }
        };
        self.held = buf.split_off(cut);
        (buf, valid)
    }

    /// What is held now: the start of a character whose rest has not come yet.
    pub fn held(&self) -> &[u8] {
        &self.held
    }

    /// What is held at the end of the stream (an incomplete sequence, never valid).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// Turns events into lines of one format.
#[derive(Debug)]
pub enum Encoder {
    /// asciicast v2.
    Cast(Cast),
    /// Exec JSON lines.
    Exec(ExecLog),
    /// Forward JSON lines.
    Forward(ForwardLog),
}

impl Encoder {
    /// The encoder for a session, and its header line (with its newline).
    pub fn new(meta: &Meta) -> (Encoder, Vec<u8>) {
        let mut header = match &meta.kind {
            KindMeta::Shell { term, cols, rows } => {
                // A shell on pipes has no size: players get the usual 80x24.
                let (w, h) = if *cols == 0 || *rows == 0 {
                    (80, 24)
                } else {
                    (*cols, *rows)
                };
                let mut h = json!({
                    "version": 2,
                    "width": w,
                    "height": h,
                    "timestamp": meta.timestamp,
                    "title": format!("{}@{} ({})", meta.user, meta.target, meta.account),
                });
                if !term.is_empty() {
                    h["env"] = json!({ "TERM": term });
                }
                h
            }
            KindMeta::Exec { argv } => json!({
                "version": 1,
                "kind": "exec",
                "timestamp": meta.timestamp,
                "argv": argv,
            }),
            KindMeta::Forward => json!({
                "version": 1,
                "kind": "forward",
                "timestamp": meta.timestamp,
            }),
        };
        header["session"] = meta.session.clone().into();
        header["target"] = meta.target.clone().into();
        header["user"] = meta.user.clone().into();
        header["account"] = meta.account.clone().into();
        let mut line = header.to_string().into_bytes();
        line.push(b'\n');
        let enc = match meta.kind {
            KindMeta::Shell { .. } => Encoder::Cast(Cast::default()),
            KindMeta::Exec { .. } => Encoder::Exec(ExecLog::default()),
            KindMeta::Forward => Encoder::Forward(ForwardLog::default()),
        };
        (enc, line)
    }

    /// Output received but not written yet (a shell's character cut between two
    /// frames), for someone who joins now.
    pub fn held_output(&self) -> Vec<u8> {
        match self {
            Encoder::Cast(c) => [c.out.held(), c.err.held()].concat(),
            _ => Vec::new(),
        }
    }

    /// Append the lines of event `e`, which happened at `at`.
    pub fn push(&mut self, at: Duration, e: Event, out: &mut Vec<u8>) {
        match self {
            Encoder::Cast(c) => c.push(at, e, out),
            Encoder::Exec(x) => x.push(at, e, out),
            Encoder::Forward(f) => f.push(at, e, out),
        }
    }

    /// Append the last lines: the session ended at `at`, for `reason` when the
    /// relay ended it (a terminate, a timeout, the recording failing).
    pub fn finish(&mut self, at: Duration, reason: Option<&str>, out: &mut Vec<u8>) {
        match self {
            Encoder::Cast(c) => c.finish(at, out),
            Encoder::Exec(x) => x.finish(at, reason, out),
            Encoder::Forward(f) => f.finish(at, reason, out),
        }
    }
}

fn line(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(v.to_string().as_bytes());
    out.push(b'\n');
}

/// asciicast v2 events: `[TIME, CODE, DATA]`.
#[derive(Debug, Default)]
pub struct Cast {
    out: Utf8Carry,
    err: Utf8Carry,
    input: Utf8Carry,
}

fn cast_event(out: &mut Vec<u8>, at: Duration, code: &str, text: &str) {
    if text.is_empty() {
        return;
    }
    // The time as a JSON number written exactly; the text as a JSON string.
    out.push(b'[');
    out.extend_from_slice(secs(at).as_bytes());
    out.extend_from_slice(b", \"");
    out.extend_from_slice(code.as_bytes());
    out.extend_from_slice(b"\", ");
    out.extend_from_slice(Value::String(text.into()).to_string().as_bytes());
    out.extend_from_slice(b"]\n");
}

impl Cast {
    fn push(&mut self, at: Duration, e: Event, out: &mut Vec<u8>) {
        match e {
            Event::Output { stderr, data } => {
                let carry = if stderr { &mut self.err } else { &mut self.out };
                let (whole, _) = carry.push(&data);
                cast_event(out, at, "o", &String::from_utf8_lossy(&whole));
            }
            Event::Input(data) => {
                let (whole, _) = self.input.push(&data);
                cast_event(out, at, "i", &String::from_utf8_lossy(&whole));
            }
            Event::Resize { cols, rows } => cast_event(out, at, "r", &format!("{cols}x{rows}")),
            _ => {}
        }
    }

    fn finish(&mut self, at: Duration, out: &mut Vec<u8>) {
        for (carry, code) in [
            (&mut self.out, "o"),
            (&mut self.err, "o"),
            (&mut self.input, "i"),
        ] {
            let rest = carry.finish();
            cast_event(out, at, code, &String::from_utf8_lossy(&rest));
        }
    }
}

/// Exec output and the exit status as JSON lines.
#[derive(Debug, Default)]
pub struct ExecLog {
    out: Utf8Carry,
    err: Utf8Carry,
    input: Utf8Carry,
    exit: Option<(Exit, String)>,
}

/// `{"code": 0}`, `{"signal": 9}`, `{"aborted": 6}`.
pub fn exit_json(exit: Exit) -> Value {
    match exit {
        Exit::Code(c) => json!({ "code": c }),
        Exit::Signal(s) => json!({ "signal": s }),
        Exit::Aborted(code) => json!({ "aborted": code.0 }),
    }
}

/// How a session ended, in the words of its record: `exit 0`, `signal 9`,
/// `aborted (3): REASON`.
pub fn exit_line(exit: Exit, reason: &str) -> String {
    match exit {
        Exit::Code(c) => format!("exit {c}"),
        Exit::Signal(s) => format!("signal {s}"),
        Exit::Aborted(code) => format!("aborted ({}): {reason}", code.0),
    }
}

/// Text a person reads: no control characters but tab, newline, carriage return,
/// bell, backspace, form feed and escape (colours). Anything else (a stream of NULs,
/// a binary file) is smaller as base64 than as JSON's `\u0000` escapes.
fn readable(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || matches!(b, b'\t' | b'\n' | b'\r' | 7 | 8 | 12 | 27))
}

fn exec_chunk(out: &mut Vec<u8>, at: Duration, stream: &str, bytes: &[u8], valid: bool) {
    if bytes.is_empty() {
        return;
    }
    let (key, data) = if valid {
        ("text", String::from_utf8_lossy(bytes).into_owned())
    } else {
        (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )
    };
    // Written by hand so that the time leads and is exact.
    let line = format!(
        "{{\"t\":{},\"stream\":\"{stream}\",\"{key}\":{}}}\n",
        secs(at),
        Value::String(data)
    );
    out.extend_from_slice(line.as_bytes());
}

impl ExecLog {
    fn push(&mut self, at: Duration, e: Event, out: &mut Vec<u8>) {
        let (carry, stream, data) = match e {
            Event::Output {
                stderr: false,
                data,
            } => (&mut self.out, "stdout", data),
            Event::Output { stderr: true, data } => (&mut self.err, "stderr", data),
            Event::Input(data) => (&mut self.input, "stdin", data),
            Event::Exit { exit, reason } => {
                self.exit = Some((exit, reason));
                return;
            }
            _ => return,
        };
        let (whole, valid) = carry.push(&data);
        exec_chunk(out, at, stream, &whole, valid && readable(&whole));
    }

    fn finish(&mut self, at: Duration, reason: Option<&str>, out: &mut Vec<u8>) {
        for (carry, stream) in [
            (&mut self.out, "stdout"),
            (&mut self.err, "stderr"),
            (&mut self.input, "stdin"),
        ] {
            let rest = carry.finish();
            exec_chunk(out, at, stream, &rest, false);
        }
        let (exit, why) = match self.exit.take() {
            Some((exit, why)) => (exit_json(exit), why),
            None => (Value::Null, String::new()),
        };
        // The relay's reason wins: it ended the session, whatever the agent said.
        let why = reason.map_or(why, str::to_string);
        let line = format!(
            "{{\"t\":{},\"exit\":{exit},\"reason\":{}}}\n",
            secs(at),
            Value::String(why)
        );
        out.extend_from_slice(line.as_bytes());
    }
}

/// Channels open at most in the table; more are not recorded (the agent refuses
/// more than its own limit, 64 on Linux, long before).
const MAX_CHANNELS: usize = 4096;

#[derive(Debug)]
struct Channel {
    host: String,
    port: u16,
    opened: Duration,
    accepted: Option<Duration>,
    bytes_in: u64,
    bytes_out: u64,
    aborted: Option<String>,
}

/// Forward channels' metadata as JSON lines, one per channel when it is over.
#[derive(Debug, Default)]
pub struct ForwardLog {
    open: HashMap<u16, Channel>,
}

impl ForwardLog {
    fn push(&mut self, at: Duration, e: Event, out: &mut Vec<u8>) {
        match e {
            Event::ChannelOpen { ch, host, port } if self.open.len() < MAX_CHANNELS => {
                self.open.insert(
                    ch,
                    Channel {
                        host,
                        port,
                        opened: at,
                        accepted: None,
                        bytes_in: 0,
                        bytes_out: 0,
                        aborted: None,
                    },
                );
            }
            Event::ChannelDenied {
                ch,
                host,
                port,
                reason,
            } => {
                let c = Channel {
                    host,
                    port,
                    opened: at,
                    accepted: None,
                    bytes_in: 0,
                    bytes_out: 0,
                    aborted: None,
                };
                Self::over(out, ch, c, at, "denied", &reason);
            }
            Event::ChannelAccepted { ch } => {
                if let Some(c) = self.open.get_mut(&ch) {
                    c.accepted = Some(at);
                }
            }
            Event::ChannelData { ch, to_dest, bytes } => {
                if let Some(c) = self.open.get_mut(&ch) {
                    if to_dest {
                        c.bytes_in += bytes;
                    } else {
                        c.bytes_out += bytes;
                    }
                }
            }
            Event::ChannelAbort { ch, reason } => {
                if let Some(c) = self.open.get_mut(&ch) {
                    c.aborted = Some(reason);
                }
            }
            Event::ChannelRejected { ch, reason } => {
                if let Some(c) = self.open.remove(&ch) {
                    Self::over(out, ch, c, at, "rejected", &reason);
                }
            }
            Event::ChannelClosed { ch, reason } => {
                if let Some(c) = self.open.remove(&ch) {
                    let why = match (&c.aborted, reason.is_empty()) {
                        (_, false) => reason,
                        (Some(r), true) if r.is_empty() => "closed by the client".into(),
                        (Some(r), true) => format!("closed by the client: {r}"),
                        (None, true) => "end of stream".into(),
                    };
                    Self::over(out, ch, c, at, "closed", &why);
                }
            }
            _ => {}
        }
    }

    fn over(out: &mut Vec<u8>, ch: u16, c: Channel, at: Duration, outcome: &str, reason: &str) {
        let t = |d: Duration| Value::from(secs(d).parse::<f64>().unwrap_or_default());
        let v = json!({
            "channel": ch,
            "host": c.host,
            "port": c.port,
            "opened": t(c.opened),
            "accepted": c.accepted.map(t),
            "closed": t(at),
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "outcome": outcome,
            "reason": reason,
        });
        line(out, &v);
    }

    fn finish(&mut self, at: Duration, reason: Option<&str>, out: &mut Vec<u8>) {
        let why = match reason {
            Some(r) => format!("session ended: {r}"),
            None => "session ended".to_string(),
        };
        let mut open: Vec<(u16, Channel)> = self.open.drain().collect();
        open.sort_by_key(|(ch, _)| *ch);
        for (ch, c) in open {
            Self::over(out, ch, c, at, "closed", &why);
        }
    }
}

#[cfg(test)]
mod tests;
