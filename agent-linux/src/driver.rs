//! The connection loop: dial, drive the core engine, run sessions, reconnect.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use agent_core::session::{auth_message, Agent, AgentConfig, Event};
use agent_core::wire::{self, ErrorCode, Exit, Kind, Stream};
use agent_core::Instant;
use futures_util::{SinkExt, StreamExt};
use ring::rand::SecureRandom;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, info, warn};

use crate::connect::{RelaySocket, RelayTarget};
use crate::identity::Identity;
use crate::process::{self, Input, Msg, Process};
use crate::MAX_SESSIONS;

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `wss://host:port` of the relay.
    pub relay: String,
    /// CA certificate(s) that sign the relay's certificate.
    pub ca: PathBuf,
    /// Where the identity key lives.
    pub state_dir: PathBuf,
    /// One-time activation code (first run).
    pub activate: Option<String>,
}

/// Why the agent cannot start at all (a reconnect would not help).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity key could not be loaded or made.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The relay URL or CA is unusable.
    #[error(transparent)]
    Target(#[from] crate::connect::ConnectError),
    /// First run without an activation code.
    #[error("no identity in {0}: run once with --activate CODE (from `sesame-relay agent add`)")]
    NotActivated(String),
}

/// Run forever: connect, serve, and reconnect with jittered exponential backoff.
pub async fn run(opts: AgentOptions) -> Result<(), StartError> {
    let target = RelayTarget::new(&opts.relay, &opts.ca)?;
    // A code given at install time waits in the state directory until it is used.
    let code_file = opts.state_dir.join(crate::install::ACTIVATION_FILE);
    let mut activation = match &opts.activate {
        Some(code) => code.trim().to_string(),
        None => std::fs::read_to_string(&code_file)
            .map(|c| c.trim().to_string())
            .unwrap_or_default(),
    };
    let identity_exists = opts.state_dir.join("identity.pk8").exists();
    if activation.is_empty() && !identity_exists {
        return Err(StartError::NotActivated(
            opts.state_dir.display().to_string(),
        ));
    }
    let identity = Identity::load_or_create(&opts.state_dir)?;
    let mut backoff = Backoff::new();
    loop {
        match target.connect().await {
            Ok(ws) => {
                let outcome = serve(ws, &identity, &activation, &code_file).await;
                if outcome.authenticated {
                    backoff.reset();
                    // The key is registered now; the code is spent.
                    activation.clear();
                }
                warn!("disconnected from {}: {}", target.addr(), outcome.reason);
            }
            Err(e) => warn!("{e}"),
        }
        let wait = backoff.next();
        info!("reconnecting in {:.1} s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
    }
}

/// Exponential backoff from 0.5 s to 30 s, each wait drawn in [d/2, d].
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);
    fn new() -> Self {
        Backoff { next: Self::MIN }
    }
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(Self::MAX);
        let mut r = [0u8; 4];
        let _ = ring::rand::SystemRandom::new().fill(&mut r);
        let frac = u32::from_le_bytes(r) as f64 / u32::MAX as f64;
        d.mul_f64(0.5 + 0.5 * frac)
    }
}

struct Outcome {
    authenticated: bool,
    reason: String,
}

/// A running session: its process and its queued output awaiting credit.
struct Session {
    process: Process,
    queue: VecDeque<(Stream, Vec<u8>, usize)>,
    exit: Option<Exit>,
    terminating: bool,
}

impl Session {
    fn drop_queue(&mut self) {
        let queued: usize = self.queue.drain(..).map(|(_, d, off)| d.len() - off).sum();
        self.process.space.add_permits(queued);
    }
}

type Sink = futures_util::stream::SplitSink<RelaySocket, Message>;

struct Conn<'a> {
    engine: Agent<MAX_SESSIONS>,
    sessions: HashMap<u32, Session>,
    tx: mpsc::UnboundedSender<Msg>,
    identity: &'a Identity,
    activation: &'a str,
    /// Where a pending activation code is kept; removed once the relay accepts us.
    code_file: &'a std::path::Path,
    origin: std::time::Instant,
    out: Vec<u8>,
    authenticated: bool,
}

impl Conn<'_> {
    fn now(&self) -> Instant {
        Instant(self.origin.elapsed().as_millis() as u64)
    }

    /// Send everything the engine and the session queues have to send.
    async fn flush(&mut self, sink: &mut Sink) -> Result<(), String> {
        let mut sent = false;
        loop {
            let now = self.now();
            while let Some(n) = self.engine.poll_transmit(now, &mut self.out) {
                feed(sink, &self.out[..n]).await?;
                sent = true;
            }
            // Output waiting for credit, then sessions whose process ended and whose
            // output is all out.
            let mut progressed = false;
            let mut finished = Vec::new();
            for (&sid, s) in self.sessions.iter_mut() {
                while let Some((stream, data, off)) = s.queue.front_mut() {
                    match self
                        .engine
                        .send_data(sid, *stream, &data[*off..], &mut self.out)
                    {
                        Ok((0, _)) => break,
                        Ok((n, len)) => {
                            feed(sink, &self.out[..len]).await?;
                            sent = true;
                            progressed = true;
                            *off += n;
                            s.process.space.add_permits(n);
                            if *off == data.len() {
                                s.queue.pop_front();
                            }
                        }
                        Err(e) => {
                            debug!(sid, "cannot send yet: {e}");
                            break;
                        }
                    }
                }
                if s.queue.is_empty() {
                    if let Some(exit) = s.exit {
                        finished.push((sid, exit));
                    }
                }
            }
            for (sid, exit) in finished {
                let s = self.sessions.remove(&sid);
                let reason = if s.is_some_and(|s| s.terminating) {
                    "terminated"
                } else {
                    ""
                };
                self.engine.eof(sid);
                self.engine.close(sid, exit, reason);
                progressed = true;
                debug!(sid, ?exit, "session ended");
            }
            if !progressed {
                break;
            }
        }
        if sent {
            sink.flush().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event<'_>) -> Option<String> {
        match ev {
            Event::Challenge { nonce } => {
                let mut buf = [0u8; 64];
                if let Some(msg) = auth_message(nonce, &mut buf) {
                    let sig = self.identity.sign(msg);
                    self.engine
                        .authenticate(self.identity.public_key(), sig, self.activation);
                }
            }
            Event::Authenticated { agent_id } => {
                self.authenticated = true;
                if !self.activation.is_empty() {
                    let _ = std::fs::remove_file(self.code_file);
                }
                info!("connected to the relay as agent {agent_id}");
            }
            Event::Open { sid, kind } => self.open(sid, kind),
            Event::Data { sid, data } => {
                if let Some(s) = self.sessions.get(&sid) {
                    let _ = s.process.input.send(Input::Data(data.to_vec()));
                }
            }
            Event::Eof { sid } => {
                if let Some(s) = self.sessions.get(&sid) {
                    let _ = s.process.input.send(Input::Eof);
                }
            }
            Event::Resize { sid, cols, rows } => {
                if let Some(s) = self.sessions.get(&sid) {
                    let _ = s.process.input.send(Input::Resize(cols, rows));
                }
            }
            Event::Signal { sid, signal } => {
                if let Some(s) = self.sessions.get(&sid) {
                    s.process.signal(signal as i32);
                }
            }
            Event::Terminate { sid } => self.terminate(sid, "peer asked to end the session"),
            Event::Abort { sid, error } => {
                warn!(sid, "session aborted: {error}");
                self.terminate(sid, "protocol violation");
            }
            Event::PeerError { code, message } => {
                error!("relay refused this agent: {message}");
                return Some(format!("relay error {}: {message}", code.0));
            }
            Event::ConnectionLost => return Some("relay stopped answering".into()),
        }
        None
    }

    fn terminate(&mut self, sid: u32, why: &str) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            debug!(sid, "terminating: {why}");
            s.terminating = true;
            s.drop_queue();
            s.process.terminate();
        }
    }

    fn open(&mut self, sid: u32, kind: Kind<'_>) {
        let spawned = match kind {
            Kind::Shell { term, cols, rows } => {
                process::spawn_shell(sid, term, cols, rows, self.tx.clone())
                    .map_err(|e| format!("cannot start a shell: {e}"))
            }
            Kind::Exec { argv } => {
                let args: Vec<OsString> = wire::argv_iter(argv.0)
                    .map(|a| OsString::from_vec(a.to_vec()))
                    .collect();
                if !wire::argv_valid(argv.0) || args.is_empty() || args[0].is_empty() {
                    Err("exec needs a command".to_string())
                } else {
                    let name = args[0].to_string_lossy().into_owned();
                    process::spawn_exec(sid, args, self.tx.clone())
                        .map_err(|e| format!("cannot run '{name}': {e}"))
                }
            }
        };
        match spawned {
            Ok(process) => {
                info!(sid, pgid = process.pgid, "session started");
                self.sessions.insert(
                    sid,
                    Session {
                        process,
                        queue: VecDeque::new(),
                        exit: None,
                        terminating: false,
                    },
                );
                self.engine.accept(sid);
            }
            Err(reason) => {
                warn!(sid, "{reason}");
                self.engine.reject(sid, ErrorCode::SPAWN, &reason);
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Output { sid, stream, data } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if s.terminating {
                        s.process.space.add_permits(data.len());
                    } else {
                        s.queue.push_back((stream, data, 0));
                    }
                }
            }
            Msg::Consumed { sid, n } => self.engine.consumed(sid, n),
            Msg::Exited { sid, exit } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.exit = Some(exit);
                }
            }
        }
    }
}

async fn feed(sink: &mut Sink, bytes: &[u8]) -> Result<(), String> {
    sink.feed(Message::Binary(bytes.to_vec().into()))
        .await
        .map_err(|e| e.to_string())
}

async fn serve(
    ws: RelaySocket,
    identity: &Identity,
    activation: &str,
    code_file: &std::path::Path,
) -> Outcome {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let origin = std::time::Instant::now();
    let mut conn = Conn {
        engine: Agent::new(AgentConfig::default(), Instant(0)),
        sessions: HashMap::new(),
        tx,
        identity,
        activation,
        code_file,
        origin,
        out: vec![0u8; wire::DEFAULT_MAX_FRAME as usize],
        authenticated: false,
    };
    let reason = loop {
        if let Err(e) = conn.flush(&mut sink).await {
            break format!("send failed: {e}");
        }
        if let Some(ev) = conn.engine.poll_event() {
            if let Some(r) = conn.on_event(ev) {
                break r;
            }
            continue;
        }
        if conn.engine.is_closed() {
            break "protocol error".into();
        }
        let deadline = conn
            .engine
            .poll_timeout()
            .map(|t| origin + Duration::from_millis(t.0))
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            m = stream.next() => {
                let bytes = match m {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => break "relay closed the connection".into(),
                    Some(Err(e)) => break format!("read failed: {e}"),
                    Some(Ok(_)) => continue,
                };
                let now = conn.now();
                match conn.engine.handle_frame(now, &bytes) {
                    Ok(Some(ev)) => {
                        // The event borrows `bytes`; handle it before the next read.
                        let ev: Event<'_> = ev;
                        if let Some(r) = conn.on_event(ev) {
                            break r;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = conn.flush(&mut sink).await; // the Error frame
                        break format!("relay broke the protocol: {e}");
                    }
                }
            }
            m = rx.recv() => {
                if let Some(m) = m {
                    conn.on_msg(m);
                    // Take whatever else is ready, so output is batched.
                    while let Ok(m) = rx.try_recv() {
                        conn.on_msg(m);
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = conn.now();
                conn.engine.handle_timeout(now);
            }
        }
    };
    // Sessions do not outlive the connection (resume is future work).
    for (_, mut s) in conn.sessions.drain() {
        s.drop_queue();
        s.process.terminate();
    }
    let _ = sink.close().await;
    Outcome {
        authenticated: conn.authenticated,
        reason,
    }
}
