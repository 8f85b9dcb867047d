//! What outlives a relay connection: the engine (agent-core) with its sessions,
//! their I/O ([`crate::session`]) and the work started for them off the loop
//! (account resolution, key pushes). Made once when the agent starts; each
//! connection ([`crate::driver::serve`]) borrows it, and between connections
//! [`AgentState::idle`] keeps its sessions going.
//!
//! The engine owns the protocol: every byte a session sends, its flow control, when
//! channels and sessions end, and which sessions a lost link ends (docs/protocol.md
//! §8: a resumable session is held, its process running and its output kept in the
//! engine's buffer while there is room; any other ends at once). What is here is
//! routing: the engine's events to the sessions' I/O, the tasks' messages ([`Msg`])
//! to the sessions and the engine, and the answers of work done off the loop to the
//! engine. Without a connection nothing is transmitted: only a live socket gets
//! [`AgentState::poll_transmit`].

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use agent_core::session::{Agent, AgentConfig, Event, SessionHandle, UseError};
use agent_core::wire::{self, ErrorCode, Exit, Kind};
use agent_core::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::account::{self, RunAs, RunAsError};
use crate::agent::Context;
use crate::output::Engine;
use crate::process::{Input, Msg, Start};
use crate::session::{Session, Work};
use crate::sshkey::{self, KeyPush};

/// What [`account::resolve`] answers, for a session.
type Resolved = (SessionHandle, Result<RunAs, RunAsError>);

/// The engine and the sessions it runs, across relay connections.
pub(crate) struct AgentState<'a> {
    pub(crate) engine: Box<Engine>,
    pub(crate) ctx: &'a Context,
    sessions: HashMap<SessionHandle, Session>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// `ssh-key` sessions whose file work runs on a blocking thread.
    pushes: JoinSet<(SessionHandle, KeyPush)>,
    /// Shell and exec sessions waiting for their account.
    starting: HashMap<SessionHandle, Start>,
    /// Their account resolutions, on blocking threads: a slow or hung `useradd` holds
    /// up only the sessions waiting for it.
    resolving: JoinSet<Resolved>,
    /// The engine's clock starts here; one clock for every connection, so that it
    /// never goes back (a held session's hold counts on it).
    origin: std::time::Instant,
    out: Vec<u8>,
}

impl<'a> AgentState<'a> {
    /// An engine with `config` and no sessions; it has no connection until
    /// [`AgentState::connected`].
    pub(crate) fn new(ctx: &'a Context, config: AgentConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        AgentState {
            engine: Box::new(Agent::new(config, Instant(0))),
            ctx,
            sessions: HashMap::new(),
            tx,
            rx,
            pushes: JoinSet::new(),
            starting: HashMap::new(),
            resolving: JoinSet::new(),
            origin: std::time::Instant::now(),
            out: vec![0u8; wire::DEFAULT_MAX_FRAME as usize],
        }
    }

    pub(crate) fn now(&self) -> Instant {
        Instant(self.origin.elapsed().as_millis() as u64)
    }

    /// A new socket to the relay is up: its handshake starts now (the engine's timer
    /// for it), the engine's `Hello` first. The engine's connection begins again even
    /// if [`AgentState::disconnected`] began it when the last one ended: its handshake
    /// timer may have gone off meanwhile, and what was queued since for no link is not
    /// for this one. A held session stays held from when it was first cut.
    pub(crate) fn connected(&mut self) {
        let now = self.now();
        self.engine.reconnect(now);
    }

    /// The relay connection is gone: the engine keeps the resumable sessions, held,
    /// and ends every other one, stopped now rather than when a connection comes back.
    pub(crate) fn disconnected(&mut self) {
        let now = self.now();
        self.engine.reconnect(now);
        self.settle();
    }

    /// Keep the sessions going while there is no relay connection, until `until` is
    /// done: output goes into the engine while it has room, ends and exits are told
    /// to it, and a session whose hold is over is stopped. Nothing is transmitted.
    pub(crate) async fn idle<F: Future>(&mut self, until: F) -> F::Output {
        tokio::pin!(until);
        loop {
            self.settle();
            tokio::select! {
                out = &mut until => return out,
                () = self.step() => {}
            }
        }
    }

    /// Without a connection: act on the engine's events (a session it ended), hand it
    /// the output that fits, forget the sessions it is done with.
    fn settle(&mut self) {
        while let Some(ev) = self.engine.poll_event() {
            if let Some(ev) = self.on_event(ev) {
                // Only the handshake timer of a connection not made yet.
                debug!("no relay connection: {ev:?}");
            }
        }
        self.pump();
        self.forget_ended();
    }

    /// When the engine's timer goes off.
    fn deadline(&self) -> std::time::Instant {
        self.engine
            .poll_timeout()
            .map(|t| self.origin + Duration::from_millis(t.0))
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(3600))
    }

    /// Wait for the next thing that is not the relay's (a task's message, work done on
    /// a blocking thread, the engine's timer) and act on it. Cancel-safe: nothing is
    /// taken until it is acted on.
    pub(crate) async fn step(&mut self) {
        let deadline = self.deadline();
        tokio::select! {
            Some(m) = self.rx.recv() => {
                self.on_msg(m);
                // Take whatever else is ready, so output is batched.
                while let Ok(m) = self.rx.try_recv() {
                    self.on_msg(m);
                }
            }
            Some(done) = self.pushes.join_next(), if !self.pushes.is_empty() => {
                if let Ok((session, result)) = done {
                    self.pushed(session, result);
                }
            }
            Some(done) = self.resolving.join_next(), if !self.resolving.is_empty() => {
                if let Ok((session, resolved)) = done {
                    self.resolved(session, resolved);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = self.now();
                self.engine.handle_timeout(now);
            }
        }
    }

    /// Hand the engine the sessions' output as its buffers have room, and their ends.
    pub(crate) fn pump(&mut self) {
        for (&h, s) in self.sessions.iter_mut() {
            s.pump(&mut self.engine, h);
        }
    }

    /// The next frame to send, on a live socket only.
    pub(crate) fn poll_transmit(&mut self) -> Result<Option<&[u8]>, UseError> {
        let now = self.now();
        let n = self.engine.poll_transmit(now, &mut self.out)?;
        Ok(n.map(|n| &self.out[..n]))
    }

    /// Forget the sessions and channels the engine is done with.
    pub(crate) fn forget_ended(&mut self) {
        let engine = &self.engine;
        self.sessions.retain(|&h, s| {
            s.forget_closed(engine);
            engine.is_live(h)
        });
    }

    /// Act on a running session's I/O, if it is still running.
    fn with(&mut self, h: SessionHandle, f: impl FnOnce(&mut Session)) {
        if let Some(s) = self.sessions.get_mut(&h) {
            f(s);
        }
    }

    /// Act on an event of a session; one of the connection's (its handshake, its end)
    /// is handed back.
    pub(crate) fn on_event<'e>(&mut self, ev: Event<'e>) -> Option<Event<'e>> {
        match ev {
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
            ev => return Some(ev),
        }
        None
    }

    /// The peer ended a session (or the engine did, its link gone): one still waiting
    /// for its account never starts (refused with `code`), a running one is stopped.
    fn end(&mut self, session: SessionHandle, code: ErrorCode, why: &str) {
        if self.starting.remove(&session).is_some() {
            let _ = self.engine.reject(session, code, why);
        } else if let Some(s) = self.sessions.get_mut(&session) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use agent_core::wire::{Bytes, Frame, Hello, Stream};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::account::AccountConfig;
    use crate::policy::DestPolicy;
    use crate::process::Process;
    use crate::sshkey::KeyConfig;

    const SHELL: Kind<'static> = Kind::Shell {
        term: "xterm",
        cols: 80,
        rows: 24,
    };

    fn context() -> Context {
        Context {
            policy: Arc::new(DestPolicy::default()),
            keys: KeyConfig::default(),
            accounts: Arc::new(AccountConfig::default()),
            default_account: "tester".into(),
        }
    }

    /// A process that is not there: process group 0 names none, so stopping it
    /// signals nothing; its queue space is closed when it is stopped.
    fn process() -> (Process, Arc<Semaphore>) {
        let space = Arc::new(Semaphore::new(1 << 20));
        let (input, _) = mpsc::unbounded_channel();
        let p = Process {
            pgid: 0,
            input,
            space: space.clone(),
        };
        (p, space)
    }

    /// A frame from the relay; an `Open`'s session is returned.
    fn relay(state: &mut AgentState<'_>, frame: Frame<'_>) -> Option<SessionHandle> {
        let mut buf = [0u8; 256];
        let n = frame.encode(&mut buf).unwrap();
        let now = state.now();
        match state.engine.handle_frame(now, &buf[..n]).unwrap() {
            Some(Event::Open { session, .. }) => Some(session),
            _ => None,
        }
    }

    /// Send what the engine has, as on a live socket.
    fn transmit(state: &mut AgentState<'_>) {
        state.pump();
        while state.poll_transmit().unwrap().is_some() {}
        state.forget_ended();
    }

    fn handshake(state: &mut AgentState<'_>) {
        transmit(state);
        let hello = Hello {
            version: agent_core::PROTOCOL_VERSION,
            max_frame: 32 * 1024,
            max_sessions: 0,
            features: 0,
        };
        relay(state, Frame::Hello(hello));
        let nonce = [7u8; 32];
        relay(
            state,
            Frame::Challenge {
                nonce: Bytes(&nonce),
            },
        );
        let answer = state
            .engine
            .answer_challenge(&nonce, [0; 32], |_| [0; 64], "", "tester");
        answer.unwrap();
        transmit(state);
        relay(state, Frame::AuthOk { agent_id: "a" });
        assert!(state.engine.is_ready());
    }

    /// The relay opens session `sid` (resumable, held 60 s, if `hold`); it runs `work`.
    fn open(
        state: &mut AgentState<'_>,
        sid: u32,
        kind: Kind<'_>,
        hold: bool,
        work: Work,
    ) -> SessionHandle {
        if hold {
            let token = "";
            relay(
                state,
                Frame::Resumable {
                    sid,
                    hold: 60,
                    token,
                },
            );
        }
        let (window, account) = (64 * 1024, "");
        let open = Frame::Open {
            sid,
            window,
            kind,
            account,
        };
        let h = relay(state, open).expect("the engine takes the session");
        state.started(h, Ok(work), "tester");
        h
    }

    fn output(state: &mut AgentState<'_>, h: SessionHandle, data: &[u8]) {
        let (channel, stream, data) = (h.main(), Stream::OUT, data.to_vec());
        state.on_msg(Msg::Output {
            channel,
            stream,
            data,
        });
    }

    #[tokio::test]
    async fn a_lost_link_holds_resumable_sessions_for_their_hold_and_stops_the_others_at_once() {
        let ctx = context();
        let mut state = AgentState::new(&ctx, crate::driver::engine_config());
        state.connected();
        handshake(&mut state);
        let (p, held_space) = process();
        let held = open(&mut state, 1, SHELL, true, Work::Process(p));
        let (p, plain_space) = process();
        let plain = open(&mut state, 2, SHELL, false, Work::Process(p));
        let forward = open(
            &mut state,
            3,
            Kind::Forward,
            false,
            Work::Forward(HashMap::new()),
        );
        output(&mut state, held, b"before");
        transmit(&mut state); // the Accepts, and the output (not acknowledged)

        // Cut: what cannot be held is stopped now, not when a connection comes back.
        state.disconnected();
        assert!(
            plain_space.is_closed(),
            "a session that is not resumable runs on"
        );
        assert!(!state.engine.is_live(forward) && !state.sessions.contains_key(&forward));
        assert!(!held_space.is_closed(), "the resumable session was stopped");
        assert!(state.engine.is_live(held));
        // The stopped process is reaped: the session is forgotten.
        let exit = Exit::Signal(1);
        state.on_msg(Msg::Exited {
            session: plain,
            exit,
        });
        state.settle();
        assert!(!state.engine.is_live(plain) && !state.sessions.contains_key(&plain));

        // Away, the held session's output goes on into the engine, kept for the resume.
        let room = state.engine.send_room(held.main());
        output(&mut state, held, b"after");
        state.settle();
        assert_eq!(state.engine.send_room(held.main()), room - 5);

        // A new socket: the engine's `Hello` is the first thing sent on it.
        state.connected();
        let first = state.poll_transmit().unwrap().expect("a Hello");
        assert!(matches!(Frame::decode(first), Ok(Frame::Hello(_))));

        // Cut again, and the hold (counted from the first cut) passes while away.
        state.disconnected();
        assert!(!held_space.is_closed());
        let later = state.origin.checked_sub(Duration::from_secs(61));
        state.origin = later.expect("the machine is up for a minute");
        state.step().await; // the engine's timer
        state.settle();
        assert!(held_space.is_closed(), "the held session outlived its hold");
        state.on_msg(Msg::Exited {
            session: held,
            exit,
        });
        state.settle();
        assert!(state.sessions.is_empty());
        assert_eq!(state.engine.session_count(), 0);
    }
}
