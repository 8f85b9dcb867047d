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

/// Output of one channel waiting for credit.
struct Out {
    /// Incarnation of the channel id; messages of an older one are ignored.
    token: u64,
    queue: VecDeque<(Stream, Vec<u8>, usize)>,
    /// Queue space shared with the task that reads the output.
    space: Arc<Semaphore>,
    /// The source ended (connection FIN); `Eof` follows the queued output.
    ended: bool,
    eof_sent: bool,
    /// The peer half-closed its direction.
    peer_eof: bool,
}

impl Out {
    fn new(token: u64, space: Arc<Semaphore>) -> Self {
        Out {
            token,
            queue: VecDeque::new(),
            space,
            ended: false,
            eof_sent: false,
            peer_eof: false,
        }
    }
    fn drop_queue(&mut self) {
        let queued: usize = self.queue.drain(..).map(|(_, d, off)| d.len() - off).sum();
        self.space.add_permits(queued);
    }
}

/// A forward channel: connecting, or connected; with its incarnation token.
enum Chan {
    Dialing(AbortHandle, u64),
    Connected(TcpChannel, u64),
}

impl Chan {
    fn abort(&self) {
        match self {
            Chan::Dialing(h, _) => h.abort(),
            Chan::Connected(c, _) => c.abort(),
        }
    }
    fn token(&self) -> u64 {
        match self {
            Chan::Dialing(_, t) | Chan::Connected(_, t) => *t,
        }
    }
}

/// What a session runs.
enum Work {
    Process(Process),
    Forward(HashMap<u16, Chan>),
}

/// A running session and its queued output per channel.
struct Session {
    work: Work,
    outs: HashMap<u16, Out>,
    exit: Option<Exit>,
    terminating: bool,
    /// Set when the peer broke the protocol: the session closes as `Aborted(code)`
    /// with this reason, whatever its process did when it was stopped.
    aborted: Option<(ErrorCode, String)>,
}

impl Session {
    fn input(&self, ch: u16, input: Input) {
        match &self.work {
            Work::Process(p) if ch == 0 => {
                let _ = p.input.send(input);
            }
            Work::Forward(chans) => {
                if let Some(Chan::Connected(c, _)) = chans.get(&ch) {
                    let _ = c.input.send(input);
                }
            }
            _ => {}
        }
    }

    fn stop(&mut self) {
        self.terminating = true;
        for out in self.outs.values_mut() {
            out.drop_queue();
        }
        match &mut self.work {
            Work::Process(p) => p.terminate(),
            Work::Forward(chans) => {
                for (_, c) in chans.drain() {
                    c.abort();
                }
                self.outs.clear();
                // A forward session has no process to wait for.
                self.exit = Some(Exit::Aborted(ErrorCode::TERMINATED));
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

/// A shell or exec session whose account is being resolved (and the default account
/// perhaps created) on a blocking thread.
struct Starting {
    /// Matches the resolution's answer: a session ended meanwhile and a new one under
    /// the same `sid` must not take the old one's account.
    token: u64,
    start: Start,
}

/// What [`account::resolve`] answers, for the session `sid` of incarnation `token`.
type Resolved = (u32, u64, Result<RunAs, RunAsError>);

struct Conn<'a> {
    engine: Agent<MAX_SESSIONS, MAX_CHANNELS>,
    sessions: HashMap<u32, Session>,
    tx: mpsc::UnboundedSender<Msg>,
    identity: &'a Identity,
    activation: &'a str,
    /// Where a pending activation code is kept; removed once the relay accepts us.
    code_file: &'a std::path::Path,
    ctx: &'a Context,
    /// Incarnation counter for forward channels and starting sessions.
    next_token: u64,
    /// `ssh-key` sessions whose file work runs on a blocking thread.
    pushes: JoinSet<(u32, KeyPush)>,
    /// Shell and exec sessions waiting for their account.
    starting: HashMap<u32, Starting>,
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

    /// Send everything the engine and the output queues have to send.
    async fn flush(&mut self, sink: &mut Sink) -> Result<(), String> {
        let mut sent = false;
        loop {
            let now = self.now();
            while let Some(n) = self.engine.poll_transmit(now, &mut self.out) {
                feed(sink, &self.out[..n]).await?;
                sent = true;
            }
            let mut progressed = false;
            let mut finished = Vec::new();
            for (&sid, s) in self.sessions.iter_mut() {
                let mut closed = Vec::new();
                for (&ch, out) in s.outs.iter_mut() {
                    while let Some((stream, data, off)) = out.queue.front_mut() {
                        match self.engine.send_data(
                            now,
                            sid,
                            ch,
                            *stream,
                            &data[*off..],
                            &mut self.out,
                        ) {
                            Ok((0, _)) => break,
                            Ok((n, len)) => {
                                feed(sink, &self.out[..len]).await?;
                                sent = true;
                                progressed = true;
                                *off += n;
                                out.space.add_permits(n);
                                if *off == data.len() {
                                    out.queue.pop_front();
                                }
                            }
                            Err(e) => {
                                debug!(sid, ch, "cannot send yet: {e}");
                                break;
                            }
                        }
                    }
                    if out.queue.is_empty() && out.ended && !out.eof_sent {
                        self.engine.eof(sid, ch);
                        out.eof_sent = true;
                        progressed = true;
                    }
                    if out.eof_sent && out.peer_eof {
                        closed.push(ch);
                    }
                }
                // Both directions of a connection are done: close the channel. The
                // writer task finishes delivering what it holds, then closes the socket.
                for ch in closed {
                    s.outs.remove(&ch);
                    if let Work::Forward(chans) = &mut s.work {
                        chans.remove(&ch);
                    }
                    self.engine.close_channel(sid, ch, "");
                    progressed = true;
                }
                let drained = s.outs.get(&0).is_none_or(|o| o.queue.is_empty());
                if let (Some(exit), true) = (s.exit, drained) {
                    finished.push((sid, exit));
                }
            }
            for (sid, exit) in finished {
                let (exit, reason) = match self.sessions.remove(&sid) {
                    Some(Session {
                        aborted: Some((code, reason)),
                        ..
                    }) => (Exit::Aborted(code), reason),
                    Some(s) if s.terminating => (exit, "terminated".to_string()),
                    _ => (exit, String::new()),
                };
                self.engine.eof(sid, 0);
                self.engine.close(sid, exit, &reason);
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
            Event::Open { sid, kind, account } => self.open(sid, kind, account),
            Event::Data { sid, ch, data } => {
                if let Some(s) = self.sessions.get(&sid) {
                    s.input(ch, Input::Data(data.to_vec()));
                }
            }
            Event::Eof { sid, ch } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.input(ch, Input::Eof);
                    if let Some(out) = s.outs.get_mut(&ch) {
                        out.peer_eof = true;
                    }
                }
            }
            Event::ChannelOpen {
                sid,
                ch,
                host,
                port,
            } => {
                if let Some(Session {
                    work: Work::Forward(chans),
                    ..
                }) = self.sessions.get_mut(&sid)
                {
                    debug!(sid, ch, "connecting to {host}:{port}");
                    self.next_token += 1;
                    let token = self.next_token;
                    let h = forward::dial(
                        sid,
                        ch,
                        token,
                        host.to_string(),
                        port,
                        self.ctx.policy.clone(),
                        self.tx.clone(),
                    );
                    chans.insert(ch, Chan::Dialing(h, token));
                }
            }
            Event::ChannelClose { sid, ch } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if let Work::Forward(chans) = &mut s.work {
                        if let Some(c) = chans.remove(&ch) {
                            c.abort();
                        }
                    }
                    if let Some(mut out) = s.outs.remove(&ch) {
                        out.drop_queue();
                    }
                }
                self.engine.close_channel(sid, ch, "closed by the client");
            }
            Event::Resize { sid, cols, rows } => {
                if let Some(s) = self.sessions.get(&sid) {
                    s.input(0, Input::Resize(cols, rows));
                }
            }
            Event::Signal { sid, signal } => {
                if let Some(Session {
                    work: Work::Process(p),
                    ..
                }) = self.sessions.get(&sid)
                {
                    p.signal(signal as i32);
                }
            }
            Event::Terminate { sid } => {
                if !self.cancel_start(sid, ErrorCode::TERMINATED, "ended before it started") {
                    self.terminate(sid, "peer asked to end the session");
                }
            }
            Event::Abort { sid, error } => {
                warn!(sid, "session aborted: {error}");
                let code = match error {
                    agent_core::ProtocolError::FlowControl { .. }
                    | agent_core::ProtocolError::CreditOverflow { .. } => ErrorCode::FLOW_CONTROL,
                    _ => ErrorCode::PROTOCOL,
                };
                let why = format!("protocol violation: {error}");
                if self.cancel_start(sid, code, &why) {
                    return None;
                }
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.aborted = Some((code, why));
                }
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

    /// End a session still waiting for its account: it never starts. Whether it was one.
    fn cancel_start(&mut self, sid: u32, code: ErrorCode, why: &str) -> bool {
        if self.starting.remove(&sid).is_none() {
            return false;
        }
        debug!(sid, "ended while its account was being resolved: {why}");
        self.engine.reject(sid, code, why);
        true
    }

    fn terminate(&mut self, sid: u32, why: &str) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            debug!(sid, "terminating: {why}");
            s.stop();
        }
    }

    fn open(&mut self, sid: u32, kind: Kind<'_>, account: &str) {
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
                    return self.started(sid, Err(refused), "");
                }
                Start::Exec { args }
            }
            Kind::Forward => return self.started(sid, Ok(Work::Forward(HashMap::new())), ""),
            Kind::SshKey { user, key, ttl } => {
                let (keys, user, key) = (self.ctx.keys.clone(), user.to_string(), key.to_string());
                self.pushes
                    .spawn_blocking(move || (sid, sshkey::push(&keys, &user, &key, ttl)));
                return;
            }
        };
        self.next_token += 1;
        let token = self.next_token;
        let (accounts, account) = (self.ctx.accounts.clone(), account.to_string());
        self.resolving.spawn_blocking(move || {
            // A panic must still answer the session, never leave it waiting.
            let resolved = std::panic::catch_unwind(|| account::resolve(&accounts, &account))
                .unwrap_or_else(|_| Err(RunAsError::Internal(account.clone())));
            (sid, token, resolved)
        });
        self.starting.insert(sid, Starting { token, start });
    }

    /// A session's account is resolved: start it as that account, or refuse it.
    fn resolved(&mut self, sid: u32, token: u64, resolved: Result<RunAs, RunAsError>) {
        if self.starting.get(&sid).is_none_or(|s| s.token != token) {
            return; // ended meanwhile (and already refused)
        }
        let Some(Starting { start, .. }) = self.starting.remove(&sid) else {
            return;
        };
        let run_as = match resolved {
            Ok(run_as) => run_as,
            Err(e) => return self.started(sid, Err((e.code(), e.to_string())), ""),
        };
        let tx = self.tx.clone();
        let spawned = match start {
            Start::Shell { term, cols, rows } => {
                let profile = &self.ctx.accounts.profile;
                process::spawn_shell(sid, &term, cols, rows, &run_as, profile, tx)
                    .map(Work::Process)
                    .map_err(|e| (ErrorCode::SPAWN, format!("cannot start a shell: {e}")))
            }
            Start::Exec { args } => {
                let name = args[0].to_string_lossy().into_owned();
                process::spawn_exec(sid, args, &run_as, tx)
                    .map(Work::Process)
                    .map_err(|e| (ErrorCode::SPAWN, format!("cannot run '{name}': {e}")))
            }
        };
        self.started(sid, spawned, &run_as.name);
    }

    /// Answer an `Open`: the session runs (as `account`, for a process), or is refused.
    fn started(&mut self, sid: u32, spawned: Result<Work, (ErrorCode, String)>, account: &str) {
        match spawned {
            Ok(work) => {
                let mut outs = HashMap::new();
                if let Work::Process(p) = &work {
                    info!(sid, pgid = p.pgid, account, "session started");
                    outs.insert(0, Out::new(0, p.space.clone()));
                } else {
                    info!(sid, "forward session started");
                }
                self.sessions.insert(
                    sid,
                    Session {
                        work,
                        outs,
                        exit: None,
                        terminating: false,
                        aborted: None,
                    },
                );
                self.engine.accept(sid);
            }
            Err((code, reason)) => {
                warn!(sid, "{reason}");
                self.engine.reject(sid, code, &reason);
            }
        }
    }

    /// An `ssh-key` session's file work is done: answer it.
    fn pushed(&mut self, sid: u32, result: KeyPush) {
        match result {
            Ok((msg, path, after)) => {
                info!(sid, "pushed an SSH key: {msg}");
                // The key also carries expiry-time=; this removes the line.
                tokio::spawn(async move {
                    tokio::time::sleep(after + Duration::from_secs(1)).await;
                    let _ = tokio::task::spawn_blocking(move || sshkey::sweep(&path)).await;
                });
                self.engine.accept(sid);
                self.engine.close(sid, Exit::Code(0), &msg);
            }
            Err((code, msg)) => {
                warn!(sid, "ssh key refused: {msg}");
                self.engine.reject(sid, code, &msg);
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Output {
                sid,
                ch,
                token,
                stream,
                data,
            } => {
                // Gone, terminating or a stale incarnation: the output is not wanted
                // (its queue space was closed or went with the channel).
                let out = self
                    .sessions
                    .get_mut(&sid)
                    .filter(|s| !s.terminating)
                    .and_then(|s| s.outs.get_mut(&ch))
                    .filter(|o| o.token == token);
                if let Some(out) = out {
                    // Merge small reads into the previous chunk of the same stream, so
                    // trickling output does not turn into a flood of tiny frames.
                    match out.queue.back_mut() {
                        Some((st, d, off))
                            if *st == stream
                                && *off == 0
                                && d.len() + data.len() <= process::CHUNK =>
                        {
                            d.extend_from_slice(&data)
                        }
                        _ => out.queue.push_back((stream, data, 0)),
                    }
                }
            }
            Msg::OutputEnd { sid, ch, token } => {
                if let Some(out) = self
                    .sessions
                    .get_mut(&sid)
                    .and_then(|s| s.outs.get_mut(&ch))
                    .filter(|o| o.token == token)
                {
                    out.ended = true;
                }
            }
            Msg::Consumed { sid, ch, token, n } => {
                let current = self
                    .sessions
                    .get(&sid)
                    .and_then(|s| s.outs.get(&ch))
                    .is_some_and(|o| o.token == token);
                if current {
                    self.engine.consumed(sid, ch, n);
                }
            }
            Msg::Exited { sid, exit } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.exit = Some(exit);
                }
            }
            Msg::Dialed {
                sid,
                ch,
                token,
                result,
            } => {
                let wanted = self.sessions.get_mut(&sid).and_then(|s| match &mut s.work {
                    Work::Forward(chans)
                        if matches!(chans.get(&ch), Some(Chan::Dialing(_, t)) if *t == token) =>
                    {
                        Some(s)
                    }
                    _ => None,
                });
                let Some(s) = wanted else {
                    // The session or the channel went away meanwhile.
                    if let Ok(c) = result {
                        c.abort();
                    }
                    return;
                };
                let Work::Forward(chans) = &mut s.work else {
                    return;
                };
                match result {
                    Ok(c) => {
                        s.outs.insert(ch, Out::new(token, c.space.clone()));
                        chans.insert(ch, Chan::Connected(c, token));
                        self.engine.accept_channel(sid, ch);
                    }
                    Err((code, reason)) => {
                        debug!(sid, ch, "{reason}");
                        chans.remove(&ch);
                        self.engine.reject_channel(sid, ch, code, &reason);
                    }
                }
            }
            Msg::ChannelFailed {
                sid,
                ch,
                token,
                error,
            } => {
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                let Work::Forward(chans) = &mut s.work else {
                    return;
                };
                if chans.get(&ch).map(Chan::token) != Some(token) {
                    return; // an older incarnation, already closed
                }
                if let Some(c) = chans.remove(&ch) {
                    c.abort();
                }
                if let Some(mut out) = s.outs.remove(&ch) {
                    out.drop_queue();
                }
                self.engine.close_channel(sid, ch, &error);
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
    let mut conn = Conn {
        engine: Agent::new(
            AgentConfig {
                features: wire::features::SHELL
                    | wire::features::EXEC
                    | wire::features::FORWARD
                    | wire::features::SSH_KEY
                    | wire::features::RUN_AS,
                ..AgentConfig::default()
            },
            Instant(0),
        ),
        sessions: HashMap::new(),
        tx,
        identity,
        activation,
        code_file,
        ctx,
        next_token: 0,
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
                if let Ok((sid, result)) = done {
                    conn.pushed(sid, result);
                }
            }
            Some(done) = conn.resolving.join_next(), if !conn.resolving.is_empty() => {
                if let Ok((sid, token, resolved)) = done {
                    conn.resolved(sid, token, resolved);
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
