//! Session recordings, written by the relay (`docs/recordings.md`).
//!
//! Every shell, exec and forward session is recorded into the recordings directory
//! (`[recordings] dir`, `DATA_DIR/recordings` by default) as the relay routes it:
//! a shell as asciicast v2 (`ID.cast`), an exec as JSON lines of its output and exit
//! (`ID.exec.jsonl`), a forward session as JSON lines of its channels
//! (`ID.forward.jsonl`); see `format.rs`. SSH key pushes are not recorded (the
//! audit log has them).
//!
//! ## Contract
//! - Strict by default (fail closed): a session whose recording cannot be created
//!   is refused before the agent hears of it (`recording unavailable: ...`), and
//!   one whose recording breaks (a write fails, the writer falls behind) ends with
//!   the reason (`recording failed: ...`). `mode = "best-effort"` lets it go on
//!   unrecorded, with a warning and the reason in its audit `session.end`.
//! - A live recording is on disk within [`writer::WRITE_EVERY`] of each event and
//!   can be read up to its last whole line. When the session ends it is gzipped
//!   (`ID.cast.gz`, readable by `zcat`) and the SHA-256 of that file is in the
//!   session's audit `session.end` event, which binds it into the hash chain.
//! - Routing never waits on the disk for long: events go to a per-session writer
//!   task over a queue bounded by bytes ([`writer::QUEUE_BYTES`]).
//! - Recordings older than `[recordings] retention` are deleted with the sessions
//!   (`server::prune`); a live session's never are.
//! - Files are the relay's alone: the directory is made 0700, files 0600.
//!
//! - Input is recorded when `[recordings] input = true`, or when a policy allows
//!   the action `record_input` on the session (its owner as principal).
//! - A live shell session can be joined read-only through its recording
//!   (`join.rs`).
//!
//! ## Non-goals (for now)
//! Signing recordings themselves (their hash is in the signed audit chain).

pub mod format;
pub mod grep;
pub mod http;
pub mod join;
pub mod writer;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use agent_core::wire::{Exit, Frame, Stream};
use tracing::warn;

use crate::config::{self, RecordingMode};
pub use format::{Event, KindMeta, Meta};
pub use writer::{Finished, Joined, Recorder, Seen, Watch};

/// A shell recording's suffix.
pub const CAST: &str = "cast";
/// An exec record's suffix.
pub const EXEC: &str = "exec.jsonl";
/// A forward record's suffix.
pub const FORWARD: &str = "forward.jsonl";
const SUFFIXES: [&str; 3] = [CAST, EXEC, FORWARD];

/// `PATH.gz`.
pub fn gz_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".gz");
    PathBuf::from(s)
}

/// Open a new file only the relay can read (0600), failing if it exists.
fn create_new_private(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Create or truncate a file only the relay can read (0600).
fn create_private(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Whether `id` can name a recording (a session id: no path separators or dots).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A recording opened for reading.
pub struct Opened {
    /// Its file name.
    pub file: String,
    /// Its suffix ([`CAST`], [`EXEC`] or [`FORWARD`]).
    pub suffix: &'static str,
    /// Still being written (read up to its last whole line).
    pub live: bool,
    /// Its text.
    pub reader: Box<dyn std::io::BufRead + Send>,
}

/// The recordings directory and its settings.
#[derive(Debug, Clone)]
pub struct Recordings {
    dir: PathBuf,
    settings: config::Recordings,
}

impl Recordings {
    /// Recordings as configured, a relative directory taken from `data_dir`.
    pub fn new(data_dir: &Path, settings: &config::Recordings) -> Recordings {
        Recordings {
            dir: data_dir.join(&settings.dir),
            settings: settings.clone(),
        }
    }

    /// Where they are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings.
    pub fn settings(&self) -> &config::Recordings {
        &self.settings
    }

    /// Make the directory (0700) if it is missing.
    pub fn prepare(&self) -> Result<(), String> {
        if self.settings.mode == RecordingMode::Off {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))
    }

    /// Go on recording session `id` (a shell or exec, by `kind`), which a previous
    /// run of the relay left running: its file is appended to, its events timed
    /// from the start its header gives. What a side sends again after the resume is
    /// recorded past what the previous run wrote (the offsets it kept beside the file
    /// after each write), so never twice; what it had not written yet when it stopped
    /// (at most its last 100 ms) and the other side had received is missing. An error
    /// is the session's end (strict mode).
    pub async fn resume(&self, id: &str, kind: &str, input: bool) -> Result<Recorder, String> {
        let strict = match self.settings.mode {
            RecordingMode::Off => return Ok(Recorder::off()),
            RecordingMode::Strict => true,
            RecordingMode::BestEffort => false,
        };
        let (suffix, shell) = match kind {
            "shell" => (CAST, true),
            "exec" => (EXEC, false),
            _ => return Ok(Recorder::off()),
        };
        let path = self.dir.join(format!("{id}.{suffix}"));
        let at = path.clone();
        let opened = tokio::task::spawn_blocking(move || -> Result<(File, u64), String> {
            let cannot = |e: std::io::Error| format!("cannot read {}: {e}", at.display());
            // Its header line, and whether it ends with a whole line (the file may
            // be large: only those are read).
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(&at)
                .map_err(cannot)?;
            let mut header = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(&f), &mut header)
                .map_err(cannot)?;
            let header: serde_json::Value = serde_json::from_str(&header)
                .map_err(|e| format!("{}: bad header: {e}", at.display()))?;
            let started = header["timestamp"].as_u64().unwrap_or(0);
            let mut last = [0u8; 1];
            f.seek(SeekFrom::End(-1)).map_err(cannot)?;
            f.read_exact(&mut last).map_err(cannot)?;
            if last[0] != b'\n' {
                // A line cut by the crash ends here, so the next one stands alone.
                f.write_all(b"\n")
                    .map_err(|e| format!("cannot write {}: {e}", at.display()))?;
            }
            Ok((f, started))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let (file, started) = match opened {
            Ok(o) => o,
            Err(e) => {
                let why = format!("recording unavailable: {e}");
                return if strict {
                    Err(why)
                } else {
                    Ok(Recorder::unavailable(why))
                };
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let elapsed = std::time::Duration::from_secs(now.saturating_sub(started));
        let enc = if shell {
            format::Encoder::Cast(format::Cast::default())
        } else {
            format::Encoder::Exec(format::ExecLog::default())
        };
        let flags = (input || self.settings.input, false, shell);
        // What the previous run recorded, from the file kept beside it: what is
        // sent again after the resume is recorded from there on, never twice.
        let recorded = writer::read_offsets(&path).unwrap_or((0, 0));
        let mut recorder = Recorder::start_at(file, path, enc, strict, flags, elapsed);
        recorder.resumable(recorded);
        Ok(recorder)
    }

    /// Start recording a session: its file made and its header written before the
    /// agent hears of the session. An error is the session's refusal (strict mode).
    ///
    /// Input is recorded when the relay's setting says so, or `input` (a policy
    /// asked for it).
    pub async fn start(&self, meta: Meta, input: bool) -> Result<Recorder, String> {
        let strict = match self.settings.mode {
            RecordingMode::Off => return Ok(Recorder::off()),
            RecordingMode::Strict => true,
            RecordingMode::BestEffort => false,
        };
        let path = self
            .dir
            .join(format!("{}.{}", meta.session, meta.kind.extension()));
        let (enc, header) = format::Encoder::new(&meta);
        let this = self.clone();
        let at = path.clone();
        let made = tokio::task::spawn_blocking(move || -> Result<File, String> {
            this.prepare()?;
            let mut f = create_new_private(&at)
                .map_err(|e| format!("cannot create {}: {e}", at.display()))?;
            f.write_all(&header)
                .map_err(|e| format!("cannot write {}: {e}", at.display()))?;
            Ok(f)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match made {
            Ok(file) => {
                let input = input || self.settings.input;
                let forward = meta.kind == KindMeta::Forward;
                let shell = matches!(meta.kind, KindMeta::Shell { .. });
                Ok(Recorder::start(
                    file,
                    path,
                    enc,
                    strict,
                    (input, forward, shell),
                ))
            }
            Err(e) => {
                let why = format!("recording unavailable: {e}");
                if strict {
                    Err(why)
                } else {
                    warn!(session = %meta.session, "{why}; the session goes on unrecorded (recordings mode best-effort)");
                    Ok(Recorder::unavailable(why))
                }
            }
        }
    }

    /// The files session `id`'s recording may be in: live, then compressed.
    fn candidates(&self, id: &str) -> Vec<(PathBuf, &'static str, bool)> {
        if !valid_id(id) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for suffix in SUFFIXES {
            let plain = self.dir.join(format!("{id}.{suffix}"));
            out.push((gz_path(&plain), suffix, false));
            out.push((plain, suffix, true));
        }
        // Live first: it is compressed (and renamed) before it is removed, so
        // looking in this order never misses a recording that is being finished.
        out.sort_by_key(|(_, _, live)| !*live);
        out
    }

    /// Whether session `id` has a recording (blocking: a few `stat`s).
    pub fn exists(&self, id: &str) -> bool {
        self.candidates(id).iter().any(|(p, _, _)| p.exists())
    }

    /// Session `id`'s recording, to read (blocking); `None` if it has none.
    pub fn open(&self, id: &str) -> std::io::Result<Option<Opened>> {
        for (path, suffix, live) in self.candidates(id) {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let reader: Box<dyn std::io::BufRead + Send> = if live {
                let end = whole_lines(&mut file)?;
                file.seek(SeekFrom::Start(0))?;
                Box::new(std::io::BufReader::new(file.take(end)))
            } else {
                Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
                    std::io::BufReader::new(file),
                )))
            };
            return Ok(Some(Opened {
                file: name,
                suffix,
                live,
                reader,
            }));
        }
        Ok(None)
    }

    /// Delete the recordings older than the retention (by their last write), except
    /// those of live sessions (`live(id)`); how many went (blocking).
    pub fn prune(&self, live: impl Fn(&str) -> bool) -> usize {
        let Some(retention) = self.settings.retention else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((id, _)) = name.split_once('.') else {
                continue;
            };
            let ours = SUFFIXES.iter().any(|s| {
                let rest = &name[id.len() + 1..];
                rest == *s || rest == format!("{s}.gz") || rest == format!("{s}.gz.tmp")
            });
            if !ours || live(id) {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => n += 1,
                    Err(err) => warn!("cannot delete {}: {err}", e.path().display()),
                }
            }
        }
        n
    }

    /// Compress the recordings a stopped relay left uncompressed (at start, before
    /// any session runs; blocking): each session id with its outcome.
    pub fn recover(&self) -> Vec<(String, Result<Finished, String>)> {
        self.recover_but(&[])
    }

    /// [`Recordings::recover`], leaving alone the recordings of the sessions in
    /// `taken_up` (resumable sessions a restarted relay goes on recording).
    pub fn recover_but(&self, taken_up: &[String]) -> Vec<(String, Result<Finished, String>)> {
        if self.settings.mode == RecordingMode::Off {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((id, rest)) = name.split_once('.') else {
                continue;
            };
            if SUFFIXES.contains(&rest) && valid_id(id) && !taken_up.iter().any(|t| t == id) {
                out.push((id.to_string(), writer::compress(&e.path())));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Compress session `id`'s recording, if it was left uncompressed (a session
    /// a restarted relay could not take up again; blocking).
    pub fn recover_one(&self, id: &str) -> Option<Result<Finished, String>> {
        if self.settings.mode == RecordingMode::Off || !valid_id(id) {
            return None;
        }
        SUFFIXES
            .iter()
            .map(|suffix| self.dir.join(format!("{id}.{suffix}")))
            .find(|path| path.exists())
            .map(|path| writer::compress(&path))
    }
}

/// What a frame from the agent (on its way to the client) records, if anything:
/// output (shell, exec), a channel's accept, reject, close or bytes (forward), the
/// session's exit.
pub fn agent_event(f: &Frame, forward: bool) -> Option<Event> {
    Some(match *f {
        Frame::Data { ch, data, .. } if forward => Event::ChannelData {
            ch,
            to_dest: false,
            bytes: data.0.len() as u64,
        },
        Frame::Data {
            ch: 0,
            stream,
            data,
            ..
        } => Event::Output {
            stderr: stream == Stream::ERR,
            data: data.0.to_vec(),
        },
        Frame::ChannelAccept { ch, .. } => Event::ChannelAccepted { ch },
        Frame::ChannelReject { ch, reason, .. } => Event::ChannelRejected {
            ch,
            reason: reason.into(),
        },
        Frame::ChannelClose { ch, reason, .. } => Event::ChannelClosed {
            ch,
            reason: reason.into(),
        },
        Frame::Close { exit, reason, .. } => Event::Exit {
            exit,
            reason: reason.into(),
        },
        Frame::Reject { code, reason, .. } => Event::Exit {
            exit: Exit::Aborted(code),
            reason: reason.into(),
        },
        _ => return None,
    })
}

/// What a frame from the client (on its way to the agent) records, if anything:
/// a resize, input when `input` is recorded (shell, exec), a channel's open,
/// bytes or abort (forward).
pub fn client_event(f: &Frame, input: bool, forward: bool) -> Option<Event> {
    Some(match *f {
        Frame::Data { ch, data, .. } if forward => Event::ChannelData {
            ch,
            to_dest: true,
            bytes: data.0.len() as u64,
        },
        Frame::Data { ch: 0, data, .. } if input => Event::Input(data.0.to_vec()),
        Frame::Resize { cols, rows, .. } if !forward => Event::Resize { cols, rows },
        Frame::ChannelOpen { ch, host, port, .. } => Event::ChannelOpen {
            ch,
            host: host.into(),
            port,
        },
        Frame::ChannelClose { ch, reason, .. } => Event::ChannelAbort {
            ch,
            reason: reason.into(),
        },
        _ => return None,
    })
}

/// Where the last whole line of a file being written ends.
fn whole_lines(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
pub(crate) mod tests;
