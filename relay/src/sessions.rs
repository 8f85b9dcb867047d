//! Live and past sessions: the listing, and ending a live one. Authorised on each
//! session (`Session::"s-..."`, with its `owner`, `agent`, `kind` and `run_as`).
//!
//! | method | path | action, resource |
//! |---|---|---|
//! | GET | `/v1/sessions?all=true&limit=N` | `sessions_list`, each session listed |
//! | POST | `/v1/sessions/{id}/terminate` (`{reason?}`) | `terminate`, the session |
//!
//! The listing holds the caller's own sessions, or with `all` everyone's, newest
//! first; either way only those the caller may `sessions_list`: seeing even one's
//! own sessions takes a policy (`when { resource.owner == principal }`). A terminate
//! ends a live session within a second (`live`), and its user reads
//! `terminated by NAME: REASON`, which is also its recorded exit; the answer
//! carries that exit once the session has ended (waited for up to [`SETTLE`]). A
//! session whose stream has not opened is ended in the store at once, and its
//! token opens nothing. A session that something else ended first (it ended on
//! its own, a lock, another terminate) is a 409: `session s-... already ended
//! (EXIT)`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::{authenticate, target, ApiError, AppState};
use crate::policy::{Action, Circumstances, Principal, Resource, Target};
use crate::store::{SessionListed, Store};

/// Sessions listed when the request names no `limit`.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit`.
pub const MAX_LIMIT: u32 = 1000;
/// The longest reason a terminate may give, in characters.
pub const REASON_MAX: usize = 200;

/// The session routes (merged into the API's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions", get(list))
        .route("/v1/sessions/{id}/terminate", post(terminate))
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, m)
}

/// Query of `GET /v1/sessions`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Everyone's sessions (that the caller may see), not only the caller's.
    #[serde(default)]
    pub all: bool,
    /// At most this many, 1 to [`MAX_LIMIT`] [default: [`DEFAULT_LIMIT`]].
    pub limit: Option<u32>,
}

/// One session, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// Its user's name.
    pub user: String,
    /// Its target's name.
    pub target: String,
    /// `shell`, `exec`, `forward` or `ssh-key`.
    pub kind: String,
    /// The account it runs as.
    pub run_as: String,
    /// Unix seconds: asked for.
    pub created_at: i64,
    /// Unix seconds: its stream opened; `None` if it never did.
    pub started_at: Option<i64>,
    /// Unix seconds.
    pub ended_at: Option<i64>,
    /// How it ended: `exit 0`, `signal 9`, `terminated by alice: ...`.
    pub exit: Option<String>,
    /// Payload bytes from the client to the agent (every channel); `None` until it
    /// ends, or if it never started.
    pub bytes_in: Option<u64>,
    /// Payload bytes from the agent to the client.
    pub bytes_out: Option<u64>,
    /// Being served now.
    pub live: bool,
    /// A recording of it exists (live or finished).
    pub recorded: bool,
}

impl SessionInfo {
    fn new(s: SessionListed, live: bool, recorded: bool) -> SessionInfo {
        SessionInfo {
            id: s.id,
            user: s.user,
            target: s.target,
            kind: s.kind,
            run_as: s.run_as,
            created_at: s.created_at,
            started_at: s.started_at,
            ended_at: s.ended_at,
            exit: s.exit,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            live,
            recorded,
        }
    }
}

/// Sessions' owners and targets as policies see them, each looked up once.
#[derive(Default)]
pub(crate) struct Subjects {
    owners: HashMap<String, Principal>,
    agents: HashMap<String, Target>,
}

impl Subjects {
    /// Look up the owner and the agent of a session, unless known already. A user
    /// or agent that is gone is seen by its id, with no groups, attributes or tags.
    pub(crate) async fn learn(
        &mut self,
        store: &Store,
        user_id: &str,
        agent_id: &str,
    ) -> Result<(), crate::Error> {
        if !self.owners.contains_key(user_id) {
            let p = store.user(user_id).await?.map_or_else(
                || Principal {
                    name: user_id.into(),
                    ..Principal::default()
                },
                |u| u.principal(),
            );
            self.owners.insert(user_id.into(), p);
        }
        if !self.agents.contains_key(agent_id) {
            let t = store.agent(agent_id).await?.map_or_else(
                || Target {
                    name: agent_id.into(),
                    id: agent_id.into(),
                    ..Target::default()
                },
                |a| target(&a),
            );
            self.agents.insert(agent_id.into(), t);
        }
        Ok(())
    }

    /// The session as a policy's resource (its owner and agent learnt first).
    pub(crate) fn resource<'a>(
        &'a self,
        id: &'a str,
        user_id: &str,
        agent_id: &str,
        kind: &'a str,
        run_as: &'a str,
    ) -> Resource<'a> {
        Resource::Session {
            id,
            owner: &self.owners[user_id],
            agent: &self.agents[agent_id],
            kind,
            run_as,
        }
    }
}

/// `GET /v1/sessions`: each session decided, until `limit` are allowed or none are
/// left. The decisions run off the runtime's threads, a page at a time.
async fn list(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad(format!("limit must be 1 to {MAX_LIMIT}, not {limit}")));
    }
    let own = (!q.all).then(|| caller.user.id.clone());
    let c = Circumstances::new(peer.ip());
    let mut subjects = Subjects::default();
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = state
            .store
            .sessions_page(own.as_deref(), after, limit)
            .await?;
        let exhausted = page.len() < limit as usize;
        after = page.last().map(|(cursor, _)| *cursor);
        for (_, s) in &page {
            subjects
                .learn(&state.store, &s.user_id, &s.agent_id)
                .await?;
        }
        let (decider, user, c) = (state.clone(), caller.user.clone(), c.clone());
        let (visible, known) = tokio::task::spawn_blocking(move || {
            let visible: Vec<SessionListed> = page
                .into_iter()
                .map(|(_, s)| s)
                .filter(|s| {
                    let r = subjects.resource(&s.id, &s.user_id, &s.agent_id, &s.kind, &s.run_as);
                    decider.decide(&user, Action::SessionsList, &r, &c).allow
                })
                .collect();
            (visible, subjects)
        })
        .await
        .map_err(|e| {
            warn!("listing failed: {e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "listing failed")
        })?;
        subjects = known;
        let visible: Vec<SessionListed> = visible
            .into_iter()
            .take(limit as usize - out.len())
            .collect();
        // Whether each has a recording: a few `stat`s each, off the runtime's threads.
        let recordings = state.recordings.clone();
        let ids: Vec<String> = visible.iter().map(|s| s.id.clone()).collect();
        let recorded = tokio::task::spawn_blocking(move || {
            ids.iter()
                .map(|id| recordings.exists(id))
                .collect::<Vec<bool>>()
        })
        .await
        .unwrap_or_default();
        for (i, s) in visible.into_iter().enumerate() {
            let live = state.live.contains(&s.id);
            out.push(SessionInfo::new(
                s,
                live,
                recorded.get(i).copied().unwrap_or(false),
            ));
        }
        if out.len() == limit as usize || exhausted {
            return Ok(Json(out));
        }
    }
}

/// Body of `POST /v1/sessions/{id}/terminate` (it may be empty).
#[derive(Debug, Default, Deserialize)]
pub struct Terminate {
    /// Why, shown to the session's user after who ended it.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Answer of `POST /v1/sessions/{id}/terminate`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Terminated {
    /// Always true: a session this did not end is a 409.
    pub terminated: bool,
    /// Its exit as recorded once it ended (`terminated by alice: ...`, or how it
    /// ended on its own at the same moment); `None` if it was still ending after
    /// [`SETTLE`].
    #[serde(default)]
    pub exit: Option<String>,
}

/// How long a terminate waits for a live session to finish ending (its exit on
/// record), and for one whose stream is opening to be live.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How often it looks meanwhile.
const POLL: Duration = Duration::from_millis(25);

/// What the user of a session ended by `by` reads, and its recorded exit.
fn termination(by: &str, reason: Option<&str>) -> Result<String, String> {
    let reason = reason.map(str::trim).unwrap_or_default();
    if reason.chars().count() > REASON_MAX {
        return Err(format!(
            "the reason is too long (at most {REASON_MAX} characters)"
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err("the reason must be one line of text".into());
    }
    Ok(if reason.is_empty() {
        format!("terminated by {by}")
    } else {
        format!("terminated by {by}: {reason}")
    })
}

async fn terminate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Terminated>, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let req: Terminate = if body.iter().all(u8::is_ascii_whitespace) {
        Terminate::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request body: {e}")))?
    };
    let s = session_for(&state, &caller, peer, &id, Action::Terminate).await?;
    let why = termination(&caller.user.name, req.reason.as_deref()).map_err(bad)?;
    if !state.live.contains(&s.id) {
        if let Some(exit) = state.store.session_exit(&s.id).await? {
            return Err(already_ended(&s.id, Some(&exit)));
        }
    }
    // In the audit log before it is done, with who asked and why.
    let event =
        crate::audit::Event::new(caller.user.name.clone(), "session.terminate", s.id.clone())
            .from(peer.ip())
            .detail(serde_json::json!({ "reason": req.reason }));
    state.record(event).await?;
    match end(&state, &s.id, &why).await? {
        Ended::Here(exit) => {
            info!(session = %s.id, user = %caller.user.name, "session ended: {why}");
            Ok(Json(Terminated {
                terminated: true,
                exit,
            }))
        }
        Ended::Before(exit) => Err(already_ended(&s.id, exit.as_deref())),
        Ended::Starting => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("session {} is still starting; try again", s.id),
        )),
    }
}

/// How a terminate went.
#[derive(Debug)]
enum Ended {
    /// This ended it; its recorded exit, unless it was still ending.
    Here(Option<String>),
    /// Something else had ended it (it ended on its own, a revoked key, a lock,
    /// another terminate); its recorded exit, unless it was still ending.
    Before(Option<String>),
    /// Its stream was opening, and it was not live within [`SETTLE`].
    Starting,
}

fn already_ended(id: &str, exit: Option<&str>) -> ApiError {
    let m = match exit {
        Some(exit) => format!("session {id} already ended ({exit})"),
        None => format!("session {id} already ended"),
    };
    ApiError::new(StatusCode::CONFLICT, m)
}

/// End session `id` for `why`, whatever its stage: a live one through its task
/// (then waited for, to read its exit), one whose stream has not opened in the
/// store (its token then opens nothing), one whose stream is opening once it is
/// live. Of two ends at once (another terminate, a lock, the session ending by
/// itself) the first stands, and the other one learns so.
async fn end(state: &AppState, id: &str, why: &str) -> Result<Ended, ApiError> {
    let deadline = Instant::now() + SETTLE;
    loop {
        if state.live.end(id, why) {
            return Ok(Ended::Here(settled(state, id).await?));
        }
        if state.live.contains(id) {
            // Ended by something else first, or live only since `end` looked.
            if state.live.end(id, why) {
                return Ok(Ended::Here(settled(state, id).await?));
            }
            return Ok(Ended::Before(settled(state, id).await?));
        }
        // Not live: its stream has not opened, is opening, or it is over (its end
        // is on record before it leaves `live`).
        if state.store.end_unstarted(id, why).await? {
            return Ok(Ended::Here(Some(why.to_string())));
        }
        if let Some(exit) = state.store.session_exit(id).await? {
            return Ok(Ended::Before(Some(exit)));
        }
        if Instant::now() >= deadline {
            return Ok(Ended::Starting);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The exit of a live session that is ending, once it has left `live` (its end is
/// on record by then); `None` if it is still there after [`SETTLE`].
async fn settled(state: &AppState, id: &str) -> Result<Option<String>, ApiError> {
    let deadline = Instant::now() + SETTLE;
    while state.live.contains(id) {
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(state.store.session_exit(id).await?)
}

/// The session `id`, once `caller` is allowed `action` on it (decided and recorded
/// with `require`); 404 when there is no such session.
pub(crate) async fn session_for(
    state: &AppState,
    caller: &crate::store::Caller,
    peer: SocketAddr,
    id: &str,
    action: Action,
) -> Result<crate::store::SessionRow, ApiError> {
    let s =
        state.store.session_info(id).await?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("unknown session '{id}'"))
        })?;
    let mut subjects = Subjects::default();
    subjects
        .learn(&state.store, &s.user_id, &s.agent_id)
        .await?;
    let r = subjects.resource(&s.id, &s.user_id, &s.agent_id, &s.kind, &s.run_as);
    let c = Circumstances::new(peer.ip());
    state.require(&caller.user, action, &r, &c).await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_termination_names_who_and_why_on_one_line() {
        assert_eq!(termination("alice", None).unwrap(), "terminated by alice");
        assert_eq!(
            termination("alice", Some("  ")).unwrap(),
            "terminated by alice"
        );
        assert_eq!(
            termination("alice", Some(" incident 7 ")).unwrap(),
            "terminated by alice: incident 7"
        );
        let refused = |r: &str| termination("alice", Some(r)).unwrap_err();
        assert_eq!(refused("a\nb"), "the reason must be one line of text");
        assert_eq!(
            refused(&"x".repeat(REASON_MAX + 1)),
            "the reason is too long (at most 200 characters)"
        );
        assert!(termination("alice", Some(&"é".repeat(REASON_MAX))).is_ok());
    }
}
