//! A client's session stream: the first frame is `Open`; the relay checks it against
//! the session that the token was issued for, reserves a session id on the agent's
//! connection and from then on routes frames both ways.

use std::sync::Arc;
use std::time::Duration;

use agent_core::wire::{self, ErrorCode, Exit, Frame, Kind};
use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::agent_link::encode;
use crate::api::AppState;
use crate::audit::Event;
use crate::hub::session::{self, human};
use crate::hub::{AgentHandle, Route, Routed};
use crate::live::Owner;
use crate::policy::{self, Action, Circumstances, Resource};
use crate::record::{self, KindMeta, Recorder};
use crate::store::{SessionRow, SessionSpec};

pub mod revive;
mod run;

/// The client must send `Open` within this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a forward channel's decision may wait for its audit row (the channel
/// is refused after that, and the session's other channels are not held up more).
const AUDIT_WAIT: Duration = Duration::from_secs(5);

/// The API's name of a session kind.
pub fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Shell { .. } => "shell",
        Kind::Exec { .. } => "exec",
        Kind::Forward => "forward",
        Kind::SshKey { .. } => "ssh-key",
    }
}

/// Why an `Open` asks for something else than the session was authorised for:
/// another command, or another SSH user or key lifetime.
fn differs_from_authorised(kind: &Kind, spec: &SessionSpec) -> Option<String> {
    match kind {
        Kind::Exec { argv } => {
            let same = wire::argv_iter(argv.0)
                .map(|a| std::str::from_utf8(a).ok())
                .eq(spec.command.iter().map(|a| Some(a.as_str())));
            (!same).then(|| {
                format!(
                    "the command differs from the one authorised ({})",
                    policy::quote_argv(&spec.command)
                )
            })
        }
        Kind::SshKey { user, ttl, .. } => {
            let same = spec
                .ssh
                .as_ref()
                .is_some_and(|(u, t)| u == user && t == ttl);
            (!same).then(|| "the SSH user or key lifetime differs from the one authorised".into())
        }
        _ => None,
    }
}

/// Decide a forward channel to `host:port`: its canonical host, or the refusal.
/// The decision is in the audit log before the agent hears of the channel; one
/// that cannot be recorded is refused.
async fn authorise_channel(
    state: &AppState,
    user: &crate::store::UserRow,
    target: &crate::policy::Target,
    session: &SessionRow,
    peer: std::net::IpAddr,
    (host, port, ch): (&str, u16, u16),
) -> Result<String, String> {
    let host = policy::canonical_host(host)?;
    let mut c = Circumstances::new(peer);
    c.run_as = session.run_as.clone();
    c.dest = Some((host.clone(), port));
    let r = Resource::Agent(target);
    let d = state.decide(user, Action::Forward, &r, &c);
    let event = Event::new(user.name.clone(), "forward.open", session.id.clone())
        .from(peer)
        .detail(serde_json::json!({
            "channel": ch,
            "host": host,
            "port": port,
            "allow": d.allow,
            "policies": d.policies,
            "policy_version": d.version,
        }));
    match tokio::time::timeout(AUDIT_WAIT, state.audit.record(event)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => {
            // The row may still be written later: the refusal follows it.
            let refused = Event::new(user.name.clone(), "forward.open", session.id.clone())
                .from(peer)
                .detail(serde_json::json!({
                    "channel": ch,
                    "host": host,
                    "port": port,
                    "allow": false,
                    "reason": "the audit log did not answer in time",
                }));
            let audit = state.audit.clone();
            tokio::spawn(async move { audit.record(refused).await });
            return Err("the audit log is not answering: the channel is refused".into());
        }
    }
    if d.allow {
        Ok(host)
    } else {
        Err(policy::refusal(&user.name, Action::Forward, &r, &c, &d))
    }
}

/// Serve one client stream until the session ends or the client leaves; `notices`:
/// the client asked to be told when someone joins or leaves (`Notice` frames).
pub async fn serve(
    socket: WebSocket,
    state: AppState,
    session: SessionRow,
    agent: Arc<AgentHandle>,
    (peer, notices, resume): (std::net::IpAddr, bool, bool),
) {
    let (mut sink, mut stream) = socket.split();

    // 1. The Open frame.
    let first = tokio::time::timeout(OPEN_TIMEOUT, stream.next()).await;
    let msg = match first {
        Ok(Some(Ok(Message::Binary(b)))) => b,
        _ => {
            let _ = state
                .store
                .end_session(&session.id, "client sent no Open")
                .await;
            return;
        }
    };
    let open = Frame::decode_bounded(&msg, wire::DEFAULT_MAX_FRAME as usize);
    let (client_sid, refusal) = match open {
        Ok(Frame::Open { sid, kind, .. }) => {
            let bad_argv = matches!(kind, Kind::Exec { argv } if !wire::argv_valid(argv.0));
            if kind_name(&kind) != session.kind {
                (
                    sid,
                    Some(format!(
                        "this session was created for '{}', not '{}'",
                        session.kind,
                        kind_name(&kind)
                    )),
                )
            } else if bad_argv {
                (sid, Some("exec needs a command".to_string()))
            } else if let Some(why) = differs_from_authorised(&kind, &session.spec) {
                (sid, Some(why))
            } else {
                (sid, None)
            }
        }
        Ok(_) => (0, Some("the first frame on a stream must be Open".into())),
        Err(e) => (0, Some(format!("malformed Open frame: {e}"))),
    };
    if let Some(reason) = refusal {
        refuse(
            &mut sink,
            &state,
            &session.id,
            client_sid,
            ErrorCode::PROTOCOL,
            &reason,
        )
        .await;
        return;
    }

    // Who and where, for the decisions on forward channels; and the session's
    // place among the live ones, so that a revoked key or a lock ends it.
    let (user, target) = match (
        state.store.user(&session.user_id).await,
        state.store.agent(&session.agent_id).await,
    ) {
        (Ok(Some(u)), Ok(Some(a))) => (u, crate::api::target(&a)),
        _ => {
            let reason = "the session's user or target is gone";
            refuse(
                &mut sink,
                &state,
                &session.id,
                client_sid,
                ErrorCode::INTERNAL,
                reason,
            )
            .await;
            return;
        }
    };
    let mut registration = state.live.register(
        &session.id,
        Owner {
            user_id: session.user_id.clone(),
            key_id: session.key_id.clone(),
            web: session.web_session.clone(),
            agent_id: session.agent_id.clone(),
        },
    );
    // A lock or revocation between the token's check and the registration above.
    // A store that cannot say counts as a refusal (fail closed).
    let key_refused = match &session.key_id {
        Some(k) => match state.store.key_refusal(k).await {
            Ok(r) => r.map(|e| e.to_string()),
            Err(e) => Some(format!("cannot check the API key: {e}")),
        },
        None => None,
    };
    let locked = match state
        .locked(&session.user_id, Some(&session.agent_id))
        .await
    {
        Ok(l) => l,
        Err(_) => Some("cannot check for locks (store error)".to_string()),
    };
    // Asked for through a browser session that has logged out since (its logout
    // ended what was live then; this one was not yet).
    let logged_out = match &session.web_session {
        Some(w) => match state.store.web_session_live(w).await {
            Ok(true) => None,
            Ok(false) => Some("the browser session logged out".to_string()),
            Err(_) => Some("cannot check the browser session (store error)".to_string()),
        },
        None => None,
    };
    if let Some(why) = key_refused.or(locked).or(logged_out) {
        refuse(
            &mut sink,
            &state,
            &session.id,
            client_sid,
            ErrorCode::DENIED,
            &why,
        )
        .await;
        return;
    }
    // In the audit log before the agent hears of it (a key push with its key: a
    // public key is no secret, and any fingerprint can be made from it).
    let mut detail = serde_json::json!({
        "agent": target.name,
        "kind": session.kind,
        "run_as": session.run_as,
    });
    if let Ok(Frame::Open {
        kind: Kind::SshKey {
            user: account,
            key,
            ttl,
        },
        ..
    }) = Frame::decode(&msg)
    {
        detail["ssh_user"] = account.into();
        detail["key"] = key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
            .into();
        detail["ttl"] = ttl.into();
    }
    // The recording, made before the agent hears of the session: one that cannot
    // be made refuses it (strict mode).
    let mut recorder = match recording_meta(&msg, &session, &user.name, &target.name) {
        // (Input is asked of the policies only for a session that is recorded.)
        Some(meta) => match state
            .recordings
            .start(meta, input_recorded(&state, &user, &target, &session, peer))
            .await
        {
            Ok(r) => r,
            Err(why) => {
                refuse(
                    &mut sink,
                    &state,
                    &session.id,
                    client_sid,
                    ErrorCode::INTERNAL,
                    &why,
                )
                .await;
                return;
            }
        },
        None => Recorder::off(),
    };
    detail["recorded"] = recorder.active().into();
    detail["input_recorded"] = (recorder.active() && recorder.records_input()).into();
    let start = Event::new(user.name.clone(), "session.start", session.id.clone())
        .from(peer)
        .detail(detail);
    if let Err(e) = state.audit.record(start).await {
        recorder.discard().await;
        let why = e.to_string();
        refuse(
            &mut sink,
            &state,
            &session.id,
            client_sid,
            ErrorCode::INTERNAL,
            &why,
        )
        .await;
        return;
    }

    // 2. Reserve a slot on the agent, within its capacity and the relay's limit.
    let limits = &state.config.limits;
    let (tx, rx) = mpsc::unbounded_channel::<Routed>();
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Resumable when the client and the agent can (a shell, an exec or a forward).
    // The window the policies asked for, else the relay's.
    let window = match session.spec.resume_secs {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
        None => limits.resume_window,
    };
    let hold = window.filter(|_| {
        resume
            && agent.features & wire::features::RESUME != 0
            && matches!(session.kind.as_str(), "shell" | "exec" | "forward")
    });
    let (link, link_changes) = mpsc::unbounded_channel();
    let route = Route {
        client_sid,
        session_id: session.id.clone(),
        tx,
        queued: queued.clone(),
        link: hold.map(|_| link),
    };
    let agent_sid = match agent.open_route(route, limits.max_sessions) {
        Ok(sid) => sid,
        Err(limit) => {
            recorder.discard().await;
            let reason = limit.to_string();
            let code = ErrorCode::SESSION_LIMIT;
            refuse(&mut sink, &state, &session.id, client_sid, code, &reason).await;
            return;
        }
    };
    // From here on the session's decisions are the hub's (`hub::session`); this task
    // moves bytes, awaits the policies, the recording and the audit log, and bounds
    // every write.
    // Its resume token, and what a restarted relay needs to take it up again (its
    // recording's offsets too).
    let token = hold.map(|_| registration.resumable());
    if hold.is_some() {
        recorder.resumable((0, 0));
    }
    // On record once the agent accepted it (only then is it resumable).
    let persist = hold
        .zip(token.as_ref())
        .map(|(hold, t)| crate::store::Resumable {
            hash: t.hash(),
            prev_hash: None,
            hold,
            agent_sid,
            client_sid,
            // (Read back from when its token was used.)
            started_at: 0,
            away_since: None,
        });
    let config = session::Config {
        client_sid,
        agent_sid,
        agent_max_frame: agent.max_frame,
        rate: session.rate,
        idle: limits.idle_timeout,
        max: limits.max_duration,
        notices,
        resume: hold.map(|h| {
            (
                h,
                token
                    .as_ref()
                    .map(|t| t.expose().to_string())
                    .unwrap_or_default(),
            )
        }),
    };
    let open = Frame::decode(&msg).expect("decoded above");
    let mut hub = match session::Session::new(config, &open, &session.run_as, now()) {
        Ok(hub) => hub,
        Err(reason) => {
            state.hub.forget_route(&agent.id, agent_sid);
            recorder.discard().await;
            let code = ErrorCode::PROTOCOL;
            refuse(&mut sink, &state, &session.id, client_sid, code, &reason).await;
            return;
        }
    };
    while let Some(frame) = hub.poll_agent(now()) {
        // No session timers yet: only the stall bound applies.
        let no_timers = Instant::now() + 2 * WRITE_STALL;
        if let Err(failed) =
            write_by(no_timers, &mut registration.ended, agent.tx.send(frame)).await
        {
            state.hub.forget_route(&agent.id, agent_sid);
            recorder.discard().await;
            let reason = match failed {
                WriteFailed::Gone => "the agent disconnected".to_string(),
                stalled => stalled.agent(String::new()),
            };
            let code = ErrorCode::AGENT_GONE;
            refuse(&mut sink, &state, &session.id, client_sid, code, &reason).await;
            return;
        }
    }
    info!(session = %session.id, agent = %agent.name, kind = %session.kind, rate = ?session.rate, "session started");
    // Started: from now on it can be joined.
    if let Some(watch) = recorder.watch() {
        registration.joinable(watch);
    }

    // 3. Route until the session ends.
    let running = run::Running {
        state,
        session,
        user,
        target,
        peer,
        client_sid,
        agent_sid,
        agent: Some(agent),
        client: Some((sink, stream)),
        hub,
        recorder,
        registration,
        rx,
        queued,
        link_changes,
        persist,
    };
    run::route(running).await;
}

/// The relay's clock for the hub: tokio's, which tests may pause.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Record a frame from the client on its way to the agent; `Some`: the recording
/// broke (strict mode), which ends the session.
async fn record_client_frame(recorder: &mut Recorder, bytes: &[u8]) -> Option<String> {
    if !recorder.active() {
        // Not decoded again for nothing (the hub read it once already).
        return None;
    }
    let frame = Frame::decode(bytes).ok()?;
    recorder.client_frame(&frame).await.err()
}

/// Whether a policy asks for the session's input to be recorded (`record_input`).
fn input_recorded(
    state: &AppState,
    user: &crate::store::UserRow,
    target: &crate::policy::Target,
    session: &SessionRow,
    peer: std::net::IpAddr,
) -> bool {
    let owner = user.principal();
    let r = Resource::Session {
        id: &session.id,
        owner: &owner,
        agent: target,
        kind: &session.kind,
        run_as: &session.run_as,
    };
    let c = Circumstances::new(peer);
    state.decide(user, Action::RecordInput, &r, &c).allow
}

/// A forward channel's close into the audit log, off the session's path (the
/// channel is over either way; a row that cannot be written is logged).
fn channel_closed(
    state: &AppState,
    user: &str,
    session: &str,
    peer: std::net::IpAddr,
    detail: serde_json::Value,
) -> tokio::task::JoinHandle<()> {
    let event = Event::new(user.to_string(), "forward.close", session.to_string())
        .from(peer)
        .detail(detail);
    let audit = state.audit.clone();
    tokio::spawn(async move {
        if let Err(e) = audit.record(event).await {
            warn!("forward channel close not in the audit log: {e}");
        }
    })
}

/// The recording's facts for a session whose `Open` is `open`; `None` for a kind
/// that is not recorded (SSH key pushes: the audit log has them).
fn recording_meta(
    open: &[u8],
    session: &SessionRow,
    user: &str,
    target: &str,
) -> Option<record::Meta> {
    let Ok(Frame::Open { kind, .. }) = Frame::decode(open) else {
        return None;
    };
    let kind = match kind {
        Kind::Shell { term, cols, rows } => KindMeta::Shell {
            term: term.into(),
            cols,
            rows,
        },
        // The argv is the one authorised (checked against the Open above).
        Kind::Exec { .. } => KindMeta::Exec {
            argv: session.spec.command.clone(),
        },
        Kind::Forward => KindMeta::Forward,
        Kind::SshKey { .. } => return None,
    };
    Some(record::Meta {
        session: session.id.clone(),
        target: target.into(),
        user: user.into(),
        account: session.run_as.clone(),
        timestamp: crate::store::unix_now(),
        kind,
    })
}

type ClientSink = futures_util::stream::SplitSink<WebSocket, Message>;

/// Refuse a session before it starts: tell the client why and record it.
async fn refuse(
    sink: &mut ClientSink,
    state: &AppState,
    session_id: &str,
    sid: u32,
    code: ErrorCode,
    reason: &str,
) {
    let reject = encode(&Frame::Reject { sid, code, reason });
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Binary(reject.into()))).await;
    let _ = state.store.end_session(session_id, reason).await;
}

/// Tell the client why its session ends (best effort and bounded: it may be gone
/// already, or not reading).
async fn close_client(sink: &mut ClientSink, sid: u32, code: ErrorCode, reason: &str) {
    let close = encode(&Frame::Close {
        sid,
        exit: Exit::Aborted(code),
        reason,
    });
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Binary(close.into()))).await;
}

/// How long one write to a peer may wait for it to read before the session ends.
const WRITE_STALL: Duration = Duration::from_secs(60);
/// How long the goodbyes to a client (its `Close`, the WebSocket close) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why a bounded write failed.
enum WriteFailed {
    /// The peer is gone.
    Gone,
    /// The session's timers fired while the peer was not reading.
    Timers,
    /// The peer read nothing for [`WRITE_STALL`].
    Stalled,
    /// The session was ended (a revoked key, a lock), for this reason.
    Ended(String),
}

/// A session's end, when something (a revoked key, a lock) ends it: see `live`.
type Ended = tokio::sync::watch::Receiver<Option<String>>;

/// Run the write `send`, giving up at `timers`, [`WRITE_STALL`] from now, or when
/// the session is `ended`. A write that can finish at once always does (the write
/// is polled first).
async fn write_by<E>(
    timers: Instant,
    ended: &mut Ended,
    send: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), WriteFailed> {
    use futures_util::FutureExt;
    tokio::pin!(send);
    // Most writes finish at once: no timers to arm for them (a hot path).
    if let Some(r) = (&mut send).now_or_never() {
        return r.map_err(|_| WriteFailed::Gone);
    }
    let stall = Instant::now() + WRITE_STALL;
    tokio::select! {
        biased;
        r = send => r.map_err(|_| WriteFailed::Gone),
        _ = tokio::time::sleep_until(timers) => Err(WriteFailed::Timers),
        _ = tokio::time::sleep_until(stall) => Err(WriteFailed::Stalled),
        why = ended.wait_for(Option::is_some) => Err(WriteFailed::Ended(
            why.map(|w| w.clone().unwrap_or_default()).unwrap_or_default(),
        )),
    }
}

impl WriteFailed {
    /// The session's end, for a write to the client; `timer` says why the timers fired.
    fn client(self, timer: String) -> String {
        match self {
            WriteFailed::Gone => "client went away".into(),
            WriteFailed::Timers => format!("{timer} (the client was not reading)"),
            WriteFailed::Stalled => format!("the client read nothing for {}", human(WRITE_STALL)),
            WriteFailed::Ended(why) => why,
        }
    }

    /// The session's end, for a write to the agent.
    fn agent(self, timer: String) -> String {
        match self {
            WriteFailed::Gone => "agent went away".into(),
            WriteFailed::Timers => format!("{timer} (the agent link was not reading)"),
            WriteFailed::Stalled => {
                format!(
                    "the link to the agent took nothing for {}",
                    human(WRITE_STALL)
                )
            }
            WriteFailed::Ended(why) => why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_can_finish_does_after_any_quiet_time() {
        // A session quiet for longer than the stall bound, then a write: it is not
        // mistaken for a stalled peer (nor are timers that are due for it).
        let t0 = Instant::now();
        let (_end, mut ended) = tokio::sync::watch::channel(None);
        tokio::time::advance(WRITE_STALL * 3).await;
        assert!(write_by(t0, &mut ended, async { Ok::<(), ()>(()) })
            .await
            .is_ok());
        assert!(matches!(
            write_by(t0, &mut ended, async { Err::<(), ()>(()) }).await,
            Err(WriteFailed::Gone)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_ends_at_the_timers_or_the_stall_bound() {
        let never = std::future::pending::<Result<(), ()>>;
        let (end, mut ended) = tokio::sync::watch::channel(None);
        let now = Instant::now();
        let soon = now + Duration::from_secs(5);
        assert!(matches!(
            write_by(soon, &mut ended, never()).await,
            Err(WriteFailed::Timers)
        ));
        assert_eq!(Instant::now(), soon);
        let later = Instant::now() + WRITE_STALL * 2;
        assert!(matches!(
            write_by(later, &mut ended, never()).await,
            Err(WriteFailed::Stalled)
        ));
        assert_eq!(Instant::now(), soon + WRITE_STALL);
        // Ending the session ends a blocked write at once.
        let at = Instant::now();
        end.send_replace(Some("key revoked".into()));
        assert!(matches!(
            write_by(later + WRITE_STALL, &mut ended, never()).await,
            Err(WriteFailed::Ended(why)) if why == "key revoked"
        ));
        assert_eq!(Instant::now(), at);
    }
}
