//! A session's routing loop and its end, whoever started it: a client's stream
//! (`super::serve`) or a restarted relay taking up a resumable session
//! (`super::revive`). The hub (`hub::session`) decides; this moves bytes, awaits
//! the policies, the recording and the audit log, and bounds every write. A
//! resumable session's client stream and agent link may each be away, and come
//! back.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use agent_core::wire::ErrorCode;
use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    authorise_channel, channel_closed, close_client, now, record_client_frame, write_by,
    WriteFailed, AUDIT_WAIT, CLOSE_GRACE,
};
use crate::api::AppState;
use crate::audit::Event;
use crate::hub::session;
use crate::hub::{AgentHandle, LinkChange, Routed};
use crate::live::Registration;
use crate::record::{self, Recorder};
use crate::store::{SessionRow, UserRow};

/// A client's stream, split.
pub(super) type Client = (SplitSink<WebSocket, Message>, SplitStream<WebSocket>);

/// A session ready to route.
pub(super) struct Running {
    pub state: AppState,
    pub session: SessionRow,
    pub user: UserRow,
    /// The target, as the policies see it (forward channels are decided on it).
    pub target: crate::policy::Target,
    pub peer: std::net::IpAddr,
    pub client_sid: u32,
    pub agent_sid: u32,
    /// The agent's connection, if it is up.
    pub agent: Option<Arc<AgentHandle>>,
    /// The client's stream, if it is up.
    pub client: Option<Client>,
    pub hub: session::Session,
    pub recorder: Recorder,
    pub registration: Registration,
    /// The agent's frames for this session.
    pub rx: mpsc::UnboundedReceiver<Routed>,
    pub queued: Arc<AtomicUsize>,
    /// A resumable session's agent link going and coming back.
    pub link_changes: mpsc::UnboundedReceiver<LinkChange>,
    /// What a restarted relay needs to take the session up again, to put on record
    /// once it is resumable (its agent accepted it).
    pub persist: Option<crate::store::Resumable>,
}

/// The client's next message; never, while it has no stream.
async fn next_message(client: &mut Option<Client>) -> Option<Result<Message, axum::Error>> {
    match client.as_mut() {
        Some((_, stream)) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Whether a client whose stream failed under a write had said it was leaving: a
/// session `Close` (frame type 11) or the WebSocket's close among what it sent
/// last. Reads what is there (briefly); its other frames are dropped (a resumed
/// client sends them again).
async fn left_for_good(client: &mut Option<Client>) -> bool {
    let Some((_, stream)) = client.as_mut() else {
        return false;
    };
    let by = Instant::now() + Duration::from_millis(200);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(by, stream.next()).await {
        match m {
            Message::Binary(b) if b.first() == Some(&11) => return true,
            Message::Close(f) => return !page_left(f.as_ref()),
            _ => {}
        }
    }
    false
}

/// Whether a client's WebSocket close says "going away" (1001): a browser page
/// being reloaded or left, which takes its resumable session up again (a cut, not
/// the user leaving).
fn page_left(frame: Option<&axum::extract::ws::CloseFrame>) -> bool {
    frame.is_some_and(|f| f.code == axum::extract::ws::close_code::AWAY)
}

/// The browser console's keepalive: a text `ping` on the stream is answered with
/// `pong` (a page cannot send WebSocket pings, nor see their pongs). Outside the
/// frame protocol, which has no text messages.
const KEEPALIVE: &str = "ping";

/// Route until the session ends, then record its end.
pub(super) async fn route(r: Running) {
    let Running {
        state,
        session,
        user,
        target,
        peer,
        client_sid,
        agent_sid,
        mut agent,
        mut client,
        mut hub,
        mut recorder,
        mut registration,
        mut rx,
        queued,
        mut link_changes,
        mut persist,
    } = r;
    // Their `forward.close` rows being written, all in before `session.end`.
    let mut closing: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let closed_row = |closed: session::ChannelRecord| {
        channel_closed(&state, &user.name, &session.id, peer, closed.detail())
    };
    // A resumable session's sides come and go (`hub::session`).
    let mut client_up = client.is_some();
    let mut agent_up = agent.is_some();
    let mut was_suspended = hub.is_suspended();
    // Since when a side has been away, as the store has it. (A revived session's
    // was written when it was taken up, and is written again here, in case that
    // failed: within a second of it, never earlier.)
    let mut away_recorded = None;
    let mut away_unrecorded = false;
    let end = loop {
        if hub.is_resumable() {
            if let Some(r) = persist.take() {
                if let Err(e) = state.store.set_resumable(&session.id, &r).await {
                    warn!(session = %session.id, "the session cannot outlive a restart of the relay: {e}");
                }
            }
            // A relay restarted while a side is away counts its hold from when it
            // went, not from the restart.
            let away = hub.away_since();
            if away != away_recorded {
                let unix = away.map(|t| {
                    let ago = now().saturating_duration_since(t).as_secs();
                    crate::store::unix_now() - i64::try_from(ago).unwrap_or(0)
                });
                match state.store.set_resume_away(&session.id, unix).await {
                    Ok(()) => away_recorded = away,
                    // Tried again next time round; said once.
                    Err(e) if !away_unrecorded => {
                        away_unrecorded = true;
                        warn!(session = %session.id, "cannot record since when a side is away: {e}");
                    }
                    Err(_) => {}
                }
            }
        }
        let suspended = hub.is_suspended();
        if was_suspended && !suspended {
            // Resumed with the latest token: the one before it is spent, in the
            // store first (a relay restarted after this must not take it; if the
            // write fails, both keep it, and agree).
            if registration.holds_previous() {
                match state.store.confirm_resume_hash(&session.id).await {
                    Ok(()) => registration.confirm_token(),
                    Err(e) => warn!(session = %session.id, "cannot record the resume: {e}"),
                }
            }
        }
        was_suspended = suspended;
        // What the hub has to write, each write bounded by `write_by`: a peer that
        // does not read must not hold the session past its timers, nor for long.
        let deadline = Instant::from_std(hub.timers_at());
        while let Some(frame) = hub.poll_agent(now()) {
            if let Some(why) = record_client_frame(&mut recorder, &frame).await {
                hub.abort(why, true);
                break;
            }
            let Some(to) = agent.as_ref().filter(|_| agent_up) else {
                continue;
            };
            match write_by(deadline, &mut registration.ended, to.tx.send(frame)).await {
                Ok(()) => {}
                // The link is gone: a resumable session hears so from the hub.
                Err(WriteFailed::Gone) if hub.is_resumable() => agent_up = false,
                Err(e) => {
                    hub.abort(e.agent(hub.timer_reason()), true);
                    break;
                }
            }
        }
        while let Some(out) = hub.poll_client(now()) {
            let bytes = match out {
                session::ToClient::Agent(routed) => {
                    // On record before the client has it.
                    if let Err(why) = recorder.agent_frame(&routed.bytes).await {
                        hub.abort(why, true);
                        break;
                    }
                    routed.bytes
                }
                session::ToClient::Relay(bytes) => bytes,
            };
            let Some((sink, _)) = client.as_mut().filter(|_| client_up) else {
                continue;
            };
            let send = sink.send(Message::Binary(bytes));
            match write_by(deadline, &mut registration.ended, send).await {
                Ok(()) => {}
                // Gone, or not reading for long (a half-open connection): a
                // resumable session waits for the client to come back.
                Err(WriteFailed::Gone | WriteFailed::Stalled) if hub.is_resumable() => {
                    // What it sent before it went may say it left for good (its
                    // `Close`, or the WebSocket's): then the session ends.
                    if left_for_good(&mut client).await {
                        hub.abort("client went away".into(), false);
                        break;
                    }
                    client_up = false;
                    hub.client_lost(now());
                }
                Err(e) => {
                    hub.abort(e.client(hub.timer_reason()), false);
                    break;
                }
            }
        }
        while let Some(event) = hub.poll_event() {
            match event {
                session::Event::Decide {
                    ch,
                    host,
                    port,
                    refused,
                } if !hub.is_over() => {
                    // Authorised before the agent hears of the channel, for its
                    // destination in canonical form, which is what the agent gets.
                    let decided = match refused {
                        Some(why) => Err(why),
                        None => {
                            let channel = (host.as_str(), port, ch);
                            authorise_channel(&state, &user, &target, &session, peer, channel).await
                        }
                    };
                    if let Err(reason) = &decided {
                        let denied = record::Event::ChannelDenied {
                            ch,
                            host,
                            port,
                            reason: reason.clone(),
                        };
                        if let Err(why) = recorder.record(denied).await {
                            hub.abort(why, true);
                        }
                    }
                    hub.decided(decided, now());
                }
                session::Event::Decide { .. } => {}
                session::Event::ChannelClosed(closed) => {
                    closing.retain(|c| !c.is_finished());
                    closing.push(closed_row(closed));
                }
            }
        }
        if let Some(end) = hub.poll_end() {
            break end;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(Instant::from_std(hub.poll_timeout())) => {
                hub.handle_timeout(now());
            }
            why = recorder.failed() => {
                // The recording broke (strict mode): the session cannot go on.
                hub.abort(why, true);
            }
            Some(line) = registration.notices.recv() => hub.notice(&line),
            _ = registration.ended.changed() => {
                // The agent is told first (below), then the client: a client that
                // does not read must not delay the end of the processes.
                hub.abort(registration.ended.borrow().clone().unwrap_or_default(), false);
            }
            out = rx.recv(), if hub.wants_agent_input() => match out {
                Some(routed) => {
                    queued.fetch_sub(routed.cost(), std::sync::atomic::Ordering::AcqRel);
                    hub.handle_agent(routed, now());
                }
                None => hub.abort("client too slow: relay buffer full".into(), true),
            },
            Some(change) = link_changes.recv() => match change {
                LinkChange::Lost => {
                    agent_up = false;
                    hub.agent_lost(now());
                }
                LinkChange::Back(handle) => {
                    hub.set_agent_max_frame(handle.max_frame);
                    agent = Some(handle);
                    agent_up = true;
                    hub.agent_back();
                }
            },
            Some(back) = registration.resumed.recv() => {
                // The client is back on a new stream (a second one replaces the
                // first: the latest tab wins). Its token is spent; the next goes out.
                if client_up {
                    hub.client_lost(now());
                }
                client = Some(back.socket.split());
                client_up = true;
                let token = registration.rotated(back.presented.clone());
                // On record for a restart of the relay (which would take the session
                // up again with it).
                let kept = state
                    .store
                    .set_resume_hash(&session.id, &token.hash(), &back.presented)
                    .await;
                if let Err(e) = kept {
                    warn!(session = %session.id, "a restart of the relay would lose the session's new token: {e}");
                }
                hub.client_back(token.expose());
                info!(session = %session.id, peer = %back.peer, "client resumed the session");
            }
            msg = next_message(&mut client), if client_up && hub.wants_client_input() => match msg {
                Some(Ok(Message::Binary(b))) => hub.handle_client(b, now()),
                // A page being reloaded or left says "going away" (1001): for a
                // resumable session that is a cut, as a dropped connection is (the
                // reloaded page takes the session up again).
                Some(Ok(Message::Close(f))) if page_left(f.as_ref()) && hub.is_resumable() => {
                    client_up = false;
                    hub.client_lost(now());
                }
                Some(Ok(Message::Close(_))) => hub.abort("client went away".into(), false),
                None if hub.is_resumable() => {
                    client_up = false;
                    hub.client_lost(now());
                }
                None => hub.abort("client went away".into(), false),
                Some(Err(_)) if hub.is_resumable() => {
                    client_up = false;
                    hub.client_lost(now());
                }
                Some(Err(e)) => {
                    // Oversized messages land here: say so before hanging up.
                    hub.protocol_error(format!("bad message on the session stream: {e}"));
                }
                Some(Ok(Message::Text(t))) if t.as_str() == KEEPALIVE => {
                    if let Some((sink, _)) = client.as_mut() {
                        let pong = sink.send(Message::Text("pong".into()));
                        // Briefly: a client that does not read must not hold up
                        // the session (it finds out by its own keepalive; the
                        // next frame's write finds it gone).
                        let _ = tokio::time::timeout(Duration::from_millis(200), pong).await;
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    };
    let session::End {
        outcome,
        last_frame,
        tell_client,
        tell_agent,
    } = end;
    if let Some(last) = &last_frame {
        // The agent's last word (its exit) in the recording, when it came.
        let _ = recorder.agent_frame(last).await;
    }
    if let Some(close) = tell_client {
        if let Some((sink, _)) = client.as_mut().filter(|_| client_up) {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Binary(close))).await;
        }
    }
    match &outcome {
        Ok(()) => info!(session = %session.id, "session ended"),
        Err(why) => warn!(session = %session.id, "session stream ended: {why}"),
    }
    if let (Some(close), Err(why)) = (tell_agent, &outcome) {
        // Ask the agent to stop the session; its Close frees the route. Waited for
        // (bounded) so that a busy link cannot drop it.
        let sent = match agent.as_ref().filter(|_| agent_up) {
            Some(to) => matches!(
                tokio::time::timeout(Duration::from_secs(10), to.tx.send(close)).await,
                Ok(Ok(()))
            ),
            None => false,
        };
        if !sent {
            // The link takes nothing: forget the route here (it would hold its places
            // until the link dies) and record the end ourselves.
            state.hub.forget_route(&session.agent_id, agent_sid);
            let _ = state.store.end_session(&session.id, why).await;
        } else if hub.is_resumable() {
            // An agent whose hold ran out as ours did may never answer: the place
            // goes now (its ids are never given out again, so a late answer finds
            // no route and is ignored).
            state.hub.forget_route(&session.agent_id, agent_sid);
            let _ = state.store.end_session(&session.id, why).await;
        }
    }
    // Channels still open end with the session.
    let why = outcome
        .as_ref()
        .err()
        .map_or("the session ended", String::as_str);
    hub.close_channels(why, now());
    while let Some(event) = hub.poll_event() {
        if let session::Event::ChannelClosed(closed) = event {
            closing.push(closed_row(closed));
        }
    }
    let _ = tokio::time::timeout(AUDIT_WAIT, futures_util::future::join_all(closing)).await;
    // On record before the client hears of the end: the bytes, and the reason when
    // someone ended it (a terminate, a revoked key, a lock). Then no longer live.
    let ended_by = match &outcome {
        Err(_) => registration.ended.borrow().clone(),
        Ok(()) => None,
    };
    let traffic = hub.traffic();
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
    let Some((mut sink, mut stream)) = client.filter(|_| client_up) else {
        return;
    };
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
