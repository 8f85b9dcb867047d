//! At start, the resumable sessions the previous run of the relay left running are
//! taken up again (`docs/protocol.md`, section 8): each gets its session task back,
//! with neither side connected; its agent's next connection and its client's next
//! stream (with its resume token, whose hash the store kept) resume it within its
//! hold, or it ends.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use agent_core::wire;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{now, run};
use crate::api::AppState;
use crate::audit::Event;
use crate::hub::{session, Route};
use crate::live::Owner;
use crate::store::{Resumable, SessionRow};

/// Take up every resumable session the store says was running; returns how many
/// go on (the others are recorded ended, with why). `stopped_at`: when the
/// previous run last said it ran (Unix seconds), from which the sessions' holds
/// count.
pub async fn revive_all(
    state: &AppState,
    sessions: Vec<(SessionRow, Resumable)>,
    stopped_at: Option<i64>,
) -> usize {
    let mut n = 0;
    for (session, resumable) in sessions {
        let id = session.id.clone();
        let (agent_id, agent_sid) = (session.agent_id.clone(), resumable.agent_sid);
        match revive(state, session, resumable, stopped_at).await {
            Ok(()) => n += 1,
            Err(why) => {
                warn!(session = %id, "cannot take the session up again: {why}");
                let why = format!("relay restarted: {why}");
                let _ = state.store.end_session(&id, &why).await;
                // Its agent may still hold it: it ends when the agent comes back.
                state.hub.end_on_return(&agent_id, agent_sid);
                // Its recording is finished as the previous run left it.
                let r = state.recordings.clone();
                let at = id.clone();
                let done = tokio::task::spawn_blocking(move || r.recover_one(&at)).await;
                if let Ok(Some(outcome)) = done {
                    crate::server::recovered_event(&state.audit, id, outcome).await;
                }
            }
        }
    }
    n
}

async fn revive(
    state: &AppState,
    session: SessionRow,
    r: Resumable,
    stopped_at: Option<i64>,
) -> Result<(), String> {
    // Its hold counts from when its sides were cut off: the previous run's stop,
    // or a side's going away before that. (One whose hold had passed before the
    // stop the previous run would have ended: that mark is stale, left by a write
    // that failed or a clock that jumped.)
    let unix_now = crate::store::unix_now();
    let hold_secs = i64::try_from(r.hold.as_secs()).unwrap_or(i64::MAX);
    let own = r
        .away_since
        .filter(|&at| stopped_at.is_none_or(|stop| at.saturating_add(hold_secs) > stop));
    let cut = [own, stopped_at].into_iter().flatten().min();
    let away = cut.map_or(0, |at| u64::try_from(unix_now - at).unwrap_or(0));
    if away >= r.hold.as_secs() {
        let hold = session::human(r.hold);
        return Err(format!(
            "its resume window of {hold} passed while the relay was down"
        ));
    }
    // On record before this run says it runs: a restart before the session's
    // task writes it still counts from the cut.
    if let Some(at) = cut {
        if let Err(e) = state.store.set_resume_away(&session.id, Some(at)).await {
            warn!(session = %session.id, "cannot record since when its sides are away: {e}");
        }
    }
    let (user, target) = match (
        state.store.user(&session.user_id).await,
        state.store.agent(&session.agent_id).await,
    ) {
        (Ok(Some(u)), Ok(Some(a))) => (u, crate::api::target(&a)),
        _ => return Err("the session's user or target is gone".into()),
    };
    // Locked, revoked or expired while the relay was down: it ends.
    if let Some(k) = &session.key_id {
        match state.store.key_refusal(k).await {
            Ok(None) => {}
            Ok(Some(e)) => return Err(e.to_string()),
            Err(e) => return Err(format!("cannot check the API key: {e}")),
        }
    }
    match state
        .locked(&session.user_id, Some(&session.agent_id))
        .await
    {
        Ok(None) => {}
        Ok(Some(why)) => return Err(why),
        Err(_) => return Err("cannot check for locks (store error)".into()),
    }
    let registration = state.live.register(
        &session.id,
        Owner {
            user_id: session.user_id.clone(),
            key_id: session.key_id.clone(),
            web: session.web_session.clone(),
            agent_id: session.agent_id.clone(),
        },
    );
    registration.resumable_by(r.hash.clone(), r.prev_hash.clone());
    let unknown = std::net::IpAddr::from([0, 0, 0, 0]);
    let input = super::input_recorded(state, &user, &target, &session, unknown);
    let recorder = state
        .recordings
        .resume(&session.id, &session.kind, input)
        .await?;
    if let Some(watch) = recorder.watch() {
        registration.joinable(watch);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let (link, link_changes) = mpsc::unbounded_channel();
    let route = Route {
        client_sid: r.client_sid,
        session_id: session.id.clone(),
        tx,
        queued: queued.clone(),
        link: Some(link),
    };
    let limits = &state.config.limits;
    state
        .hub
        .park(&session.agent_id, r.agent_sid, route, limits.max_sessions)
        .map_err(|e| e.to_string())?;
    let config = session::Config {
        client_sid: r.client_sid,
        agent_sid: r.agent_sid,
        // Until the agent's next connection says.
        agent_max_frame: wire::MIN_MAX_FRAME,
        rate: session.rate,
        idle: limits.idle_timeout,
        max: limits.max_duration,
        // A client that resumes is one that reads notices (it asked for both).
        notices: true,
        resume: Some((r.hold, String::new())),
    };
    let age = u64::try_from(unix_now - r.started_at).unwrap_or(0);
    let secs = std::time::Duration::from_secs;
    let mut hub = session::Session::revived(config, now(), secs(age), secs(away));
    // Its forward channels open at the stop, with their destinations, and those
    // ended before it, from the audit log (one it does not know of is counted
    // from the resume on, its destination unknown).
    match state.store.forward_rows(&session.id).await {
        Ok(rows) => {
            let (now_ms, at) = (crate::store::unix_now_ms(), now());
            let open = rows.open.into_iter().map(|c| {
                let ago = u64::try_from(now_ms - c.opened_at).unwrap_or(0);
                let opened = at.checked_sub(std::time::Duration::from_millis(ago));
                (c.ch, c.host, c.port, opened.unwrap_or(at))
            });
            hub.known_channels(open, rows.closed);
        }
        Err(e) => warn!(session = %session.id, "cannot read its forward channels: {e}"),
    }
    let event = Event::new(user.name.clone(), "session.revive", session.id.clone())
        .detail(serde_json::json!({ "agent": target.name, "hold_secs": r.hold.as_secs(), "away_secs": away }));
    if let Err(e) = state.audit.record(event).await {
        state.hub.forget_route(&session.agent_id, r.agent_sid);
        return Err(e.to_string());
    }
    let left = r.hold.as_secs() - away;
    info!(session = %session.id, agent = %target.name, "session taken up again: waiting for its agent and client ({left}s of its hold left)");
    let running = run::Running {
        state: state.clone(),
        session,
        user,
        target,
        peer: unknown,
        client_sid: r.client_sid,
        agent_sid: r.agent_sid,
        agent: None,
        client: None,
        hub,
        recorder,
        registration,
        rx,
        queued,
        link_changes,
        persist: None,
    };
    tokio::spawn(run::route(running));
    Ok(())
}
