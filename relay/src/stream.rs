//! A client's session stream: the first frame is `Open`; the relay checks it against
//! the session that the token was issued for, reserves a session id on the agent's
//! connection and from then on routes frames both ways.

use std::sync::Arc;
use std::time::Duration;

use agent_core::limits::TokenBucket;
use agent_core::wire::{self, ErrorCode, Exit, Frame, Kind, DEFAULT_MAX_FRAME};
use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::agent_link::encode;
use crate::api::AppState;
use crate::audit::Event;
use crate::hub::{AgentHandle, CreditGate, Route, Routed, MAX_WINDOW};
use crate::live::Owner;
use crate::policy::{self, Action, Circumstances, Resource};
use crate::record::{self, KindMeta, Recorder};
use crate::store::{SessionRow, SessionSpec, Traffic};

/// The client must send `Open` within this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a forward channel's decision may wait for its audit row (the channel
/// is refused after that, and the session's other channels are not held up more).
const AUDIT_WAIT: Duration = Duration::from_secs(5);

/// A forward session's open channels, for the audit row of each one's close.
#[derive(Default)]
struct Channels(std::collections::HashMap<u16, Channel>);

struct Channel {
    host: String,
    port: u16,
    opened: Instant,
    to_dest: u64,
    from_dest: u64,
}

impl Channels {
    fn opened(&mut self, ch: u16, host: &str, port: u16) {
        let c = Channel {
            host: host.into(),
            port,
            opened: Instant::now(),
            to_dest: 0,
            from_dest: 0,
        };
        self.0.insert(ch, c);
    }

    /// Count a data frame's payload on its channel.
    fn data(&mut self, ch: u16, n: usize, to_dest: bool) {
        if let Some(c) = self.0.get_mut(&ch) {
            *(if to_dest {
                &mut c.to_dest
            } else {
                &mut c.from_dest
            }) += n as u64;
        }
    }

    /// The channel is over (`reason` empty: cleanly): its `forward.close` event.
    fn closed(&mut self, ch: u16, reason: &str) -> Option<serde_json::Value> {
        let c = self.0.remove(&ch)?;
        Some(serde_json::json!({
            "channel": ch,
            "host": c.host,
            "port": c.port,
            "bytes_to_dest": c.to_dest,
            "bytes_from_dest": c.from_dest,
            "duration_ms": c.opened.elapsed().as_millis() as u64,
            "reason": reason,
        }))
    }

    /// What an agent's frame says of the channels: a channel's close (or its
    /// refusal by the agent) as its event; its data counted.
    fn agent_frame(&mut self, routed: &Routed) -> Option<serde_json::Value> {
        if routed.payload > 0 {
            self.data(routed.ch, routed.payload, false);
            return None;
        }
        if !routed.ends_channel {
            return None;
        }
        match Frame::decode(&routed.bytes).ok()? {
            Frame::ChannelClose { ch, reason, .. } => self.closed(ch, reason),
            Frame::ChannelReject { ch, reason, .. } => {
                self.closed(ch, &format!("the agent refused: {reason}"))
            }
            _ => None,
        }
    }
}

/// Frames a client may send on its stream after `Open`.
fn client_may_send(f: &Frame) -> bool {
    matches!(
        f,
        Frame::Data { .. }
            | Frame::Credit { .. }
            | Frame::Resize { .. }
            | Frame::Eof { .. }
            | Frame::Close { .. }
            | Frame::Signal { .. }
            | Frame::ChannelOpen { .. }
            | Frame::ChannelClose { .. }
    )
}

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
    (peer, notices): (std::net::IpAddr, bool),
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
    if let Some(why) = key_refused.or(locked) {
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
    let (tx, mut rx) = mpsc::unbounded_channel::<Routed>();
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let route = Route {
        client_sid,
        session_id: session.id.clone(),
        tx,
        queued: queued.clone(),
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
    // Windows are clamped when opened, and the credit that grows them goes through
    // the gate, so that the agent's data in flight, and so this stream's queue, stay
    // within the bound (see `hub::CreditGate` and `hub::CLIENT_QUEUE_BYTES`).
    let mut gate = CreditGate::default();
    if let Ok(Frame::Open { window, .. }) = Frame::decode(&msg) {
        gate.open(0, window.min(MAX_WINDOW));
    }
    let forward = |f: Frame| {
        let f = match f {
            // The account is the one the policies allowed, whatever the client
            // wrote: named in full, the agent's default included.
            Frame::Open {
                sid, window, kind, ..
            } => Frame::Open {
                sid,
                window: window.min(MAX_WINDOW),
                kind,
                account: &session.run_as,
            },
            Frame::ChannelOpen {
                sid,
                ch,
                window,
                host,
                port,
            } => Frame::ChannelOpen {
                sid,
                ch,
                window: window.min(MAX_WINDOW),
                host,
                port,
            },
            f => f,
        };
        Routed::new(f, agent_sid)
    };
    let first = forward(Frame::decode(&msg).expect("decoded above"));
    if first.bytes.len() > agent.max_frame as usize {
        agent.remove_route(agent_sid);
        recorder.discard().await;
        let reason = format!(
            "Open frame of {} bytes is larger than the agent accepts ({} bytes)",
            first.bytes.len(),
            agent.max_frame
        );
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
    let mut opening = vec![first.bytes];
    if let Some(rate) = session.rate {
        // The agent paces its own output; the relay paces both directions below.
        opening.push(
            encode(&Frame::Limit {
                sid: agent_sid,
                rate,
            })
            .into(),
        );
    }
    for frame in opening {
        // No session timers yet: only the stall bound applies.
        let no_timers = Instant::now() + 2 * WRITE_STALL;
        if let Err(failed) =
            write_by(no_timers, &mut registration.ended, agent.tx.send(frame)).await
        {
            agent.remove_route(agent_sid);
            recorder.discard().await;
            let reason = match failed {
                WriteFailed::Gone => "the agent disconnected".to_string(),
                stalled => stalled.agent(String::new()),
            };
            refuse(
                &mut sink,
                &state,
                &session.id,
                client_sid,
                ErrorCode::AGENT_GONE,
                &reason,
            )
            .await;
            return;
        }
    }
    info!(session = %session.id, agent = %agent.name, kind = %session.kind, rate = ?session.rate, "session started");
    // Started: from now on it can be joined.
    if let Some(watch) = recorder.watch() {
        registration.joinable(watch);
    }

    // 3. Route until the session ends, pacing data in each direction.
    let origin = Instant::now();
    let clock = || agent_core::Instant(origin.elapsed().as_millis() as u64);
    let bucket = |rate: u32| {
        TokenBucket::new(
            rate,
            TokenBucket::burst_for(rate, DEFAULT_MAX_FRAME),
            clock(),
        )
    };
    let mut pace_in = session.rate.map(bucket);
    let mut pace_out = session.rate.map(bucket);
    let mut channels = Channels::default();
    // Their `forward.close` rows being written, all in before `session.end`.
    let mut closing: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let is_forward = session.kind == "forward";
    // A frame waiting for its direction's bucket; its source is not read meanwhile.
    let mut hold_in: Option<Routed> = None;
    let mut hold_out: Option<Routed> = None;
    let mut last_activity = Instant::now();
    let started = Instant::now();
    let timers = Timers {
        idle: limits.idle_timeout,
        max: limits.max_duration,
        started,
    };
    let ready = |b: &Option<TokenBucket>| {
        b.as_ref()
            .map_or(started, |b| origin + Duration::from_millis(b.ready_at(1).0))
    };
    let mut client_closed_session = false;
    // Payload carried each way, recorded once when the session ends.
    let mut traffic = Traffic::default();
    // The agent's last frame (its Close or Reject), sent once the end is on record.
    let mut last_frame = None;
    let outcome: Result<(), String> = loop {
        // A peer that does not read must not hold the session past its timers, nor
        // for long at all: every write below is bounded by `write_by`.
        tokio::select! {
            _ = tokio::time::sleep_until(ready(&pace_in)), if hold_in.is_some() => {
                let held = hold_in.take().expect("held");
                if let Some(b) = pace_in.as_mut() {
                    b.consume(held.payload, clock());
                }
                if let Err(e) = write_by(timers.at(last_activity), &mut registration.ended, agent.tx.send(held.bytes)).await {
                    let why = e.agent(timers.reason(last_activity));
                    close_client(&mut sink, client_sid, ErrorCode::TERMINATED, &why).await;
                    break Err(why);
                }
            }
            _ = tokio::time::sleep_until(ready(&pace_out)), if hold_out.is_some() => {
                let held = hold_out.take().expect("held");
                if let Some(b) = pace_out.as_mut() {
                    b.consume(held.payload, clock());
                }
                let (ch, payload) = (held.ch, held.payload);
                if let Err(e) = write_by(timers.at(last_activity), &mut registration.ended, sink.send(Message::Binary(held.bytes))).await {
                    break Err(e.client(timers.reason(last_activity)));
                }
                gate.delivered(ch, payload);
                if let Err(e) = pass_credit(&mut gate, &agent, agent_sid, timers.at(last_activity), &mut registration.ended).await {
                    let why = e.agent(timers.reason(last_activity));
                    close_client(&mut sink, client_sid, ErrorCode::TERMINATED, &why).await;
                    break Err(why);
                }
            }
            _ = tokio::time::sleep_until(timers.at(last_activity)) => {
                let why = timers.reason(last_activity);
                close_client(&mut sink, client_sid, ErrorCode::TERMINATED, &why).await;
                break Err(why);
            }
            why = recorder.failed() => {
                // The recording broke (strict mode): the session cannot go on.
                close_client(&mut sink, client_sid, ErrorCode::TERMINATED, &why).await;
                break Err(why);
            }
            Some(line) = registration.notices.recv() => {
                // Someone joined or left: the user hears of it, if its client knows
                // the frame (an older one would take it for a protocol error).
                if !notices {
                    continue;
                }
                let notice = encode(&Frame::Notice { sid: client_sid, message: &line });
                if let Err(e) = write_by(timers.at(last_activity), &mut registration.ended, sink.send(Message::Binary(notice.into()))).await {
                    break Err(e.client(timers.reason(last_activity)));
                }
            }
            _ = registration.ended.changed() => {
                // The agent is told first (below), then the client: a client that
                // does not read must not delay the end of the processes.
                break Err(registration.ended.borrow().clone().unwrap_or_default());
            }
            out = rx.recv(), if hold_out.is_none() => {
                let Some(routed) = out else {
                    let why = "client too slow: relay buffer full";
                    close_client(&mut sink, client_sid, ErrorCode::TERMINATED, why).await;
                    break Err(why.into());
                };
                queued.fetch_sub(routed.cost(), std::sync::atomic::Ordering::AcqRel);
                traffic.bytes_out += routed.payload as u64;
                if is_forward {
                    if let Some(closed) = channels.agent_frame(&routed) {
                        closing.retain(|c| !c.is_finished());
                        closing.push(channel_closed(&state, &user.name, &session.id, peer, closed));
                    }
                }
                // On record before the client has it.
                if let Err(why) = recorder.agent_frame(&routed.bytes).await {
                    if !routed.last {
                        close_client(&mut sink, client_sid, ErrorCode::TERMINATED, &why).await;
                        break Err(why);
                    }
                }
                if routed.last {
                    last_frame = Some(routed.bytes);
                    break Ok(());
                }
                if routed.ends_channel {
                    // The agent's last word on the channel: nothing more in flight.
                    gate.close(routed.ch);
                }
                if routed.payload > 0 {
                    last_activity = Instant::now();
                    if pace_out.is_some() && ready(&pace_out) > Instant::now() {
                        hold_out = Some(routed);
                        continue;
                    }
                    if let Some(b) = pace_out.as_mut() {
                        b.consume(routed.payload, clock());
                    }
                }
                let (ch, payload) = (routed.ch, routed.payload);
                if let Err(e) = write_by(timers.at(last_activity), &mut registration.ended, sink.send(Message::Binary(routed.bytes))).await {
                    break Err(e.client(timers.reason(last_activity)));
                }
                if payload > 0 {
                    // Room for credit the client granted beyond the bounds, if any.
                    gate.delivered(ch, payload);
                    if let Err(e) = pass_credit(&mut gate, &agent, agent_sid, timers.at(last_activity), &mut registration.ended).await {
                        let why = e.agent(timers.reason(last_activity));
                        close_client(&mut sink, client_sid, ErrorCode::TERMINATED, &why).await;
                        break Err(why);
                    }
                }
            }
            msg = stream.next(), if hold_in.is_none() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => break Err("client went away".into()),
                    Some(Err(e)) => {
                        // Oversized messages land here: say so before hanging up.
                        let e = format!("bad message on the session stream: {e}");
                        close_client(&mut sink, client_sid, ErrorCode::PROTOCOL, &e).await;
                        break Err("client protocol error".into());
                    }
                    Some(Ok(_)) => continue,
                };
                let frame = match Frame::decode_bounded(&bytes, DEFAULT_MAX_FRAME as usize) {
                    Ok(f) if client_may_send(&f) => f,
                    // A newer client may send frame types we do not know: skip them.
                    Err(agent_core::DecodeError::UnknownFrame { .. }) => continue,
                    Ok(f) => {
                        let e = format!("frame type {} is not allowed on a session stream", f.frame_type());
                        close_client(&mut sink, client_sid, ErrorCode::PROTOCOL, &e).await;
                        break Err("client protocol error".into());
                    }
                    Err(e) => {
                        let e = format!("malformed frame: {e}");
                        close_client(&mut sink, client_sid, ErrorCode::PROTOCOL, &e).await;
                        break Err("client protocol error".into());
                    }
                };
                // Each channel is authorised here, before the agent hears of it, for
                // its destination in canonical form, which is what the agent gets.
                let canonical;
                let frame = match frame {
                    Frame::ChannelOpen { sid, ch, window, host, port } => {
                        let decided = if channels.0.contains_key(&ch) {
                            Err(format!("channel {ch} is already open"))
                        } else {
                            authorise_channel(&state, &user, &target, &session, peer, (host, port, ch)).await
                        };
                        match decided {
                            Ok(h) => {
                                canonical = h;
                                channels.opened(ch, &canonical, port);
                                let window = gate.open(ch, window.min(MAX_WINDOW));
                                Frame::ChannelOpen { sid, ch, window, host: &canonical, port }
                            }
                            Err(reason) => {
                                let denied = record::Event::ChannelDenied { ch, host: host.into(), port, reason: reason.clone() };
                                if let Err(why) = recorder.record(denied).await {
                                    close_client(&mut sink, client_sid, ErrorCode::TERMINATED, &why).await;
                                    break Err(why);
                                }
                                let reject = encode(&Frame::ChannelReject {
                                    sid: client_sid,
                                    ch,
                                    code: ErrorCode::DENIED,
                                    reason: &reason,
                                });
                                let send = sink.send(Message::Binary(reject.into()));
                                if let Err(e) = write_by(timers.at(last_activity), &mut registration.ended, send).await {
                                    break Err(e.client(timers.reason(last_activity)));
                                }
                                continue;
                            }
                        }
                    }
                    f => f,
                };
                // On record before the agent has it.
                if let Err(why) = recorder.client_frame(&frame).await {
                    close_client(&mut sink, client_sid, ErrorCode::TERMINATED, &why).await;
                    break Err(why);
                }
                let closes = matches!(frame, Frame::Close { .. });
                let out = match frame {
                    // Made again: the relay set its window and host.
                    Frame::ChannelOpen { .. } => forward(frame),
                    // Through the gate; as it came when all of it passes.
                    Frame::Credit { sid, ch, bytes: granted } => match gate.credit(ch, granted) {
                        0 => continue,
                        n if n == granted => Routed::of(&frame).readdress(bytes, agent_sid),
                        n => Routed::new(Frame::Credit { sid, ch, bytes: n }, agent_sid),
                    },
                    // As it came, but for its session id.
                    _ => Routed::of(&frame).readdress(bytes, agent_sid),
                };
                if out.bytes.len() > agent.max_frame as usize {
                    // A frame over the agent's announced limit (a small device's, or a
                    // full frame made longer by the session id) would cost every session
                    // on the link: end only this one.
                    let e = format!("frame too large for the agent ({} > {} bytes)", out.bytes.len(), agent.max_frame);
                    close_client(&mut sink, client_sid, ErrorCode::PROTOCOL, &e).await;
                    break Err("client protocol error".into());
                }
                traffic.bytes_in += out.payload as u64;
                if is_forward && out.payload > 0 {
                    channels.data(out.ch, out.payload, true);
                }
                if out.payload > 0 {
                    last_activity = Instant::now();
                    if pace_in.is_some() && ready(&pace_in) > Instant::now() {
                        hold_in = Some(out);
                        continue;
                    }
                    if let Some(b) = pace_in.as_mut() {
                        b.consume(out.payload, clock());
                    }
                }
                if let Err(e) = write_by(timers.at(last_activity), &mut registration.ended, agent.tx.send(out.bytes)).await {
                    let why = e.agent(timers.reason(last_activity));
                    close_client(&mut sink, client_sid, ErrorCode::TERMINATED, &why).await;
                    break Err(why);
                }
                if closes {
                    // Only once the agent has it: else the end path below asks it.
                    client_closed_session = true;
                }
            }
        }
    };
    match &outcome {
        Ok(()) => info!(session = %session.id, "session ended"),
        Err(why) => {
            warn!(session = %session.id, "session stream ended: {why}");
            if !client_closed_session {
                // Ask the agent to stop the session; its Close frees the route. Waited
                // for (bounded) so that a busy link cannot drop it.
                let close = encode(&Frame::Close {
                    sid: agent_sid,
                    exit: Exit::Aborted(ErrorCode::TERMINATED),
                    reason: why,
                });
                let sent =
                    tokio::time::timeout(Duration::from_secs(10), agent.tx.send(close.into()));
                if sent.await.is_err() {
                    // The link takes nothing: forget the route here (it would hold its
                    // places until the link dies) and record the end ourselves.
                    agent.remove_route(agent_sid);
                    let _ = state.store.end_session(&session.id, why).await;
                }
            }
        }
    }
    // Channels still open end with the session.
    let open: Vec<u16> = channels.0.keys().copied().collect();
    for ch in open {
        let why = outcome
            .as_ref()
            .err()
            .map_or("the session ended", String::as_str);
        if let Some(closed) = channels.closed(ch, why) {
            closing.push(channel_closed(
                &state,
                &user.name,
                &session.id,
                peer,
                closed,
            ));
        }
    }
    let _ = tokio::time::timeout(AUDIT_WAIT, futures_util::future::join_all(closing)).await;
    // On record before the client hears of the end: the bytes, and the reason when
    // someone ended it (a terminate, a revoked key, a lock). Then no longer live.
    let ended_by = match &outcome {
        Err(_) => registration.ended.borrow().clone(),
        Ok(()) => None,
    };
    let _ = state
        .store
        .session_finished(&session.id, ended_by.as_deref(), traffic)
        .await;
    let mut exit = state.store.session_exit(&session.id).await.ok().flatten();
    if let (None, Err(why)) = (&exit, &outcome) {
        // Ended here (the client left, a timer fired) before the agent's answer
        // was on record: this is why it ended (the first end recorded stands).
        let _ = state.store.end_session(&session.id, why).await;
        exit = Some(why.clone());
    }
    // The recording's last lines, compressed, and its hash into the audit chain.
    let recording = recorder
        .finish(outcome.as_ref().err().map(String::as_str))
        .await;
    let mut detail = serde_json::json!({
        "exit": exit,
        "ended_by": ended_by,
        "bytes_in": traffic.bytes_in,
        "bytes_out": traffic.bytes_out,
    });
    if let Some(r) = recording {
        detail["recording"] = r;
    }
    let end = Event::new(user.name.clone(), "session.end", session.id.clone())
        .from(peer)
        .detail(detail);
    if let Err(e) = state.audit.record(end).await {
        warn!(session = %session.id, "{e}");
    }
    drop(registration);
    if let Some(last) = last_frame {
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Binary(last))).await;
    }
    if let (Err(why), Some(_)) = (&outcome, &ended_by) {
        // Ended by someone: now tell the client who and why.
        close_client(&mut sink, client_sid, ErrorCode::TERMINATED, why).await;
    }
    // Close the WebSocket properly and read until the client closes too (bounded):
    // dropping the connection at once would reset it, and a client still reading the
    // session's last output would lose what it had not read yet.
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
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

/// Send the agent the credit the gate has room for now (see [`CreditGate`]), each
/// write bounded as [`write_by`] bounds it.
async fn pass_credit(
    gate: &mut CreditGate,
    agent: &AgentHandle,
    agent_sid: u32,
    timers: Instant,
    ended: &mut Ended,
) -> Result<(), WriteFailed> {
    while let Some((ch, bytes)) = gate.poll_credit() {
        let credit = encode(&Frame::Credit {
            sid: agent_sid,
            ch,
            bytes,
        });
        write_by(timers, ended, agent.tx.send(credit.into())).await?;
    }
    Ok(())
}

/// How long one write to a peer may wait for it to read before the session ends.
const WRITE_STALL: Duration = Duration::from_secs(60);
/// How long the goodbyes to a client (its `Close`, the WebSocket close) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The session's idle and maximum-duration timers.
struct Timers {
    idle: Option<Duration>,
    max: Option<Duration>,
    started: Instant,
}

impl Timers {
    /// When they fire, the last input or output having been at `last_activity`.
    fn at(&self, last_activity: Instant) -> Instant {
        let never = self.started + Duration::from_secs(100 * 365 * 86400);
        let idle_at = self.idle.map_or(never, |d| last_activity + d);
        let max_at = self.max.map_or(never, |d| self.started + d);
        idle_at.min(max_at)
    }

    /// Why the session ends when they fire.
    fn reason(&self, last_activity: Instant) -> String {
        let idle_first = match (self.idle, self.max) {
            (Some(idle), Some(max)) => last_activity + idle <= self.started + max,
            (idle, _) => idle.is_some(),
        };
        if idle_first {
            let idle = human(self.idle.unwrap_or_default());
            format!("idle timeout: no input or output for {idle}")
        } else {
            let max = human(self.max.unwrap_or_default());
            format!("maximum session duration of {max} reached")
        }
    }
}

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

/// `20m`, `2s`, `1h30m`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
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

    #[test]
    fn timers_fire_at_the_earlier_of_idle_and_maximum_and_say_which() {
        let started = Instant::now();
        let t = Timers {
            idle: Some(Duration::from_secs(60)),
            max: Some(Duration::from_secs(90)),
            started,
        };
        assert_eq!(t.at(started), started + Duration::from_secs(60));
        assert_eq!(t.reason(started), "idle timeout: no input or output for 1m");
        let late = started + Duration::from_secs(50);
        assert_eq!(t.at(late), started + Duration::from_secs(90));
        assert_eq!(t.reason(late), "maximum session duration of 1m30s reached");
        let idle_only = Timers { max: None, ..t };
        assert_eq!(idle_only.at(late), late + Duration::from_secs(60));
    }
}
