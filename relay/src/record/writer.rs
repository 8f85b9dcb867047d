//! One session's recording: the [`Recorder`] its stream task holds, and the writer
//! task that owns the file.
//!
//! The stream task hands events over a queue bounded by bytes ([`QUEUE_BYTES`]);
//! the writer encodes them (`format.rs`) and appends each batch to the file at
//! once, at most every [`WRITE_EVERY`], so that a live recording can be read up to
//! now. A stream task waits for room in the queue for [`STALL`] at most: a writer
//! that falls further behind, or a write that fails, breaks the recording. In
//! strict mode that ends the session with the reason (fail closed); in best-effort
//! mode the session goes on unrecorded, with a warning. When the session ends, the
//! file is gzipped (`ID.cast.gz`), and its SHA-256 goes to the audit log.
//!
//! A shell session's recording can be joined ([`Watch::join`]): the writer puts
//! what it holds on disk and says where the file ends, then hands each later
//! output and resize to the observer, so that the file up to there (the screen so
//! far) and the feed after it (live) meet exactly, with nothing missed or twice.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_core::wire::Frame;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tracing::warn;

use super::format::{cost, Encoder, Event};

/// Bytes of events (payload plus a fixed cost each) queued for the writer, at most.
pub const QUEUE_BYTES: usize = 2 * 1024 * 1024;
/// How long an event may wait for room in the queue before the recording counts as
/// fallen behind.
pub const STALL: Duration = Duration::from_secs(5);
/// Writes to the file are at least this far apart (each writes what came
/// meanwhile), so a chatty session costs ten writes a second, not one per frame.
pub const WRITE_EVERY: Duration = Duration::from_millis(100);

/// Events an observer may have waiting before it counts as fallen behind (and is
/// dropped: the session itself never waits for an observer). An event is one
/// frame's output, 32 KiB at most.
pub const OBSERVER_QUEUE: usize = 256;
/// Observers one session may have at once.
pub const MAX_OBSERVERS: usize = 8;

enum Msg {
    Event(Duration, Event),
    /// What is recorded of each direction of a resumable session's channel 0 once
    /// the events before this are written (kept beside the recording, for a
    /// restarted relay).
    Offsets(u64, u64),
    /// Someone joins the session.
    Join(oneshot::Sender<Result<Joined, String>>),
    /// The session side stopped recording (best-effort mode) for this reason.
    Broke(String),
    /// The session never started: remove the file.
    Discard(oneshot::Sender<()>),
    /// The session ended at this time, for this reason if the relay ended it.
    Finish(
        Duration,
        Option<String>,
        oneshot::Sender<Result<Finished, String>>,
    ),
}

impl Msg {
    /// Someone waits on it: the writer does not hold it for its tick.
    fn urgent(&self) -> bool {
        matches!(self, Msg::Finish(..) | Msg::Discard(..) | Msg::Join(..))
    }
}

/// What an observer of a session sees after it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Output of the session.
    Output(Vec<u8>),
    /// The session's terminal changed size.
    Resize(u16, u16),
    /// The session ended (with its exit when the agent said), as said here;
    /// nothing follows.
    End(Option<agent_core::wire::Exit>, String),
}

/// A joined session: its recording up to `upto` bytes is the past, `feed` the rest.
/// A feed that closes without [`Seen::End`] fell behind, or the session ended
/// while the feed was full.
pub struct Joined {
    /// The recording, open for reading (it stays readable when it is compressed
    /// and removed meanwhile).
    pub file: File,
    /// Its length when the observer joined: whole lines, all on disk.
    pub upto: u64,
    /// What happens from then on.
    pub feed: mpsc::Receiver<Seen>,
}

/// A handle to join a session's recording as it is written (see [`Recorder::watch`]).
#[derive(Clone)]
pub struct Watch(mpsc::UnboundedSender<Msg>);

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

impl Watch {
    /// Join: the recording so far and a feed of what follows.
    pub async fn join(&self) -> Result<Joined, String> {
        let gone = || "the session's recording has ended".to_string();
        let (done, joined) = oneshot::channel();
        self.0.send(Msg::Join(done)).map_err(|_| gone())?;
        joined.await.map_err(|_| gone())?
    }
}

/// A finished recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Its file name in the recordings directory.
    pub file: String,
    /// SHA-256 of the file (hex).
    pub sha256: String,
}

/// A recording being written, as its stream task holds it.
pub struct Recorder {
    state: State,
    strict: bool,
    /// Input is recorded.
    input: bool,
    /// A forward session (channels, not output).
    forward: bool,
    /// A shell session (it can be joined).
    shell: bool,
    /// Bytes of channel 0 recorded each way (output, input): a resumable
    /// session's `DataAt` sent again after a resume is recorded once.
    recorded: (u64, u64),
    /// The same for each forward channel (from the agent, from the client): the
    /// byte counts of its rows count each byte once across resumes (not across a
    /// restart of the relay: these are not kept beside the file).
    channels: (HashMap<u16, u64>, HashMap<u16, u64>),
    /// The session is resumable: `recorded` is kept beside the file
    /// ([`offsets_path`]), so that a restarted relay records each byte once too.
    resumable: bool,
}

/// Where what is recorded of a resumable session's channel 0 is kept, beside its
/// recording: `OUTPUT INPUT\n`, in bytes.
pub fn offsets_path(recording: &Path) -> PathBuf {
    let mut name = recording.as_os_str().to_owned();
    name.push(".at");
    PathBuf::from(name)
}

/// What [`offsets_path`] says, if anything.
pub fn read_offsets(recording: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(offsets_path(recording)).ok()?;
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// The part of a `Data` or `DataAt` not recorded yet, as a `Data` frame, with
/// what was recorded of that direction of its channel moved past it: `at` for
/// channel 0, `channels` for a forward channel (an entry goes when its channel
/// ends; `Data` of a forward channel, never sent again, needs none).
fn unrecorded<'a>(
    f: Frame<'a>,
    at: &mut u64,
    channels: &mut HashMap<u16, u64>,
) -> Option<Frame<'a>> {
    match f {
        Frame::DataAt {
            sid,
            ch,
            stream,
            offset,
            data,
        } => {
            let at = match ch {
                0 => at,
                _ => channels.entry(ch).or_default(),
            };
            let skip = usize::try_from(at.saturating_sub(offset)).unwrap_or(usize::MAX);
            let new = data.0.get(skip..).filter(|d| !d.is_empty())?;
            *at = offset.saturating_add(data.0.len() as u64).max(*at);
            Some(Frame::Data {
                sid,
                ch,
                stream,
                data: agent_core::wire::Bytes(new),
            })
        }
        Frame::Data { ch: 0, data, .. } => {
            *at += data.0.len() as u64;
            Some(f)
        }
        Frame::ChannelOpen { ch, .. }
        | Frame::ChannelReject { ch, .. }
        | Frame::ChannelClose { ch, .. } => {
            channels.remove(&ch);
            Some(f)
        }
        other => Some(other),
    }
}

enum State {
    /// This session is not recorded (its kind, or recordings are off).
    Off,
    /// Best-effort: the recording broke (or was never made) for this reason.
    Broken(String, Option<Active>),
    /// Being written.
    Active(Active),
}

struct Active {
    tx: mpsc::UnboundedSender<Msg>,
    room: Arc<Semaphore>,
    failed: watch::Receiver<Option<String>>,
    origin: Instant,
}

impl Recorder {
    /// A session that is not recorded.
    pub fn off() -> Recorder {
        Recorder {
            state: State::Off,
            strict: false,
            input: false,
            forward: false,
            shell: false,
            recorded: (0, 0),
            channels: Default::default(),
            resumable: false,
        }
    }

    /// A best-effort session whose recording could not be made, for `why`.
    pub fn unavailable(why: String) -> Recorder {
        Recorder {
            state: State::Broken(why, None),
            strict: false,
            input: false,
            forward: false,
            shell: false,
            recorded: (0, 0),
            channels: Default::default(),
            resumable: false,
        }
    }

    /// Start the writer task for `file` (created, its header written), whose path
    /// is `path`, encoding with `enc`; `input` is recorded, `forward` records
    /// channels, a `shell` can be joined.
    pub fn start(
        file: File,
        path: PathBuf,
        enc: Encoder,
        strict: bool,
        flags: (bool, bool, bool),
    ) -> Recorder {
        Recorder::start_at(file, path, enc, strict, flags, Duration::ZERO)
    }

    /// [`Recorder::start`] for a recording that began `elapsed` ago (a session a
    /// restarted relay goes on recording): event times go on from there.
    pub fn start_at(
        file: File,
        path: PathBuf,
        enc: Encoder,
        strict: bool,
        (input, forward, shell): (bool, bool, bool),
        elapsed: Duration,
    ) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(QUEUE_BYTES));
        let (fail, failed) = watch::channel(None);
        let origin = Instant::now()
            .checked_sub(elapsed)
            .unwrap_or_else(Instant::now);
        let writer = Writer {
            origin,
            file: Some(file),
            path,
            enc,
            room: room.clone(),
            fail,
            broken: None,
            observers: Vec::new(),
            offsets: None,
        };
        tokio::spawn(writer.run(rx));
        Recorder {
            state: State::Active(Active {
                tx,
                room,
                failed,
                origin,
            }),
            strict,
            input,
            forward,
            shell,
            recorded: (0, 0),
            channels: Default::default(),
            resumable: false,
        }
    }

    /// A handle to join the session, if it is a shell session being recorded.
    pub fn watch(&self) -> Option<Watch> {
        match &self.state {
            State::Active(a) if self.shell => Some(Watch(a.tx.clone())),
            _ => None,
        }
    }

    /// Whether input is recorded.
    pub fn records_input(&self) -> bool {
        self.input
    }

    /// Whether events are being recorded.
    pub fn active(&self) -> bool {
        matches!(self.state, State::Active(_))
    }

    /// Record what an encoded frame from the agent says (see [`super::agent_event`]).
    pub async fn agent_frame(&mut self, bytes: &[u8]) -> Result<(), String> {
        if !self.active() {
            return Ok(());
        }
        let Ok(f) = agent_core::wire::Frame::decode(bytes) else {
            return Ok(());
        };
        let Some(f) = unrecorded(f, &mut self.recorded.0, &mut self.channels.0) else {
            return Ok(());
        };
        let r = match super::agent_event(&f, self.forward) {
            Some(e) => self.record(e).await,
            None => Ok(()),
        };
        self.offsets(&f);
        r
    }

    /// The session is resumable, and `recorded` says what was recorded of it (by
    /// a previous run of the relay): what is recorded is kept beside the file.
    pub fn resumable(&mut self, recorded: (u64, u64)) {
        self.resumable = true;
        self.recorded = recorded;
    }

    /// After a channel-0 `Data` was recorded: the writer keeps the offsets.
    fn offsets(&self, f: &agent_core::wire::Frame) {
        if !self.resumable || !matches!(f, agent_core::wire::Frame::Data { ch: 0, .. }) {
            return;
        }
        if let State::Active(a) = &self.state {
            let _ = a.tx.send(Msg::Offsets(self.recorded.0, self.recorded.1));
        }
    }

    /// Record what a frame from the client says (see [`super::client_event`]).
    pub async fn client_frame(&mut self, f: &agent_core::wire::Frame<'_>) -> Result<(), String> {
        if !self.active() {
            return Ok(());
        }
        if let agent_core::wire::Frame::ChannelOpen { ch, .. } = f {
            // A new channel: nothing of it recorded either way.
            self.channels.0.remove(ch);
        }
        let Some(f) = unrecorded(*f, &mut self.recorded.1, &mut self.channels.1) else {
            return Ok(());
        };
        let r = match super::client_event(&f, self.input, self.forward) {
            Some(e) => self.record(e).await,
            None => Ok(()),
        };
        self.offsets(&f);
        r
    }

    /// The session never started: its recording goes.
    pub async fn discard(self) {
        if let State::Active(a) | State::Broken(_, Some(a)) = self.state {
            let (done, removed) = oneshot::channel();
            let _ = a.tx.send(Msg::Discard(done));
            let _ = removed.await;
        }
    }

    /// Record `e`, which happens now. Waits for room in the queue, [`STALL`] at
    /// most. An error (strict mode only) is the reason the session must end.
    pub async fn record(&mut self, e: Event) -> Result<(), String> {
        let State::Active(a) = &mut self.state else {
            return Ok(());
        };
        let at = a.origin.elapsed();
        let broken = a.failed.borrow().clone();
        if let Some(why) = broken {
            return self.broke(why);
        }
        let n = cost(&e).min(QUEUE_BYTES) as u32;
        let room = a.room.clone();
        let permit = match room.clone().try_acquire_many_owned(n) {
            Ok(p) => Ok(p),
            Err(TryAcquireError::NoPermits) => {
                match tokio::time::timeout(STALL, room.acquire_many_owned(n)).await {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(_)) => Err(a.failed.borrow().clone().unwrap_or_default()),
                    Err(_) => Err(format!(
                        "recording failed: the recording fell behind (more than {} MiB waited over {}s to be written)",
                        QUEUE_BYTES >> 20,
                        STALL.as_secs()
                    )),
                }
            }
            Err(TryAcquireError::Closed) => Err(a.failed.borrow().clone().unwrap_or_default()),
        };
        let why = match permit {
            Ok(p) => {
                p.forget();
                // The writer outlives every sender; a send cannot fail while it runs.
                let _ = a.tx.send(Msg::Event(at, e));
                return Ok(());
            }
            Err(why) => why,
        };
        self.broke(why)
    }

    /// The recording broke for `why`: the session's end in strict mode, a warning
    /// and no more recording otherwise (observers are told, joins refused).
    fn broke(&mut self, why: String) -> Result<(), String> {
        if self.strict {
            return Err(why);
        }
        warn!("{why}; the session goes on unrecorded (recordings mode best-effort)");
        let State::Active(a) = std::mem::replace(&mut self.state, State::Off) else {
            return Ok(());
        };
        let _ = a.tx.send(Msg::Broke(why.clone()));
        self.state = State::Broken(why, Some(a));
        Ok(())
    }

    /// Resolves when the writer failed, in strict mode, with the reason the session
    /// must end; never otherwise.
    pub async fn failed(&mut self) -> String {
        match &mut self.state {
            State::Active(a) if self.strict => {
                let why = a
                    .failed
                    .wait_for(Option::is_some)
                    .await
                    .map(|why| why.clone().unwrap_or_default());
                match why {
                    Ok(why) => why,
                    Err(_) => std::future::pending().await,
                }
            }
            _ => std::future::pending().await,
        }
    }

    /// The session ended (for `reason` when the relay ended it): write the last
    /// lines, compress the file and return what the audit event's `recording`
    /// says: `{"file", "sha256"}`, with `"error"` if the recording broke; `None`
    /// when the session was not recorded.
    pub async fn finish(self, reason: Option<&str>) -> Option<Value> {
        let (a, broken) = match self.state {
            State::Off => return None,
            State::Broken(why, None) => return Some(json!({ "error": why })),
            State::Broken(why, Some(a)) => (a, Some(why)),
            State::Active(a) => (a, None),
        };
        let (done, result) = oneshot::channel();
        let at = a.origin.elapsed();
        let _ = a.tx.send(Msg::Finish(at, reason.map(String::from), done));
        let mut v = match result.await {
            Ok(Ok(f)) => json!({ "file": f.file, "sha256": f.sha256 }),
            Ok(Err(why)) => json!({ "error": why }),
            Err(_) => json!({ "error": "recording failed: the writer stopped" }),
        };
        if let Some(why) = broken {
            v["error"] = why.into();
        }
        Some(v)
    }
}

/// The writer task's side.
struct Writer {
    /// When the recording started: event times count from it.
    origin: Instant,
    /// `None` once it broke or was handed to a blocking write that never came back.
    file: Option<File>,
    path: PathBuf,
    enc: Encoder,
    room: Arc<Semaphore>,
    fail: watch::Sender<Option<String>>,
    broken: Option<String>,
    /// Those who joined the session, fed each output and resize.
    observers: Vec<mpsc::Sender<Seen>>,
    /// Offsets to keep beside the file once what came before them is written.
    offsets: Option<(u64, u64)>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        let mut last_write = Instant::now() - WRITE_EVERY;
        loop {
            if rx.recv_many(&mut batch, 1024).await == 0 {
                // The stream task went away without finishing (it panicked, or the
                // relay is stopping): keep what was written, compressed.
                let at = self.origin.elapsed();
                self.enc
                    .finish(at, Some("the relay stopped serving it"), &mut buf);
                self.write(&mut buf).await;
                if let Err(e) = self.finalize().await {
                    warn!("{e}");
                }
                return;
            }
            // Let a chatty session's frames gather into one write.
            let since = last_write.elapsed();
            let urgent = batch.iter().any(Msg::urgent);
            if since < WRITE_EVERY && !urgent {
                // Gather until the tick, but not past the session's end (or a join
                // or discard): a session that ends waits for its recording, and its
                // user for that (a 20-byte exec ended 100 ms late).
                let tick = tokio::time::sleep(WRITE_EVERY - since);
                tokio::pin!(tick);
                loop {
                    tokio::select! {
                        _ = &mut tick => break,
                        m = rx.recv() => {
                            let Some(m) = m else { break };
                            let now = m.urgent();
                            batch.push(m);
                            if now {
                                break;
                            }
                        }
                    }
                }
                while let Ok(m) = rx.try_recv() {
                    batch.push(m);
                }
            }
            let mut released = 0;
            let mut finish = None;
            for m in batch.drain(..) {
                match m {
                    Msg::Offsets(out, input) => self.offsets = Some((out, input)),
                    Msg::Discard(done) => {
                        drop(self.file.take());
                        let _ = std::fs::remove_file(&self.path);
                        let _ = std::fs::remove_file(offsets_path(&self.path));
                        let _ = done.send(());
                        return;
                    }
                    Msg::Event(at, e) => {
                        released += cost(&e).min(QUEUE_BYTES);
                        self.show(&e);
                        if self.broken.is_none() {
                            self.enc.push(at, e, &mut buf);
                        }
                    }
                    Msg::Join(done) if finish.is_some() => {
                        let _ = done.send(Err("the session has ended".into()));
                    }
                    Msg::Join(done) => {
                        // Everything before the join on disk first: the observer
                        // reads it from the file, and is fed only what follows.
                        self.write(&mut buf).await;
                        let _ = done.send(self.join());
                    }
                    Msg::Broke(why) => {
                        if self.broken.is_none() {
                            self.broke(why);
                        }
                    }
                    Msg::Finish(at, reason, done) => {
                        let why = reason.as_deref().unwrap_or("the session ended");
                        self.tell(Seen::End(None, why.to_string()));
                        self.observers.clear();
                        self.enc.finish(at, reason.as_deref(), &mut buf);
                        finish = Some(done);
                    }
                }
            }
            self.write(&mut buf).await;
            last_write = Instant::now();
            self.room.add_permits(released);
            if let Some(done) = finish {
                let result = match self.broken.clone() {
                    Some(why) => Err(why),
                    None => self.finalize().await,
                };
                let _ = done.send(result);
                return;
            }
        }
    }

    /// Append `buf` to the file (and empty it); a failure breaks the recording.
    async fn write(&mut self, buf: &mut Vec<u8>) {
        if buf.is_empty() || self.broken.is_some() {
            buf.clear();
            return;
        }
        let Some(mut file) = self.file.take() else {
            buf.clear();
            return;
        };
        let data = std::mem::take(buf);
        // Then what it records of a resumable session, never ahead of the data.
        let offsets = self
            .offsets
            .take()
            .map(|(o, i)| (offsets_path(&self.path), format!("{o} {i}\n")));
        let done = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&data);
            if let (Ok(()), Some((at, line))) = (&r, offsets) {
                // Whole or not at all: a crash mid-write must not leave it empty.
                let tmp = at.with_extension("at.tmp");
                if std::fs::write(&tmp, line).is_ok() {
                    let _ = std::fs::rename(&tmp, at);
                }
            }
            (file, data, r)
        })
        .await;
        match done {
            Ok((file, mut data, r)) => {
                data.clear();
                *buf = data;
                match r {
                    Ok(()) => self.file = Some(file),
                    Err(e) => self.broke(format!(
                        "recording failed: cannot write {}: {e}",
                        self.path.display()
                    )),
                }
            }
            Err(e) => self.broke(format!("recording failed: the write did not finish: {e}")),
        }
    }

    /// A new observer: the file open for reading, where it ends now, and its feed
    /// (first what the encoder holds back: the start of a cut character).
    fn join(&mut self) -> Result<Joined, String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        self.observers.retain(|o| !o.is_closed());
        if self.observers.len() >= MAX_OBSERVERS {
            return Err(format!("the session already has {MAX_OBSERVERS} observers"));
        }
        let cannot = |e: std::io::Error| format!("cannot read {}: {e}", self.path.display());
        let written = self.file.as_ref().ok_or("the recording has stopped")?;
        let upto = written.metadata().map_err(cannot)?.len();
        let file = File::open(&self.path).map_err(cannot)?;
        let (tx, feed) = mpsc::channel(OBSERVER_QUEUE);
        let held = self.enc.held_output();
        if !held.is_empty() {
            let _ = tx.try_send(Seen::Output(held));
        }
        self.observers.push(tx);
        Ok(Joined { file, upto, feed })
    }

    /// Hand what observers see of `e` to each; one whose queue is full fell behind
    /// and is dropped.
    fn show(&mut self, e: &Event) {
        if self.observers.is_empty() {
            return;
        }
        let seen = match e {
            Event::Output { data, .. } => Seen::Output(data.clone()),
            Event::Resize { cols, rows } => Seen::Resize(*cols, *rows),
            Event::Exit { exit, reason } => {
                Seen::End(Some(*exit), super::format::exit_line(*exit, reason))
            }
            _ => return,
        };
        self.tell(seen);
    }

    fn tell(&mut self, seen: Seen) {
        self.observers.retain(|o| o.try_send(seen.clone()).is_ok());
    }

    fn broke(&mut self, why: String) {
        warn!("{why}");
        // Observers see no more: say why.
        self.tell(Seen::End(None, why.clone()));
        self.observers.clear();
        self.broken = Some(why.clone());
        self.file = None;
        self.fail.send_replace(Some(why));
        // A stream task waiting for room hears of it at once.
        self.room.close();
    }

    /// Compress the file into `PATH.gz` (through a temporary file, renamed when
    /// complete) and remove it; the compressed file's name and SHA-256.
    async fn finalize(&mut self) -> Result<Finished, String> {
        drop(self.file.take());
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || compress(&path))
            .await
            .map_err(|e| format!("recording not compressed: {e}"))?
    }
}

/// A writer that hashes what goes through it.
struct Hashing<W> {
    inner: W,
    hash: ring::digest::Context,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Gzip `path` into `path.gz` and remove `path`; the `.gz` file's name and the
/// SHA-256 of its bytes. On failure `path` stays as it was.
pub fn compress(path: &Path) -> Result<Finished, String> {
    // The session is over: nothing will take it up again.
    let _ = std::fs::remove_file(offsets_path(path));
    let gz = super::gz_path(path);
    let tmp = gz.with_extension("gz.tmp");
    let fail = |what: &str, e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        format!("recording not compressed: {what}: {e}")
    };
    let mut src =
        File::open(path).map_err(|e| fail(&format!("cannot read {}", path.display()), e))?;
    let dst = super::create_private(&tmp)
        .map_err(|e| fail(&format!("cannot create {}", tmp.display()), e))?;
    let hashing = Hashing {
        inner: std::io::BufWriter::new(dst),
        hash: ring::digest::Context::new(&ring::digest::SHA256),
    };
    let mut enc = flate2::write::GzEncoder::new(hashing, flate2::Compression::default());
    let cannot_write = format!("cannot write {}", tmp.display());
    std::io::copy(&mut src, &mut enc).map_err(|e| fail(&cannot_write, e))?;
    let hashing = enc.finish().map_err(|e| fail(&cannot_write, e))?;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|e| fail(&cannot_write, e.into_error()))?;
    file.sync_all().map_err(|e| fail(&cannot_write, e))?;
    std::fs::rename(&tmp, &gz)
        .map_err(|e| fail(&format!("cannot rename to {}", gz.display()), e))?;
    // The compressed file is complete: the plain one can go (a reader that opened
    // it still reads it to the end).
    if let Err(e) = std::fs::remove_file(path) {
        warn!("cannot remove {}: {e}", path.display());
    }
    if let Some(dir) = gz.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let file = gz
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Finished {
        file,
        sha256: crate::secret::hex(hashing.hash.finish().as_ref()),
    })
}

#[cfg(test)]
mod tests;
