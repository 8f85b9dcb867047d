//! One relay connection's loop: the engine (agent-core) fed with what the relay
//! sends, what sessions' tasks report and the timer; what it transmits sent.
//!
//! The engine owns the protocol: every byte a session sends, its flow control, when
//! channels and sessions end. What is here is routing: the engine's events to the
//! sessions' I/O ([`crate::session`]), the tasks' messages ([`Msg`]) to the sessions
//! and the engine, and the answers of work done off the loop (account resolution,
//! key pushes) to the engine.

use std::collections::HashMap;
use std::time::Duration;

use agent_core::session::{Agent, AgentConfig, Event, Failure, SessionHandle};
use agent_core::wire::{self, ErrorCode, Exit, Kind};
use agent_core::Instant;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tracing::{error, info, warn};

use crate::account::{self, RunAs, RunAsError};
use crate::agent::Context;
use crate::connect::RelaySocket;
use crate::identity::Identity;
use crate::output::Engine;
use crate::process::{Input, Msg, Start};
use crate::session::{Session, Work};
use crate::sshkey::{self, KeyPush};

/// The most a channel's input window grows to (it starts at 64 KiB).
pub const MAX_INPUT_WINDOW: u32 = 1 << 20;

/// How a connection ended.
pub(crate) struct Outcome {
    /// The relay accepted the agent (the activation code, if any, is spent).
    pub(crate) authenticated: bool,
    /// Why it ended, for the log.
    pub(crate) reason: String,
}

type Sink = futures_util::stream::SplitSink<RelaySocket, Message>;

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
    /// Act on a running session's I/O, if it is still running.
    fn with(&mut self, h: SessionHandle, f: impl FnOnce(&mut Session)) {
        if let Some(s) = self.sessions.get_mut(&h) {
            f(s);
        }
    }

    fn now(&self) -> Instant {
        Instant(self.origin.elapsed().as_millis() as u64)
    }

    /// Send everything the engine has to send, handing it more output as room
    /// frees, then forget the sessions and channels it is done with.
    async fn flush(&mut self, sink: &mut Sink) -> Result<(), String> {
        let mut sent = false;
        loop {
            for (&h, s) in self.sessions.iter_mut() {
                s.pump(&mut self.engine, h);
            }
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
            s.forget_closed(engine);
            engine.is_live(h)
        });
        if sent {
            sink.flush().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event<'_>) -> Option<Failure> {
        match ev {
            Event::Challenge { nonce } => {
                let (id, account) = (self.identity, &self.ctx.default_account);
                let (key, sign) = (id.public_key(), |m: &[u8]| id.sign(m));
                let answer =
                    self.engine
                        .answer_challenge(nonce, key, sign, self.activation, account);
                if let Err(e) = answer {
                    return Some(Failure::Auth(e));
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
                let data = Input::Data(data.to_vec());
                self.with(channel.session(), |s| s.input(channel, data))
            }
            Event::Eof { channel } => {
                self.with(channel.session(), |s| s.input(channel, Input::Eof))
            }
            Event::ChannelOpen {
                channel,
                host,
                port,
            } => {
                let (policy, tx) = (self.ctx.policy.clone(), self.tx.clone());
                self.with(channel.session(), |s| {
                    s.dial(channel, host, port, policy, tx)
                })
            }
            Event::ChannelClose { channel } => {
                self.with(channel.session(), |s| s.drop_channel(channel));
                let _ = self.engine.close_channel(channel, "closed by the client");
            }
            Event::Resize {
                session: h,
                cols,
                rows,
            } => self.with(h, |s| s.input(h.main(), Input::Resize(cols, rows))),
            Event::Signal { session: h, signal } => self.with(h, |s| s.signal(signal)),
            Event::Terminate { session: h } => {
                self.end(h, ErrorCode::TERMINATED, "peer asked to end the session")
            }
            Event::Abort { session: h, error } => {
                warn!(sid = h.sid(), "session aborted: {error}");
                self.end(h, error.code(), &format!("protocol violation: {error}"));
            }
            ev @ Event::PeerError { message, .. } => {
                error!("relay refused this agent: {message}");
                return Failure::of(&ev);
            }
            Event::ConnectionLost => return Some(Failure::Lost),
        }
        None
    }

    /// The peer ended a session: one still waiting for its account never starts
    /// (refused with `code`), a running one is stopped.
    fn end(&mut self, session: SessionHandle, code: ErrorCode, why: &str) {
        if self.starting.remove(&session).is_some() {
            let _ = self.engine.reject(session, code, why);
        } else if let Some(s) = self.sessions.get_mut(&session) {
            tracing::debug!(sid = session.sid(), "terminating: {why}");
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
            Kind::Exec { argv } => match Start::exec(argv.0) {
                Ok(start) => start,
                Err(refused) => return self.started(session, Err(refused), ""),
            },
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
        let spawned = match resolved {
            Ok(run_as) => {
                let (profile, tx) = (&self.ctx.accounts.profile, self.tx.clone());
                let spawned = start.spawn(session, &run_as, profile, tx);
                return self.started(session, spawned.map(Work::Process), &run_as.name);
            }
            Err(e) => Err((e.code(), e.to_string())),
        };
        self.started(session, spawned, "");
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
                match &work {
                    Work::Process(p) => info!(sid, pgid = p.pgid, account, "session started"),
                    Work::Forward(_) => info!(sid, "forward session started"),
                }
                let mut s = Session::new(session, work);
                if self.engine.accept(session).is_err() {
                    // Ended by the peer while it started: stop it again at once.
                    s.stop();
                    let why = "ended before it started";
                    let _ = self.engine.reject(session, ErrorCode::TERMINATED, why);
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
                sshkey::expire_later(path, after);
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
            } => self.with(channel.session(), |s| s.output(channel, stream, data)),
            Msg::OutputEnd { channel } => self.with(channel.session(), |s| s.output_end(channel)),
            Msg::Consumed { channel, n } => {
                let _ = self.engine.consumed(channel, n);
            }
            Msg::Exited { session: h, exit } => self.with(h, |s| s.exited(exit)),
            Msg::Dialed { channel, result } => match self.sessions.get_mut(&channel.session()) {
                Some(s) => s.dialed(&mut self.engine, channel, result),
                None => {
                    if let Ok(c) = result {
                        c.abort(); // the session went away meanwhile
                    }
                }
            },
            Msg::ChannelFailed { channel, error } => {
                if let Some(s) = self.sessions.get_mut(&channel.session()) {
                    s.drop_channel(channel);
                    let _ = self.engine.close_channel(channel, &error);
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

/// Serve one relay connection until it ends.
pub(crate) async fn serve(
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
            if let Some(f) = conn.on_event(ev) {
                break f.to_string();
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
                        if let Some(f) = conn.on_event(ev) {
                            break f.to_string();
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = conn.flush(&mut sink).await; // the Error frame
                        break Failure::Protocol(e).to_string();
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
