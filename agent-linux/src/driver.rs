//! The connection loop: dial, drive the core engine, run sessions, reconnect.
//!
//! The engine (agent-core) owns the protocol: every byte a session sends, its flow
//! control, when channels and sessions end. What is here is I/O: processes and
//! connections started and stopped, their output handed to the engine as its
//! channel buffers have room, their input written out.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use agent_core::backoff::Backoff;
use agent_core::session::{
    auth_message, Agent, AgentConfig, Buffer, ChannelHandle, Event, SessionHandle,
};
use agent_core::wire::{self, ErrorCode, Exit, Kind, Stream};
use agent_core::Instant;
use futures_util::{SinkExt, StreamExt};
use ring::rand::SecureRandom;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, info, warn};

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};

use crate::account::{self, AccountConfig, RunAs, RunAsError};
use crate::connect::{RelaySocket, RelayTarget};
use crate::forward::{self, TcpChannel};
use crate::identity::Identity;
use crate::policy::DestPolicy;
use crate::process::{self, Input, Msg, Process};
use crate::sshkey::{self, KeyConfig};
use crate::{MAX_CHANNELS, MAX_SESSIONS};

/// What sessions need from the agent's configuration.
struct Context {
    policy: Arc<DestPolicy>,
    keys: KeyConfig,
    accounts: Arc<AccountConfig>,
    /// The account of a session that names none, announced in `Auth`.
    default_account: String,
}

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
    /// Destinations forward sessions may reach.
    pub policy: crate::policy::DestPolicy,
    /// Where pushed SSH keys go (`%h/.ssh/authorized_keys` by default).
    pub authorized_keys: String,
    /// The default account, its sudo, and the shell profile.
    pub accounts: AccountConfig,
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
    /// The default account cannot be named to the relay.
    #[error("the default account '{0}' is not an account name the relay accepts (at most 64 bytes of letters, digits, . _ - @ $, not starting with -)")]
    DefaultAccount(String),
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
    // The relay's policies decide on this account for sessions that name none, so it
    // must be the one they really run as, and it goes to the relay whole.
    let default_account = account::default_name(&opts.accounts);
    if !wire::account_valid(&default_account) || default_account.is_empty() {
        return Err(StartError::DefaultAccount(default_account));
    }
    let identity = Identity::load_or_create(&opts.state_dir)?;
    let ctx = Context {
        policy: Arc::new(opts.policy.clone()),
        keys: KeyConfig {
            pattern: opts.authorized_keys.clone(),
            state_dir: opts.state_dir.clone(),
        },
        accounts: Arc::new(opts.accounts.clone()),
        default_account,
    };
    if rustix::process::geteuid().is_root() {
        let accounts = ctx.accounts.clone();
        tokio::task::spawn_blocking(move || account::sync_sudo(&accounts));
    } else {
        let me = &ctx.default_account;
        info!("not running as root: every session runs as '{me}', other accounts are refused");
        if opts.accounts.default_sudo {
            warn!("--default-account-sudo ignored: the agent does not run as root");
        }
    }
    // Off the runtime thread: the files belong to local users (see `sshkey`).
    let keys = ctx.keys.clone();
    tokio::task::spawn_blocking(move || sshkey::sweep_registered(&keys));
    let mut backoff = Backoff::new();
    let random = || {
        let mut r = [0u8; 4];
        let _ = ring::rand::SystemRandom::new().fill(&mut r);
        u32::from_le_bytes(r)
    };
    loop {
        match target.connect().await {
            Ok(ws) => {
                let outcome = serve(ws, &identity, &activation, &code_file, &ctx).await;
                if outcome.authenticated {
                    backoff.reset();
                    // The key is registered now; the code is spent.
                    activation.clear();
                }
                warn!("disconnected from {}: {}", target.addr(), outcome.reason);
            }
            Err(e) => warn!("{e}"),
        }
        let wait = Duration::from_millis(backoff.next(random()).as_millis());
        info!("reconnecting in {:.1} s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
    }
}

/// A channel's output buffer in the engine: on the heap, made when the channel
/// opens and freed when it closes.
pub struct HeapBuf(Box<[u8]>);

/// Output a channel's buffer in the engine holds (more waits here, bounded by the
/// reader's queue space).
pub const CHANNEL_BUFFER: usize = 64 * 1024;

impl Buffer for HeapBuf {
    fn new() -> Self {
        HeapBuf(vec![0u8; CHANNEL_BUFFER].into_boxed_slice())
    }
}

impl AsRef<[u8]> for HeapBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for HeapBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

type Engine = Agent<MAX_SESSIONS, MAX_CHANNELS, HeapBuf>;

/// The most a channel's input window grows to (it starts at 64 KiB).
pub const MAX_INPUT_WINDOW: u32 = 1 << 20;

struct Outcome {
    authenticated: bool,
    reason: String,
}

/// A channel's output read but not yet taken by the engine (its buffer was full).
struct Pending {
    queue: VecDeque<(Stream, Vec<u8>, usize)>,
    /// Queue space shared with the task that reads the output.
    space: Arc<Semaphore>,
    /// The source ended: `finish` once the queue is empty.
    ended: bool,
}

impl Pending {
    fn new(space: Arc<Semaphore>) -> Self {
        Pending {
            queue: VecDeque::new(),
            space,
            ended: false,
        }
    }
    fn drop_queue(&mut self) {
        let queued: usize = self.queue.drain(..).map(|(_, d, off)| d.len() - off).sum();
        self.space.add_permits(queued);
    }
}

/// A forward channel: connecting, or connected.
enum Chan {
    Dialing(AbortHandle),
    Connected(TcpChannel),
}

impl Chan {
    fn abort(&self) {
        match self {
            Chan::Dialing(h) => h.abort(),
            Chan::Connected(c) => c.abort(),
        }
    }
}

/// What a session runs.
enum Work {
    Process(Process),
    Forward(HashMap<ChannelHandle, Chan>),
}

/// A running session: its work, and output waiting for room in the engine.
struct Session {
    work: Work,
    pending: HashMap<ChannelHandle, Pending>,
    /// The work is over: the engine hears of it once every pending output is in.
    exit: Option<(Exit, &'static str)>,
    /// The driver stopped the work (the peer ended the session).
    stopped: bool,
    /// The process was reaped: its process group id may name another now.
    reaped: bool,
}

impl Session {
    fn input(&self, channel: ChannelHandle, input: Input) {
        match &self.work {
            Work::Process(p) if channel.ch() == 0 => {
                let _ = p.input.send(input);
            }
            Work::Forward(chans) => {
                if let Some(Chan::Connected(c)) = chans.get(&channel) {
                    let _ = c.input.send(input);
                }
            }
            _ => {}
        }
    }

    /// Stop the work: output is no longer wanted; the engine closes the session
    /// once the process is gone (a forward session has none to wait for).
    fn stop(&mut self) {
        self.stopped = true;
        for p in self.pending.values_mut() {
            p.drop_queue();
        }
        self.pending.clear();
        match &mut self.work {
            Work::Process(_) if self.reaped => {}
            Work::Process(p) => p.terminate(),
            Work::Forward(chans) => {
                for (_, c) in chans.drain() {
                    c.abort();
                }
                self.exit = Some((Exit::Aborted(ErrorCode::TERMINATED), "terminated"));
            }
        }
    }
}

type Sink = futures_util::stream::SplitSink<RelaySocket, Message>;

/// What [`sshkey::push`] answers.
type KeyPush = Result<(String, PathBuf, Duration), (ErrorCode, String)>;

/// What a shell or exec session runs once its account is resolved.
enum Start {
    Shell { term: String, cols: u16, rows: u16 },
    Exec { args: Vec<OsString> },
}

/// What [`account::resolve`] answers, for a session.
type Resolved = (SessionHandle, Result<RunAs, RunAsError>);

struct Conn<'a> {
    engine: Box<Engine>,
    sessions: HashMap<SessionHandle, Session>,
    tx: mpsc::UnboundedSender<Msg>,
    identity: &'a Identity,
    activation: &'a str,
    /// Where a pending activation code is kept; removed once the relay accepts us.
    code_file: &'a std::path::Path,
    ctx: &'a Context,
    /// `ssh-key` sessions whose file work runs on a blocking thread.
    pushes: JoinSet<(SessionHandle, KeyPush)>,
    /// Shell and exec sessions waiting for their account.
    starting: HashMap<SessionHandle, Start>,
    /// Their account resolutions, on blocking threads: a slow or hung `useradd` holds
    /// up only the sessions waiting for it.
    resolving: JoinSet<Resolved>,
    origin: std::time::Instant,
    out: Vec<u8>,
    authenticated: bool,
}

impl Conn<'_> {
    fn now(&self) -> Instant {
        Instant(self.origin.elapsed().as_millis() as u64)
    }

    /// Hand pending output to the engine as its buffers have room; tell it of ends
    /// once everything before them is in.
    fn pump(&mut self) {
        for (&h, s) in self.sessions.iter_mut() {
            for (&channel, p) in s.pending.iter_mut() {
                while let Some((stream, data, off)) = p.queue.front_mut() {
                    match self.engine.send_slice(channel, *stream, &data[*off..]) {
                        Ok(0) => break,
                        Ok(n) => {
                            *off += n;
                            p.space.add_permits(n);
                            if *off == data.len() {
                                p.queue.pop_front();
                            }
                        }
                        Err(_) => {
                            // The channel is gone: nobody wants its output.
                            p.drop_queue();
                            p.ended = false;
                        }
                    }
                }
                if p.queue.is_empty() && p.ended {
                    p.ended = false;
                    let _ = self.engine.finish(channel);
                }
            }
            let all_in = s.pending.values().all(|p| p.queue.is_empty());
            if all_in {
                if let Some((exit, why)) = s.exit.take() {
                    if self.engine.exited(h, exit, why).is_ok() {
                        debug!(sid = h.sid(), ?exit, "session ended");
                    }
                    s.pending.clear();
                }
            }
        }
    }

    /// Send everything the engine has to send, handing it more output as room
    /// frees, then forget the sessions and channels it is done with.
    async fn flush(&mut self, sink: &mut Sink) -> Result<(), String> {
        let mut sent = false;
        loop {
            self.pump();
            let now = self.now();
            let mut any = false;
            while let Some(n) = self
                .engine
                .poll_transmit(now, &mut self.out)
                .map_err(|e| e.to_string())?
            {
                feed(sink, &self.out[..n]).await?;
                sent = true;
                any = true;
            }
            if !any {
                break;
            }
        }
        let engine = &self.engine;
        self.sessions.retain(|&h, s| {
            if let Work::Forward(chans) = &mut s.work {
                chans.retain(|&c, _| engine.is_channel_live(c));
                s.pending.retain(|&c, _| engine.is_channel_live(c));
            }
            engine.is_live(h)
        });
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
                    let key = self.identity.public_key();
                    let account = &self.ctx.default_account;
                    if let Err(e) = self.engine.authenticate(key, sig, self.activation, account) {
                        return Some(format!("{e}: '{account}'"));
                    }
                }
            }
            Event::Authenticated { agent_id } => {
                self.authenticated = true;
                if !self.activation.is_empty() {
                    let _ = std::fs::remove_file(self.code_file);
                }
                info!("connected to the relay as agent {agent_id}");
            }
            Event::Open {
                session,
                kind,
                account,
            } => self.open(session, kind, account),
            Event::Data { channel, data } => {
                if let Some(s) = self.sessions.get(&channel.session()) {
                    s.input(channel, Input::Data(data.to_vec()));
                }
            }
            Event::Eof { channel } => {
                if let Some(s) = self.sessions.get(&channel.session()) {
                    s.input(channel, Input::Eof);
                }
            }
            Event::ChannelOpen {
                channel,
                host,
                port,
            } => {
                if let Some(Session {
                    work: Work::Forward(chans),
                    ..
                }) = self.sessions.get_mut(&channel.session())
                {
                    debug!(
                        sid = channel.session().sid(),
                        ch = channel.ch(),
                        "connecting to {host}:{port}"
                    );
                    let (policy, tx) = (self.ctx.policy.clone(), self.tx.clone());
                    let h = forward::dial(channel, host.to_string(), port, policy, tx);
                    chans.insert(channel, Chan::Dialing(h));
                }
            }
            Event::ChannelClose { channel } => {
                if let Some(s) = self.sessions.get_mut(&channel.session()) {
                    if let Work::Forward(chans) = &mut s.work {
                        if let Some(c) = chans.remove(&channel) {
                            c.abort();
                        }
                    }
                    if let Some(mut p) = s.pending.remove(&channel) {
                        p.drop_queue();
                    }
                }
                let _ = self.engine.close_channel(channel, "closed by the client");
            }
            Event::Resize {
                session,
                cols,
                rows,
            } => {
                if let Some(s) = self.sessions.get(&session) {
                    s.input(session.main(), Input::Resize(cols, rows));
                }
            }
            Event::Signal { session, signal } => {
                if let Some(Session {
                    work: Work::Process(p),
                    reaped: false,
                    ..
                }) = self.sessions.get(&session)
                {
                    p.signal(signal as i32);
                }
            }
            Event::Terminate { session } => {
                if !self.cancel_start(session, ErrorCode::TERMINATED, "ended before it started") {
                    self.terminate(session, "peer asked to end the session");
                }
            }
            Event::Abort { session, error } => {
                warn!(sid = session.sid(), "session aborted: {error}");
                let why = format!("protocol violation: {error}");
                if !self.cancel_start(session, error.code(), &why) {
                    self.terminate(session, "protocol violation");
                }
            }
            Event::PeerError { code, message } => {
                error!("relay refused this agent: {message}");
                return Some(format!("relay error {}: {message}", code.0));
            }
            Event::ConnectionLost => return Some("relay stopped answering".into()),
        }
        None
    }

    /// End a session still waiting for its account: it never starts. Whether it was one.
    fn cancel_start(&mut self, session: SessionHandle, code: ErrorCode, why: &str) -> bool {
        if self.starting.remove(&session).is_none() {
            return false;
        }
        debug!(
            sid = session.sid(),
            "ended while its account was being resolved: {why}"
        );
        let _ = self.engine.reject(session, code, why);
        true
    }

    fn terminate(&mut self, session: SessionHandle, why: &str) {
        if let Some(s) = self.sessions.get_mut(&session) {
            debug!(sid = session.sid(), "terminating: {why}");
            s.stop();
        }
    }

    fn open(&mut self, session: SessionHandle, kind: Kind<'_>, account: &str) {
        // Shell and exec sessions run as the account, resolved (and the default one
        // created) before anything is spawned: a refusal spawns nothing. That may block
        // (`useradd`), so it runs on a blocking thread and the session starts in
        // `resolved`. ssh-key sessions name their account in the key request; forward
        // sessions run nothing.
        let start = match kind {
            Kind::Shell { term, cols, rows } => Start::Shell {
                term: term.to_string(),
                cols,
                rows,
            },
            Kind::Exec { argv } => {
                let args: Vec<OsString> = wire::argv_iter(argv.0)
                    .map(|a| OsString::from_vec(a.to_vec()))
                    .collect();
                if !wire::argv_valid(argv.0) || args.is_empty() || args[0].is_empty() {
                    let refused = (ErrorCode::SPAWN, "exec needs a command".to_string());
                    return self.started(session, Err(refused), "");
                }
                Start::Exec { args }
            }
            Kind::Forward => return self.started(session, Ok(Work::Forward(HashMap::new())), ""),
            Kind::SshKey { user, key, ttl } => {
                let (keys, user, key) = (self.ctx.keys.clone(), user.to_string(), key.to_string());
                self.pushes
                    .spawn_blocking(move || (session, sshkey::push(&keys, &user, &key, ttl)));
                return;
            }
        };
        let (accounts, account) = (self.ctx.accounts.clone(), account.to_string());
        self.resolving.spawn_blocking(move || {
            // A panic must still answer the session, never leave it waiting.
            let resolved = std::panic::catch_unwind(|| account::resolve(&accounts, &account))
                .unwrap_or_else(|_| Err(RunAsError::Internal(account.clone())));
            (session, resolved)
        });
        self.starting.insert(session, start);
    }

    /// A session's account is resolved: start it as that account, or refuse it.
    fn resolved(&mut self, session: SessionHandle, resolved: Result<RunAs, RunAsError>) {
        let Some(start) = self.starting.remove(&session) else {
            return; // ended meanwhile (and already refused)
        };
        let run_as = match resolved {
            Ok(run_as) => run_as,
            Err(e) => return self.started(session, Err((e.code(), e.to_string())), ""),
        };
        let tx = self.tx.clone();
        let spawned = match start {
            Start::Shell { term, cols, rows } => {
                let profile = &self.ctx.accounts.profile;
                process::spawn_shell(session, &term, cols, rows, &run_as, profile, tx)
                    .map(Work::Process)
                    .map_err(|e| (ErrorCode::SPAWN, format!("cannot start a shell: {e}")))
            }
            Start::Exec { args } => {
                let name = args[0].to_string_lossy().into_owned();
                process::spawn_exec(session, args, &run_as, tx)
                    .map(Work::Process)
                    .map_err(|e| (ErrorCode::SPAWN, format!("cannot run '{name}': {e}")))
            }
        };
        self.started(session, spawned, &run_as.name);
    }

    /// Answer an `Open`: the session runs (as `account`, for a process), or is refused.
    fn started(
        &mut self,
        session: SessionHandle,
        spawned: Result<Work, (ErrorCode, String)>,
        account: &str,
    ) {
        let sid = session.sid();
        match spawned {
            Ok(work) => {
                let mut pending = HashMap::new();
                if let Work::Process(p) = &work {
                    info!(sid, pgid = p.pgid, account, "session started");
                    pending.insert(session.main(), Pending::new(p.space.clone()));
                } else {
                    info!(sid, "forward session started");
                }
                let mut s = Session {
                    work,
                    pending,
                    exit: None,
                    stopped: false,
                    reaped: false,
                };
                if self.engine.accept(session).is_err() {
                    // Ended by the peer while it started: stop it again at once.
                    s.stop();
                    let _ = self.engine.reject(
                        session,
                        ErrorCode::TERMINATED,
                        "ended before it started",
                    );
                }
                self.sessions.insert(session, s);
            }
            Err((code, reason)) => {
                warn!(sid, "{reason}");
                let _ = self.engine.reject(session, code, &reason);
            }
        }
    }

    /// An `ssh-key` session's file work is done: answer it.
    fn pushed(&mut self, session: SessionHandle, result: KeyPush) {
        match result {
            Ok((msg, path, after)) => {
                info!(sid = session.sid(), "pushed an SSH key: {msg}");
                // The key also carries expiry-time=; this removes the line.
                tokio::spawn(async move {
                    tokio::time::sleep(after + Duration::from_secs(1)).await;
                    let _ = tokio::task::spawn_blocking(move || sshkey::sweep(&path)).await;
                });
                if self.engine.accept(session).is_ok() {
                    let _ = self.engine.exited(session, Exit::Code(0), &msg);
                } else {
                    // Ended by the peer meanwhile: the key is in place (and expires).
                    let why = "ended before it was answered (the key was pushed)";
                    let _ = self.engine.reject(session, ErrorCode::TERMINATED, why);
                }
            }
            Err((code, msg)) => {
                warn!(sid = session.sid(), "ssh key refused: {msg}");
                let _ = self.engine.reject(session, code, &msg);
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Output {
                channel,
                stream,
                data,
            } => {
                // Gone or stopped: the output is not wanted (its queue space was
                // closed, or went with the channel).
                let Some(p) = self
                    .sessions
                    .get_mut(&channel.session())
                    .and_then(|s| s.pending.get_mut(&channel))
                else {
                    return;
                };
                // Merge small reads into the previous chunk of the same stream, so
                // trickling output does not turn into a flood of tiny frames.
                match p.queue.back_mut() {
                    Some((st, d, off))
                        if *st == stream && *off == 0 && d.len() + data.len() <= process::CHUNK =>
                    {
                        d.extend_from_slice(&data)
                    }
                    _ => p.queue.push_back((stream, data, 0)),
                }
            }
            Msg::OutputEnd { channel } => {
                if let Some(p) = self
                    .sessions
                    .get_mut(&channel.session())
                    .and_then(|s| s.pending.get_mut(&channel))
                {
                    p.ended = true;
                }
            }
            Msg::Consumed { channel, n } => {
                let _ = self.engine.consumed(channel, n);
            }
            Msg::Exited { session, exit } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    let why = if s.stopped { "terminated" } else { "" };
                    s.exit = Some((exit, why));
                    s.reaped = true;
                }
            }
            Msg::Dialed { channel, result } => {
                let s = self.sessions.get_mut(&channel.session());
                let Some(Session {
                    work: Work::Forward(chans),
                    pending,
                    ..
                }) = s
                else {
                    if let Ok(c) = result {
                        c.abort(); // the session went away meanwhile
                    }
                    return;
                };
                if !matches!(chans.get(&channel), Some(Chan::Dialing(_))) {
                    if let Ok(c) = result {
                        c.abort(); // the channel went away meanwhile
                    }
                    return;
                }
                match result {
                    Ok(c) => {
                        pending.insert(channel, Pending::new(c.space.clone()));
                        chans.insert(channel, Chan::Connected(c));
                        let _ = self.engine.accept_channel(channel);
                    }
                    Err((code, reason)) => {
                        debug!(sid = channel.session().sid(), ch = channel.ch(), "{reason}");
                        chans.remove(&channel);
                        let _ = self.engine.reject_channel(channel, code, &reason);
                    }
                }
            }
            Msg::ChannelFailed { channel, error } => {
                let Some(s) = self.sessions.get_mut(&channel.session()) else {
                    return;
                };
                if let Work::Forward(chans) = &mut s.work {
                    if let Some(c) = chans.remove(&channel) {
                        c.abort();
                    }
                }
                if let Some(mut p) = s.pending.remove(&channel) {
                    p.drop_queue();
                }
                let _ = self.engine.close_channel(channel, &error);
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
    ctx: &Context,
) -> Outcome {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let origin = std::time::Instant::now();
    let config = AgentConfig {
        features: wire::features::SHELL
            | wire::features::EXEC
            | wire::features::FORWARD
            | wire::features::SSH_KEY
            | wire::features::RUN_AS,
        // A channel's input window grows with the credit returned (an upload through
        // a forward at the bandwidth-delay product); what a client may have in
        // flight, and so queue here, per channel.
        max_window: MAX_INPUT_WINDOW,
        ..AgentConfig::default()
    };
    let mut conn = Conn {
        engine: Box::new(Agent::new(config, Instant(0))),
        sessions: HashMap::new(),
        tx,
        identity,
        activation,
        code_file,
        ctx,
        pushes: JoinSet::new(),
        starting: HashMap::new(),
        resolving: JoinSet::new(),
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
            Some(done) = conn.pushes.join_next(), if !conn.pushes.is_empty() => {
                if let Ok((session, result)) = done {
                    conn.pushed(session, result);
                }
            }
            Some(done) = conn.resolving.join_next(), if !conn.resolving.is_empty() => {
                if let Ok((session, resolved)) = done {
                    conn.resolved(session, resolved);
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
        s.stop();
    }
    let _ = sink.close().await;
    Outcome {
        authenticated: conn.authenticated,
        reason,
    }
}
